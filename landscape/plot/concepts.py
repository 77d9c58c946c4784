"""Plots of concept probes and guidance: detection accuracy per layer, guidance curves
(effect and perplexity over alpha) and the PNES fit."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from landscape.plot.style import PathLike, log_ticks, one_axes, save, short_formatter, tick_text

__all__ = ["detection", "guidance", "pnes_fit"]


def _alpha_axis(ax: Any, alphas: np.ndarray) -> None:
    """At most 6 alpha ticks, written as short as they go: guidance strengths such as
    -0.025 and 0.025 otherwise crowd into each other at the default size."""
    import matplotlib.ticker as mticker

    ax.xaxis.set_major_locator(
        mticker.MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10], symmetric=bool(np.any(alphas < 0)))
    )
    ax.xaxis.set_major_formatter(short_formatter())


def detection(
    result: xr.Dataset, *, ax: Any = None, label: str | None = None, train: bool = True, path: PathLike | None = None
) -> Any:
    """Validation (solid) and training (dashed) accuracy per layer, in percent.

    Parameters
    ----------
    result
        ``probe.accuracy`` (dim ``layer``), or a Dataset with an extra dim (e.g. ``kind`` or
        ``concept``) whose entries become one line each.
    label
        Legend label of a single line.
    train
        Also draw the training accuracy.
    path
        Also write the figure to this file.

    Returns
    -------
    matplotlib.axes.Axes

    Examples
    --------
    >>> plot.detection(fit_probe(reps).accuracy, path="detection.png")  # doctest: +SKIP
    """
    ax = one_axes(ax)
    extra = [d for d in result["val_accuracy"].dims if d != "layer"]
    if extra:
        for value in result[extra[0]].values:
            detection(result.sel({extra[0]: value}), ax=ax, label=str(value), train=train)
        save(ax, path)
        return ax
    layers = result["layer"].values
    line = ax.plot(layers, result["val_accuracy"].values * 100, marker="o", ms=3, label=label or "validation")
    if train and "train_accuracy" in result:
        ax.plot(
            layers,
            result["train_accuracy"].values * 100,
            ls="--",
            color=line[0].get_color(),
            alpha=0.6,
            label=None if label else "train",
        )
    ax.axhline(50, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("layer")
    ax.set_ylabel("probe accuracy (%)")
    ax.set_ylim(40, 102)
    ax.legend(frameon=False, fontsize="small")
    save(ax, path)
    return ax


def guidance(curve: xr.Dataset, *, ax: Any = None, label: str | None = None, path: PathLike | None = None) -> Any:
    """Concept effect (left axis, with its standard error) and perplexity on the reference
    texts (right axis, log scale) over the guidance strength of a :func:`guidance_curve`.

    Parameters
    ----------
    curve
        :func:`landscape.concepts.guidance_curve` (``effect``, ``perplexity`` over ``alpha``).
    label
        Legend label of the effect line.
    path
        Also write the figure to this file.

    Returns
    -------
    matplotlib.axes.Axes
        The effect's Axes (the perplexity's twin is ``ax.right_ax``).

    Examples
    --------
    >>> plot.guidance(guidance_curve(lm, tok, probe, prompts), path="guidance.png")  # doctest: +SKIP
    """
    import matplotlib.ticker as mticker

    ax = one_axes(ax, width=5.4)
    alpha = curve["alpha"].values
    effect = curve["effect"].values
    line = ax.plot(alpha, effect, marker="o", ms=3, label=label or "effect")
    if "effect_sem" in curve:
        sem = curve["effect_sem"].values
        ax.fill_between(alpha, effect - sem, effect + sem, color=line[0].get_color(), alpha=0.2, lw=0)
    ax.set_xlabel("alpha (x mean activation norm)" if curve.attrs.get("relative", 1) else "alpha")
    ax.set_ylabel(f"effect ({curve.attrs.get('scorer', 'score')})")
    _alpha_axis(ax, alpha)
    twin = ax.twinx()
    perplexity = curve["perplexity"].values
    twin.plot(alpha, perplexity, color="grey", ls="--", marker="s", ms=3, label="perplexity")
    twin.set_yscale("log")
    finite = perplexity[np.isfinite(perplexity) & (perplexity > 0)]
    if finite.size:
        ticks = log_ticks(float(finite.min()), float(finite.max()), most=6)
        twin.yaxis.set_major_locator(mticker.FixedLocator(ticks))
        twin.yaxis.set_major_formatter(mticker.FixedFormatter([tick_text(t) for t in ticks]))
        twin.yaxis.set_minor_locator(mticker.NullLocator())
    twin.set_ylabel("perplexity (reference texts)")
    handles = ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    ax.legend(handles[0] + more[0], handles[1] + more[1], frameon=False, fontsize="small")
    ax.grid(alpha=0.3)
    ax.right_ax = twin
    save(ax, path)
    return ax


def pnes_fit(fit: xr.Dataset, *, ax: Any = None, label: str | None = None, path: PathLike | None = None) -> Any:
    """Perplexity-normalised effect over alpha (points) and the fitted curve of :func:`pnes`.

    Parameters
    ----------
    fit
        :func:`landscape.concepts.pnes` of a guidance curve.
    label
        Prefix of the legend entry (with PNES and r^2).
    path
        Also write the figure to this file.

    Returns
    -------
    matplotlib.axes.Axes

    Examples
    --------
    >>> plot.pnes_fit(pnes(curve), path="pnes.png")  # doctest: +SKIP
    """
    ax = one_axes(ax)
    points = ax.plot(fit["alpha"].values, fit["normalized_effect"].values, "s", ms=4, label="measured")
    text = f"PNES {float(fit['pnes']):.3f}, $r^2$ {float(fit['r_squared']):.2f}"
    ax.plot(
        fit["grid_alpha"].values,
        fit["fit_curve"].values,
        color=points[0].get_color(),
        label=f"{label}: {text}" if label else f"fit: {text}",
    )
    ax.axhline(0, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("alpha")
    ax.set_ylabel("perplexity-normalised effect")
    _alpha_axis(ax, np.asarray(fit["alpha"].values))
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize="small")
    save(ax, path)
    return ax
