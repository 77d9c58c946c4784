"""Figures of alignment and fusion results.

Every function takes a result (and optionally an Axes), draws it, and returns the Axes; none
computes anything beyond means and spreads over repeated runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

__all__ = ["alignment_barriers", "fusion_accuracy", "objective_history", "permutation_matrix"]


def _axes(ax: Any, size: tuple[float, float] = (5, 3.5)) -> Any:
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=size)[1]


def objective_history(alignment: xr.Dataset, ax: Any = None) -> Any:
    """The matching objective after every round of :func:`landscape.alignment.align`.

    Parameters
    ----------
    alignment
        ``Alignment.to_dataset()``.
    ax
        Axes to draw into (default: a new figure).

    Returns
    -------
    matplotlib.axes.Axes
    """
    ax = _axes(ax)
    ax.plot(alignment["round"].values, alignment["objective"].values, marker="o", markersize=3)
    ax.set_xlabel("round (0: identity)")
    ax.set_ylabel("objective")
    ax.set_title(f"align(method={alignment.attrs.get('method', '?')!r})", fontsize="medium")
    ax.grid(alpha=0.3)
    return ax


def permutation_matrix(alignment: xr.Dataset, group: str, ax: Any = None) -> Any:
    """The permutation (or transport plan) of one group as an image: row ``i`` is the
    reference unit, column ``j`` the other network's unit it receives.

    Returns
    -------
    matplotlib.axes.Axes
    """
    ax = _axes(ax, (4, 4))
    if f"perm[{group}]" in alignment:
        index = alignment[f"perm[{group}]"].values
        image = np.zeros((index.size, index.size))
        image[np.arange(index.size), index] = 1.0
    elif f"plan[{group}]" in alignment:
        image = alignment[f"plan[{group}]"].values
        image = image / image.sum(axis=1, keepdims=True)
    else:
        raise KeyError(f"no map for group {group!r}; groups: {list(alignment.group.values)}")
    ax.imshow(image, cmap="Greys", interpolation="nearest")
    ax.set_xlabel("unit of the other network")
    ax.set_ylabel("unit of the reference")
    ax.set_title(group, fontsize="medium")
    return ax


def alignment_barriers(results: xr.Dataset, ax: Any = None, *, split: str = "test", correction: str = "none") -> Any:
    """Midpoint accuracy against width for every alignment method (``analyses/alignment_barriers.py``).

    Parameters
    ----------
    results
        The combined dataset of the analysis: ``accuracy`` over (width, depth, pair, alignment,
        correction, alpha, split). The first depth is drawn; pairs give the error bars.
    split, correction
        Which split, and ``"none"`` or ``"repair"``.

    Returns
    -------
    matplotlib.axes.Axes
    """
    ax = _axes(ax)
    acc = results["accuracy"].sel(split=split, correction=correction)
    if "depth" in acc.dims:
        acc = acc.isel(depth=0)
    mid = acc.sel(alpha=0.5, method="nearest")
    ends = (acc.isel(alpha=0) + acc.isel(alpha=-1)).isel(alignment=0) / 2
    widths = results["width"].values
    ax.errorbar(
        widths, ends.mean("pair"), yerr=ends.std("pair"), color="k", ls="--", marker="s", ms=3, label="endpoints"
    )
    styles = ["-", "-", "-", "--", ":"]
    for i, method in enumerate(results["alignment"].values):
        values = mid.sel({"alignment": method})
        label = "vanilla" if method == "none" else str(method)
        ax.errorbar(
            widths,
            values.mean("pair"),
            yerr=values.std("pair"),
            marker="o",
            ms=3,
            color=f"C{i}",
            ls=styles[i % len(styles)],
            label=label,
        )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("width")
    ax.set_ylabel(f"{split} accuracy at alpha = 0.5")
    what = {"none": "no correction", "repair": "REPAIR", "bn_reset": "BN reset"}.get(correction, correction)
    ax.set_title(f"interpolation midpoint ({what})", fontsize="medium")
    ax.legend(frameon=False, fontsize="small")
    ax.grid(alpha=0.3)
    return ax


def fusion_accuracy(results: xr.Dataset, ax: Any = None) -> Any:
    """Test accuracy of parents, averages, fused models and the ensemble
    (``analyses/alignment_fusion.py``): one bar per ``model`` with the spread over ``seed``.

    Returns
    -------
    matplotlib.axes.Axes
    """
    ax = _axes(ax, (7, 3.5))
    acc = results["test_accuracy"]
    names = [str(m) for m in acc["model"].values]
    mean = acc.mean("seed").values if "seed" in acc.dims else acc.values
    spread = acc.std("seed").values if "seed" in acc.dims else None
    ax.bar(np.arange(len(names)), mean, yerr=spread, color=[f"C{i % 10}" for i in range(len(names))])
    ax.set_xticks(np.arange(len(names)), names, rotation=40, ha="right", fontsize="small")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(max(0.0, float(np.nanmin(mean)) - 0.1), min(1.0, float(np.nanmax(mean)) + 0.05))
    ax.grid(alpha=0.3, axis="y")
    return ax
