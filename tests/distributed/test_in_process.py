"""Pieces, zarr stores, fingerprints and sweeps in one process (no cluster), against plain
single calls."""

from __future__ import annotations

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
import xarray as xr
import zarr
from hypothesis import given, settings

import landscape as ls
from landscape import connectivity
from landscape.cli import main
from landscape.core.errors import LandscapeError
from landscape.core.metrics import resolve_metrics
from landscape.distributed import evaluate_sharded, local_cluster, settings_fingerprint, sweep
from landscape.distributed._fingerprint import evaluate_settings

RTOL = 1e-6  # the same code evaluates each point; only float64 sums may be added in another order


@pytest.fixture(scope="module")
def tiny():
    data = ls.datasets.mnist1d(n_train=120, n_test=60)
    model = ls.models.create("mlp", width=8, depth=1, seed=0)
    a = ls.state_of(model)
    b = ls.state_of(ls.models.create("mlp", width=8, depth=1, seed=1))
    return model, a, b, data


@settings(max_examples=8, deadline=None)
@given(pieces=st.integers(1, 12), rows=st.integers(2, 6))
def test_any_number_of_pieces_gives_the_single_call(tiny, pieces: int, rows: int) -> None:
    model, a, b, data = tiny
    grid = ls.AffineFamily.grid(a, (b, a), np.linspace(-1, 1, rows), np.linspace(0, 1, 3))
    want = ls.evaluate(model, grid, data, device="cpu", progress=False)
    got = evaluate_sharded(model, grid, data, device="cpu", progress=False, pieces=pieces)
    for name in ("loss", "accuracy"):
        assert got[name].dims == want[name].dims
        np.testing.assert_allclose(got[name].values, want[name].values, rtol=RTOL, atol=0)
    assert got.attrs["pieces_computed"] == min(pieces, rows)


def test_store_in_process_equals_single_call_and_resumes(tiny, device, tmp_path) -> None:
    model, a, b, data = tiny
    want = connectivity.interpolate(model, a, b, data, alphas=11, device=device, progress=False)
    store = tmp_path / "line.zarr"
    got = connectivity.interpolate(model, a, b, data, alphas=11, device=device, progress=False, out=store)
    for name in ("loss", "accuracy", "error", "nonfinite"):
        np.testing.assert_allclose(got[name].values, want[name].values, rtol=RTOL, err_msg=name)
    assert got.attrs["pieces_computed"] > 1 and got.attrs["workers"] == 0
    on_disk = xr.open_zarr(store, consolidated=False)
    assert on_disk.loss.dims == ("alpha", "split") and list(on_disk.split.values) == ["train", "test"]
    assert "checkpoints" in on_disk.attrs and on_disk.attrs["settings_fingerprint"] == got.attrs["settings_fingerprint"]
    again = connectivity.interpolate(model, a, b, data, alphas=11, device=device, progress=False, out=store)
    assert again.attrs["pieces_computed"] == 0
    np.testing.assert_allclose(again.loss.values, want.loss.values, rtol=RTOL)


def test_a_store_with_other_settings_is_refused_by_name(tiny, tmp_path) -> None:
    model, a, _, data = tiny
    store = tmp_path / "surface.zarr"
    connectivity.random_plane(model, a, data, resolution=4, seed=0, device="cpu", progress=False, out=store)
    # Another seed: other directions, so the family's basis differs (named leaf by leaf).
    with pytest.raises(LandscapeError, match=r"evaluate\(out=...\).*states\.basis-1: .* there, .* now"):
        connectivity.random_plane(model, a, data, resolution=4, seed=1, device="cpu", progress=False, out=store)
    with pytest.raises(LandscapeError, match=r"data: "):
        connectivity.random_plane(
            model, a, data.subset(50), resolution=4, seed=0, device="cpu", progress=False, out=store
        )
    # batch size, device and strategy change no value beyond rounding: the store resumes
    resumed = connectivity.random_plane(
        model, a, data, resolution=4, seed=0, device="cpu", batch_size=17, progress=False, out=store
    )
    assert resumed.attrs["pieces_computed"] == 0


