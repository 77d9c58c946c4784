"""The states an IMP run keeps between rounds: in memory, and in its folder when it has one."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

from torch import Tensor

from landscape.core.checkpoints import load_state, save_state
from landscape.core.state import State

__all__ = ["RoundStore", "data_fingerprint"]


def data_fingerprint(splits: Mapping[str, tuple[Tensor, Tensor]]) -> str:
    """A short hash of every split's inputs and labels (part of a resumable run's settings)."""
    h = hashlib.sha256()
    for name in sorted(splits):
        x, y = splits[name]
        h.update(name.encode())
        h.update(x.detach().cpu().contiguous().numpy().tobytes())
        h.update(y.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class RoundStore:
    """Named states (``rewind``, ``mask-NNN``, ``trained-NNN``), written to ``folder`` as
    safetensors when there is one and read back from it after a restart."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self.memory: dict[str, State] = {}

    def put(self, name: str, state: State) -> None:
        self.memory[name] = state
        if self.folder is not None:
            save_state(state, self.folder / f"{name}.safetensors")

    def get(self, name: str) -> State:
        if name not in self.memory:
            assert self.folder is not None, f"{name} was never stored"
            state = load_state(self.folder / f"{name}.safetensors")
            if name.startswith("mask"):
                state = State({k: v.bool() for k, v in state.items()}, provenance=state.provenance)
            self.memory[name] = state
        return self.memory[name]
