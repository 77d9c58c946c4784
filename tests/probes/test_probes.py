"""Probes against plain computations: brute-force k-NN and scikit-learn's KNeighborsClassifier,
scikit-learn's LogisticRegression, numpy standardisation, hooks vs. slicing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import landscape as ls
from landscape.core.errors import LandscapeError
from landscape.probes import features_at, knn_probe, layerwise_probe, linear_probe, probe_features, standardize
from landscape.probes._knn import knn_predict


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


@pytest.mark.parametrize("offset", [0.0, 1000.0])
def test_knn_equals_scikit_learn_on_representation_like_features(device, offset) -> None:
    """Non-negative, offset features (post-ReLU representations far from the origin, where
    float32 products lose the most) in 64 dimensions: the same predictions as scikit-learn's
    brute-force KNeighborsClassifier in float64 on every test example, on every device."""
    neighbors = pytest.importorskip("sklearn.neighbors")
    gen = torch.Generator().manual_seed(3)
    ytr = torch.randint(0, 10, (1500,), generator=gen)
    yte = torch.randint(0, 10, (400,), generator=gen)
    centres = torch.randn(10, 64, generator=gen)
    xtr = (centres[ytr] + 1.5 * torch.randn(1500, 64, generator=gen)).relu() + offset
    xte = (centres[yte] + 1.5 * torch.randn(400, 64, generator=gen)).relu() + offset
    sk = neighbors.KNeighborsClassifier(n_neighbors=20, algorithm="brute")
    expected = sk.fit(xtr.double().numpy(), ytr.numpy()).predict(xte.double().numpy())
    got = knn_predict(xtr.to(device), ytr.to(device), xte.to(device), k=20, batch_size=128).cpu().numpy()
    np.testing.assert_array_equal(got, expected)
    acc = knn_probe(xtr, ytr, xte, yte, k=20, device=device)
    assert acc == pytest.approx(float(np.mean(expected == yte.numpy())))


def test_knn_falls_back_to_exact_distances_at_near_ties(monkeypatch) -> None:
    """Training points at distances that float32 cannot separate from the k-th neighbour's:
    the bound refuses the float32 candidates and the exact path decides, by training order."""
    import landscape.probes._knn as knn_module

    calls = {"exact": 0}
    real = knn_module._exact_neighbours

    def counting(*args, **kwargs):
        calls["exact"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(knn_module, "_exact_neighbours", counting)
    base = torch.zeros(1, 8, dtype=torch.float64) + 1e4
    # Twelve training points at squared distances 1 + i * 1e-9 from the query: indistinguishable
    # in float32 after the 1e4 offset, ordered exactly in float64.
    direction = torch.zeros(8, dtype=torch.float64)
    direction[0] = 1.0
    xtr = base + direction * torch.sqrt(1 + torch.arange(12, dtype=torch.float64)[:, None] * 1e-9)
    xtr = torch.cat([xtr, base + 50 * direction])
    ytr = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 3])
    got = knn_predict(xtr, ytr, base, k=2, extra=2)
    assert calls["exact"] == 1
    assert got.tolist() == brute_force_knn(xtr.numpy(), ytr.numpy(), base.numpy(), 2).tolist() == [0]


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
    assert linear_probe(x, y, x, y) == 1.0
    assert linear_probe(x, y, x, y, solver="adamw", epochs=30, batch_size=16) == 1.0
    noise = torch.randn(80, 3, generator=gen)
    a = linear_probe(noise, y, noise, y, solver="adamw", epochs=3, seed=5)
    assert a == linear_probe(noise, y, noise, y, solver="adamw", epochs=3, seed=5)


@pytest.mark.parametrize("C", [1.0, 0.05])
def test_lbfgs_probe_is_scikit_learns_logistic_regression(device, C) -> None:
    """The same minimiser as LogisticRegression(C=C) (multinomial, lbfgs, bias unpenalised):
    coefficients to 1e-4 and identical test predictions; and no dependence on a seed."""
    linear_model = pytest.importorskip("sklearn.linear_model")
    from landscape.probes._linear import _fit_lbfgs

    gen = torch.Generator().manual_seed(1)
    y = torch.randint(0, 4, (300,), generator=gen)
    x = torch.randn(300, 6, generator=gen) + torch.randn(4, 6, generator=gen)[y]
    xte = torch.randn(200, 6, generator=gen) * 2
    sk = linear_model.LogisticRegression(C=C, tol=1e-12, max_iter=10_000).fit(x.double().numpy(), y.numpy())
    clf = _fit_lbfgs(x.to(device), y.to(device), 4, C=C, tol=1e-7, max_iter=2000)
    # One strictly convex objective, so one minimiser; both solvers stop at a tolerance
    # (scikit-learn's also on a relative change of the objective of 64 eps), which leaves
    # coefficients about 1e-5 apart.
    np.testing.assert_allclose(clf.weight.detach().cpu().numpy(), sk.coef_, atol=1e-4)
    np.testing.assert_allclose(clf.bias.detach().cpu().numpy(), sk.intercept_, atol=1e-4)
    yte = torch.randint(0, 4, (200,), generator=gen)
    expected = float(np.mean(sk.predict(xte.double().numpy()) == yte.numpy()))
    assert linear_probe(x, y, xte, yte, C=C, tol=1e-7, device=device) == expected
    assert linear_probe(x, y, xte, yte, C=C, seed=0) == linear_probe(x, y, xte, yte, C=C, seed=7)


def test_lbfgs_probe_warns_when_it_stops_early() -> None:
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(50, 4, generator=gen) * 1e3, torch.randint(0, 3, (50,), generator=gen)
    with pytest.warns(RuntimeWarning, match="L-BFGS stopped after 2 iterations"):
        linear_probe(x, y, x, y, max_iter=2, tol=1e-12)


def test_probe_features_dims_and_read_outs(device) -> None:
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(30, 2, generator=gen) * torch.tensor([100.0, 0.01])
    y = (x[:, 1] > 0).long()
    default = probe_features(x, y, x, y, k=1, device=device)
    assert default.accuracy.dims == ("probe", "scaling")
    assert list(default.probe.values) == ["linear", "knn"] and list(default.scaling.values) == ["standardized"]
    assert "landscape_version" in default.attrs
    both = probe_features(x, y, x, y, k=3, scalings=["standardized", "raw"], device=device)
    a, b = standardize(x, x)
    assert float(both.accuracy.sel(probe="knn", scaling="standardized")) == knn_probe(a, y, b, y, k=3)
    assert float(both.accuracy.sel(probe="knn", scaling="raw")) == knn_probe(x, y, x, y, k=3)
    assert float(both.accuracy.sel(probe="linear", scaling="standardized")) == linear_probe(a, y, b, y)


def test_features_at_equals_direct_computation(device) -> None:
    model = ls.models.create("cnn1d", width=4, seed=0)
    x = torch.randn(7, 40)
    feats = features_at(model, None, x, layers=["features.act1", "features"], batch_size=3, device=device)
    with torch.no_grad():
        direct = model.features(x)
        act1 = model.features[:3](x)  # unflatten, conv1, act1
    # On the CPU the convolution kernel depends on the batch size (3 here, 7 directly): float32
    # rounding, 1e-7. TF32 convolutions on CUDA round to about 1e-3 relative.
    tol = {"rtol": 1e-5, "atol": 1e-6} if device == "cpu" else {"rtol": 2e-3, "atol": 2e-3}
    assert feats["features"].device.type == "cpu"
    torch.testing.assert_close(feats["features"], direct, **tol)
    torch.testing.assert_close(feats["features.act1"], act1.flatten(1), **tol)


def test_layerwise_probe_over_nets_and_layers(device) -> None:
    data = ls.datasets.mnist1d(n_train=96, n_test=48)
    model = ls.models.create("cnn1d", width=4, seed=0)
    other = ls.state_of(ls.models.create("cnn1d", width=4, seed=1))
    result = layerwise_probe(
        model,
        {"a": ls.state_of(model), "b": other},
        data,
        layers=["features.act1", "features"],
        probes=["knn"],
        scalings=["standardized", "raw"],
        probe_options={"k": 5},
        device=device,
    )
    assert result.accuracy.dims == ("net", "layer", "probe", "scaling")
    assert result.accuracy.shape == (2, 2, 1, 2)
    # each cell is the probe of hand-collected features
    feats = features_at(model, other, data.train[0], layers=["features.act1"], device="cpu")["features.act1"]
    test = features_at(model, other, data.test[0], layers=["features.act1"], device="cpu")["features.act1"]
    expected = knn_probe(feats, data.train[1], test, data.test[1], k=5)
    assert float(result.accuracy.sel(net="b", layer="features.act1", probe="knn", scaling="raw")) == expected


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
    with pytest.raises(LandscapeError, match=r"linear_probe\(solver=...\)"):
        linear_probe(x, y, x, y, solver="sgd")
    with pytest.raises(LandscapeError, match=r"linear_probe\(C=...\)"):
        linear_probe(x, y, x, y, C=0.0)
    with pytest.raises(LandscapeError, match=r"layerwise_probe\(probe_options=...\)"):
        layerwise_probe(
            ls.models.create("mlp", width=4, depth=1, seed=0),
            None,
            {"train": (x, y), "test": (x, y)},
            probe_options={"neighbours": 3},
        )


def test_features_at_refuses_a_module_that_runs_twice() -> None:
    act = torch.nn.ReLU()
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), act, torch.nn.Linear(3, 3), act)
    with pytest.raises(LandscapeError, match="ran 2 times"):
        features_at(model, None, torch.randn(4, 3), layers=["1"], device="cpu")