def test_a_store_with_nothing_finished_is_replaced_and_foreign_paths_refused(tiny, tmp_path) -> None:
    model, a, b, data = tiny
    store = tmp_path / "s.zarr"
    connectivity.random_line(model, a, data, resolution=5, seed=0, device="cpu", progress=False, out=store)
    zarr.open_group(str(store), mode="r+")["piece_done"][:] = 0  # as if stopped before any piece finished
    other = connectivity.random_line(model, a, data, resolution=5, seed=3, device="cpu", progress=False, out=store)
    want = connectivity.random_line(model, a, data, resolution=5, seed=3, device="cpu", progress=False)
    np.testing.assert_allclose(other.loss.values, want.loss.values, rtol=RTOL)
    foreign = tmp_path / "foreign.zarr"
    xr.Dataset({"x": ("i", np.zeros(3))}).to_zarr(foreign, zarr_format=2, consolidated=False)
    with pytest.raises(LandscapeError, match="without landscape's settings fingerprint"):
        ls.evaluate(model, [a, b], data, progress=False, out=foreign)
    (tmp_path / "file.zarr").write_text("not a store")
    with pytest.raises(LandscapeError, match="not a zarr store"):
        ls.evaluate(model, [a, b], data, progress=False, out=tmp_path / "file.zarr")


def test_named_points_into_a_store_keep_their_labels_and_bad_data_fails_by_name(tiny, tmp_path) -> None:
    model, a, b, data = tiny
    states = {"first": a, "second": b, "middle": ls.lerp(a, b, 0.5)}
    want = ls.evaluate(model, states, data, device="cpu", progress=False)
    got = ls.evaluate(model, states, data, device="cpu", progress=False, out=tmp_path / "named.zarr")
    assert got.point.values.tolist() == ["first", "second", "middle"]
    np.testing.assert_allclose(got.loss.values, want.loss.values, rtol=RTOL)
    wrong = (torch.randn(10, 7), torch.zeros(10, dtype=torch.long))
    with pytest.raises(LandscapeError, match=r"evaluate\(data=...\): expected inputs the model accepts"):
        ls.evaluate(model, states, wrong, device="cpu", progress=False, out=tmp_path / "wrong.zarr")


def test_a_dataloader_and_bfloat16_go_through_pieces_as_through_one_call(tiny, tmp_path) -> None:
    model, a, b, data = tiny
    x, y = data.test
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    line = ls.AffineFamily.line(a, b, alphas=6)
    want = ls.evaluate(model, line, loader, device="cpu", progress=False)
    got = ls.evaluate(model, line, loader, device="cpu", progress=False, out=tmp_path / "loader.zarr")
    assert got.loss.dims == ("alpha",)
    np.testing.assert_allclose(got.loss.values, want.loss.values, rtol=RTOL)
    want16 = ls.evaluate(model, line, data, device="cpu", precision="bfloat16", progress=False)
    store = tmp_path / "bf16.zarr"
    got16 = ls.evaluate(model, line, data, device="cpu", precision="bfloat16", progress=False, out=store)
    np.testing.assert_allclose(got16.loss.values, want16.loss.values, rtol=RTOL)
    assert got16.attrs["precision"] == "bfloat16"
    with pytest.raises(LandscapeError, match="precision"):  # other values: another fingerprint
        ls.evaluate(model, line, data, device="cpu", progress=False, out=store)


def test_bad_arguments_are_named(tiny) -> None:
    model, a, b, data = tiny
    with pytest.raises(LandscapeError, match=r"evaluate\(client=...\): expected a distributed.Client"):
        ls.evaluate(model, [a, b], data, progress=False, client=42)
    with pytest.raises(LandscapeError, match=r"evaluate\(pieces=...\)"):
        evaluate_sharded(model, [a, b], data, progress=False, pieces=0)
    with pytest.raises(LandscapeError, match=r"local_cluster\(gpus=...\)"):
        local_cluster(2, gpus="all")
    with pytest.raises(LandscapeError, match=r"local_cluster\(workers=...\)"):
        local_cluster(0)
    with pytest.raises(LandscapeError, match=r"local_cluster\(torch_threads=...\)"):
        local_cluster(1, torch_threads=0)


