"""Figures of interpolation curves, surfaces (heatmap and 3-D) and instability."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from landscape.core.errors import bad_argument
from landscape.plot.style import (
    PathLike,
    label,
    log_ticks,
    new_axes,
    save,
    scaled,
    short_formatter,
    split_color,
    tick_text,
)

__all__ = ["curve", "curves", "instability", "surface", "surface3d"]

# Marker and line style of a curve drawn on top of an identical one, so that both stay visible.
SAME_STYLE = {"linestyle": (0, (4, 3)), "marker": "x", "markersize": 6, "linewidth": 1.2}


def _splits(ds: xr.Dataset) -> list[str | None]:
    return [str(s) for s in ds.split.values] if "split" in ds.dims else [None]


def _axes_for(ax: Any, count: int, function: str) -> list[Any]:
    if ax is None:
        return new_axes(count)
    axes = list(ax) if isinstance(ax, (list, tuple, np.ndarray)) else [ax]
    if len(axes) != count:
        raise bad_argument(function, "ax", expected=f"{count} Axes (one per metric)", found=f"{len(axes)}")
    return axes


def _check_metric(ds: xr.Dataset, metric: str, function: str) -> None:
    if metric not in ds:
        raise bad_argument(
            function, "metric", expected=f"a variable of the result {sorted(ds.data_vars)}", found=repr(metric)
        )


def curve(
    ds: xr.Dataset,
    ax: Any = None,
    *,
    metrics: Sequence[str] = ("loss", "accuracy"),
    label_prefix: str = "",
    linestyle: str = "-",
    color: str | None = None,
    path: PathLike | None = None,
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
    path
        Also write the figure to this file (.png, .pdf, .svg).

    Returns
    -------
    list of matplotlib Axes
        One per metric.

    Examples
    --------
    >>> axes = plot.curve(connectivity.interpolate(model, a, b, data), path="curve.png")  # doctest: +SKIP
    """
    axes = _axes_for(ax, len(metrics), "plot.curve")
    for axis, metric in zip(axes, metrics):
        _check_metric(ds, metric, "plot.curve")
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
    save(axes, path)
    return axes


def curves(
    results: Mapping[str, xr.Dataset],
    ax: Any = None,
    *,
    metric: str = "accuracy",
    split: str = "test",
    styles: Mapping[str, Mapping[str, object]] | None = None,
    path: PathLike | None = None,
) -> Any:
    """Several interpolation curves (e.g. vanilla and aligned) of one metric and split on one Axes.

    A curve whose values equal an earlier one's (weight matching and exact optimal transport
    often find the same permutation) would hide it; it is drawn dashed with crosses and its
    legend entry says ``"(same as <earlier>)"``.

    Parameters
    ----------
    results
        Curves by legend label.
    metric, split
        What to draw (accuracy and error in percent).
    styles
        Optional matplotlib keyword arguments by label (``{"weights + REPAIR": {"linestyle": "--"}}``).
    path
        Also write the figure to this file.

    Returns
    -------
    matplotlib Axes

    Examples
    --------
    >>> plot.curves({"vanilla": before, "weights": after}, metric="loss")  # doctest: +SKIP
    """
    axis = ax if ax is not None else new_axes(1)[0]
    drawn: list[tuple[str, np.ndarray, np.ndarray]] = []
    for i, (name, ds) in enumerate(results.items()):
        _check_metric(ds, metric, "plot.curves")
        values = ds[metric].sel(split=split) if "split" in ds[metric].dims else ds[metric]
        x, y = np.asarray(ds.alpha.values, dtype=float), np.asarray(scaled(values.values, metric), dtype=float)
        same = next(
            (
                other
                for other, ox, oy in drawn
                if ox.shape == x.shape and np.array_equal(ox, x) and np.array_equal(oy, y, equal_nan=True)
            ),
            None,
        )
        style: dict[str, object] = {"marker": ".", "markersize": 4, "color": f"C{i}"}
        style.update(dict((styles or {}).get(name, {})))
        shown = name
        if same is not None:
            style.update(SAME_STYLE)
            shown = f"{name} (same as {same})"
        axis.plot(x, y, label=shown, **style)
        drawn.append((name, x, y))
    axis.set_xlabel(label("alpha"))
    axis.set_ylabel(f"{label(metric)}, {split}")
    axis.grid(alpha=0.3)
    axis.legend(frameon=False, fontsize="small")
    save(axis, path)
    return axis


def _surface_grid(ds: xr.Dataset, metric: str, split: str | None, function: str) -> np.ndarray:
    """The metric over (beta, alpha) as floats, in the unit it is shown in."""
    if "alpha" not in ds.dims or "beta" not in ds.dims:
        raise bad_argument(function, "ds", expected="a result over alpha and beta", found=f"dims {dict(ds.sizes)}")
    _check_metric(ds, metric, function)
    values = ds[metric]
    if split is not None and "split" in values.dims:
        values = values.sel(split=split)
    extra = [d for d in values.dims if d not in ("alpha", "beta")]
    if extra:
        raise bad_argument(
            function,
            "split",
            expected="a split that leaves only alpha and beta",
            found=f"remaining dims {extra}",
            fix="Pass split='test' (or the split you want).",
        )
    return scaled(values.transpose("beta", "alpha").values.astype(float), metric)


