from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

import landscape as ls
from landscape.core.data import as_splits
from landscape.core.errors import LandscapeError
from landscape.core.io import ResumableRun


def test_mnist1d_is_deterministic_and_leaves_numpy_global_state_alone() -> None:
    np.random.seed(123)
    expected_next = np.random.rand()
    np.random.seed(123)
    a = ls.datasets.mnist1d(seed=0, n_train=100, n_test=50)
    assert np.random.rand() == expected_next
    b = ls.datasets.mnist1d(seed=0, n_train=100, n_test=50)
    assert torch.equal(a.train[0], b.train[0]) and a.train[0].shape == (100, 40) and a.test[1].shape == (50,)
    assert a.train[0].dtype == torch.float32 and a.train[1].dtype == torch.int64
    assert not torch.equal(a.train[0], ls.datasets.mnist1d(seed=1, n_train=100, n_test=50).train[0])


def test_digits_split_is_stratified() -> None:
    data = ls.datasets.digits(seed=0)
    assert data.train[0].shape[1:] == (1, 8, 8) and len(data.train[1]) + len(data.test[1]) == 1797
    counts = torch.bincount(data.test[1], minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37


def test_docstrings_targets_are_inputs_shifted_by_one() -> None:
    data = ls.datasets.docstrings(context=16, n_train=20, n_test=5)
    x, y = data.train
    assert x.shape == (20, 16) and torch.equal(x[:, 1:], y[:, :-1])
    assert int(x.max()) < data.num_classes


def test_as_splits_accepts_pairs_dicts_arrays_and_loaders() -> None:
    x, y = torch.randn(10, 3), torch.arange(10) % 2
    splits, single = as_splits((x.numpy(), y.numpy()))
    assert single and splits["data"][0].dtype == torch.float32
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    splits, single = as_splits({"train": loader})
    assert not single and torch.equal(splits["train"][0], x)
    with pytest.raises(LandscapeError, match="integer class labels"):
        as_splits((x, torch.rand(10)))
    with pytest.raises(LandscapeError, match=r"evaluate\(data=...\)"):
        as_splits(None)


def test_resumable_run_refuses_other_settings_and_keeps_steps(tmp_path) -> None:
    run = ResumableRun(tmp_path, {"rounds": 3, "rate": 0.2})
    run.save("round-0", xr.Dataset({"acc": 0.5}))
    again = ResumableRun(tmp_path, {"rounds": 3, "rate": 0.2})
    assert again.done("round-0") and not again.done("round-1")
    assert float(again.load("round-0").acc) == 0.5
    with pytest.raises(LandscapeError, match=r"rate: 0.2 there, 0.3 now"):
        ResumableRun(tmp_path, {"rounds": 3, "rate": 0.3})
    assert not list(tmp_path.glob("*.tmp"))
