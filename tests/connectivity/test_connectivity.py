from __future__ import annotations

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
import xarray as xr
from hypothesis import given, settings

import landscape as ls
from landscape import connectivity as C
from landscape.core.errors import LandscapeError, StateMismatchError
from landscape.core.state import dot, norm
from tests.conftest import reference_metrics, zoo_data


def _mlp(seed: int, **kwargs):
    return ls.models.create("mlp", width=kwargs.pop("width", 12), depth=1, seed=seed, **kwargs)


def test_interpolation_equals_a_hand_written_loop() -> None:
    model, other = _mlp(0), _mlp(1)
    a, b = ls.state_of(model), ls.state_of(other)
    x, y = zoo_data("mlp", n=80)
    curve = C.interpolate(model, a, b, {"test": (x, y)}, alphas=[-0.5, 0.0, 0.25, 0.5, 1.0, 1.5], progress=False)
    for alpha in curve.alpha.values:
        manual = {k: (1 - alpha) * a[k] + alpha * b[k] for k in a}
        loss, acc = reference_metrics(model, manual, x, y)
        assert float(curve.loss.sel(alpha=alpha, split="test")) == pytest.approx(loss, rel=1e-5)
        assert float(curve.accuracy.sel(alpha=alpha, split="test")) == pytest.approx(acc)
    assert np.allclose(curve.error.values, 1 - curve.accuracy.values)
    assert int(curve.nonfinite.sel(split="test")) == 0


def _curve(values, alphas=None):
    alphas = np.linspace(0, 1, len(values)) if alphas is None else alphas
    return xr.Dataset({"loss": ("alpha", np.asarray(values, dtype=float))}, coords={"alpha": alphas})


def test_barrier_definitions_on_hand_made_curves() -> None:
    curve = _curve([1.0, 2.0, 4.0, 3.5, 3.0])  # alphas 0, .25, .5, .75, 1
    assert float(C.barrier(curve, kind="max_minus_mean")) == pytest.approx(4.0 - 2.0)
    assert float(C.barrier(curve, kind="midpoint")) == pytest.approx(4.0 - 2.0)
    # chord: 1 + 2 alpha -> at .25: 1.5, at .5: 2, at .75: 2.5; max excess = 2 at alpha .5
    assert float(C.barrier(curve, kind="linear")) == pytest.approx(2.0)
    skewed = _curve([0.0, 3.0, 1.0, 2.0, 4.0])
    assert float(C.barrier(skewed, kind="max_minus_mean")) == pytest.approx(4.0 - 2.0)
    assert float(C.barrier(skewed, kind="midpoint")) == pytest.approx(1.0 - 2.0)
    assert float(C.barrier(skewed, kind="linear")) == pytest.approx(3.0 - 1.0)


def test_extrapolated_points_do_not_count_and_nan_is_infinite() -> None:
    curve = _curve([9.0, 1.0, 2.0, 1.0, 9.0], alphas=[-0.5, 0.0, 0.5, 1.0, 1.5])
    assert float(C.barrier(curve, kind="max_minus_mean")) == pytest.approx(1.0)
    broken = _curve([1.0, np.nan, 1.0])
    assert np.isinf(float(C.barrier(broken)))


def test_barrier_errors() -> None:
    with pytest.raises(LandscapeError, match=r"barrier\(kind=...\)"):
        C.barrier(_curve([0, 1, 0]), kind="height")
    with pytest.raises(LandscapeError, match=r"alpha = 0.5.*midpoint"):
        C.barrier(_curve([0, 1, 0, 0]), kind="midpoint")
    with pytest.raises(LandscapeError, match=r"barrier\(metric=...\)"):
        C.barrier(_curve([0, 1, 0]), metric="accuracy")


