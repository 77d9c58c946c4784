from __future__ import annotations

import numpy as np
import pytest
import torch

import landscape as ls
from landscape.core.errors import LandscapeError
from landscape.core.state import flatten
from landscape.training import init_state, lr_at


@pytest.fixture(scope="module")
def data():
    return ls.datasets.mnist1d(n_train=256, n_test=64)


def test_same_seeds_same_numbers_and_seeds_are_independent(data) -> None:
    model = ls.models.create("mlp", width=16, depth=1)
    run = lambda **kw: ls.train(model, data, epochs=2, batch_size=32, progress=False, **kw)  # noqa: E731
    a, b = run(init_seed=0, data_seed=0), run(init_seed=0, data_seed=0)
    assert torch.equal(flatten(a.state), flatten(b.state))
    other_order = run(init_seed=0, data_seed=1)
    other_init = run(init_seed=1, data_seed=0)
    assert not torch.equal(flatten(a.state), flatten(other_order.state))
    assert not torch.equal(flatten(a.state), flatten(other_init.state))


def test_checkpoints_and_history(data) -> None:
    model = ls.models.create("mlp", width=16, depth=1, seed=0)
    result = ls.train(model, data, epochs=2, batch_size=64, checkpoint_steps=[0, 3, 8], progress=False)
    assert sorted(result.checkpoints) == [0, 3, 8]
    assert torch.equal(flatten(result.checkpoints[0]), flatten(ls.state_of(model)))
    assert torch.equal(flatten(result.checkpoints[8]), flatten(result.state))
    assert result.history.sizes["step"] == 8 and list(result.history.eval_step.values) == [4, 8]
    # Starting from a checkpoint starts exactly there: zero steps of change at step 0 of the new run.
    again = ls.train(
        model, data, steps=1, batch_size=64, start=result.checkpoints[3], checkpoint_steps=[0], progress=False
    )
    assert torch.equal(flatten(again.checkpoints[0]), flatten(result.checkpoints[3]))


def test_the_callers_model_is_untouched(data) -> None:
    model = ls.models.create("mlp", width=16, depth=1, seed=0)
    before = flatten(ls.state_of(model))
    ls.train(model, data, epochs=1, progress=False)
    assert torch.equal(before, flatten(ls.state_of(model)))


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_masked_weights_stay_exactly_zero(data, optimizer: str) -> None:
    model = ls.models.create("mlp", width=16, depth=1, seed=0)
    weight = model.features.fc1.weight
    mask = {"features.fc1.weight": torch.rand(weight.shape, generator=torch.Generator().manual_seed(0)) > 0.5}
    result = ls.train(model, data, epochs=2, optimizer=optimizer, lr=0.01, weight_decay=0.1, mask=mask, progress=False)
    trained = result.state["features.fc1.weight"]
    assert torch.all(trained[~mask["features.fc1.weight"]] == 0)
    assert torch.any(trained[mask["features.fc1.weight"]] != weight[mask["features.fc1.weight"]])


def test_schedules() -> None:
    assert lr_at(0, 10, lr=1.0, schedule="cosine") == pytest.approx(1.0)
    assert lr_at(10, 10, lr=1.0, schedule="cosine") == pytest.approx(0.0)
    assert lr_at(5, 10, lr=1.0, schedule="linear") == pytest.approx(0.5)
    assert lr_at(0, 10, lr=1.0, warmup=4) == pytest.approx(0.25)


def test_init_state_matches_seeded_creation() -> None:
    model = ls.models.create("cnn1d", width=4)
    assert torch.equal(flatten(init_state(model, 7)), flatten(ls.state_of(ls.models.create("cnn1d", width=4, seed=7))))


def test_bad_training_arguments(data) -> None:
    model = ls.models.create("mlp", width=8, depth=1)
    with pytest.raises(LandscapeError, match=r"train\(checkpoint_steps=...\).*between 0 and the run's 4 steps"):
        ls.train(model, data, epochs=1, batch_size=64, checkpoint_steps=[10], progress=False)
    with pytest.raises(LandscapeError, match=r"train\(optimizer=...\)"):
        ls.train(model, data, epochs=1, optimizer="lion", progress=False)
    with pytest.raises(LandscapeError, match=r"train\(mask=...\).*unknown keys"):
        ls.train(model, data, epochs=1, mask={"nope": torch.ones(1, dtype=torch.bool)}, progress=False)


def test_resuming_at_a_step_replays_schedule_and_data_order_exactly(data) -> None:
    model = ls.models.create("mlp", width=16, depth=1, seed=0)
    # Without momentum the optimiser has no state, so a resumed run must match to the bit.
    options = dict(batch_size=48, lr=0.1, momentum=0.0, schedule="cosine", data_seed=3, progress=False)
    full = ls.train(model, data, steps=13, checkpoint_steps=[7], **options)  # 256 examples: 6 batches an epoch
    resumed = ls.train(model, data, steps=6, start=full.checkpoints[7], resume_step=7, **options)
    assert torch.equal(flatten(resumed.state), flatten(full.state))
    np.testing.assert_allclose(resumed.history.lr.values, full.history.lr.values[7:])
