"""Probes against plain computations: brute-force k-NN, numpy standardisation, hooks vs. slicing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import landscape as ls
from landscape.core.errors import LandscapeError
from landscape.probes import features_at, knn_probe, layerwise_probe, linear_probe, probe_features, standardize
from landscape.probes.probes import knn_predict


def brute_force_knn(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, k: int) -> np.ndarray:
    predictions = []
    for q in xte:
        dists = [float(sum((float(a) - float(b)) ** 2 for a, b in zip(q, row))) for row in xtr]
        nearest = sorted(range(len(xtr)), key=lambda i: (dists[i], i))[:k]
        votes: dict[int, int] = {}
        for i in nearest:
            votes[int(ytr[i])] = votes.get(int(ytr[i]), 0) + 1
        best = max(votes.values())
        predictions.append(min(c for c, v in votes.items() if v == best))
    return np.array(predictions)


@settings(max_examples=30, deadline=None)
@given(
    n_train=st.integers(1, 25),
    n_test=st.integers(1, 10),
    dim=st.integers(1, 4),
    classes=st.integers(1, 4),
    k=st.integers(1, 25),
    seed=st.integers(0, 10_000),
)
def test_knn_equals_brute_force_including_ties(n_train, n_test, dim, classes, k, seed) -> None:
    rng = np.random.default_rng(seed)
    # Small integers make equal distances and tied votes common.
    xtr = rng.integers(-2, 3, size=(n_train, dim)).astype(np.float32)
    xte = rng.integers(-2, 3, size=(n_test, dim)).astype(np.float32)
    ytr = rng.integers(0, classes, size=n_train)
    yte = rng.integers(0, classes, size=n_test)
    k = min(k, n_train)
    expected = brute_force_knn(xtr, ytr, xte, k)
    got = knn_predict(torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xte), k=k, batch_size=3)
    np.testing.assert_array_equal(got.numpy(), expected)
    acc = knn_probe(torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xte), torch.from_numpy(yte), k=k)
    assert acc == pytest.approx(float(np.mean(expected == yte)))


def test_knn_on_continuous_features_matches_brute_force() -> None:
    gen = torch.Generator().manual_seed(0)
    xtr, xte = torch.randn(60, 5, generator=gen), torch.randn(20, 5, generator=gen)
    ytr = torch.randint(0, 3, (60,), generator=gen)
    expected = brute_force_knn(xtr.numpy(), ytr.numpy(), xte.numpy(), 7)
    np.testing.assert_array_equal(knn_predict(xtr, ytr, xte, k=7).numpy(), expected)


def test_standardize_matches_numpy() -> None:
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(50, 4, generator=gen) * torch.tensor([1.0, 5.0, 0.1, 0.0]) + 3
    b = torch.randn(20, 4, generator=gen)
    sa, sb = standardize(a, b)
    mean = a.numpy().astype(np.float64).mean(0)
    std = a.numpy().astype(np.float64).std(0, ddof=1)
    std[std < 10 * np.finfo(np.float32).eps] = 1.0  # constant features are only centred
    np.testing.assert_allclose(sa.numpy(), (a.numpy() - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sb.numpy(), (b.numpy() - mean) / std, rtol=1e-5, atol=1e-5)


def test_linear_probe_separates_separable_data_and_is_deterministic() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(40, 3, generator=gen) - 3, torch.randn(40, 3, generator=gen) + 3])
    y = torch.repeat_interleave(torch.tensor([0, 1]), 40)
    assert linear_probe(x, y, x, y, epochs=30, batch_size=16) == 1.0
    noise = torch.randn(80, 3, generator=gen)
    a = linear_probe(noise, y, noise, y, epochs=3, seed=5)
    assert a == linear_probe(noise, y, noise, y, epochs=3, seed=5)


def test_probe_features_dims() -> None:
    x = torch.randn(30, 2)
    y = (x[:, 0] > 0).long()
    result = probe_features(x, y, x, y, k=1, epochs=2)
    assert result.accuracy.dims == ("probe", "scaling")
    assert list(result.probe.values) == ["linear", "knn"]
    assert float(result.accuracy.sel(probe="knn", scaling="raw")) == 1.0
    assert "landscape_version" in result.attrs


def test_features_at_equals_direct_computation() -> None:
    model = ls.models.create("cnn1d", width=4, seed=0)
    x = torch.randn(7, 40)
    feats = features_at(model, None, x, layers=["features.act1", "features"], batch_size=3, device="cpu")
    with torch.no_grad():
        direct = model.features(x)
        act1 = model.features[:3](x)  # unflatten, conv1, act1
    torch.testing.assert_close(feats["features"], direct, rtol=0, atol=0)
    torch.testing.assert_close(feats["features.act1"], act1.flatten(1), rtol=0, atol=0)


def test_layerwise_probe_over_nets_and_layers() -> None:
    data = ls.datasets.mnist1d(n_train=96, n_test=48)
    model = ls.models.create("cnn1d", width=4, seed=0)
    other = ls.state_of(ls.models.create("cnn1d", width=4, seed=1))
    result = layerwise_probe(
        model,
        {"a": ls.state_of(model), "b": other},
        data,
        layers=["features.act1", "features"],
        probes=["knn"],
        device="cpu",
    )
    assert result.accuracy.dims == ("net", "layer", "probe", "scaling")
    assert result.accuracy.shape == (2, 2, 1, 2)
    assert np.isfinite(result.accuracy.values).all()


def test_bad_input() -> None:
    x, y = torch.randn(10, 3), torch.zeros(10, dtype=torch.long)
    with pytest.raises(LandscapeError, match=r"knn_probe\(k=...\)"):
        knn_probe(x, y, x, y, k=11)
    with pytest.raises(LandscapeError, match="features per example"):
        knn_probe(x, y, torch.randn(4, 2), y[:4])
    with pytest.raises(LandscapeError, match="y_train"):
        linear_probe(x, y[:5], x, y)
    with pytest.raises(LandscapeError, match="layers"):
        features_at(ls.models.create("mlp", width=4, depth=1, seed=0), None, torch.randn(2, 40), layers=["nope"])
    with pytest.raises(LandscapeError, match="probes"):
        probe_features(x, y, x, y, probes=["svm"])


def test_features_at_refuses_a_module_that_runs_twice() -> None:
    act = torch.nn.ReLU()
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), act, torch.nn.Linear(3, 3), act)
    with pytest.raises(LandscapeError, match="ran 2 times"):
        features_at(model, None, torch.randn(4, 3), layers=["1"], device="cpu")
