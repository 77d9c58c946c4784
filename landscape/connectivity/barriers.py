"""Barrier heights of an interpolation curve, in the three definitions in use.

Given values ``L(alpha)`` along the path from ``a`` (alpha = 0) to ``b`` (alpha = 1):

======================  ==========================================================  ==========================================
kind                    definition                                                  used by
======================  ==========================================================  ==========================================
``"max_minus_mean"``    ``max_alpha L(alpha) - (L(0) + L(1)) / 2``                  Ainsworth et al. 2023 (Git Re-Basin);
                                                                                    Frankle et al. 2020 (error barrier height)
``"midpoint"``          ``L(0.5) - (L(0) + L(1)) / 2``                              Jordan et al. 2023 (REPAIR)
``"linear"``            ``max_alpha [L(alpha) - ((1 - alpha) L(0) + alpha L(1))]``  Entezari et al. 2022
======================  ==========================================================  ==========================================

Only alphas in [0, 1] count (extrapolated points are ignored). The two ``max`` forms agree
when the endpoints have equal values. A NaN or Inf between finite endpoints makes the
barrier Inf (a point where the network diverges is not low); a non-finite endpoint makes it
NaN (undefined).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from landscape.core.errors import bad_argument

__all__ = ["BARRIER_KINDS", "barrier", "barriers"]

BARRIER_KINDS = ("max_minus_mean", "midpoint", "linear")
DEFINITIONS = {
    "max_minus_mean": "max over alpha of L(alpha) minus the mean of L(0) and L(1) (Ainsworth et al. 2023)",
    "midpoint": "L(0.5) minus the mean of L(0) and L(1) (Jordan et al. 2023)",
    "linear": "max over alpha of L(alpha) minus (1 - alpha) L(0) - alpha L(1) (Entezari et al. 2022)",
}
# Barriers carry the units of their metric: error and accuracy are fractions (0.02 = 2
# percentage points; only printed tables and figure labels use points), the loss is the
# cross-entropy in nats.
UNITS = {"loss": "nats", "error": "fraction", "accuracy": "fraction"}


def _units(curve: xr.Dataset, metric: str) -> str | None:
    if metric in UNITS:
        return UNITS[metric]
    return curve[metric].attrs.get("units") if metric in curve else None


def _values(curve: xr.Dataset, metric: str) -> xr.DataArray:
    if metric == "error" and "error" not in curve and "accuracy" in curve:
        return 1.0 - curve["accuracy"]
    if metric not in curve:
        raise bad_argument(
            "barrier",
            "metric",
            expected=f"a variable of the curve ({sorted(curve.data_vars)})",
            found=repr(metric),
            fix="Compute the curve with that metric, e.g. interpolate(..., metrics=('loss', 'accuracy')).",
        )
    return curve[metric]


def _at(values: xr.DataArray, alpha: float, kind: str) -> xr.DataArray:
    alphas = values["alpha"].values
    hits = np.flatnonzero(np.isclose(alphas, alpha, rtol=0, atol=1e-9))
    if hits.size == 0:
        raise bad_argument(
            "barrier",
            "curve",
            expected=f"alpha = {alpha} among the curve's alphas (needed by kind={kind!r})",
            found=f"alphas from {alphas.min():g} to {alphas.max():g}",
            fix="Use an odd number of evenly spaced alphas, or include the value explicitly.",
        )
    return values.isel(alpha=int(hits[0]))


def barrier(curve: xr.Dataset, *, metric: str = "loss", kind: str = "max_minus_mean") -> xr.DataArray:
    """Barrier height of ``metric`` along an interpolation curve.

    Parameters
    ----------
    curve
        A Dataset with an ``alpha`` dimension, e.g. from :func:`interpolate`.
    metric
        ``"loss"``, ``"error"`` (1 - accuracy) or any variable where higher is worse.
    kind
        ``"max_minus_mean"``, ``"midpoint"`` or ``"linear"`` (see the module docstring).

    Returns
    -------
    xarray.DataArray
        Over the curve's remaining dims (e.g. ``split``), named ``"{metric}_barrier"``.
        A model interpolated with itself has barrier exactly 0. ``attrs["units"]``:
        ``"fraction"`` for error and accuracy (0.02 is 2 percentage points), ``"nats"``
        for the loss.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> curve = xr.Dataset({"loss": ("alpha", [1.0, 3.0, 2.0])}, coords={"alpha": [0, 0.5, 1]})
    >>> float(barrier(curve, kind="max_minus_mean")), float(barrier(curve, kind="linear"))
    (1.5, 1.5)
    """
    if kind not in BARRIER_KINDS:
        raise bad_argument("barrier", "kind", expected=f"one of {BARRIER_KINDS}", found=repr(kind))
    if not isinstance(curve, xr.Dataset) or "alpha" not in curve.dims:
        raise bad_argument("barrier", "curve", expected="a Dataset with an 'alpha' dimension", found=curve)
    values = _values(curve, metric)
    # A diverged point is as bad as it gets: treat NaN as +Inf so the barrier reports it.
    values = values.where(~np.isnan(values), np.inf)
    start, end = _at(values, 0.0, kind), _at(values, 1.0, kind)
    mean_ends = (start + end) * 0.5
    inside = values.sel(alpha=(values.alpha >= 0) & (values.alpha <= 1))
    if kind == "max_minus_mean":
        height = inside.max("alpha") - mean_ends
    elif kind == "midpoint":
        height = _at(values, 0.5, kind) - mean_ends
    else:
        # start + alpha * (end - start) is exactly start when end == start, so a model with
        # itself gives exactly 0 (the form (1 - alpha) L0 + alpha L1 does not).
        chord = start + inside.alpha * (end - start)
        height = (inside - chord).max("alpha")
    height = height.drop_vars("alpha", errors="ignore")
    height.name = f"{metric}_barrier"
    height.attrs = {"kind": kind, "metric": metric, "definition": DEFINITIONS[kind]}
    units = _units(curve, metric)
    if units is not None:
        height.attrs["units"] = units
    return height


def barriers(
    curve: xr.Dataset, *, metrics: Sequence[str] = ("loss", "error"), kinds: Sequence[str] = BARRIER_KINDS
) -> xr.Dataset:
    """All barrier definitions side by side: one variable per metric over (``kind``, ...).

    Kinds that need a value the curve lacks (``midpoint`` without alpha = 0.5) are NaN.

    Returns
    -------
    xarray.Dataset
        Variables ``"{metric}_barrier"`` with dims (``kind``, remaining dims of the curve),
        each with ``attrs["units"]`` as in :func:`barrier`.
    """
    out = {}
    for metric in metrics:
        rows = []
        for kind in kinds:
            try:
                rows.append(barrier(curve, metric=metric, kind=kind))
            except ValueError:
                if kind != "midpoint":
                    raise
                template = barrier(curve, metric=metric, kind="max_minus_mean")
                rows.append(xr.full_like(template, np.nan))
        stacked = xr.concat(rows, dim="kind").assign_coords(kind=list(kinds))
        stacked.attrs = {"metric": metric}
        units = _units(curve, metric)
        if units is not None:
            stacked.attrs["units"] = units
        out[f"{metric}_barrier"] = stacked
    result = xr.Dataset(out)
    result.attrs = {k: v for k, v in curve.attrs.items()}
    result.attrs["definitions"] = "; ".join(f"{k}: {DEFINITIONS[k]}" for k in kinds)
    return result