def test_barriers_table_has_every_kind_and_metric() -> None:
    curve = xr.Dataset(
        {
            "loss": (("alpha", "split"), [[1, 1], [3, 2], [1, 1]]),
            "accuracy": (("alpha", "split"), [[1, 1], [0.5, 0.6], [1, 1]]),
        },
        coords={"alpha": [0, 0.5, 1], "split": ["train", "test"]},
    )
    table = C.barriers(curve)
    assert table.loss_barrier.dims == ("kind", "split")
    assert float(table.error_barrier.sel(kind="midpoint", split="test")) == pytest.approx(0.4)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 1000), kind=st.sampled_from(C.BARRIER_KINDS), norm_layer=st.sampled_from([None, "batch"]))
def test_barrier_of_a_model_with_itself_is_exactly_zero(seed: int, kind: str, norm_layer) -> None:
    model = _mlp(seed, norm=norm_layer)
    x, y = zoo_data("mlp", n=30, seed=seed)
    curve = C.interpolate(model, model, model, {"train": (x, y), "test": (x, y)}, alphas=5, progress=False)
    assert (C.barrier(curve, metric="loss", kind=kind).values == 0).all()
    assert (C.barrier(curve, metric="error", kind=kind).values == 0).all()


def test_nonfinite_losses_are_counted_not_raised() -> None:
    model = _mlp(0)
    bad = ls.state_of(model).copy()
    bad["classifier.weight"] = torch.full_like(bad["classifier.weight"], float("inf"))
    curve = C.interpolate(model, model, bad, zoo_data("mlp"), alphas=5, progress=False)
    assert int(curve.nonfinite) == 4
    assert np.isnan(float(C.barrier(curve)))  # undefined when an endpoint itself diverged


def test_interpolation_bad_input() -> None:
    model = _mlp(0)
    x, y = zoo_data("mlp")
    with pytest.raises(
        StateMismatchError, match=r"'features.fc1.weight' has shape \(12, 40\) in a and \(16, 40\) in b"
    ):
        C.interpolate(model, model, _mlp(1, width=16), (x, y), progress=False)
    with pytest.raises(LandscapeError, match=r"at least 2 points"):
        C.interpolate(model, model, _mlp(1), (x, y), alphas=1, progress=False)
    bn_model = _mlp(0, norm="batch")
    with pytest.raises(LandscapeError, match=r"'train' split"):
        C.interpolate(bn_model, bn_model, _mlp(1, norm="batch"), {"test": (x, y)}, bn="reset", progress=False)


def test_bn_reset_keeps_endpoint_statistics_recomputed_on_the_same_batches() -> None:
    x_train, _ = zoo_data("mlp", n=64, seed=5)
    endpoints = []
    for seed in (0, 1):
        model = _mlp(seed, norm="batch")
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.reset_running_stats()
                m.momentum = None
        model.train()
        with torch.no_grad():
            for start in range(0, 64, 16):
                model(x_train[start : start + 16])
        model.eval()
        endpoints.append(ls.state_of(model))
    a, b = endpoints
    x, y = zoo_data("mlp", n=40)
    data = {"train": (x_train, torch.zeros(64, dtype=torch.long)), "test": (x, y)}
    keep = C.interpolate(_mlp(0, norm="batch"), a, b, data, alphas=5, batch_size=16, progress=False)
    reset = C.interpolate(_mlp(0, norm="batch"), a, b, data, alphas=5, bn="reset", bn_batch_size=16, progress=False)
    test_keep, test_reset = keep.loss.sel(split="test").values, reset.loss.sel(split="test").values
    np.testing.assert_allclose(test_reset[[0, -1]], test_keep[[0, -1]], rtol=1e-6)
    assert np.all(np.abs(test_reset[1:-1] - test_keep[1:-1]) > 1e-6)


def test_plane_coordinates_of_the_three_states_are_exact() -> None:
    a, b, c = (ls.state_of(_mlp(s)) for s in (0, 1, 2))
    u, v, anchors = C.plane_basis(a, b, c)
    assert norm(u) == pytest.approx(1.0, abs=1e-6) and norm(v) == pytest.approx(1.0, abs=1e-6)
    assert dot(u, v) == pytest.approx(0.0, abs=1e-6)
    for name, state in (("b", b), ("c", c)):
        x, y = anchors[name]
        rebuilt = {k: a[k] + x * u[k] + y * v[k] for k in a}
        assert all(torch.allclose(rebuilt[k], state[k], atol=1e-5) for k in a), name
    ds = C.plane(_mlp(0), a, b, c, zoo_data("mlp"), resolution=5, progress=False)
    assert ds.loss.dims == ("alpha", "beta")
    np.testing.assert_allclose(ds.anchor_alpha.values, [anchors[k][0] for k in "abc"])
    np.testing.assert_allclose(ds.anchor_beta.values, [anchors[k][1] for k in "abc"])
    assert ds.alpha.values.min() < 0 < anchors["b"][0] < ds.alpha.values.max()