def _axis_unit(ds: xr.Dataset) -> str:
    return "distance in parameter space" if ds.attrs.get("analysis", "") == "plane" else "units of the direction"


def surface(
    ds: xr.Dataset,
    ax: Any = None,
    *,
    metric: str = "loss",
    split: str | None = "test",
    log_levels: bool = False,
    levels: int = 20,
    path: PathLike | None = None,
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
        Logarithmic colours and contour levels (for losses spanning decades); the colour
        bar is labelled at 3-7 round values (1-2-5 steps) whatever the range.
    levels
        Number of contour levels.
    path
        Also write the figure to this file.

    Returns
    -------
    matplotlib Axes
        The heatmap's Axes; the colour bar is ``ax.collections[0].colorbar``.

    Examples
    --------
    >>> plot.surface(connectivity.random_plane(model, a, data), log_levels=True, path="surface.png")  # doctest: +SKIP
    """
    import matplotlib.colors as mcolors
    import matplotlib.pyplot as plt
    import matplotlib.ticker as mticker

    grid = _surface_grid(ds, metric, split, "plot.surface")
    finite = grid[np.isfinite(grid)]
    axis = ax if ax is not None else new_axes(1, width=4.6, height=3.8)[0]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    logarithmic = log_levels and low > 0 and high > low
    if logarithmic:
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
    if logarithmic:
        ticks = log_ticks(low, high)
        bar.ax.yaxis.set_major_locator(mticker.FixedLocator(ticks))
        bar.ax.yaxis.set_major_formatter(mticker.FixedFormatter([tick_text(t) for t in ticks]))
        bar.ax.yaxis.set_minor_locator(mticker.NullLocator())
    else:
        bar.ax.yaxis.set_major_formatter(mticker.FormatStrFormatter("%.3g"))
    if "anchor" in ds.coords:
        for name, x, y in zip(ds.anchor.values, ds.anchor_alpha.values, ds.anchor_beta.values):
            axis.plot(x, y, marker="o", color="white", markeredgecolor="black", markersize=7)
            axis.annotate(
                str(name), (x, y), textcoords="offset points", xytext=(5, 5), color="white", fontweight="bold"
            )
    unit = _axis_unit(ds)
    axis.set_xlabel(f"α ({unit})")
    axis.set_ylabel(f"β ({unit})")
    for which in (axis.xaxis, axis.yaxis):  # at most 6 ticks written short: -1, -0.5, 0, ...
        which.set_major_locator(mticker.MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]))
        which.set_major_formatter(short_formatter())
    save(axis, path)
    return axis


def surface3d(
    ds: xr.Dataset,
    ax: Any = None,
    *,
    metric: str = "loss",
    split: str | None = "test",
    log: bool = False,
    vmax: float | None = None,
    elev: float = 30.0,
    azim: float = -60.0,
    path: PathLike | None = None,
) -> Any:
    """A surface over (``alpha``, ``beta``) in 3-D (matplotlib's mplot3d), as in Li et al.
    (2018): height and colour are the metric, reference points are marked on the surface.

    For an interactive view, draw it in a Jupyter notebook with ``%matplotlib widget`` (or in
    a desktop window) and drag; for publication renders, :func:`export_vtk` writes the same
    surface for ParaView.

    Parameters
    ----------
    ds
        From :func:`landscape.connectivity.plane` or :func:`~landscape.connectivity.random_plane`.
    metric, split
        What to draw.
    log
        Height is log10 of the metric (for losses spanning decades); the z ticks show the
        metric's own values.
    vmax
        Clip the metric at this value (in the unit shown), as Li et al. do, so that a few
        diverged points at the edge do not flatten the rest.
    elev, azim
        Viewing angles in degrees.
    path
        Also write the figure to this file.

    Returns
    -------
    mpl_toolkits.mplot3d.axes3d.Axes3D

    Examples
    --------
    >>> plot.surface3d(connectivity.random_plane(model, a, data), log=True, path="surface3d.png")  # doctest: +SKIP
    """
    import matplotlib.pyplot as plt
    import matplotlib.ticker as mticker

    grid = _surface_grid(ds, metric, split, "plot.surface3d")
    if vmax is not None:
        grid = np.minimum(grid, vmax)
    finite = grid[np.isfinite(grid)]
    if log and (finite.size == 0 or finite.min() <= 0):
        raise bad_argument(
            "plot.surface3d",
            "log",
            expected="positive values of the metric",
            found=f"minimum {finite.min() if finite.size else 'none'}",
            fix="Pass log=False.",
        )
    height = np.log10(grid) if log else grid
    if ax is None:
        figure = plt.figure(figsize=(5.6, 4.6), constrained_layout=True)
        axis = figure.add_subplot(projection="3d")
    else:
        axis = ax
        if not hasattr(axis, "plot_surface"):
            raise bad_argument(
                "plot.surface3d",
                "ax",
                expected="a 3-D Axes (figure.add_subplot(projection='3d'))",
                found=type(ax).__name__,
            )
    alpha, beta = np.meshgrid(ds.alpha.values, ds.beta.values)
    axis.plot_surface(alpha, beta, height, cmap="viridis", linewidth=0.2, edgecolor="0.35", antialiased=True, alpha=0.9)
    if "anchor" in ds.coords:
        for name, x, y in zip(ds.anchor.values, ds.anchor_alpha.values, ds.anchor_beta.values):
            i = int(np.abs(ds.beta.values - y).argmin())
            j = int(np.abs(ds.alpha.values - x).argmin())
            z = height[i, j]
            axis.scatter([x], [y], [z], color="white", edgecolor="black", s=30, depthshade=False, zorder=10)
            axis.text(
                x,
                y,
                z,
                f"  {name}",
                fontweight="bold",
                zorder=11,
                bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "alpha": 0.7, "linewidth": 0},
            )
    for which in (axis.xaxis, axis.yaxis):
        which.set_major_locator(mticker.MaxNLocator(nbins=5))
    axis.tick_params(labelsize="small")
    axis.set_xlabel("α")
    axis.set_ylabel("β")
    axis.set_title(f"α, β in {_axis_unit(ds)}", fontsize="small")
    zlabel = label(metric) + (f", {split}" if split else "")
    axis.set_zlabel(zlabel, fontsize="small")
    if log:
        low, high = float(np.nanmin(grid)), float(np.nanmax(grid))
        ticks = log_ticks(low, high, most=5)
        axis.set_zticks(np.log10(ticks))
        axis.zaxis.set_major_formatter(mticker.FixedFormatter([tick_text(t) for t in ticks]))
    axis.view_init(elev=elev, azim=azim)
    save(axis, path)
    return axis


def instability(ds: xr.Dataset, ax: Any = None, *, split: str = "test", path: PathLike | None = None) -> Any:
    """Instability analysis: the error barrier over training steps (for a sweep) with the
    stability threshold, or the error curve between the two children (for one step).

    Parameters
    ----------
    ds
        :func:`landscape.connectivity.instability_sweep` or :func:`~landscape.connectivity.instability`.
    split
        Which split to draw.
    path
        Also write the figure to this file.

    Returns
    -------
    matplotlib Axes
    """
    import matplotlib.ticker as mticker

    axis = ax if ax is not None else new_axes(1)[0]
    threshold = float(ds.attrs.get("threshold", 0.02))
    if "step" in ds.dims:
        barrier = ds["error_barrier"].sel(split=split) if "split" in ds["error_barrier"].dims else ds["error_barrier"]
        steps = ds.step.values
        axis.plot(steps, barrier.values * 100, marker="o", color="C0", label=f"error barrier, {split}")
        axis.axhline(
            threshold * 100, color="0.4", linestyle="--", linewidth=1, label=f"stable below {threshold * 100:g} points"
        )
        xlabel = "training step of the shared start"
        if steps.max() > 10 and steps.min() > 0:
            axis.set_xscale("log")
        elif steps.max() > 10:
            # Linear up to step 1 and logarithmic beyond: step 0 stays on the axis and the
            # early steps, where stability usually changes, are spread out.
            axis.set_xscale("symlog", linthresh=1)
            axis.set_xlim(-0.4, steps.max() * 1.4)
            xlabel += " (log scale above 1)"
        if steps.size <= 8:  # label the measured steps themselves
            axis.xaxis.set_major_locator(mticker.FixedLocator(steps))
            axis.xaxis.set_minor_locator(mticker.NullLocator())
            axis.xaxis.set_major_formatter(short_formatter())
        axis.set_xlabel(xlabel)
        axis.set_ylabel(label("error_barrier"))
        axis.set_ylim(bottom=min(0.0, float(np.nanmin(barrier.values)) * 100))
    else:
        values = ds["error"].sel(split=split) if "split" in ds["error"].dims else ds["error"]
        axis.plot(ds.alpha.values, values.values * 100, marker=".", color="C0", label=f"error, {split}")
        height = ds["error_barrier"].sel(split=split) if "split" in ds["error_barrier"].dims else ds["error_barrier"]
        axis.set_title(f"error barrier {float(height) * 100:.1f} points", fontsize="medium")
        axis.set_xlabel(label("alpha"))
        axis.set_ylabel(label("error"))
    axis.grid(alpha=0.3)
    axis.legend(frameon=False, fontsize="small")
    save(axis, path)
    return axis
