"""Evaluation, resumable zarr stores and sweeps on a real 2-process LocalCluster, checked
against the single-process computation."""

from __future__ import annotations

import os
import sys

import cloudpickle
import numpy as np
import pytest
import torch
import xarray as xr
import zarr

import landscape as ls
from landscape import connectivity
from landscape.cli import main
from landscape.core.errors import LandscapeError
from landscape.distributed import sweep

# Functions defined here run on the workers; they travel by value, as a script's would.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

# Each point is evaluated by the same code on a worker as in one process; only the order in
# which float64 metric sums are added can differ, far below this.
RTOL = 1e-6


def assert_same_result(got: xr.Dataset, want: xr.Dataset) -> None:
    assert set(got.data_vars) == set(want.data_vars)
    for name in want.data_vars:
        assert got[name].dims == want[name].dims, name
        np.testing.assert_allclose(got[name].values, want[name].values, rtol=RTOL, atol=0, err_msg=name)
    for dim in want.dims:
        assert list(got[dim].values) == list(want[dim].values), dim
    # the same provenance, plus the run's own
    assert set(want.attrs) - {"created"} <= set(got.attrs)
    for key in ("model", "checkpoints", "data", "metrics", "bn", "strategy"):
        if key in want.attrs:
            assert got.attrs[key] == want.attrs[key], key


@pytest.fixture(scope="module")
def setup():
    data = ls.datasets.mnist1d(n_train=160, n_test=80)
    model = ls.models.create("cnn1d", width=4, seed=0)
    a = ls.state_of(model)
    b = ls.state_of(ls.models.create("cnn1d", width=4, seed=1))
    return model, a, b, data


