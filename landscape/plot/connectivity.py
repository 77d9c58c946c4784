"""Figures of interpolation curves, surfaces and instability."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from landscape.core.errors import bad_argument
from landscape.plot.style import label, new_axes, scaled, split_color

__all__ = ["curve", "curves", "instability", "surface"]


def _splits(ds: xr.Dataset) -> list[str | None]:
    return [str(s) for s in ds.split.values] if "split" in ds.dims else [None]


def _axes_for(ax: Any, count: int, function: str) -> list[Any]:
    if ax is None:
        return new_axes(count)
    axes = list(ax) if isinstance(ax, (list, tuple, np.ndarray)) else [ax]
    if len(axes) != count:
        raise bad_argument(function, "ax", expected=f"{count} Axes (one per metric)", found=f"{len(axes)}")
    return axes


def curve(
    ds: xr.Dataset,
    ax: Any = None,
    *,
    metrics: Sequence[str] = ("loss", "accuracy"),
    label_prefix: str = "",
    linestyle: str = "-",
    color: str | None = None,
) -> list[Any]:
    """Metrics along an interpolation curve, one panel per metric, train and test.

    Parameters
    ----------
    ds
        A result with an ``alpha`` dimension (e.g. :func:`landscape.connectivity.interpolate`).
    ax
        None (a new figure), or one Axes per metric.
    metrics
        Variables to draw; accuracy and error are shown in percent.
    label_prefix, linestyle, color
        To overlay several curves (e.g. before and after alignment) on the same axes.

    Returns
    -------
    list of matplotlib Axes
        One per metric.
    """
    axes = _axes_for(ax, len(metrics), "plot.curve")
    for axis, metric in zip(axes, metrics):
        if metric not in ds:
            raise bad_argument(
                "plot.curve", "metrics", expected=f"variables of the result {sorted(ds.data_vars)}", found=repr(metric)
            )
        for i, split in enumerate(_splits(ds)):
            values = ds[metric] if split is None else ds[metric].sel(split=split)
            name = f"{label_prefix}{split or ''}".strip() or metric
            axis.plot(
                ds.alpha.values,
                scaled(values.values, metric),
                linestyle,
                marker=".",
                markersize=4,
                color=color or split_color(split or "data", i),
                label=name,
            )
        axis.set_xlabel(label("alpha"))
        axis.set_ylabel(label(metric))
        for end in (0.0, 1.0):
            axis.axvline(end, color="0.85", linewidth=0.8, zorder=0)
        axis.grid(alpha=0.3)
        axis.legend(frameon=False, fontsize="small")
    return axes


def curves(
    results: Mapping[str, xr.Dataset],
    ax: Any = None,
    *,
    metric: str = "accuracy",
    split: str = "test",
    styles: Mapping[str, Mapping[str, object]] | None = None,
) -> Any:
    """Several interpolation curves (e.g. vanilla and aligned) of one metric and split on one Axes.

    Parameters
    ----------
    results
        Curves by legend label.
    styles
        Optional matplotlib keyword arguments by label (``{"weights + REPAIR": {"linestyle": "--"}}``).

    Returns
    -------
    matplotlib Axes
    """
    axis = ax if ax is not None else new_axes(1)[0]
    for i, (name, ds) in enumerate(results.items()):
        values = ds[metric].sel(split=split) if "split" in ds[metric].dims else ds[metric]
        style = {"marker": ".", "markersize": 4, "color": f"C{i}", **dict((styles or {}).get(name, {}))}
        axis.plot(ds.alpha.values, scaled(values.values, metric), label=name, **style)
    axis.set_xlabel(label("alpha"))
    axis.set_ylabel(f"{label(metric)}, {split}")
    axis.grid(alpha=0.3)
    axis.legend(frameon=False, fontsize="small")
    return axis


def surface(
    ds: xr.Dataset,
    ax: Any = None,
    *,
    metric: str = "loss",
    split: str | None = "test",
    log_levels: bool = False,
    levels: int = 20,
) -> Any:
    """A loss surface over (``alpha``, ``beta``): heatmap, contour lines, and the reference
    points (``anchor_alpha``/``anchor_beta``) marked and named.

    Parameters
    ----------
    ds
        From :func:`landscape.connectivity.plane` or :func:`~landscape.connectivity.random_plane`.
    metric, split
        What to draw.
    log_levels
        Logarithmically spaced colour levels (useful for losses spanning decades).
    levels
        Number of contour levels.

    Returns
    -------
    matplotlib Axes
    """
    import matplotlib.colors as mcolors
    import matplotlib.pyplot as plt
    import matplotlib.ticker as mticker

    if "alpha" not in ds.dims or "beta" not in ds.dims:
        raise bad_argument(
            "plot.surface", "ds", expected="a result over alpha and beta", found=f"dims {dict(ds.sizes)}"
        )
    values = ds[metric]
    if split is not None and "split" in values.dims:
        values = values.sel(split=split)
    grid = scaled(values.transpose("beta", "alpha").values.astype(float), metric)
    finite = grid[np.isfinite(grid)]
    axis = ax if ax is not None else new_axes(1, width=4.6, height=3.8)[0]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if log_levels and low > 0:
        norm = mcolors.LogNorm(vmin=low, vmax=high)
        contour_levels = np.geomspace(low, high, levels)
    else:
        norm = mcolors.Normalize(vmin=low, vmax=high)
        contour_levels = np.linspace(low, high, levels)
    mesh = axis.pcolormesh(ds.alpha.values, ds.beta.values, grid, shading="gouraud", cmap="viridis", norm=norm)
    if high > low:
        axis.contour(
            ds.alpha.values, ds.beta.values, grid, levels=contour_levels, colors="white", linewidths=0.5, alpha=0.7
        )
    bar = plt.colorbar(mesh, ax=axis, label=label(metric) + (f", {split}" if split else ""))
    bar.ax.yaxis.set_major_formatter(mticker.FormatStrFormatter("%.3g"))
    bar.ax.yaxis.set_minor_formatter(mticker.NullFormatter())
    if "anchor" in ds.coords:
        for name, x, y in zip(ds.anchor.values, ds.anchor_alpha.values, ds.anchor_beta.values):
            axis.plot(x, y, marker="o", color="white", markeredgecolor="black", markersize=7)
            axis.annotate(
                str(name), (x, y), textcoords="offset points", xytext=(5, 5), color="white", fontweight="bold"
            )
    analysis = ds.attrs.get("analysis", "")
    unit = "distance in parameter space" if analysis == "plane" else "units of the direction"
    axis.set_xlabel(f"α ({unit})")
    axis.set_ylabel(f"β ({unit})")
    return axis


def instability(ds: xr.Dataset, ax: Any = None, *, split: str = "test") -> Any:
    """Instability analysis: the error barrier over training steps (for a sweep) with the
    stability threshold, or the error curve between the two children (for one step).

    Returns
    -------
    matplotlib Axes
    """
    axis = ax if ax is not None else new_axes(1)[0]
    threshold = float(ds.attrs.get("threshold", 0.02))
    if "step" in ds.dims:
        barrier = ds["error_barrier"].sel(split=split) if "split" in ds["error_barrier"].dims else ds["error_barrier"]
        axis.plot(ds.step.values, barrier.values * 100, marker="o", color="C0", label=f"error barrier, {split}")
        axis.axhline(threshold * 100, color="0.4", linestyle="--", linewidth=1, label=f"stable below {threshold:.0%}")
        axis.set_xlabel("training step of the shared start")
        axis.set_ylabel("error barrier (percentage points)")
        if np.all(ds.step.values > 0):
            axis.set_xscale("log")
    else:
        values = ds["error"].sel(split=split) if "split" in ds["error"].dims else ds["error"]
        axis.plot(ds.alpha.values, values.values * 100, marker=".", color="C0", label=f"error, {split}")
        height = ds["error_barrier"].sel(split=split) if "split" in ds["error_barrier"].dims else ds["error_barrier"]
        axis.set_title(f"error barrier {float(height) * 100:.1f} points", fontsize="medium")
        axis.set_xlabel(label("alpha"))
        axis.set_ylabel(label("error"))
    axis.grid(alpha=0.3)
    axis.legend(frameon=False, fontsize="small")
    return axis
