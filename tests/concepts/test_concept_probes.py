"""Probes against hand computations: directions, orientation, split, read-out, files."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from landscape.concepts import ConceptProbe, fit_probe, load_probe
from landscape.core.errors import LandscapeError


def _planted(n=60, layers=3, width=10, shift=2.0, seed=0, sign=1.0):
    """Gaussian noise with the positive class shifted along a random unit direction."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=width)
    direction /= np.linalg.norm(direction)
    x = rng.normal(size=(n, layers, width))
    y = np.arange(n) % 2
    x[y == 1] += sign * shift * direction
    return x, y, direction


def _as_reps(x, y, groups=None):
    coords = {"layer": np.arange(x.shape[1]), "label": ("sample", y), "mean_norm": ("layer", np.ones(x.shape[1]))}
    if groups is not None:
        coords["group"] = ("sample", np.asarray(groups))
    return xr.DataArray(x, dims=("sample", "layer", "hidden"), coords=coords, attrs={"site": "residual"})


def test_mean_difference_equals_hand_computation():
    x, y, _ = _planted()
    probe = fit_probe(x, y, kind="mean_diff", val_fraction=0)
    for j in range(x.shape[1]):
        diff = x[y == 1, j].mean(0) - x[y == 0, j].mean(0)
        np.testing.assert_allclose(probe.directions_[j], diff / np.linalg.norm(diff), rtol=1e-6, atol=1e-7)


def test_mean_difference_uses_only_the_training_split():
    x, y, _ = _planted(n=40)
    groups = np.repeat(np.arange(20), 2)  # pairs share a group
    probe = fit_probe(_as_reps(x, y, groups), kind="mean_diff", val_fraction=0.25, seed=3)
    rng = np.random.default_rng(3)
    val_groups = rng.permutation(np.unique(groups.astype(str)))[:5]
    train = ~np.isin(groups.astype(str), val_groups)
    diff = x[train & (y == 1), 0].mean(0) - x[train & (y == 0), 0].mean(0)
    np.testing.assert_allclose(probe.directions_[0], diff / np.linalg.norm(diff), rtol=1e-6, atol=1e-7)
    assert probe.n_train_ == train.sum() and probe.n_val_ == (~train).sum()


def test_logistic_direction_is_sklearns_coefficient():
    from sklearn.linear_model import LogisticRegression

    x, y, _ = _planted(layers=1)
    probe = fit_probe(x, y, kind="logistic", val_fraction=0, C=0.5)
    flat = x[:, 0]
    scaled = flat / np.linalg.norm(flat, axis=1, keepdims=True) * np.sqrt(flat.shape[1])
    coef = LogisticRegression(C=0.5, max_iter=1000, tol=1e-4).fit(scaled, y).coef_[0]
    np.testing.assert_allclose(probe.directions_[0], coef / np.linalg.norm(coef), atol=1e-5)


def test_pca_recovers_a_planted_direction():
    x, y, direction = _planted(n=200, shift=6.0)
    probe = fit_probe(x, y, kind="pca", val_fraction=0)
    for j in range(x.shape[1]):
        assert probe.directions_[j] @ direction > 0.95


@settings(max_examples=25, deadline=None)
@given(
    kind=st.sampled_from(["mean_diff", "logistic", "pca"]),
    seed=st.integers(0, 10_000),
    sign=st.sampled_from([-1.0, 1.0]),
    flip=st.booleans(),
)
def test_projection_correlates_positively_with_the_label_in_every_layer(kind, seed, sign, flip):
    x, y, _ = _planted(n=80, shift=3.0, seed=seed, sign=sign)
    labels = 1 - y if flip else y
    probe = fit_probe(x, labels, kind=kind, val_fraction=0, seed=seed)
    projection = probe.project(x).values
    for j in range(x.shape[1]):
        assert np.corrcoef(projection[:, j], labels)[0, 1] > 0
    np.testing.assert_allclose(np.linalg.norm(probe.directions_, axis=1), 1.0, rtol=1e-6)


