"""Figures of alignment and fusion results.

Every function takes a result of the library (an ``Alignment``, interpolation curves,
``landscape.evaluate`` tables) or the combined Dataset of the matching ``analyses/`` script,
optionally an Axes and a ``path`` to save to, draws it, and returns the Axes. Accuracy is drawn
in percent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from landscape.core.errors import bad_argument
from landscape.plot.style import PathLike, label, mean_and_spread, one_axes, save

__all__ = ["alignment_barriers", "fusion_accuracy", "objective_history", "permutation_matrix"]

REPEATS = ("pair", "seed")


def _alignment_dataset(alignment: Any, function: str) -> xr.Dataset:
    """``Alignment`` objects and their ``to_dataset()`` alike."""
    if hasattr(alignment, "to_dataset") and not isinstance(alignment, xr.Dataset):
        alignment = alignment.to_dataset()
    if not isinstance(alignment, xr.Dataset) or "objective" not in alignment:
        raise bad_argument(
            function,
            "alignment",
            expected="an Alignment (from landscape.alignment.align) or its .to_dataset()",
            found=type(alignment).__name__,
        )
    return alignment


def objective_history(alignment: Any, ax: Any = None, *, path: PathLike | None = None) -> Any:
    """The matching objective after every round of :func:`landscape.alignment.align`.

    Parameters
    ----------
    alignment
        An ``Alignment`` or ``Alignment.to_dataset()``.
    ax
        Axes to draw into (default: a new figure).
    path
        Also write the figure to this file.

    Returns
    -------
    matplotlib.axes.Axes

    Examples
    --------
    >>> plot.objective_history(align(model, a, b), path="objective.png")  # doctest: +SKIP
    """
    data = _alignment_dataset(alignment, "plot.objective_history")
    ax = one_axes(ax)
    ax.plot(data["round"].values, data["objective"].values, marker="o", markersize=3)
    ax.set_xlabel("round (0: identity)")
    ax.set_ylabel("objective")
    ax.set_title(f"align(method={data.attrs.get('method', '?')!r})", fontsize="medium")
    rounds = data["round"].values
    if rounds.size and rounds.max() <= 12:
        ax.set_xticks(rounds)
    ax.grid(alpha=0.3)
    save(ax, path)
    return ax


def permutation_matrix(alignment: Any, group: str, ax: Any = None, *, path: PathLike | None = None) -> Any:
    """The permutation (or transport plan) of one group as an image: row ``i`` is the
    reference unit, column ``j`` the other network's unit it receives.

    Parameters
    ----------
    alignment
        An ``Alignment`` or ``Alignment.to_dataset()``.
    group
        A symmetry group's name (``alignment.to_dataset().group.values``).
    path
        Also write the figure to this file.

    Returns
    -------
    matplotlib.axes.Axes
    """
    data = _alignment_dataset(alignment, "plot.permutation_matrix")
    if f"perm[{group}]" in data:
        index = data[f"perm[{group}]"].values
        image = np.zeros((index.size, index.size))
        image[np.arange(index.size), index] = 1.0
    elif f"plan[{group}]" in data:
        image = data[f"plan[{group}]"].values
        image = image / image.sum(axis=1, keepdims=True)
    else:
        raise bad_argument(
            "plot.permutation_matrix",
            "group",
            expected=f"one of the alignment's groups {[str(g) for g in data.group.values]}",
            found=repr(group),
        )
    ax = one_axes(ax, width=4, height=4)
    ax.imshow(image, cmap="Greys", interpolation="nearest")
    ax.set_xlabel("unit of the other network")
    ax.set_ylabel("unit of the reference")
    ax.set_title(group, fontsize="medium")
    save(ax, path)
    return ax


def _as_alignment_table(results: Mapping[str, xr.Dataset] | xr.Dataset) -> xr.Dataset:
    if isinstance(results, xr.Dataset):
        if "alignment" not in results.dims:
            raise bad_argument(
                "plot.alignment_barriers",
                "results",
                expected="curves by method ({'vanilla': curve, 'weights': curve, ...}) or a Dataset with an "
                "'alignment' dimension (analyses/alignment_barriers.py)",
                found=f"a Dataset with dims {dict(results.sizes)}",
            )
        return results
    if not isinstance(results, Mapping) or not results:
        raise bad_argument(
            "plot.alignment_barriers",
            "results",
            expected="a non-empty mapping of method name to interpolation curve",
            found=type(results).__name__,
        )
    names = list(results)
    for name, curve in results.items():
        if not isinstance(curve, xr.Dataset) or "alpha" not in curve.dims:
            raise bad_argument(
                "plot.alignment_barriers",
                f"results[{name!r}]",
                expected="an interpolation curve (landscape.connectivity.interpolate)",
                found=type(curve).__name__,
            )
    return xr.concat(
        [results[n] for n in names],
        dim=pd.Index(names, name="alignment"),
        data_vars="all",
        coords="minimal",
        compat="override",
        join="outer",
        combine_attrs="drop_conflicts",
    )


def _barrier_values(table: xr.Dataset, metric: str) -> xr.DataArray:
    """Midpoint accuracy, or a barrier (stored by the analysis, else computed from the curve)."""
    if metric == "accuracy":
        return table["accuracy"].sel(alpha=0.5, method="nearest")
    if metric not in ("loss_barrier", "error_barrier"):
        raise bad_argument(
            "plot.alignment_barriers",
            "metric",
            expected="'accuracy' (at alpha 0.5), 'loss_barrier' or 'error_barrier'",
            found=repr(metric),
        )
    if metric in table:
        values = table[metric]
        return values.sel(kind="max_minus_mean") if "kind" in values.dims else values
    from landscape.connectivity import barrier

    return barrier(table, metric=metric.removesuffix("_barrier"))


def alignment_barriers(
    results: Mapping[str, xr.Dataset] | xr.Dataset,
    ax: Any = None,
    *,
    metric: str = "accuracy",
    split: str = "test",
    correction: str = "none",
    path: PathLike | None = None,
) -> Any:
    """Accuracy halfway between two networks (or the barrier) for every alignment method.

    Parameters
    ----------
    results
        Interpolation curves by method, as the library returns them
        (``{"vanilla": interpolate(model, a, b, data), "weights": interpolate(model, a, b_aligned, data)}``),
        drawn as one bar per method; or the combined Dataset of ``analyses/alignment_barriers.py``
        over (``width``, ``depth``, ``pair``, ``alignment``, ``correction``, ``alpha``, ``split``),
        drawn against width (first depth). Repeats over ``pair`` or ``seed`` give mean and
        standard deviation.
    metric
        ``"accuracy"`` (at alpha = 0.5, in percent, with the endpoints' mean as a dashed line),
        ``"loss_barrier"`` or ``"error_barrier"`` (max over alpha minus the endpoints' mean).
    split
        Which split.
    correction
        For the analysis' Dataset: ``"none"``, ``"repair"`` or ``"bn_reset"``.
    path
        Also write the figure to this file.

    Returns
    -------
    matplotlib.axes.Axes

    Examples
    --------
    >>> plot.alignment_barriers({"vanilla": before, "weights": after}, path="midpoints.png")  # doctest: +SKIP
    """
    table = _as_alignment_table(results)
    if "split" in table.dims:
        table = table.sel(split=split)
    corrected = "correction" in table.dims
    if corrected:
        table = table.sel(correction=correction)
    elif correction != "none":
        raise bad_argument(
            "plot.alignment_barriers",
            "correction",
            expected="'none' for results without a correction dimension",
            found=repr(correction),
            fix="Pass curves corrected with REPAIR as their own entries, e.g. 'weights + REPAIR'.",
        )
    if "depth" in table.dims:
        table = table.isel(depth=0)
    values = _barrier_values(table, metric)
    shown = values * 100 if metric in ("accuracy", "error_barrier") else values
    ends = None
    if metric == "accuracy":
        acc = table["accuracy"].isel(alignment=0)
        ends = (acc.isel(alpha=0) + acc.isel(alpha=-1)) * 50
    methods = [str(m) for m in table["alignment"].values]
    names = ["vanilla" if m == "none" else m for m in methods]
    ax = one_axes(ax)
    ylabel = f"{split} accuracy at α = 0.5 (%)" if metric == "accuracy" else f"{split} {label(metric)}"
    if "width" in table.dims:
        widths = table["width"].values
        if ends is not None:
            mean, spread = mean_and_spread(ends, REPEATS)
            ax.errorbar(widths, mean, yerr=spread, color="k", ls="--", marker="s", ms=3, label="endpoints")
        styles = ["-", "-", "-", "--", ":"]
        drawn: list[tuple[str, np.ndarray]] = []
        for i, (method, name) in enumerate(zip(methods, names)):
            mean, spread = mean_and_spread(shown.sel(alignment=method), REPEATS)
            style: dict[str, object] = {"marker": "o", "ms": 3, "ls": styles[i % len(styles)]}
            same = next((other for other, values in drawn if np.array_equal(values, mean, equal_nan=True)), None)
            if same is not None:  # e.g. exact OT finds weight matching's permutation: say so
                style = {"marker": "x", "ms": 6, "ls": (0, (4, 3))}
                name = f"{name} (same as {same})"
            ax.errorbar(widths, mean, yerr=spread, capsize=2, color=f"C{i}", label=name, **style)
            drawn.append((name, mean))
        ax.set_xscale("log", base=2)
        ax.set_xticks(widths, [str(int(w)) for w in widths])
        ax.set_xlabel("width")
        ax.legend(frameon=False, fontsize="small")
    else:
        means, spreads = zip(*(mean_and_spread(shown.sel(alignment=m), REPEATS) for m in methods))
        position = np.arange(len(methods))
        bars = ax.bar(
            position,
            [float(m) for m in means],
            yerr=None if spreads[0] is None else [float(s) for s in spreads],
            capsize=3,
            color=[f"C{i}" for i in range(len(methods))],
        )
        ax.bar_label(bars, fmt="%.1f" if metric != "loss_barrier" else "%.3g", fontsize="small", padding=2)
        ax.set_xticks(
            position, names, rotation=20 if len(methods) > 4 else 0, ha="right" if len(methods) > 4 else "center"
        )
        if ends is not None:
            mean, _ = mean_and_spread(ends, REPEATS)
            ax.axhline(float(mean), color="k", ls="--", lw=1, label="endpoints (mean)")
            ax.legend(frameon=False, fontsize="small", loc="lower right")
        ax.axhline(0, color="k", lw=0.8)
        ax.margins(y=0.12)
    ax.set_ylabel(ylabel)
    if corrected:
        what = {"none": "no correction", "repair": "REPAIR", "bn_reset": "BN reset"}.get(correction, correction)
        title = "interpolation midpoint" if metric == "accuracy" else "barrier (max over α minus endpoints' mean)"
        ax.set_title(f"{title}, {what}", fontsize="medium")
    ax.grid(alpha=0.3, axis="y")
    save(ax, path)
    return ax


def _accuracy_table(results: Any, split: str) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    """(names, mean, spread) in fractions from any of the accepted layouts."""
    function = "plot.fusion_accuracy"
    if isinstance(results, xr.Dataset):
        if "test_accuracy" in results and "model" in results["test_accuracy"].dims:
            values = results["test_accuracy"]
            names = [str(m) for m in values["model"].values]
            mean, spread = mean_and_spread(values, ("seed",))
            return names, mean, spread
        if "accuracy" in results and "point" in results["accuracy"].dims:
            values = results["accuracy"]
            if "split" in values.dims:
                values = values.sel(split=split)
            names = [str(p) for p in values["point"].values]
            mean, spread = mean_and_spread(values, ("seed",))
            return names, mean, spread
        raise bad_argument(
            function,
            "results",
            expected="landscape.evaluate(model, {name: state, ...}, data), a mapping of name to accuracy, or "
            "analyses/alignment_fusion.py's Dataset ('test_accuracy' over 'model')",
            found=f"a Dataset with variables {sorted(results.data_vars)}",
        )
    if isinstance(results, Mapping) and results:
        names, means = [], []
        for name, value in results.items():
            if isinstance(value, xr.Dataset):
                value = value["accuracy"]
            if isinstance(value, xr.DataArray):
                if "split" in value.dims:
                    value = value.sel(split=split)
                if value.size != 1:
                    raise bad_argument(
                        function,
                        f"results[{name!r}]",
                        expected="one accuracy (a number, or an evaluate() result of one point)",
                        found=f"{value.size} values over {value.dims}",
                    )
                value = float(value.values.ravel()[0])
            names.append(str(name))
            means.append(float(value))
        return names, np.array(means), None
    raise bad_argument(function, "results", expected="a Dataset or a non-empty mapping", found=type(results).__name__)


def fusion_accuracy(results: Any, ax: Any = None, *, split: str = "test", path: PathLike | None = None) -> Any:
    """Accuracy of parents, averages, fused models and the ensemble: one horizontal bar per
    model, from zero, in percent, with the value written at the end of each bar.

    Parameters
    ----------
    results
        Any of: ``landscape.evaluate(model, {"parent 0": a, "fused": fused, ...}, data)``
        (``accuracy`` over ``point`` and ``split``); a mapping of name to an accuracy (a
        fraction) or to such a one-point result; the combined Dataset of
        ``analyses/alignment_fusion.py`` (``test_accuracy`` over ``model``, spread over ``seed``).
    split
        Which split of an ``evaluate`` result.
    path
        Also write the figure to this file.

    Returns
    -------
    matplotlib.axes.Axes

    Examples
    --------
    >>> table = ls.evaluate(model, {"parent 0": a, "parent 1": b, "fused": fuse(model, [a, b])}, data)  # doctest: +SKIP
    >>> plot.fusion_accuracy(table, path="fusion.png")  # doctest: +SKIP
    """
    names, mean, spread = _accuracy_table(results, split)
    ax = one_axes(ax, width=6, height=0.9 + 0.32 * len(names))
    position = np.arange(len(names))[::-1]
    colors = ["0.6" if n.startswith("parent") else "C0" for n in names]
    bars = ax.barh(
        position, mean * 100, xerr=None if spread is None else spread * 100, capsize=3, color=colors, height=0.7
    )
    ax.bar_label(bars, fmt="%.1f", fontsize="small", padding=6 if spread is not None else 3)
    ax.set_yticks(position, names, fontsize="small")
    top = float(np.nanmax(mean * 100 + (0 if spread is None else np.nan_to_num(spread) * 100)))
    ax.set_xlim(0, min(100.0, top * 1.12) if top > 0 else 1.0)
    ax.set_xlabel(f"{split} accuracy (%)")
    ax.grid(alpha=0.3, axis="x")
    save(ax, path)
    return ax
