"""TrainConfig: one typed training recipe, validated, shared by train and the analyses."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import landscape as ls
from landscape.core.errors import LandscapeError
from landscape.training import TrainConfig


@pytest.fixture(scope="module")
def data():
    return ls.datasets.mnist1d(n_train=96, n_test=48)


def test_defaults_are_trains_and_the_config_is_frozen() -> None:
    config = TrainConfig()
    assert (config.epochs, config.optimizer, config.lr, config.momentum, config.batch_size) == (
        10,
        "sgd",
        0.05,
        0.9,
        128,
    )
    assert config.steps is None and config.data_seed is None and config.schedule == "constant"
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lr = 0.1  # type: ignore[misc]
    assert config.replace(lr=0.1).lr == 0.1 and config.lr == 0.05
    assert set(config.as_dict()) == {f.name for f in dataclasses.fields(TrainConfig)}
    # steps win over epochs; epochs count ceil(n / batch) steps each
    assert TrainConfig(epochs=2, batch_size=32).total_steps(96) == 6
    assert TrainConfig(epochs=2, batch_size=40).total_steps(96) == 6
    assert TrainConfig(epochs=2, steps=5).total_steps(96) == 5


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("epochs", 0),
        ("epochs", 2.5),
        ("steps", 0),
        ("optimizer", "lion"),
        ("lr", 0.0),
        ("lr", float("nan")),
        ("momentum", 1.0),
        ("weight_decay", -1e-4),
        ("schedule", "step"),
        ("warmup", -1),
        ("batch_size", True),
        ("data_seed", -1),
        ("eval_every", 0),
    ],
)
def test_every_field_is_validated_with_a_clear_error(field, value) -> None:
    with pytest.raises(LandscapeError, match=rf"TrainConfig\({field}=...\): expected"):
        TrainConfig(**{field: value})
    with pytest.raises(LandscapeError, match=rf"TrainConfig\({field}=...\)"):
        TrainConfig().replace(**{field: value})
    with pytest.raises(LandscapeError, match=rf"imp\(train.{field}=...\)"):
        TrainConfig.coerce({field: value}, function="imp")
    with pytest.raises(LandscapeError, match=rf"train\({field}=...\)"):
        ls.train(torch.nn.Linear(40, 10), ls.datasets.mnist1d(n_train=8, n_test=4), progress=False, **{field: value})


def test_coerce_names_the_caller_and_refuses_what_is_not_recipe() -> None:
    assert TrainConfig.coerce(None, function="imp") == TrainConfig()
    base = TrainConfig(epochs=60, optimizer="adamw", lr=1e-3)
    assert TrainConfig.coerce({"epochs": 2}, function="f", default=base) == base.replace(epochs=2)
    with pytest.raises(LandscapeError, match=r"imp\(train=...\).*'start'"):
        TrainConfig.coerce({"start": None}, function="imp")
    with pytest.raises(LandscapeError, match=r"imp\(train=...\).*TrainConfig"):
        TrainConfig.coerce([("epochs", 2)], function="imp")
    with pytest.raises(LandscapeError, match=r"TrainConfig.replace\(lrate=...\)"):
        TrainConfig().replace(lrate=0.1)


def test_train_with_a_config_equals_train_with_keywords(data, device) -> None:
    model = ls.models.create("mlp", width=8, depth=1, seed=0)
    config = TrainConfig(epochs=2, batch_size=32, lr=0.1, schedule="cosine", optimizer="adam", data_seed=3)
    by_config = ls.train(model, data, config=config, progress=False, device=device)
    by_keywords = ls.train(
        model,
        data,
        epochs=2,
        batch_size=32,
        lr=0.1,
        schedule="cosine",
        optimizer="adam",
        data_seed=3,
        progress=False,
        device=device,
    )
    for k, v in by_config.state.items():
        assert torch.equal(v, by_keywords.state[k]), k
    # a keyword overrides the config's field
    overridden = ls.train(model, data, config=config.replace(lr=0.5), lr=0.1, progress=False, device=device)
    np.testing.assert_array_equal(overridden.history.loss.values, by_config.history.loss.values)
    with pytest.raises(LandscapeError, match=r"train\(config=...\)"):
        ls.train(model, data, config={"epochs": 1}, progress=False)


def test_instability_takes_a_config_or_a_dict_and_refuses_a_data_seed(data) -> None:
    from landscape import connectivity

    model = ls.models.create("mlp", width=8, depth=1, seed=0)
    start = ls.state_of(model)
    config = TrainConfig(epochs=1, batch_size=32)
    a = connectivity.instability(model, start, data, train=config, alphas=3, progress=False, device="cpu")
    b = connectivity.instability(model, start, data, train=config.as_dict(), alphas=3, progress=False, device="cpu")
    np.testing.assert_array_equal(a.error_barrier.values, b.error_barrier.values)
    with pytest.raises(LandscapeError, match=r"instability\(train=...\).*'data_seed'"):
        connectivity.instability(model, start, data, train=config.replace(data_seed=1), progress=False)
    sweep = connectivity.instability_sweep(
        model, {0: start}, data, total_steps=5, train=config, alphas=3, progress=False, device="cpu"
    )
    assert sweep.attrs["total_steps"] == 5 and '"steps": 5' in sweep.attrs["train"]