def test_settings_fingerprint_follows_contents_not_identity(tiny) -> None:
    model, a, b, data = tiny

    def fingerprint(points, data, *, bn="keep", metrics=("loss",), precision="float32") -> str:
        resolved = resolve_metrics(metrics)
        settings = evaluate_settings(
            model, points, data, metrics=resolved, bn=bn, bn_data=None, bn_batch_size=1024, precision=precision
        )
        return settings_fingerprint(settings)

    same = fingerprint(ls.AffineFamily.line(a, b, 5), data)
    copy = ls.AffineFamily.line({k: v.clone() for k, v in a.items()}, b, 5)
    assert fingerprint(copy, ls.datasets.mnist1d(n_train=120, n_test=60)) == same
    moved = {k: v.clone() for k, v in a.items()}
    key = next(iter(moved))
    moved[key].view(-1)[0] += 1e-3
    line = ls.AffineFamily.line(a, b, 5)
    assert fingerprint(ls.AffineFamily.line(moved, b, 5), data) != same
    assert fingerprint(ls.AffineFamily.line(a, b, 6), data) != same
    assert fingerprint(line, data.subset(100)) != same
    assert fingerprint(line, data, bn="reset") != same
    assert fingerprint(line, data, metrics=("loss", "accuracy")) != same
    assert fingerprint(line, data, precision="bfloat16") != same


def _cell(seed: int, width: int, data, scale: float = 1.0) -> xr.Dataset:
    model = ls.models.create("mlp", width=width, depth=1, seed=seed)
    result = ls.evaluate(model, ls.state_of(model), data, device="cpu", progress=False)
    return result * scale


def test_sweep_in_process_equals_direct_calls_and_resumes(tiny, tmp_path) -> None:
    *_, data = tiny
    grid = {"seed": [3, 1], "width": [4, 8, 16]}
    got = sweep(_cell, grid, shared={"data": data}, out=tmp_path / "sweep", progress=False)
    assert got.loss.dims == ("seed", "width", "point", "split")
    assert got.seed.values.tolist() == [3, 1] and got.width.values.tolist() == [4, 8, 16]
    for seed in grid["seed"]:
        for width in grid["width"]:
            want = _cell(seed, width, data)
            np.testing.assert_allclose(got.loss.sel(seed=seed, width=width).values, want.loss.values, rtol=RTOL)
    assert sorted(p.name for p in (tmp_path / "sweep").glob("cell-*.nc"))[0] == "cell-0-0.nc"
    again = sweep(_cell, grid, shared={"data": data}, out=tmp_path / "sweep", progress=False)
    assert again.attrs["cells_computed"] == 0 and again.attrs["cells_resumed"] == 6
    xr.testing.assert_allclose(again.loss, got.loss)
    with pytest.raises(LandscapeError, match=r"sweep\(out=...\).*shared"):
        sweep(_cell, grid, shared={"data": data, "scale": 2.0}, out=tmp_path / "sweep", progress=False)
    with pytest.raises(LandscapeError, match=r"sweep\(shared=...\).*shared\['thing'\], a object"):
        sweep(_cell, grid, shared={"data": data, "thing": object()}, out=tmp_path / "other", progress=False)


def test_sweep_explains_bad_grids_and_results(tiny) -> None:
    *_, data = tiny
    with pytest.raises(LandscapeError, match=r"sweep\(grid=...\)"):
        sweep(_cell, {"seed": 3}, shared={"data": data})
    with pytest.raises(LandscapeError, match="distinct values"):
        sweep(_cell, {"seed": [1, 1]}, shared={"data": data})
    with pytest.raises(LandscapeError, match=r"sweep\(shared=...\)"):
        sweep(_cell, {"seed": [1]}, shared={"seed": 2})
    with pytest.raises(LandscapeError, match="returns an xarray Dataset"):
        sweep(lambda seed: seed, {"seed": [1]}, progress=False)
    with pytest.raises(LandscapeError, match="not dims of the function's result"):
        sweep(lambda point: xr.Dataset({"v": ("point", [1.0])}), {"point": [1]}, progress=False)


def test_cli_lmc_into_a_store_and_instability_refuses_one(tmp_path, capsys) -> None:
    model = ls.models.create("mlp", width=8, depth=1, input_shape=[40], num_classes=10, seed=0)
    paths = []
    for seed in (0, 1):
        path = tmp_path / f"{seed}.safetensors"
        ls.save_state(ls.state_of(ls.models.create("mlp", width=8, depth=1, seed=seed)), path, model=model)
        paths.append(str(path))
    common = ["--n-train", "100", "--n-test", "50", "--alphas", "5", "--quiet", "--device", "cpu"]
    assert main(["lmc", *paths, *common, "--out", str(tmp_path / "lmc.zarr")]) == 0
    assert "lmc.zarr" in capsys.readouterr().out
    assert xr.open_zarr(tmp_path / "lmc.zarr", consolidated=False).loss.dims == ("alpha", "split")
    assert main(["instability", paths[0], "--out", str(tmp_path / "i.zarr"), "--quiet"]) == 2
    assert "netCDF" in capsys.readouterr().err
