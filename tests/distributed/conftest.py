"""A real local Dask cluster per test module: 2 worker processes, 1 thread each."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("distributed")
pytest.importorskip("zarr")


def start_cluster():
    """Two worker processes through landscape's own helper. Without CUDA each worker still gets
    its own CUDA_VISIBLE_DEVICES (0 and 1), so the one-GPU-per-worker wiring is checked here."""
    from landscape.distributed import local_cluster

    return local_cluster(2, gpus="auto" if torch.cuda.is_available() else ["0", "1"])


@pytest.fixture(scope="module")
def cluster():
    from distributed import Client

    with start_cluster() as running, Client(running, set_as_default=False) as client:
        yield running, client
