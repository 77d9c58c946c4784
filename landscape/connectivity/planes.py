"""Two-dimensional slices of the landscape: the plane through three states (Garipov et al.
2018) and planes and lines along random, filter-normalised directions (Li et al. 2018).

Points are lazy affine families, so a 51 x 51 plane never materialises 2,601 states, and on
the CPU the engine computes a linear first layer 3 times instead of once per point.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn

from landscape.connectivity.interpolation import add_derived
from landscape.core import DEFAULT_BN_BATCH_SIZE
from landscape.core.errors import bad_argument
from landscape.core.evaluate import evaluate
from landscape.core.family import AffineFamily
from landscape.core.metrics import Metric
from landscape.core.state import (
    State,
    as_state,
    check_compatible,
    dot,
    norm,
    parameter_keys,
    random_direction,
    scale,
    sub,
)

__all__ = ["plane", "plane_basis", "random_line", "random_plane"]


def plane_basis(
    a: Mapping[str, Tensor], b: Mapping[str, Tensor], c: Mapping[str, Tensor]
) -> tuple[State, State, dict[str, tuple[float, float]]]:
    """Orthonormal in-plane directions through ``a``, ``b``, ``c`` (Gram-Schmidt, float64
    inner products) and the coordinates of the three states in that basis.

    Inner products and norms run over the weights (:func:`~landscape.core.state.parameter_keys`),
    not BatchNorm running statistics.

    Returns
    -------
    (u, v, anchors)
        ``u`` is ``(b - a) / |b - a|``; ``v`` is the part of ``c - a`` orthogonal to ``u``,
        normalised; ``anchors`` maps ``"a"``, ``"b"``, ``"c"`` to their (alpha, beta)
        coordinates: ``(0, 0)``, ``(|b - a|, 0)`` and ``(<c - a, u>, |v|)``.
    """
    a = as_state(a, function="plane", argument="a")
    b = as_state(b, function="plane", argument="b")
    c = as_state(c, function="plane", argument="c")
    check_compatible(a, b, function="plane", names=("a", "b"))
    check_compatible(a, c, function="plane", names=("a", "c"))
    # Distances and angles over the weights only: BatchNorm running statistics are not
    # coordinates of weight space (they can be an eighth of |b - a|^2). The directions still
    # carry them, so a + x u + y v reproduces b and c in every entry.
    keys = parameter_keys(a)
    u = sub(b, a)
    length_u = norm(u, keys=keys)
    if length_u == 0:
        raise bad_argument(
            "plane", "b", expected="a state different from a", found="b equal to a", fix="Pass three different states."
        )
    u = scale(u, 1.0 / length_u)
    w = sub(c, a)
    along = dot(w, u, keys=keys)
    v = sub(w, scale(u, along))
    length_v = norm(v, keys=keys)
    # float32 states carry ~1e-7 relative rounding: anything within 1e-5 of the line is on it.
    if length_v <= 1e-5 * max(length_u, norm(w, keys=keys)):
        raise bad_argument("plane", "c", expected="a state off the line through a and b", found="c on that line")
    v = scale(v, 1.0 / length_v)
    anchors = {"a": (0.0, 0.0), "b": (length_u, 0.0), "c": (along, length_v)}
    return u, v, anchors


def _span(values: Sequence[float], margin: float, resolution: int) -> np.ndarray:
    low, high = min(values), max(values)
    width = high - low
    return np.linspace(low - margin * width, high + margin * width, resolution)


def _check_resolution(function: str, resolution: int) -> None:
    if not isinstance(resolution, int) or resolution < 2:
        raise bad_argument(function, "resolution", expected="an integer >= 2", found=repr(resolution))


def _with_anchors(ds: xr.Dataset, anchors: dict[str, tuple[float, float]]) -> xr.Dataset:
    names = list(anchors)
    return ds.assign_coords(
        anchor=names,
        anchor_alpha=("anchor", [anchors[n][0] for n in names]),
        anchor_beta=("anchor", [anchors[n][1] for n in names]),
    )


def plane(
    model: nn.Module,
    a: Mapping[str, Tensor],
    b: Mapping[str, Tensor],
    c: Mapping[str, Tensor],
    data: object,
    *,
    resolution: int = 21,
    margin: float = 0.2,
    bn: str = "keep",
    bn_batch_size: int = DEFAULT_BN_BATCH_SIZE,
    metrics: str | Metric | Sequence[str | Metric] = ("loss", "accuracy"),
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> xr.Dataset:
    """The loss surface on the plane through three states (Garipov et al. 2018).

    Coordinates are distances in parameter space along orthonormal in-plane directions:
    ``alpha`` along ``b - a`` and ``beta`` orthogonal to it towards ``c`` (see
    :func:`plane_basis`). The grid covers the three states with a ``margin`` (a fraction of
    the extent) on each side.

    Returns
    -------
    xarray.Dataset
        ``loss``, ``accuracy``, ``error`` over (``alpha``, ``beta``, ``split``), with
        coordinates ``anchor_alpha`` and ``anchor_beta`` over ``anchor`` (``a``, ``b``, ``c``)
        that locate the three states exactly.
    """
    _check_resolution("plane", resolution)
    if margin < 0:
        raise bad_argument("plane", "margin", expected="a non-negative fraction", found=repr(margin))
    u, v, anchors = plane_basis(a, b, c)
    alphas = _span([p[0] for p in anchors.values()], margin, resolution)
    betas = _span([p[1] for p in anchors.values()], margin, resolution)
    family = AffineFamily.grid(as_state(a), (u, v), alphas, betas)
    ds = evaluate(
        model,
        family,
        data,
        metrics=metrics,
        bn=bn,
        bn_batch_size=bn_batch_size,
        batch_size=batch_size,
        device=device,
        progress=progress,
    )
    ds = _with_anchors(add_derived(ds), anchors)
    ds.attrs["analysis"] = "plane"
    # not "coordinates": netCDF reserves that attribute name
    ds.attrs["coordinate_units"] = "distance in parameter space along orthonormal in-plane directions"
    return ds


def _random_surface(
    function: str,
    model: nn.Module,
    state: Mapping[str, Tensor],
    data: object,
    count: int,
    *,
    span: float,
    resolution: int,
    normalization: str | None,
    ignore: Sequence[str] | str,
    seed: int,
    engine: dict[str, object],
) -> xr.Dataset:
    """``count`` (1 or 2) random directions through ``state``, evaluated on a regular grid."""
    _check_resolution(function, resolution)
    if not span > 0:
        raise bad_argument(
            function,
            "span",
            expected="a positive number",
            found=repr(span),
            fix="span is in units of the (normalised) directions; 1.0 is the usual choice.",
        )
    state = as_state(state, function=function, argument="state")
    directions = [
        random_direction(state, normalization=normalization, ignore=ignore, seed=seed + i) for i in range(count)
    ]
    grid = np.linspace(-span, span, resolution)
    if count == 2:
        family = AffineFamily.grid(state, directions, grid, grid)
    else:
        family = AffineFamily(state, directions, grid[:, None], dims=("alpha",), coords={"alpha": grid})
    ds = add_derived(evaluate(model, family, data, **engine))
    if count == 2:
        ds = _with_anchors(ds, {"origin": (0.0, 0.0)})
    ds.attrs.update(analysis=function, normalization=str(normalization), ignore=repr(ignore), seed=seed)
    return ds


def random_plane(
    model: nn.Module,
    state: Mapping[str, Tensor],
    data: object,
    *,
    span: float = 1.0,
    resolution: int = 21,
    normalization: str | None = "filter",
    ignore: Sequence[str] | str = ("bias", "bn"),
    seed: int = 0,
    bn: str = "keep",
    bn_batch_size: int = DEFAULT_BN_BATCH_SIZE,
    metrics: str | Metric | Sequence[str | Metric] = ("loss", "accuracy"),
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> xr.Dataset:
    """The loss surface around ``state`` along two Gaussian random directions (Li et al. 2018).

    The directions are drawn with seeds ``seed`` and ``seed + 1`` and normalised per filter
    by default (see :func:`landscape.core.state.random_direction`); the grid spans
    ``[-span, span]`` in units of those directions.

    Returns
    -------
    xarray.Dataset
        ``loss``, ``accuracy``, ``error`` over (``alpha``, ``beta``, ``split``), with
        ``anchor_alpha``/``anchor_beta`` locating ``state`` at (0, 0).
    """
    engine = dict(
        metrics=metrics, bn=bn, bn_batch_size=bn_batch_size, batch_size=batch_size, device=device, progress=progress
    )
    return _random_surface(
        "random_plane",
        model,
        state,
        data,
        2,
        span=span,
        resolution=resolution,
        normalization=normalization,
        ignore=ignore,
        seed=seed,
        engine=engine,
    )


def random_line(
    model: nn.Module,
    state: Mapping[str, Tensor],
    data: object,
    *,
    span: float = 1.0,
    resolution: int = 21,
    normalization: str | None = "filter",
    ignore: Sequence[str] | str = ("bias", "bn"),
    seed: int = 0,
    bn: str = "keep",
    bn_batch_size: int = DEFAULT_BN_BATCH_SIZE,
    metrics: str | Metric | Sequence[str | Metric] = ("loss", "accuracy"),
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> xr.Dataset:
    """The loss along one Gaussian random direction through ``state`` (Li et al. 2018), drawn
    with ``seed`` (the first direction of :func:`random_plane` with the same seed).

    Returns
    -------
    xarray.Dataset
        ``loss``, ``accuracy``, ``error`` over (``alpha``, ``split``); ``alpha`` in
        ``[-span, span]`` in units of the direction.
    """
    engine = dict(
        metrics=metrics, bn=bn, bn_batch_size=bn_batch_size, batch_size=batch_size, device=device, progress=progress
    )
    return _random_surface(
        "random_line",
        model,
        state,
        data,
        1,
        span=span,
        resolution=resolution,
        normalization=normalization,
        ignore=ignore,
        seed=seed,
        engine=engine,
    )
