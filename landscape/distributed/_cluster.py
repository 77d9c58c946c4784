"""A Dask cluster on this machine: one worker per GPU, or one single-threaded worker per core."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from landscape.core.errors import bad_argument, describe
from landscape.distributed._client import require

__all__ = ["local_cluster"]


def _visible_gpus() -> list[str]:
    """The GPUs this process may use, as the ids a child's CUDA_VISIBLE_DEVICES takes."""
    import torch

    if not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed:  # ids (or UUIDs) of the parent's devices, in the order torch numbers them
        return [d.strip() for d in listed.split(",") if d.strip()][: torch.cuda.device_count()]
    return [str(i) for i in range(torch.cuda.device_count())]


def local_cluster(
    workers: int | None = None,
    *,
    gpus: str | Sequence[int | str] | None = "auto",
    torch_threads: int = 1,
    dashboard: bool = False,
) -> Any:
    """Start a ``distributed`` cluster of worker processes on this machine.

    Each worker runs one task at a time with ``torch_threads`` torch threads. With GPUs, each
    worker sees exactly one (``CUDA_VISIBLE_DEVICES`` is set per worker, as dask-cuda's
    ``LocalCUDACluster`` does), so ``device="auto"`` in a task means that worker's GPU; a
    worker that crashes is restarted on the same GPU. Each worker imports torch and runs the engine
    once as the cluster starts, so the first task does not pay for it.

    Parameters
    ----------
    workers
        Number of worker processes (default: one per GPU, else one per CPU core divided by
        ``torch_threads``).
    gpus
        ``"auto"``: one worker per visible GPU when CUDA is available, CPU workers otherwise;
        a list of GPU ids (``[0, 1]``): one worker per id (``workers`` may repeat them
        round-robin); None: CPU workers only (GPUs hidden from them).
    torch_threads
        torch's intra-op threads in each worker.
    dashboard
        Serve Dask's dashboard (needs bokeh) at ``cluster.dashboard_link``.

    Returns
    -------
    distributed.LocalCluster
        Pass it (or ``distributed.Client(cluster)``) as ``client=``; close it when done
        (``with local_cluster(2) as cluster: ...``).

    Examples
    --------
    >>> from landscape.distributed import local_cluster
    >>> with local_cluster(2, gpus=None) as cluster:  # doctest: +SKIP
    ...     surface = ls.connectivity.random_plane(model, state, data, resolution=41, client=cluster)
    """
    require("distributed", function="local_cluster", argument="workers")
    if not isinstance(torch_threads, int) or isinstance(torch_threads, bool) or torch_threads < 1:
        raise bad_argument(
            "local_cluster", "torch_threads", expected="a positive integer", found=describe(torch_threads)
        )
    if gpus == "auto":
        devices = _visible_gpus()
    elif gpus is None:
        devices = []
    elif isinstance(gpus, (list, tuple)) and gpus and all(isinstance(g, (int, str)) for g in gpus):
        devices = [str(g) for g in gpus]
    else:
        raise bad_argument(
            "local_cluster", "gpus", expected="'auto', None or a non-empty list of GPU ids", found=describe(gpus)
        )
    if workers is None:
        workers = len(devices) or max(1, (os.cpu_count() or 1) // torch_threads)
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise bad_argument("local_cluster", "workers", expected="a positive integer", found=describe(workers))
    assigned = [devices[i % len(devices)] for i in range(workers)] if devices else [""] * workers
    from landscape.distributed._device_cluster import DeviceCluster

    return DeviceCluster(assigned, torch_threads=torch_threads, dashboard=dashboard)
