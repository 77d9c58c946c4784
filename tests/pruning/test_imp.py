"""Iterative magnitude pruning: sparsity per round, controls, a plain-loop round, first/output
layer options, resume, refusal and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import landscape as ls
import landscape.pruning._imp_rounds as imp_module
from landscape.core.errors import LandscapeError
from landscape.pruning import imp, layer_density
from landscape.training import TrainConfig

TRAIN = {"epochs": 2, "batch_size": 32, "lr": 0.05}


@pytest.fixture(scope="module")
def setup():
    data = ls.datasets.mnist1d(n_train=96, n_test=48)
    model = ls.models.create("cnn1d", width=4, seed=0)
    return model, data


def test_rounds_sparsity_and_controls(setup, tmp_path, device) -> None:
    model, data = setup
    result = imp(model, data, rounds=2, rewind_step=2, train=TRAIN, out=tmp_path, progress=False, device=device)
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
    with pytest.raises(LandscapeError, match=r"imp\(train=...\).*'start'"):
        imp(model, data, rounds=1, train={**TRAIN, "start": ls.state_of(model)})
    with pytest.raises(LandscapeError, match=r"imp\(train.lr=...\)"):
        imp(model, data, rounds=1, train={**TRAIN, "lr": -1.0})
    with pytest.raises(LandscapeError, match="controls"):
        imp(model, data, rounds=1, train=TRAIN, controls=("shuffle",))
    other = ls.state_of(ls.models.create("cnn1d", width=8, seed=0))
    with pytest.raises(ls.core.errors.StateMismatchError):
        imp(model, data, rounds=1, train=TRAIN, start=other)


def test_first_and_output_layers_follow_open_lth_per_family() -> None:
    from landscape.pruning import OPEN_LTH_PRUNES_OUTPUT, full_mask, prunable_parameters

    cnn = ls.models.create("cnn1d", width=4, seed=0)
    every = ["features.conv1.weight", "features.conv2.weight", "features.conv3.weight", "classifier.weight"]
    assert prunable_parameters(cnn) == every[:-1]  # VGG-like: open_lth ignores fc.weight
    assert prunable_parameters(cnn, prune_output=True) == every
    assert prunable_parameters(cnn, prune_first=False) == every[1:-1]
    resnet = ls.models.create("resnet", base_width=4, input_shape=[1, 8, 8], num_classes=10, seed=0)
    names = prunable_parameters(resnet)
    assert names[-1] == "classifier.weight" and OPEN_LTH_PRUNES_OUTPUT["resnet"]  # open_lth's ResNets prune it
    assert prunable_parameters(resnet, prune_output=False) == names[:-1]
    assert "classifier.weight" not in prunable_parameters(ls.models.create("mlp", width=4, depth=1, seed=0))
    # a model outside the zoo: its last linear layer is the output layer, kept by default
    plain = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    assert prunable_parameters(plain) == ["0.weight"]
    assert list(full_mask(plain, prune_output=True, prune_first=False)) == ["2.weight"]
    with pytest.raises(LandscapeError, match="parameters"):
        full_mask(torch.nn.Linear(3, 2), prune_output=False)


def test_one_round_equals_a_plain_loop(setup) -> None:
    """Round 1 of imp with k = 0 and the output layer pruned, against pruning by hand: the
    20% smallest magnitudes over all prunable weights of the dense run, rewound to the start,
    retrained with the mask held at zero."""
    model, data = setup
    config = TrainConfig(epochs=2, batch_size=32, lr=0.05, data_seed=0)
    result = imp(model, data, rounds=1, train=config, prune_output=True, controls=(), progress=False, device="cpu")
    start = ls.state_of(model)
    dense = ls.train(model, data, config=config, start=start, progress=False, device="cpu")
    names = ls.pruning.prunable_parameters(model, prune_output=True)
    magnitudes = torch.cat([dense.state[k].abs().flatten() for k in names])
    count = round(0.2 * magnitudes.numel())
    threshold = torch.sort(magnitudes).values[count - 1]
    mask = {k: dense.state[k].abs() > threshold for k in names}  # continuous weights: no ties
    assert sum(int((~m).sum()) for m in mask.values()) == count
    masked_start = {k: (v * mask[k] if k in mask else v) for k, v in start.items()}
    retrained = ls.train(model, data, config=config, start=masked_start, mask=mask, progress=False, device="cpu")
    assert float(result.test_accuracy.sel(round=0, branch="imp")) == float(dense.history.test_accuracy[-1])
    assert float(result.test_accuracy.sel(round=1, branch="imp")) == float(retrained.history.test_accuracy[-1])
    assert float(result.test_loss.sel(round=1, branch="imp")) == pytest.approx(
        float(retrained.history.test_loss[-1]), rel=1e-12
    )
