"""Loss and accuracy along the straight line between two parameter states."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn

from landscape.core import DEFAULT_BN_BATCH_SIZE
from landscape.core.errors import bad_argument
from landscape.core.evaluate import evaluate
from landscape.core.family import AffineFamily
from landscape.core.io import checkpoint_record, to_json
from landscape.core.metrics import Metric
from landscape.core.state import State, as_state, check_compatible

__all__ = ["Correction", "interpolate"]

# correct(model, state, alpha) -> the state to evaluate instead (e.g. REPAIR's rescaled network).
Correction = Callable[[nn.Module, State, float], Mapping[str, Tensor]]


def add_derived(curve: xr.Dataset) -> xr.Dataset:
    """Add ``error`` (1 - accuracy) and ``nonfinite`` (count of NaN/Inf losses over alpha)."""
    if "accuracy" in curve and "error" not in curve:
        curve["error"] = 1.0 - curve["accuracy"]
    if "loss" in curve:
        point_dims = [d for d in ("alpha", "beta") if d in curve.loss.dims]
        curve["nonfinite"] = (~np.isfinite(curve["loss"])).sum(dim=point_dims).astype(np.int64)
        curve["nonfinite"].attrs["description"] = "number of points whose loss is NaN or Inf"
    return curve


def interpolate(
    model: nn.Module,
    a: Mapping[str, Tensor] | nn.Module,
    b: Mapping[str, Tensor] | nn.Module,
    data: object,
    *,
    alphas: int | Sequence[float] | np.ndarray = 25,
    bn: str = "keep",
    bn_batch_size: int = DEFAULT_BN_BATCH_SIZE,
    correct: Correction | None = None,
    metrics: str | Metric | Sequence[str | Metric] = ("loss", "accuracy"),
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> xr.Dataset:
    """Evaluate ``(1 - alpha) * a + alpha * b`` for each alpha.

    Parameters
    ----------
    model
        The architecture of ``a`` and ``b``.
    a, b
        The endpoints (States, mappings of tensors, or modules).
    data
        An ``(x, y)`` pair, a dict of splits or :class:`~landscape.core.data.Splits`.
    alphas
        Number of evenly spaced values in [0, 1] (endpoints included), or explicit values
        (extrapolation beyond [0, 1] allowed). At least 2.
    bn
        ``"keep"`` interpolates BatchNorm running statistics along with the weights;
        ``"reset"`` recomputes them at every alpha from the training split (see
        :func:`landscape.evaluate`).
    correct
        Optional ``correct(model, state, alpha) -> state`` applied at every alpha before
        evaluation, e.g. ``landscape.alignment.repair(...)``; points are then evaluated as a
        list rather than as a lazy line.
    bn_batch_size, metrics, batch_size, device, progress
        As in :func:`landscape.evaluate`.

    Returns
    -------
    xarray.Dataset
        ``loss``, ``accuracy``, ``error`` over (``alpha``, ``split``) (no ``split`` for a
        single ``(x, y)`` pair), and ``nonfinite``: the number of alphas whose loss is NaN or
        Inf, per split. ``attrs`` hold the endpoints' provenance, ``bn`` and ``correction``.

    Examples
    --------
    >>> import torch, landscape as ls
    >>> model = ls.models.create("mlp", width=8, depth=1, seed=0)
    >>> b = ls.models.create("mlp", width=8, depth=1, seed=1)
    >>> data = (torch.randn(64, 40), torch.randint(0, 10, (64,)))
    >>> curve = ls.connectivity.interpolate(model, model, b, data, alphas=5, progress=False)
    >>> curve.loss.dims, curve.sizes["alpha"]
    (('alpha',), 5)
    """
    a = as_state(a, function="interpolate", argument="a")
    b = as_state(b, function="interpolate", argument="b")
    check_compatible(a, b, function="interpolate")
    line = AffineFamily.line(a, b, alphas)
    values = line.coords["alpha"]
    if correct is None:
        points: AffineFamily = line
    else:
        if not callable(correct):
            raise bad_argument(
                "interpolate", "correct", expected="a callable correct(model, state, alpha)", found=correct
            )
        corrected = [
            as_state(correct(model, line.state(k), float(al)), function="interpolate", argument="correct(...)")
            for k, al in enumerate(values)
        ]
        points = AffineFamily.points(corrected, labels=values)
    curve = evaluate(
        model,
        points,
        data,
        metrics=metrics,
        bn=bn,
        bn_batch_size=bn_batch_size,
        batch_size=batch_size,
        device=device,
        progress=progress,
    )
    if correct is not None:
        curve = curve.rename({"point": "alpha"})
    curve = add_derived(curve)
    curve.attrs.update(
        analysis="interpolation",
        endpoints=to_json([checkpoint_record(a), checkpoint_record(b)]),
        correction=getattr(correct, "name", type(correct).__name__) if correct is not None else "none",
    )
    return curve
