"""What runs on the workers: a plugin that holds one run's payload (model, data, points, or a
sweep's function and shared arguments) and prepares it once per worker.

Dask sends a registered plugin to every worker, also to a worker that joins or restarts after a
crash, so a task never finds its worker without the payload; the task graph carries only the
plugin's name and the piece to compute. This module imports ``distributed`` and is imported on
the client only when a run has a client.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from distributed import WorkerPlugin, get_worker


class SharedPayload(WorkerPlugin):
    """One run's payload on a worker, turned into what its tasks use by ``prepare(payload)`` the
    first time a task asks (once per worker process, whatever the number of tasks)."""

    def __init__(self, name: str, payload: Any, prepare: Callable[[Any], Any]) -> None:
        self.name = name
        self.payload = payload
        self.prepare = prepare
        self._prepared: Any = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"name": self.name, "payload": self.payload, "prepare": self.prepare}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["name"], state["payload"], state["prepare"])

    def get(self) -> Any:
        # Tasks of one worker may run in several threads; the first one prepares.
        with self._lock:
            if self._prepared is None:
                self._prepared = self.prepare(self.payload)
            return self._prepared

    def teardown(self, worker: Any) -> None:
        self.payload = self._prepared = None


def run_piece(name: str, task: Callable[[Any, Any], Any], item: Any) -> Any:
    """The task Dask runs: ``task(prepared payload, item)`` with this worker's payload."""
    from landscape.core.allocator import tune_cpu_allocator

    # Dask starts workers with MALLOC_TRIM_THRESHOLD_=65536, which made every CPU forward
    # pass page-fault its activations in again (2-3x slower than in the client's process).
    tune_cpu_allocator()
    plugin = get_worker().plugins[name]
    return task(plugin.get(), item)
