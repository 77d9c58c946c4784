"""The states an IMP run keeps between rounds: in memory, and in its run folder when it has one."""

from __future__ import annotations

from typing import Any

from landscape.core.state import State

__all__ = ["RoundStore"]


class RoundStore:
    """Named states (``rewind``, ``mask-NNN``, ``trained-NNN``), written to the run folder when
    there is one (``run``: the handle of :func:`landscape.core.io.open_run`) and read back from
    it after a restart, hash-checked: a file replaced since it was written is an error naming it."""

    def __init__(self, run: Any | None) -> None:
        self.run = run
        self.memory: dict[str, State] = {}

    def put(self, name: str, state: State) -> None:
        self.memory[name] = state
        if self.run is not None:
            self.run.save_state(name, state)

    def get(self, name: str) -> State:
        if name not in self.memory:
            assert self.run is not None, f"{name} was never stored"
            state = self.run.load_state(name)
            if name.startswith("mask"):
                state = State({k: v.bool() for k, v in state.items()}, provenance=state.provenance)
            self.memory[name] = state
        return self.memory[name]
