"""Figures of random-teacher distillation, lottery tickets and linear basins.

Every function takes a result (and optionally an Axes and a ``path`` to save to), draws it,
and returns the Axes; none computes anything beyond means and spreads over a ``seed``
dimension. Accuracies (fractions in the results) are drawn in percent.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from landscape.plot.style import PathLike, one_axes, save

__all__ = ["basins", "imp", "locality", "probe_history"]

NET_STYLES = (("teacher", {"linestyle": "--"}), ("teacher_calibrated", {"linestyle": ":"}), ("student", {}))


def _mean_spread(values: xr.DataArray) -> tuple[np.ndarray, np.ndarray | None]:
    if "seed" in values.dims and values.sizes["seed"] > 1:
        return values.mean("seed").values, values.std("seed").values
    if "seed" in values.dims:
        values = values.isel(seed=0)
    return values.values, None


def _line(ax: Any, x: np.ndarray, values: xr.DataArray, **style: Any) -> None:
    mean, spread = _mean_spread(values)
    keep = ~np.isnan(mean)
    (line,) = ax.plot(x[keep], mean[keep], marker="o", markersize=3, **style)
    if spread is not None:
        ax.fill_between(x[keep], (mean - spread)[keep], (mean + spread)[keep], color=line.get_color(), alpha=0.2, lw=0)


def probe_history(
    history: xr.Dataset,
    ax: Any = None,
    *,
    probe: str = "linear",
    scaling: str = "standardized",
    path: PathLike | None = None,
) -> Any:
    """Probe accuracy of student and teacher over distillation epochs.

    Parameters
    ----------
    history
        ``distill_random_teacher(...)`` or its ``.history``, or several histories concatenated
        over ``seed`` (drawn as mean and a band of one standard deviation).
    probe, scaling
        Which probe (``"linear"``, ``"knn"``) on which features (``"raw"``, ``"standardized"``).
    ax
        Axes to draw into (default: a new figure).
    path
        Also write the figure to this file (.png, .pdf, .svg).

    Returns
    -------
    matplotlib.axes.Axes
    """
    if not isinstance(history, xr.Dataset) and hasattr(history, "history"):  # the DistillResult itself
        history = history.history
    ax = one_axes(ax)
    acc = history["accuracy"].sel(probe=probe, scaling=scaling) * 100
    epochs = history["epoch"].values
    for net, style in NET_STYLES:
        if net in acc["net"].values:
            _line(ax, epochs, acc.sel(net=net), label=net.replace("_", " "), **style)
    ax.set_xlabel("distillation epoch")
    ax.set_ylabel(f"{probe} probe accuracy, {scaling} (%)")
    ax.set_title("random-teacher student vs its teacher", fontsize="medium")
    ax.legend(frameon=False, fontsize="small")
    save(ax, path)
    return ax


def locality(
    result: xr.Dataset,
    ax: Any = None,
    *,
    probe: str = "linear",
    scaling: str = "standardized",
    path: PathLike | None = None,
) -> Any:
    """Final probe accuracy of the student over ``alpha_init`` (log scale), with the teacher's.

    Parameters
    ----------
    result
        A Dataset with ``accuracy`` over (``alpha_init``, ``net``, ``probe``, ``scaling``) and
        optionally ``seed``, e.g. final-epoch histories concatenated over ``alpha_init``.
    probe, scaling, ax, path
        As in :func:`probe_history`.

    Returns
    -------
    matplotlib.axes.Axes
    """
    ax = one_axes(ax)
    acc = result["accuracy"].sel(probe=probe, scaling=scaling) * 100
    alphas = result["alpha_init"].values.astype(float)
    for net, style in NET_STYLES:
        if net in acc["net"].values:
            _line(ax, alphas, acc.sel(net=net), label=net.replace("_", " "), **style)
    ax.set_xscale("log")
    ax.set_xlabel("alpha_init (distance of the student's init from the teacher)")
    ax.set_ylabel(f"{probe} probe accuracy, {scaling} (%)")
    ax.set_title("locality of the student's initialisation", fontsize="medium")
    ax.legend(frameon=False, fontsize="small")
    save(ax, path)
    return ax


def imp(result: xr.Dataset, ax: Any = None, *, metric: str = "test_accuracy", path: PathLike | None = None) -> Any:
    """Accuracy against the fraction of weights remaining, one line per branch (and start).

    Parameters
    ----------
    result
        ``pruning.imp(...)``, optionally concatenated over ``start`` (e.g. student, init,
        rewound supervised) and/or ``seed``.
    metric
        A variable over ``round`` and ``branch``.
    ax
        Axes to draw into.
    path
        Also write the figure to this file (.png, .pdf, .svg).

    Returns
    -------
    matplotlib.axes.Axes
    """
    ax = one_axes(ax)
    values = result[metric]
    percent = metric.endswith("accuracy")
    if percent:
        values = values * 100
    density = result["density"]
    if "seed" in density.dims:
        density = density.isel(seed=0)
    starts = list(result["start"].values) if "start" in values.dims else [None]
    styles = {"imp": "-", "reinit": ":", "random_mask": "--"}
    for start in starts:
        sub = values.sel(start=start) if start is not None else values
        x = (density.sel(start=start) if "start" in density.dims else density).values * 100
        for branch in sub["branch"].values:
            label = branch if start is None else f"{start}: {branch}"
            _line(ax, x, sub.sel(branch=branch), label=label, linestyle=styles.get(str(branch), "-"))
    ax.set_xscale("log")
    ticks = np.unique(np.round(np.ravel(density.values) * 100, 1))
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks], minor=False)
    ax.set_xticks([], minor=True)
    ax.invert_xaxis()
    ax.set_xlabel("weights remaining (%)")
    ax.set_ylabel(metric.replace("_", " ") + (" (%)" if percent else ""))
    ax.set_title("iterative magnitude pruning", fontsize="medium")
    ax.legend(frameon=False, fontsize="small")
    save(ax, path)
    return ax


def basins(
    result: xr.Dataset,
    ax: Any = None,
    *,
    split: str = "test",
    metric: str = "error_barrier",
    path: PathLike | None = None,
) -> Any:
    """Barrier between two children of every start, with the stability threshold.

    Parameters
    ----------
    result
        ``distillation.linear_basins(...)``, optionally concatenated over ``seed``.
    split
        Which split's barrier to draw.
    metric
        ``"error_barrier"`` (in percentage points) or ``"loss_barrier"``.
    ax
        Axes to draw into.
    path
        Also write the figure to this file (.png, .pdf, .svg).

    Returns
    -------
    matplotlib.axes.Axes
    """
    ax = one_axes(ax)
    values = result[metric]
    if "split" in values.dims:
        values = values.sel(split=split)
    scale = 100.0 if metric == "error_barrier" else 1.0
    mean, spread = _mean_spread(values * scale)
    labels = [str(s) for s in result["start"].values]
    ax.bar(range(len(labels)), mean, yerr=spread, capsize=3, color="tab:blue")
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", rotation_mode="anchor")
    threshold = result.attrs.get("threshold")
    if metric == "error_barrier" and threshold is not None:
        ax.axhline(float(threshold) * 100, color="k", linestyle="--", lw=1, label="stability threshold")
        ax.legend(frameon=False, fontsize="small")
    ax.set_ylabel("error barrier (percentage points)" if metric == "error_barrier" else "loss barrier (nats)")
    ax.set_title("barrier between children with different data orders", fontsize="medium")
    save(ax, path)
    return ax