def test_validation_split_keeps_groups_whole_and_accuracy_is_plain():
    x, y, _ = _planted(n=80, shift=1.0)
    groups = np.repeat(np.arange(40), 2)
    probe = fit_probe(_as_reps(x, y, groups), val_fraction=0.25, seed=1)
    rng = np.random.default_rng(1)
    val_groups = rng.permutation(np.unique(groups.astype(str)))[:10]
    val = np.isin(groups.astype(str), val_groups)
    projection = x @ probe.directions_.astype(np.float64).T  # (sample, layer, layer)
    for j in range(x.shape[1]):
        decision = projection[:, j, j] * probe.coef_[j] + probe.intercept_[j]
        expected = ((decision > 0) == (y == 1))[val].mean()
        assert probe.val_accuracy_[j] == pytest.approx(expected)
        assert probe.score(x[val], y[val]).values[j] == pytest.approx(expected)


def test_read_out_is_calibrated_on_separable_data():
    x, y, _ = _planted(shift=20.0)
    probe = fit_probe(x, y, val_fraction=0)
    proba = probe.predict_proba(x).values
    assert np.all(proba[y == 1] > 0.9) and np.all(proba[y == 0] < 0.1)
    assert (probe.predict(x).values == y[:, None]).all()


def test_token_level_reps_train_on_valid_tokens():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 2, 4, 6))
    y = np.arange(30) % 2
    x[y == 1, :, :, 0] += 3
    x[::3, :, 2:] = np.nan  # shorter completions
    reps = xr.DataArray(
        x, dims=("sample", "layer", "token", "hidden"), coords={"layer": [4, 7], "label": ("sample", y)}
    )
    probe = fit_probe(reps, val_fraction=0)
    flat = x[:, 0].reshape(-1, 6)
    labels = np.repeat(y, 4)
    valid = ~np.isnan(flat[:, 0])
    diff = flat[valid & (labels == 1)].mean(0) - flat[valid & (labels == 0)].mean(0)
    np.testing.assert_allclose(probe.directions_[0], diff / np.linalg.norm(diff), rtol=1e-6)
    assert probe.predict_proba(reps).dims == ("sample", "layer", "token")
    assert probe.layers_.tolist() == [4, 7]


def test_save_and_load_round_trip(tmp_path):
    x, y, _ = _planted()
    probe = fit_probe(_as_reps(x, y, np.arange(60) // 2), kind="logistic")
    path = probe.save(tmp_path / "probe.safetensors")
    loaded = load_probe(path)
    for name in ("directions_", "layers_", "coef_", "intercept_", "train_accuracy_", "val_accuracy_", "mean_norm_"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(probe, name))
    assert (loaded.kind, loaded.site_, loaded.hidden_size_) == ("logistic", "residual", 10)
    np.testing.assert_array_equal(loaded.predict_proba(x).values, probe.predict_proba(x).values)


def test_top_layers_and_negation():
    x, y, _ = _planted(layers=4)
    x[:, 2] = np.random.default_rng(5).normal(size=x[:, 2].shape)  # layer 2 knows nothing
    probe = fit_probe(x, y, val_fraction=0)
    assert 2 not in probe.top_layers(3)
    negated = -probe
    np.testing.assert_array_equal(negated.directions_, -probe.directions_)
    np.testing.assert_allclose(negated.predict_proba(x).values, 1 - probe.predict_proba(x).values, atol=1e-12)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda x, y: fit_probe(x, np.ones_like(y)), "two classes"),
        (lambda x, y: fit_probe(x, y[:-1]), "one label per sample"),
        (lambda x, y: fit_probe(x, y, kind="svm"), "one of"),
        (lambda x, y: fit_probe(x, y, val_fraction=1.0), r"\[0, 1\)"),
        (lambda x, y: fit_probe(x[:0], y[:0]), "at least one sample"),
        (lambda x, y: fit_probe(x), "labels"),
        (lambda x, y: ConceptProbe().predict(x), "fitted"),
        (lambda x, y: fit_probe(x, y).score(x[:, :, :5], y), "hidden size"),
        (lambda x, y: fit_probe(x, y).top_layers(9), "integer in"),
        (lambda x, y: fit_probe(np.zeros_like(x), y), "differ"),
    ],
)
def test_bad_input(call, match):
    x, y, _ = _planted()
    with pytest.raises(LandscapeError, match=match):
        call(x, y)


def test_loading_another_file_is_refused(tmp_path):
    import torch

    from landscape.core.checkpoints import save_state

    path = save_state({"w": torch.ones(2)}, tmp_path / "w.safetensors")
    with pytest.raises(LandscapeError, match=r"ConceptProbe\.save"):
        load_probe(path)
