"""Beyond one process: evaluations and sweeps as Dask tasks, written to disk as they finish.

- :func:`evaluate_sharded` is :func:`landscape.evaluate` in pieces on a Dask cluster and/or
  into a resumable zarr store; ``landscape.evaluate(..., client=, out=)`` and the
  connectivity functions (``interpolate``, ``plane``, ``random_plane``, ``random_line``)
  call it.
- :func:`sweep` maps a function over a grid of settings (seeds x widths x steps ...), each cell
  a task, each result saved as it finishes, the whole gathered into one Dataset.
- :func:`local_cluster` starts a cluster on this machine: one worker per GPU when there are
  GPUs, else one single-threaded worker per core.

Dask, distributed and zarr are optional (``pip install "landscape[distributed]"``); they are
imported only when a client or a zarr store is used.
"""

from landscape.distributed._cluster import local_cluster
from landscape.distributed._evaluate import evaluate_sharded
from landscape.distributed._fingerprint import settings_fingerprint
from landscape.distributed._sweep import sweep

__all__ = ["evaluate_sharded", "local_cluster", "settings_fingerprint", "sweep"]
