"""Figures of curvature: the Hessian's eigenvalue density, and curvature along a path beside
the loss."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from landscape.core.errors import bad_argument
from landscape.plot.style import PathLike, label, new_axes, save, split_color

__all__ = ["curvature_curve", "eigenvalue_density"]

NAMES = {
    "top_eigenvalue": "top Hessian eigenvalue",
    "trace": "Hessian trace",
    "loss": "cross-entropy loss",
}


def _layers(ds: xr.Dataset, layer: str | Sequence[str] | None, function: str) -> list[str | None]:
    if "layer" not in ds.dims:
        if layer is not None:
            raise bad_argument(function, "layer", expected="None for a result without blocks", found=repr(layer))
        return [None]
    names = [str(v) for v in ds.layer.values]
    chosen = names if layer is None else ([layer] if isinstance(layer, str) else list(layer))
    unknown = [n for n in chosen if n not in names]
    if unknown:
        raise bad_argument(function, "layer", expected=f"layers of the result {names}", found=repr(unknown[0]))
    return chosen


def eigenvalue_density(
    ds: xr.Dataset,
    ax: Any = None,
    *,
    layer: str | Sequence[str] | None = None,
    floor: float = 1e-7,
    color: str | None = None,
    label_prefix: str = "",
    path: PathLike | None = None,
) -> Any:
    """The eigenvalue density on a logarithmic scale, as PyHessian draws it.

    Parameters
    ----------
    ds
        From :func:`landscape.curvature.hessian_density`.
    ax
        None (a new figure) or the Axes to draw on.
    layer
        With per-layer blocks: the layer(s) to draw (default all, one line each).
    floor
        Added to the density before taking logarithms (PyHessian adds 1e-7), so that the
        empty stretches between eigenvalue clusters stay visible.
    color, label_prefix
        To overlay several densities.
    path
        Save the figure there (format from the suffix: .png, .pdf, .svg).

    Returns
    -------
    matplotlib Axes
    """
    if "density" not in ds or "eigenvalue" not in ds.dims:
        raise bad_argument(
            "plot.eigenvalue_density",
            "ds",
            expected="a result of hessian_density (density over eigenvalue)",
            found=f"variables {sorted(ds.data_vars)}",
        )
    axis = ax if ax is not None else new_axes(1, width=4.8)[0]
    layers = _layers(ds, layer, "plot.eigenvalue_density")
    for i, name in enumerate(layers):
        density = ds.density if name is None else ds.density.sel(layer=name)
        text = f"{label_prefix}{name or ''}".strip() or None
        axis.semilogy(
            ds.eigenvalue.values,
            density.values + floor,
            color=color or f"C{i}",
            linewidth=1.2,
            label=text,
        )
    matrix = ds.attrs.get("matrix", "hessian")
    axis.set_xlabel("eigenvalue of the " + ("Hessian" if matrix == "hessian" else "GGN"))
    axis.set_ylabel("density (log scale)")
    probes, steps = ds.attrs.get("probes"), ds.attrs.get("lanczos_steps")
    if probes is not None:
        axis.set_title(f"SLQ: {probes} probes x {steps} Lanczos steps", fontsize="small")
    axis.grid(alpha=0.3)
    if any(name is not None for name in layers) or label_prefix:
        axis.legend(frameon=False, fontsize="small")
    save(axis, path)
    return axis


def curvature_curve(
    ds: xr.Dataset,
    ax: Any = None,
    *,
    curve: xr.Dataset | None = None,
    statistics: Sequence[str] = ("top_eigenvalue",),
    split: str = "train",
    layer: str | None = None,
    label_prefix: str = "",
    linestyle: str = "-",
    color: str | None = None,
    path: PathLike | None = None,
) -> list[Any]:
    """Curvature along a path beside the loss: one panel for the loss, one per statistic.

    Parameters
    ----------
    ds
        From :func:`landscape.curvature.curvature` over a line (dim ``alpha``).
    ax
        None (a new figure), or one Axes per panel (the loss first, when there is one).
    curve
        A result of :func:`landscape.connectivity.interpolate` on the same line, whose
        ``loss`` on ``split`` is drawn in the first panel; without it, ``ds.loss`` (when
        computed) is drawn; with neither, there is no loss panel.
    statistics
        ``"top_eigenvalue"`` and/or ``"trace"`` (drawn with a band of two standard errors).
    split
        The split of ``curve`` to draw.
    layer
        For a result with per-layer blocks: which layer's statistics to draw.
    label_prefix, linestyle, color
        To overlay several paths (e.g. before and after alignment) on the same axes.
    path
        Save the figure there (format from the suffix: .png, .pdf, .svg).

    Returns
    -------
    list of matplotlib Axes
        The loss panel (when drawn), then one per statistic.
    """
    function = "plot.curvature_curve"
    if "alpha" not in ds.dims:
        raise bad_argument(function, "ds", expected="a result over alpha (a line)", found=f"dims {dict(ds.sizes)}")
    for name in statistics:
        if name not in ds:
            raise bad_argument(
                function, "statistics", expected=f"variables of the result {sorted(ds.data_vars)}", found=repr(name)
            )
    loss = None
    if curve is not None:
        loss = curve.loss.sel(split=split) if "split" in curve.loss.dims else curve.loss
    elif "loss" in ds:
        loss = ds.loss
    panels = (["loss"] if loss is not None else []) + list(statistics)
    if ax is None:
        axes = new_axes(len(panels))
    else:
        axes = list(ax) if isinstance(ax, (list, tuple, np.ndarray)) else [ax]
        if len(axes) != len(panels):
            raise bad_argument(function, "ax", expected=f"{len(panels)} Axes (one per panel)", found=f"{len(axes)}")
    text = label_prefix.strip() or None
    for axis, panel in zip(axes, panels):
        if panel == "loss":
            assert loss is not None
            axis.plot(
                loss.alpha.values,
                loss.values,
                linestyle,
                marker=".",
                markersize=4,
                color=color or split_color(split, 0),
                label=text,
            )
            where = split if curve is not None else ds.attrs.get("split", split)
            axis.set_ylabel(f"{label('loss')}, {where}")
        else:
            values = ds[panel]
            if "layer" in values.dims:
                if layer is None:
                    raise bad_argument(function, "layer", expected="a layer of the result", found="None")
                values = values.sel(layer=layer)
            axis.plot(
                ds.alpha.values, values.values, linestyle, marker="o", markersize=3, color=color or "C2", label=text
            )
            if panel == "trace" and "trace_se" in ds:
                se = ds.trace_se.sel(layer=layer) if "layer" in ds.trace_se.dims else ds.trace_se
                axis.fill_between(
                    ds.alpha.values,
                    values.values - 2 * se.values,
                    values.values + 2 * se.values,
                    color=color or "C2",
                    alpha=0.2,
                    linewidth=0,
                )
            matrix = ds.attrs.get("matrix", "hessian")
            name = NAMES.get(panel, panel)
            axis.set_ylabel(name if matrix == "hessian" else name.replace("Hessian", "GGN"))
        axis.set_xlabel(label("alpha"))
        for end in (0.0, 1.0):
            axis.axvline(end, color="0.85", linewidth=0.8, zorder=0)
        axis.grid(alpha=0.3)
        if text:
            axis.legend(frameon=False, fontsize="small")
    save(axes, path)
    return axes
