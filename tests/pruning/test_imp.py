"""Iterative magnitude pruning: sparsity per round, controls, resume, refusal and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import landscape as ls
import landscape.pruning.iterative as imp_module
from landscape.core.errors import LandscapeError
from landscape.pruning import imp, layer_density

TRAIN = {"epochs": 2, "batch_size": 32, "lr": 0.05}


@pytest.fixture(scope="module")
def setup():
    data = ls.datasets.mnist1d(n_train=96, n_test=48)
    model = ls.models.create("cnn1d", width=4, seed=0)
    return model, data


def test_rounds_sparsity_and_controls(setup, tmp_path) -> None:
    model, data = setup
    result = imp(model, data, rounds=2, rewind_step=2, train=TRAIN, out=tmp_path, progress=False)
    assert result.test_accuracy.dims == ("round", "branch")
    assert list(result.branch.values) == ["imp", "reinit", "random_mask"]
    n = sum(p.numel() for k, p in model.named_parameters() if k in ls.pruning.prunable_parameters(model))
    for r in range(3):
        assert abs(float(result.density[r]) - 0.8**r) <= r / n
        # every branch prunes the same fraction
        np.testing.assert_allclose(result.mask_sparsity[r].values, float(result.sparsity[r]))
    assert np.isfinite(result.test_accuracy.values).all()
    # the masks on disk: random control keeps the magnitude mask's per-layer counts
    mask = ls.load_state(tmp_path / "mask-002.safetensors")
    mask = {k: v.bool() for k, v in mask.items()}
    control = ls.pruning.random_mask(mask, seed=2)
    assert layer_density(control) == layer_density(mask)
    trained = ls.load_state(tmp_path / "trained-002.safetensors")
    for k, m in mask.items():
        assert torch.count_nonzero(trained[k][~m]) == 0


def test_resume_after_interruption_reproduces_the_uninterrupted_run(setup, tmp_path, monkeypatch) -> None:
    model, data = setup
    options = {"rounds": 2, "rewind_step": 0, "train": TRAIN, "progress": False}
    full = imp(model, data, out=tmp_path / "full", **options)

    # Kill the run inside round 2 (its second training run): rounds 0 and 1 are on disk.
    real_train = imp_module.train_model
    calls = {"n": 0}

    def dying_train(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2 + 3 + 2:  # round 0: 2 runs, round 1: 3 runs, round 2: dies in its 2nd
            raise KeyboardInterrupt
        return real_train(*args, **kwargs)

    monkeypatch.setattr(imp_module, "train_model", dying_train)
    with pytest.raises(KeyboardInterrupt):
        imp(model, data, out=tmp_path / "resumed", **options)
    assert sorted(p.name for p in (tmp_path / "resumed").glob("round-*.nc")) == ["round-000.nc", "round-001.nc"]
    monkeypatch.setattr(imp_module, "train_model", real_train)

    resumed = imp(model, data, out=tmp_path / "resumed", **options)
    for name in ("test_accuracy", "test_loss", "train_loss", "mask_sparsity"):
        np.testing.assert_array_equal(resumed[name].values, full[name].values)

    # A finished run extends: rounds is not a setting.
    longer = imp(model, data, out=tmp_path / "resumed", **{**options, "rounds": 3})
    np.testing.assert_array_equal(longer.test_accuracy.values[:3], full.test_accuracy.values)
    assert longer.sizes["round"] == 4


def test_refuses_a_folder_with_other_settings(setup, tmp_path) -> None:
    model, data = setup
    imp(model, data, rounds=1, train=TRAIN, controls=(), out=tmp_path, progress=False)
    with pytest.raises(LandscapeError, match=r"prune_rate: 0\.2 there, 0\.5 now"):
        imp(model, data, rounds=1, train=TRAIN, controls=(), prune_rate=0.5, out=tmp_path, progress=False)
    with pytest.raises(LandscapeError, match=r"rewind_step: 0 there, 1 now"):
        imp(model, data, rounds=1, train=TRAIN, controls=(), rewind_step=1, out=tmp_path, progress=False)


def test_bad_input(setup) -> None:
    model, data = setup
    with pytest.raises(LandscapeError, match=r"imp\(rounds=...\)"):
        imp(model, data, rounds=0, train=TRAIN)
    for rate in (0.0, 1.0, 2.0):
        with pytest.raises(LandscapeError, match=r"imp\(prune_rate=...\)"):
            imp(model, data, rounds=1, prune_rate=rate, train=TRAIN)
    # 96 examples / 32 per batch * 2 epochs = 6 steps: step 6 leaves nothing to train
    with pytest.raises(LandscapeError, match=r"rewind_step=.*6 steps"):
        imp(model, data, rounds=1, rewind_step=6, train=TRAIN)
    with pytest.raises(LandscapeError, match="start"):
        imp(model, data, rounds=1, train={**TRAIN, "start": ls.state_of(model)})
    with pytest.raises(LandscapeError, match="controls"):
        imp(model, data, rounds=1, train=TRAIN, controls=("shuffle",))
    other = ls.state_of(ls.models.create("cnn1d", width=8, seed=0))
    with pytest.raises(ls.core.errors.StateMismatchError):
        imp(model, data, rounds=1, train=TRAIN, start=other)