def test_workers_each_see_their_own_gpu_slot(cluster) -> None:
    _, client = cluster
    seen = sorted(client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES")).values())
    if not torch.cuda.is_available():
        assert seen == ["0", "1"]
    assert set(client.run(lambda: torch.get_num_threads()).values()) == {1}


def test_random_plane_on_the_cluster_equals_one_process(cluster, setup, device) -> None:
    running, client = cluster
    model, a, _, data = setup
    want = connectivity.random_plane(model, a, data, resolution=7, device=device, progress=False)
    got = connectivity.random_plane(model, a, data, resolution=7, device=device, progress=False, client=client)
    assert_same_result(got, want)
    assert got.attrs["workers"] == 2 and got.attrs["pieces_computed"] >= 2 and got.attrs["pieces_resumed"] == 0
    assert got.anchor_alpha.values.tolist() == want.anchor_alpha.values.tolist()
    # the workers that ran the pieces tuned glibc's allocator (Dask's trim setting made every
    # forward pass page-fault its activations in again); a non-glibc system leaves it alone
    import platform

    from landscape.core import allocator

    expected = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    ran = client.run(lambda dask_worker: (dask_worker.state.executed_count, allocator._tuned)).values()
    assert any(count for count, _ in ran) and all(tuned == expected for count, tuned in ran if count)
    # a cluster object and a scheduler address work as well as a client
    by_address = ls.evaluate(model, [a, a], data, device=device, progress=False, client=running.scheduler_address)
    assert by_address.loss.dims == ("point", "split")


def test_interpolate_and_a_list_of_states_with_one_unnamed_pair(cluster, setup, device) -> None:
    _, client = cluster
    _, a, b, data = setup
    model = ls.models.create("cnn1d", width=4, norm="batch", seed=0)
    a, b = ls.state_of(model), ls.state_of(ls.models.create("cnn1d", width=4, norm="batch", seed=1))
    want = connectivity.interpolate(model, a, b, data, alphas=9, bn="reset", device=device, progress=False)
    got = connectivity.interpolate(
        model, a, b, data, alphas=9, bn="reset", device=device, progress=False, client=client
    )
    assert_same_result(got, want)
    pair = data.test
    states = {"a": a, "b": b, "mid": ls.lerp(a, b, 0.5)}
    want = ls.evaluate(model, states, pair, device=device, progress=False)
    got = ls.evaluate(model, states, pair, device=device, progress=False, client=client)
    assert got.loss.dims == ("point",)  # no split dim for one unnamed (x, y) pair, as in one process
    assert_same_result(got, want)


def test_an_error_in_a_task_reaches_the_caller_by_name(cluster, setup) -> None:
    _, client = cluster
    model, a, b, _ = setup
    wrong = (torch.randn(10, 7), torch.zeros(10, dtype=torch.long))
    with pytest.raises(LandscapeError, match=r"evaluate\(data=...\): expected inputs the model accepts"):
        ls.evaluate(model, [a, b], wrong, device="cpu", progress=False, client=client)


def _log_pid(folder: str) -> str:
    with open(os.path.join(folder, f"prepared-{os.getpid()}"), "a") as f:
        f.write("x")
    return folder


def _which_pid(folder: str, item: int) -> int:
    return os.getpid()


def test_each_worker_prepares_the_payload_once(cluster, tmp_path) -> None:
    from landscape.distributed._tasks import run_pieces

    _, client = cluster
    results = dict(
        run_pieces(
            client,
            kind="test",
            payload=str(tmp_path),
            prepare=_log_pid,
            task=_which_pid,
            items=list(enumerate(range(24))),
        )
    )
    assert sorted(results) == list(range(24))
    pids = set(results.values())
    logs = {p.name: p.read_text() for p in tmp_path.iterdir()}
    # once per worker that ran tasks, whatever the number of its tasks
    assert logs == {f"prepared-{pid}": "x" for pid in pids}


def test_surface_into_zarr_resumes_and_rewrites_only_unfinished_pieces(cluster, setup, device, tmp_path) -> None:
    _, client = cluster
    model, a, _, data = setup
    store = tmp_path / "surface.zarr"
    want = connectivity.random_plane(model, a, data, resolution=9, device=device, progress=False)
    got = connectivity.random_plane(
        model, a, data, resolution=9, device=device, progress=False, client=client, out=store
    )
    assert_same_result(got, want)
    on_disk = xr.open_zarr(store, consolidated=False)
    pieces = int(on_disk.sizes["piece"])
    assert on_disk.piece_done.values.tolist() == [1] * pieces and got.attrs["pieces_computed"] == pieces
    assert on_disk.attrs["settings_fingerprint"] == got.attrs["settings_fingerprint"]
    assert "landscape_version" in on_disk.attrs and on_disk.attrs["strategy"] == want.attrs["strategy"]

    chunk_files = [p for p in store.rglob("*") if p.is_file() and p.parent.name == "loss"]
    before = {p: p.stat().st_mtime_ns for p in chunk_files}
    again = connectivity.random_plane(
        model, a, data, resolution=9, device=device, progress=False, client=client, out=store
    )
    assert again.attrs["pieces_computed"] == 0 and again.attrs["pieces_resumed"] == pieces
    assert {p: p.stat().st_mtime_ns for p in chunk_files} == before  # nothing written again
    assert_same_result(again, want)

    # A run stopped while two pieces were being written: their flags unset, their values garbage.
    group = zarr.open_group(str(store), mode="r+")
    for piece in (1, pieces - 1):
        rows = slice(int(group["piece_start"][piece]), int(group["piece_stop"][piece]))
        group["loss"][rows] = -1.0
        group["piece_done"][piece] = 0
    repaired = connectivity.random_plane(
        model, a, data, resolution=9, device=device, progress=False, client=client, out=store
    )
    assert repaired.attrs["pieces_computed"] == 2
    assert_same_result(repaired, want)


def _width_seed_cell(seed: int, width: int, data, device: str) -> xr.Dataset:
    model = ls.models.create("mlp", width=width, depth=1, seed=seed)
    return ls.evaluate(model, ls.state_of(model), data, device=device, progress=False)


def test_sweep_on_the_cluster_equals_direct_calls_and_resumes(cluster, device, tmp_path) -> None:
    _, client = cluster
    data = ls.datasets.mnist1d(n_train=100, n_test=50)
    grid = {"seed": [0, 1, 2], "width": [4, 8]}
    got = sweep(
        _width_seed_cell,
        grid,
        shared={"data": data, "device": device},
        client=client,
        out=tmp_path / "s",
        progress=False,
    )
    assert got.loss.dims == ("seed", "width", "point", "split")
    assert got.attrs["cells_computed"] == 6 and got.attrs["workers"] == 2
    for seed in grid["seed"]:
        for width in grid["width"]:
            want = _width_seed_cell(seed, width, data, device)
            np.testing.assert_allclose(got.loss.sel(seed=seed, width=width).values, want.loss.values, rtol=RTOL)
    resumed = sweep(
        _width_seed_cell,
        grid,
        shared={"data": data, "device": device},
        client=client,
        out=tmp_path / "s",
        progress=False,
    )
    assert resumed.attrs["cells_computed"] == 0 and resumed.attrs["cells_resumed"] == 6
    xr.testing.assert_allclose(resumed.loss, got.loss)


def test_cli_surface_on_a_scheduler_writes_a_zarr_store(cluster, tmp_path, capsys) -> None:
    running, _ = cluster
    model = ls.models.create("mlp", width=8, depth=1, input_shape=[40], num_classes=10, seed=0)
    checkpoint = tmp_path / "a.safetensors"
    ls.save_state(ls.state_of(model), checkpoint, model=model, metadata={"data": "mnist1d"})
    store = tmp_path / "surface.zarr"
    args = ["surface", str(checkpoint), "--resolution", "5", "--n-train", "100", "--n-test", "50", "--quiet"]
    assert main([*args, "--scheduler", running.scheduler_address, "--out", str(store)]) == 0
    assert "surface.zarr" in capsys.readouterr().out
    on_disk = xr.open_zarr(store, consolidated=False)
    assert on_disk.loss.dims == ("alpha", "beta", "split") and bool(on_disk.piece_done.all())
    assert main([*args, "--device", "cpu"]) == 0
