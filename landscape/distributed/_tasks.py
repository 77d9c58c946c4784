"""Running the pieces of a job: as Dask tasks on a client's workers, or one after another in
this process, with the same ``prepare`` and ``task`` functions either way."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any


def run_pieces(
    client: Any,
    *,
    kind: str,
    payload: Any,
    prepare: Callable[[Any], Any],
    task: Callable[[Any, Any], Any],
    items: Sequence[tuple[int, Any]],
) -> Iterator[tuple[int, Any]]:
    """Yield ``(index, task(prepare(payload), item))`` for every ``(index, item)``, in the order
    the pieces finish.

    With a client, the payload travels to each worker once (a worker plugin) and is prepared
    there once; ``prepare`` and ``task`` must be importable functions (they travel by name).
    A worker that dies mid-task is replaced and its task run again by Dask; each piece is
    yielded once, when its first run completes. Unfinished tasks are cancelled when the
    caller stops early (an error, Ctrl-C) and the payload is removed from the workers.
    """
    if client is None:
        prepared = prepare(payload)
        for index, item in items:
            yield index, task(prepared, item)
        return
    if not items:
        return
    from distributed import as_completed

    from landscape.distributed._worker import SharedPayload, run_piece

    name = f"landscape-{kind}-{uuid.uuid4().hex[:12]}"
    client.register_plugin(SharedPayload(name, payload, prepare), name=name)
    futures: dict[Any, int] = {}
    try:
        for index, item in items:
            future = client.submit(run_piece, name, task, item, key=f"{name}-{index}", pure=False)
            futures[future] = index
        for future in as_completed(list(futures), loop=client.loop):
            yield futures[future], future.result()
    finally:
        client.cancel(list(futures))
        client.unregister_worker_plugin(name)