def test_plane_rejects_degenerate_states() -> None:
    a, b = ls.state_of(_mlp(0)), ls.state_of(_mlp(1))
    with pytest.raises(LandscapeError, match=r"plane\(b=...\)"):
        C.plane_basis(a, a, b)
    midpoint = ls.lerp(a, b, 0.5)
    with pytest.raises(LandscapeError, match=r"plane\(c=...\).*off the line"):
        C.plane_basis(a, b, midpoint)


def test_random_plane_and_line_centre_is_the_state(device: str) -> None:
    model = _mlp(0)
    x, y = zoo_data("mlp")
    loss, _ = reference_metrics(model, ls.state_of(model), x, y)
    surface = C.random_plane(model, model, (x, y), resolution=5, span=0.5, device=device, progress=False)
    assert surface.attrs["strategy"] == ("affine" if device == "cpu" else "vmap")
    assert float(surface.loss.sel(alpha=0, beta=0)) == pytest.approx(loss, rel=1e-5)
    line = C.random_line(model, model, (x, y), resolution=5, device=device, progress=False)
    assert float(line.loss.sel(alpha=0)) == pytest.approx(loss, rel=1e-5)
    with pytest.raises(LandscapeError, match=r"random_plane\(resolution=...\)"):
        C.random_plane(model, model, (x, y), resolution=1, progress=False)


def test_instability_and_sweep(mnist1d_small) -> None:
    model = _mlp(0)
    result = ls.train(model, mnist1d_small, epochs=1, batch_size=100, checkpoint_steps=[0, 2], progress=False)
    options = {"epochs": 1, "batch_size": 100, "lr": 0.05}
    single = C.instability(model, result.checkpoints[0], mnist1d_small, train=options, alphas=5, progress=False)
    assert set(single.error_barrier.dims) == {"split"} and single.stable.dtype == bool
    # The barrier is that of the two children, trained by hand with data seeds 0 and 1.
    children = [
        ls.train(model, mnist1d_small, start=result.checkpoints[0], data_seed=s, progress=False, **options).state
        for s in (0, 1)
    ]
    by_hand = C.interpolate(model, *children, mnist1d_small, alphas=5, progress=False)
    np.testing.assert_allclose(single.error_barrier.values, C.barrier(by_hand, metric="error").values)
    assert bool(single.stable.sel(split="test")) == bool(single.error_barrier.sel(split="test") < 0.02)
    sweep = C.instability_sweep(model, result.checkpoints, mnist1d_small, train=options, alphas=5, progress=False)
    assert sweep.error_barrier.dims == ("step", "split") and list(sweep.step.values) == [0, 2]
    np.testing.assert_allclose(sweep.error_barrier.sel(step=0).values, single.error_barrier.values)
    frankle = C.instability_sweep(
        model, result.checkpoints, mnist1d_small, total_steps=6, train=options, alphas=3, progress=False
    )
    assert frankle.attrs["total_steps"] == 6
    with pytest.raises(LandscapeError, match=r"instability_sweep\(total_steps=...\)"):
        C.instability_sweep(model, result.checkpoints, mnist1d_small, total_steps=2, progress=False)
    with pytest.raises(LandscapeError, match=r"instability\(seeds=...\)"):
        C.instability(model, result.state, mnist1d_small, seeds=(1, 1), progress=False)
    with pytest.raises(LandscapeError, match=r"instability\(train=...\).*'data_seed'"):
        C.instability(model, result.state, mnist1d_small, train={"data_seed": 3}, progress=False)
