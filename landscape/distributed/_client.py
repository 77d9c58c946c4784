"""Turning what users pass as ``client=`` into a ``distributed.Client`` (or nothing)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from landscape.core.errors import bad_argument

INSTALL = 'Install the extra: pip install "landscape[distributed]" (dask, distributed, zarr).'


def require(module: str, *, function: str, argument: str) -> Any:
    """Import an optional dependency of this package, or say which extra provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise bad_argument(
            function, argument, expected=f"the {module!r} package installed", found="it is missing", fix=INSTALL
        ) from err


@contextlib.contextmanager
def connected(client: object, *, function: str) -> Iterator[Any]:
    """Yield a ``distributed.Client`` for ``client`` (a Client, a cluster object, or a scheduler
    address such as ``"tcp://10.0.0.5:8786"``), or None for None (run in this process).
    Clients this function opens are closed on exit; the caller's own client is left open."""
    if client is None:
        yield None
        return
    distributed = require("distributed", function=function, argument="client")
    if isinstance(client, distributed.Client):
        yield client
        return
    if isinstance(client, str) or hasattr(client, "scheduler_address"):
        try:
            opened = distributed.Client(client, set_as_default=False, timeout="30s")
        except OSError as err:
            raise bad_argument(
                function,
                "client",
                expected="the address of a running Dask scheduler",
                found=f"{client!r}, which did not answer ({err})",
                fix="Start one with `dask scheduler` (and `dask worker ADDRESS` on each machine), or pass workers=N to the CLI.",
            ) from err
        try:
            yield opened
        finally:
            opened.close()
        return
    raise bad_argument(
        function,
        "client",
        expected="a distributed.Client, a Dask cluster, or a scheduler address string",
        found=client,
        fix="Pass client=landscape.distributed.local_cluster(workers=2) or a Client of your own.",
    )


def worker_threads(client: Any) -> int:
    """Tasks the cluster runs at once (the sum of its workers' threads), at least 1."""
    return max(1, sum(client.nthreads().values()))
