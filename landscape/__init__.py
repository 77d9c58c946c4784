"""landscape: loss-landscape and representation analysis of neural networks.

The headline names are importable from here; heavy pieces (matplotlib, transformers) load
only when used, so ``import landscape`` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> module that defines it; resolved on first access.
_EXPORTS = {
    "State": "landscape.core.state",
    "state_of": "landscape.core.state",
    "lerp": "landscape.core.state",
    "random_direction": "landscape.core.state",
    "AffineFamily": "landscape.core.family",
    "load_state": "landscape.core.checkpoints",
    "save_state": "landscape.core.checkpoints",
    "evaluate": "landscape.core.evaluate",
    "save_result": "landscape.core.io",
    "load_result": "landscape.core.io",
    "Splits": "landscape.core.data",
    "set_num_threads": "landscape.core.device",
    "tune_cpu_allocator": "landscape.core.allocator",
    "train": "landscape.training",
    "TrainConfig": "landscape.training",
}
_SUBMODULES = (
    "core",
    "datasets",
    "models",
    "plot",
    "connectivity",
    "alignment",
    "symmetry",
    "pruning",
    "distillation",
    "probes",
    "concepts",
    "curvature",
    "distributed",
    "cli",
)

__all__ = [
    "AffineFamily",
    "Splits",
    "State",
    "TrainConfig",
    "alignment",
    "cli",
    "concepts",
    "connectivity",
    "core",
    "curvature",
    "datasets",
    "distillation",
    "distributed",
    "evaluate",
    "lerp",
    "load_result",
    "load_state",
    "models",
    "plot",
    "probes",
    "pruning",
    "random_direction",
    "save_result",
    "save_state",
    "set_num_threads",
    "state_of",
    "symmetry",
    "train",
    "tune_cpu_allocator",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from landscape.core.allocator import tune_cpu_allocator
    from landscape.core.checkpoints import load_state, save_state
    from landscape.core.data import Splits
    from landscape.core.device import set_num_threads
    from landscape.core.evaluate import evaluate
    from landscape.core.family import AffineFamily
    from landscape.core.io import load_result, save_result
    from landscape.core.state import State, lerp, random_direction, state_of
    from landscape.training import TrainConfig, train


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"landscape.{name}")
    else:
        raise AttributeError(f"module 'landscape' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
