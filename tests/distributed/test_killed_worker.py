"""A worker process killed in the middle of a task: Dask runs the task again, the zarr store
ends complete, and every piece is written exactly once."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import cloudpickle
import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr

import landscape as ls
from landscape.distributed import evaluate_sharded
from landscape.distributed._store import PieceStore

cloudpickle.register_pickle_by_value(sys.modules[__name__])


class SlowLoss:
    """The library's loss, 0.2 s slower per call; each call leaves the worker's pid in
    ``folder``, so the test knows which process is inside a task right now."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        Path(self.folder, f"busy-{os.getpid()}").touch()
        time.sleep(0.2)
        return F.cross_entropy(logits, targets, reduction="none")


def test_a_worker_killed_mid_task_loses_nothing_and_writes_nothing_twice(cluster, tmp_path, monkeypatch) -> None:
    _, client = cluster
    data = ls.datasets.mnist1d(n_train=100, n_test=50).test
    model = ls.models.create("mlp", width=8, depth=1, seed=0)
    a, b = ls.state_of(model), ls.state_of(ls.models.create("mlp", width=8, depth=1, seed=1))
    line = ls.AffineFamily.line(a, b, alphas=24)
    busy = tmp_path / "busy"
    busy.mkdir()

    writes: list[int] = []
    original_write = PieceStore.write

    def counted_write(self, index, piece):
        writes.append(index)
        original_write(self, index, piece)

    monkeypatch.setattr(PieceStore, "write", counted_write)
    pids_before = client.run(os.getpid)
    killed: list[int] = []
    stop = threading.Event()

    def kill_the_first_busy_worker() -> None:
        while not stop.is_set():
            found = sorted(busy.iterdir())
            if found:
                pid = int(found[0].name.split("-")[1])
                os.kill(pid, signal.SIGKILL)  # inside SlowLoss's sleep: mid-task
                killed.append(pid)
                return
            time.sleep(0.005)

    killer = threading.Thread(target=kill_the_first_busy_worker)
    killer.start()
    store = tmp_path / "line.zarr"
    try:
        result = evaluate_sharded(
            model,
            line,
            data,
            metrics={"loss": SlowLoss(str(busy))},
            device="cpu",
            progress=False,
            client=client,
            out=store,
            pieces=12,
        )
    finally:
        stop.set()
        killer.join()

    assert killed and killed[0] in pids_before.values()
    want = ls.evaluate(model, line, data, metrics="loss", device="cpu", progress=False)
    np.testing.assert_allclose(result.loss.values, want.loss.values, rtol=1e-6)
    assert sorted(writes) == list(range(12))  # each piece written once, none lost
    on_disk = xr.open_zarr(store, consolidated=False)
    assert on_disk.piece_done.values.tolist() == [1] * 12
    np.testing.assert_allclose(on_disk.loss.values, want.loss.values, rtol=1e-6)
    # The nanny restarted the killed worker, on the same GPU slot.
    client.wait_for_workers(2, timeout=120)
    pids_after = client.run(os.getpid)
    assert killed[0] not in pids_after.values() and len(pids_after) == 2
    slots = sorted(client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES")).values())
    if not torch.cuda.is_available():
        assert slots == ["0", "1"]
