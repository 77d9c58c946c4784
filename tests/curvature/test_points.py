"""Curvature over point sets equals per-point calls; BatchNorm like evaluate; resumable runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

import landscape as ls
from landscape.core.errors import LandscapeError, RunFolderError
from landscape.curvature import curvature, hessian_eigenvalues, hessian_trace
from tests.conftest import zoo_data
from tests.curvature.reference import exact_hessian, hand_bn_state


def _pair(name: str = "mlp", **kwargs):
    kwargs = kwargs or {"width": 5, "depth": 1}
    model = ls.models.create(name, seed=0, **kwargs).double()
    a = ls.state_of(model)
    b = ls.state_of(ls.models.create(name, seed=1, **kwargs).double())
    x, y = zoo_data(name, n=20)
    return model, a, b, (x.double(), y)


def test_curvature_along_a_line_equals_calls_at_each_point(device: str) -> None:
    model, a, b, data = _pair()
    line = ls.AffineFamily.line(a, b, alphas=3)
    ds = curvature(
        model,
        line,
        data,
        statistics=("top_eigenvalue", "eigenvalues", "trace", "loss"),
        k=3,
        probes=7,
        device=device,
        progress=False,
    )
    assert ds.eigenvalues.dims == ("alpha", "k") and ds.top_eigenvalue.dims == ("alpha",)
    np.testing.assert_array_equal(ds.alpha.values, [0.0, 0.5, 1.0])
    evaluated = ls.evaluate(model, line, data, progress=False)
    for i in range(3):
        point = line.state(i)
        eig = hessian_eigenvalues(model, point, data, k=3, device=device, progress=False)
        trace = hessian_trace(model, point, data, probes=7, device=device, progress=False)
        np.testing.assert_allclose(ds.eigenvalues.isel(alpha=i).values, eig.eigenvalues.values, rtol=1e-12)
        assert float(ds.top_eigenvalue.isel(alpha=i)) == float(eig.eigenvalues[0])
        assert float(ds.trace.isel(alpha=i)) == pytest.approx(float(trace.trace), rel=1e-12)
        assert float(ds.trace_se.isel(alpha=i)) == pytest.approx(float(trace.trace_se), rel=1e-12)
        assert float(ds.loss.isel(alpha=i)) == pytest.approx(float(evaluated.loss.isel(alpha=i)), rel=1e-12)


def test_curvature_over_a_plane_and_a_dict_of_states_keeps_their_dims(device: str) -> None:
    model, a, b, data = _pair()
    c = ls.state_of(ls.models.create("mlp", seed=2, width=5, depth=1).double())
    plane = ls.AffineFamily.grid(a, (ls.core.state.sub(b, a), ls.core.state.sub(c, a)), [0.0, 1.0], [0.0, 0.5, 1.0])
    ds = curvature(model, plane, data, statistics="top_eigenvalue", device=device, progress=False)
    assert ds.top_eigenvalue.dims == ("alpha", "beta") and ds.top_eigenvalue.shape == (2, 3)
    single = hessian_eigenvalues(model, plane.state(4), data, k=1, device=device, progress=False)
    assert float(ds.top_eigenvalue.sel(alpha=1.0, beta=0.5)) == pytest.approx(float(single.eigenvalues[0]), rel=1e-12)
    named = curvature(model, {"a": a, "b": b}, data, statistics=("loss",), device=device, progress=False)
    assert list(named.point.values) == ["a", "b"] and named.loss.dims == ("point",)


def test_blocks_over_points_add_a_layer_dim(device: str) -> None:
    model, a, b, data = _pair()
    ds = curvature(
        model,
        [a, b],
        data,
        statistics=("top_eigenvalue", "trace"),
        blocks="layer",
        probes=3,
        device=device,
        progress=False,
    )
    assert ds.top_eigenvalue.dims == ("point", "layer") and ds.trace.dims == ("point", "layer")
    single = hessian_eigenvalues(model, b, data, k=1, blocks="layer", device=device, progress=False)
    np.testing.assert_allclose(ds.top_eigenvalue.isel(point=1).values, single.eigenvalues.isel(k=0).values, rtol=1e-12)


def _bn_model():
    model = ls.models.create("cnn1d", seed=0, width=3, norm="batch").double()
    model.train()
    with torch.no_grad():  # non-trivial running statistics in the checkpoint
        model(torch.randn(64, 40, dtype=torch.float64) * 3 + 1)
    return model.eval()


def test_bn_reset_equals_a_hand_recompute(device: str) -> None:
    model = _bn_model()
    state = ls.state_of(model)
    x, y = zoo_data("cnn1d", n=30)
    x = x.double()
    data = {"train": (x, y), "test": (x[:10], y[:10])}
    ds = hessian_eigenvalues(
        model, state, data, k=3, bn="reset", bn_batch_size=7, tol=1e-10, device=device, progress=False
    )
    recomputed = hand_bn_state(model, state, x, 7)
    expected = np.linalg.eigvalsh(exact_hessian(model, recomputed, x, y))[::-1][:3]
    np.testing.assert_allclose(ds.eigenvalues.values, expected, rtol=1e-7)
    kept = np.linalg.eigvalsh(exact_hessian(model, state, x, y))[::-1][:3]
    assert not np.allclose(expected, kept, rtol=1e-3)  # the test would notice a missing reset
    keep = hessian_eigenvalues(model, state, data, k=3, bn="keep", tol=1e-10, device=device, progress=False)
    np.testing.assert_allclose(keep.eigenvalues.values, kept, rtol=1e-7)
    assert ds.attrs["bn"] == "reset" and ds.attrs["bn_examples"] == 30


def test_bn_reset_along_a_line_recomputes_at_every_point(device: str) -> None:
    model = _bn_model()
    a = ls.state_of(model)
    b = {k: (v * 1.1 if v.is_floating_point() else v) for k, v in a.items()}
    x, y = zoo_data("cnn1d", n=16)
    x = x.double()
    line = ls.AffineFamily.line(a, b, alphas=[0.0, 0.5])
    ds = curvature(
        model, line, {"train": (x, y)}, statistics=("loss",), bn="reset", bn_batch_size=5, device=device, progress=False
    )
    evaluated = ls.evaluate(model, line, {"train": (x, y)}, metrics="loss", bn="reset", bn_batch_size=5, progress=False)
    np.testing.assert_allclose(ds.loss.values, evaluated.loss.sel(split="train").values, rtol=1e-10)


def test_a_resumed_run_reuses_finished_points_and_refuses_other_settings(tmp_path, device: str) -> None:
    model, a, b, data = _pair()
    line = ls.AffineFamily.line(a, b, alphas=3)
    options = {"statistics": ("top_eigenvalue", "loss"), "device": device, "progress": False}
    first = curvature(model, line, data, out=tmp_path / "run", **options)
    assert len(list((tmp_path / "run").glob("point-*.nc"))) == 3
    # Delete one stored point: a resumed run recomputes that one and leaves the others untouched.
    files = sorted((tmp_path / "run").glob("point-*.nc"))
    stamps = {f.name: f.stat().st_mtime_ns for f in files}
    files[1].unlink()
    again = curvature(model, line, data, out=tmp_path / "run", **options)
    assert files[1].exists()
    for kept in (files[0], files[2]):
        assert kept.stat().st_mtime_ns == stamps[kept.name]
    xr.testing.assert_allclose(again.top_eigenvalue, first.top_eigenvalue, rtol=1e-5)
    xr.testing.assert_equal(again.loss, first.loss)
    # A stored point changed by hand is refused rather than silently reused.
    stored = ls.load_result(files[1])
    ls.save_result(stored.assign(loss=stored.loss * 0 + 123.0), files[1])
    with pytest.raises(RunFolderError, match="changed or replaced"):
        curvature(model, line, data, out=tmp_path / "run", **options)
    files[1].unlink()
    with pytest.raises(LandscapeError, match="settings differ"):
        curvature(model, line, data, out=tmp_path / "run", **{**options, "statistics": ("loss",)})
