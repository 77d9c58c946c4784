"""The engine: states, point families, checkpoints, data, the one way to run a model at
parameter points, evaluation and results.

It knows nothing of any analysis; every analysis package builds on it. The names below are
the engine's public API; modules whose names start with an underscore are private.
"""

from landscape.core._run import PRECISIONS, PointBatch, PointRun, recompute_bn, run_points
from landscape.core._sources import Loader, TokenData
from landscape.core._strategies import DEFAULT_BN_BATCH_SIZE, STRATEGIES
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
    "unflatten",
    "unstack",
]
