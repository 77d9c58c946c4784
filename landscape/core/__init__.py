"""The engine: states, point families, checkpoints, data, the one way to run a model at
parameter points, evaluation and results.

It knows nothing of any analysis; every analysis package builds on it. The names below are
the engine's public API, resolved on first use (so that ``landscape.core.errors`` is cheap
to import for the command line); modules whose names start with an underscore are private.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "PRECISIONS": ("landscape.core._run", "PRECISIONS"),
    "PointBatch": ("landscape.core._run", "PointBatch"),
    "PointRun": ("landscape.core._run", "PointRun"),
    "recompute_bn": ("landscape.core._run", "recompute_bn"),
    "run_points": ("landscape.core._run", "run_points"),
    "AffineFamily": ("landscape.core.family", "AffineFamily"),
    "CheckpointError": ("landscape.core.errors", "CheckpointError"),
    "DEFAULT_BN_BATCH_SIZE": ("landscape.core._strategies", "DEFAULT_BN_BATCH_SIZE"),
    "LandscapeError": ("landscape.core.errors", "LandscapeError"),
    "Loader": ("landscape.core._sources", "Loader"),
    "METRICS": ("landscape.core.metrics", "BUILTIN"),
    "Metric": ("landscape.core.metrics", "Metric"),
    "ResumableRun": ("landscape.core.io", "ResumableRun"),
    "STRATEGIES": ("landscape.core._strategies", "STRATEGIES"),
    "Splits": ("landscape.core.data", "Splits"),
    "State": ("landscape.core.state", "State"),
    "StateMismatchError": ("landscape.core.errors", "StateMismatchError"),
    "TokenData": ("landscape.core._sources", "TokenData"),
    "add": ("landscape.core.state", "add"),
    "as_family": ("landscape.core.family", "as_family"),
    "as_splits": ("landscape.core.data", "as_splits"),
    "as_state": ("landscape.core.state", "as_state"),
    "bad_argument": ("landscape.core.errors", "bad_argument"),
    "batch_slices": ("landscape.core.data", "batch_slices"),
    "batches": ("landscape.core.data", "batches"),
    "check_compatible": ("landscape.core.state", "check_compatible"),
    "content_hash": ("landscape.core.state", "content_hash"),
    "distance": ("landscape.core.state", "distance"),
    "dot": ("landscape.core.state", "dot"),
    "evaluate": ("landscape.core.evaluate", "evaluate"),
    "flatten": ("landscape.core.state", "flatten"),
    "lerp": ("landscape.core.state", "lerp"),
    "load_result": ("landscape.core.io", "load_result"),
    "load_state": ("landscape.core.checkpoints", "load_state"),
    "model_output_logits": ("landscape.core.metrics", "model_output_logits"),
    "norm": ("landscape.core.state", "norm"),
    "padded_batches": ("landscape.core.data", "padded_batches"),
    "progress_bar": ("landscape.core.progress", "progress_bar"),
    "provenance_attrs": ("landscape.core.io", "provenance_attrs"),
    "random_direction": ("landscape.core.state", "random_direction"),
    "resolve_device": ("landscape.core.device", "resolve_device"),
    "save_result": ("landscape.core.io", "save_result"),
    "save_state": ("landscape.core.checkpoints", "save_state"),
    "scale": ("landscape.core.state", "scale"),
    "set_num_threads": ("landscape.core.device", "set_num_threads"),
    "stack": ("landscape.core.state", "stack"),
    "state_of": ("landscape.core.state", "state_of"),
    "sub": ("landscape.core.state", "sub"),
    "tune_cpu_allocator": ("landscape.core.allocator", "tune_cpu_allocator"),
    "unflatten": ("landscape.core.state", "unflatten"),
    "unstack": ("landscape.core.state", "unstack"),
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'landscape.core' has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


__all__ = [
    "DEFAULT_BN_BATCH_SIZE",
    "METRICS",
    "PRECISIONS",
    "STRATEGIES",
    "AffineFamily",
    "CheckpointError",
    "LandscapeError",
    "Loader",
    "Metric",
    "PointBatch",
    "PointRun",
    "ResumableRun",
    "Splits",
    "State",
    "StateMismatchError",
    "TokenData",
    "add",
    "as_family",
    "as_splits",
    "as_state",
    "bad_argument",
    "batch_slices",
    "batches",
    "check_compatible",
    "content_hash",
    "distance",
    "dot",
    "evaluate",
    "flatten",
    "lerp",
    "load_result",
    "load_state",
    "model_output_logits",
    "norm",
    "padded_batches",
    "progress_bar",
    "provenance_attrs",
    "random_direction",
    "recompute_bn",
    "resolve_device",
    "run_points",
    "save_result",
    "save_state",
    "scale",
    "set_num_threads",
    "stack",
    "state_of",
    "sub",
    "tune_cpu_allocator",
    "unflatten",
    "unstack",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from landscape.core._run import PRECISIONS, PointBatch, PointRun, recompute_bn, run_points
    from landscape.core._sources import Loader, TokenData
    from landscape.core._strategies import DEFAULT_BN_BATCH_SIZE, STRATEGIES
    from landscape.core.allocator import tune_cpu_allocator
    from landscape.core.checkpoints import load_state, save_state
    from landscape.core.data import Splits, as_splits, batch_slices, batches, padded_batches
    from landscape.core.device import resolve_device, set_num_threads
    from landscape.core.errors import CheckpointError, LandscapeError, StateMismatchError, bad_argument
    from landscape.core.evaluate import evaluate
    from landscape.core.family import AffineFamily, as_family
    from landscape.core.io import ResumableRun, load_result, provenance_attrs, save_result
    from landscape.core.metrics import BUILTIN as METRICS
    from landscape.core.metrics import Metric, model_output_logits
    from landscape.core.progress import progress_bar
    from landscape.core.state import (
        State,
        add,
        as_state,
        check_compatible,
        content_hash,
        distance,
        dot,
        flatten,
        lerp,
        norm,
        random_direction,
        scale,
        stack,
        state_of,
        sub,
        unflatten,
        unstack,
    )
