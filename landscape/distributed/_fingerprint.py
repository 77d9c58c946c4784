"""The settings that decide whether a distributed run may resume from what is on disk.

They are the library's one run fingerprint, :func:`landscape.core.io.run_settings` (with
:func:`~landscape.core.io.data_fingerprint` and :func:`~landscape.core.io.model_fingerprint`
for what it does not take directly): the same record :class:`~landscape.core.io.ResumableRun`
compares for every other resumable function. A zarr store keeps the record and its sha256
(:func:`settings_fingerprint`), so that a refusal can name what changed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
from torch import nn

from landscape.core.errors import LandscapeError, bad_argument
from landscape.core.family import AffineFamily
from landscape.core.io import data_fingerprint, model_fingerprint, run_settings
from landscape.core.metrics import Metric

__all__ = ["evaluate_settings", "settings_fingerprint", "sweep_settings"]


def _named(function: object) -> str:
    """A function by its importable name (its address would change with every process)."""
    module = getattr(function, "__module__", "?")
    return f"{module}.{getattr(function, '__qualname__', type(function).__qualname__)}"


def evaluate_settings(
    model: nn.Module,
    family: AffineFamily,
    data: object,
    *,
    metrics: Mapping[str, Metric],
    bn: str,
    bn_data: object,
    bn_batch_size: int,
    precision: str,
) -> dict[str, object]:
    """The run settings of ``evaluate(model, family, data, ...)``: the model's architecture,
    the family's basis states (by content hash), weights and coordinates, the data, the
    metrics (by name), the BatchNorm policy and the precision. Batch sizes, device and
    strategy change values only by rounding and are left out, so a store resumes on another
    machine."""
    reset = bn == "reset"
    return run_settings(
        "evaluate",
        model=model,
        states={f"basis-{i}": state for i, state in enumerate(family.basis)},
        data=data,
        options={
            "points": {
                "dims": list(family.dims),
                "weights": data_fingerprint(family.weights),
                "coords": data_fingerprint({d: np.asarray(c) for d, c in family.coords.items()}),
            },
            "metrics": {name: _named(metric) for name, metric in metrics.items()},
            "bn": bn,
            "bn_data": data_fingerprint(bn_data) if reset and bn_data is not None else None,
            "bn_batch_size": bn_batch_size if reset else None,
            "precision": precision,
        },
    )


def _shared_value(name: str, value: object) -> object:
    if isinstance(value, nn.Module):
        return model_fingerprint(value, weights=True)
    if callable(value):
        return _named(value)
    try:
        return data_fingerprint(value)
    except LandscapeError as err:
        raise bad_argument(
            "sweep",
            "shared",
            expected="values a resumable run can fingerprint: models, functions, tensors, arrays, "
            "states, datasets, numbers, strings, and lists and dicts of them",
            found=f"shared[{name!r}], a {type(value).__name__}",
            fix="Pass it in a form above, or leave out out= (a sweep without a folder does not resume).",
        ) from err


def sweep_settings(function: object, grid: Mapping[str, list[Any]], shared: Mapping[str, object]) -> dict[str, object]:
    """The run settings of a sweep: the function by name, the grid, and every shared value
    (a model by its architecture and weights, a function by name, anything else by the
    content hash of :func:`~landscape.core.io.data_fingerprint`)."""
    return run_settings(
        "sweep",
        options={
            "function": _named(function),
            "grid": grid,
            "shared": {str(k): _shared_value(str(k), v) for k, v in shared.items()},
        },
    )


def settings_fingerprint(settings: Mapping[str, object]) -> str:
    """sha256 of a run's settings (the record of :func:`landscape.core.io.run_settings`): two
    runs with the same fingerprint may share their finished pieces.

    Examples
    --------
    >>> import torch
    >>> from landscape.core.io import run_settings
    >>> a = run_settings("demo", data=(torch.zeros(2, 3),), options={"lr": 0.1})
    >>> b = run_settings("demo", data=(torch.zeros(2, 3),), options={"lr": 0.2})
    >>> settings_fingerprint(a) == settings_fingerprint(dict(a)), settings_fingerprint(a) == settings_fingerprint(b)
    (True, False)
    """
    text = json.dumps(dict(settings), default=str, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()
