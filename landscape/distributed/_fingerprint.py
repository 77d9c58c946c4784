"""The settings fingerprint that decides whether a run may resume from what is on disk.

This is the one place that computes it, so that the library-wide fingerprint planned for
``landscape.core.io`` (issue 12) can replace it here without touching the callers: swap the
body of :func:`settings_fingerprint` (and :func:`describe_settings`, which gives the readable
form stored next to it so that a refusal can name what changed).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor, nn

from landscape.core._sources import Source
from landscape.core.data import Splits
from landscape.core.family import AffineFamily
from landscape.core.io import library_version
from landscape.core.spec import spec_of
from landscape.core.state import content_hash

__all__ = ["describe_settings", "model_structure", "settings_fingerprint"]

# Lists longer than this are described by a hash (the description is stored with each result).
LONG = 64


def _array_hash(array: np.ndarray | Tensor) -> str:
    if isinstance(array, Tensor):
        array = array.detach().cpu().contiguous()
        dtype, shape = str(array.dtype), tuple(array.shape)
        raw = array.reshape(-1).view(torch.uint8).numpy().tobytes() if array.numel() else b""
    else:
        array = np.ascontiguousarray(array)
        dtype, shape = str(array.dtype), array.shape
        raw = array.tobytes() if array.dtype != object else json.dumps(array.tolist(), default=str).encode()
    h = hashlib.sha256(f"{dtype}|{shape}|".encode())
    h.update(raw)
    return h.hexdigest()


def model_structure(model: nn.Module) -> object:
    """What identifies a model's architecture: its zoo spec, else its class and module tree
    (the printed module, whose layer sizes and order change with the architecture)."""
    spec = spec_of(model)
    if spec is not None:
        return spec
    cls = type(model)
    return {
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "modules": hashlib.sha256(repr(model).encode()).hexdigest(),
    }


def _describe_source(source: Source) -> object:
    """One split as the engine reads it: tensors in memory and token sequences by content; a
    DataLoader too large to hold in memory (streamed) only by its type and size."""
    if hasattr(source, "args"):
        return {
            "args": [describe_settings(a) for a in source.args],
            "kwargs": {k: describe_settings(v) for k, v in source.kwargs.items()},
            "targets": describe_settings(source.targets),
        }
    if hasattr(source, "sequences"):
        return {"sequences": describe_settings(list(source.sequences)), "pad_id": source.pad_id}
    return {"streamed": type(source).__name__, "size": getattr(source, "size", None)}


def describe_settings(value: object) -> object:
    """A JSON-able description of ``value`` in which every tensor, array, state, dataset and
    point family is replaced by content hashes, and functions by their qualified names."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, (Tensor, np.ndarray)):
        return {"sha256": _array_hash(value)}
    if isinstance(value, AffineFamily):
        return {
            "basis": [content_hash(s) for s in value.basis],
            "weights": _array_hash(value.weights),
            "dims": list(value.dims),
            "coords": {d: _array_hash(np.asarray(c)) for d, c in value.coords.items()},
        }
    if isinstance(value, Source):
        return _describe_source(value)
    if isinstance(value, Splits):
        return {
            "name": value.name,
            "num_classes": value.num_classes,
            "splits": {k: [_array_hash(x), _array_hash(y)] for k, (x, y) in value.splits.items()},
        }
    if isinstance(value, nn.Module):
        return {"model": model_structure(value), "state": content_hash(value.state_dict())}
    if isinstance(value, Mapping):
        if value and all(isinstance(v, Tensor) for v in value.values()):
            return {"state": content_hash(value)}
        return {str(k): describe_settings(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, range)):
        if len(value) > LONG:  # token sequences and the like: their hash, not their text
            return {"sha256": hashlib.sha256(json.dumps(list(value), default=str).encode()).hexdigest()}
        return [describe_settings(v) for v in value]
    if callable(value):
        return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', type(value).__qualname__)}"
    return f"{type(value).__qualname__}: {value}"


def settings_fingerprint(settings: Mapping[str, object]) -> str:
    """sha256 of everything that changes a run's results (the ``settings``, described by
    :func:`describe_settings`) and of the library version: two runs with the same
    fingerprint may share their finished pieces."""
    described = {"settings": describe_settings(settings), "landscape_version": library_version()}
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()
