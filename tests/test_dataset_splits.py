"""Non-IID partitions: exact partitions of the split, the labels asked for, seeded Dirichlet
draws checked against a plain loop, the other splits left whole."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import landscape as ls
from landscape.core.errors import LandscapeError


def _data(n: int = 120, classes: int = 5, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 3)  # x[i, 0] = i identifies examples
    y = torch.randint(0, classes, (n,), generator=gen)
    return ls.Splits({"train": (x, y), "test": (x[:10], y[:10])}, name="toy", num_classes=classes)


def test_split_by_labels_partitions_by_class() -> None:
    data = _data()
    parts = ls.datasets.split_by_labels(data, [[0, 2], [1, 3, 4]])
    assert [p.meta["labels"] for p in parts] == [[0, 2], [1, 3, 4]]
    ids = [p.train[0][:, 0].long().tolist() for p in parts]
    assert sorted(ids[0] + ids[1]) == list(range(120))
    assert set(parts[0].train[1].tolist()) == {0, 2} and set(parts[1].train[1].tolist()) == {1, 3, 4}
    assert all(torch.equal(p.test[0], data.test[0]) for p in parts)
    with pytest.raises(LandscapeError, match="disjoint"):
        ls.datasets.split_by_labels(data, [[0, 1], [1, 2]])


def test_split_dirichlet_matches_a_plain_loop() -> None:
    data = _data()
    parts = ls.datasets.split_dirichlet(data, 3, concentration=0.4, seed=7)
    rng = np.random.default_rng(7)
    y = data.train[1].numpy()
    expected: list[list[int]] = [[], [], []]
    for c in sorted(set(y.tolist())):
        index = rng.permutation(np.flatnonzero(y == c))
        shares = rng.dirichlet([0.4, 0.4, 0.4])
        start = 0
        for i in range(3):
            stop = index.size if i == 2 else int(np.floor(np.cumsum(shares)[i] * index.size))
            expected[i] += index[start:stop].tolist()
            start = stop
    for part, want in zip(parts, expected):
        assert part.train[0][:, 0].long().tolist() == sorted(want)
    again = ls.datasets.split_dirichlet(data, 3, concentration=0.4, seed=7)
    assert all(torch.equal(a.train[0], b.train[0]) for a, b in zip(parts, again))


@settings(max_examples=25, deadline=None)
@given(parts=st.integers(2, 5), concentration=st.floats(0.05, 100.0), seed=st.integers(0, 1000))
def test_split_dirichlet_is_an_exact_partition(parts: int, concentration: float, seed: int) -> None:
    data = _data(n=300, classes=4, seed=seed)
    try:
        pieces = ls.datasets.split_dirichlet(data, parts, concentration=concentration, seed=seed)
    except LandscapeError as err:  # a part left empty by a very uneven draw is refused, not returned
        assert "empty" in str(err)
        return
    ids = sorted(i for p in pieces for i in p.train[0][:, 0].long().tolist())
    assert ids == list(range(300))


def test_split_dirichlet_refuses_bad_arguments() -> None:
    with pytest.raises(LandscapeError, match="parts"):
        ls.datasets.split_dirichlet(_data(), 1)
    with pytest.raises(LandscapeError, match="concentration"):
        ls.datasets.split_dirichlet(_data(), 2, concentration=0.0)
