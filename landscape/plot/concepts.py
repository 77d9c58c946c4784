"""Plots of concept probes and guidance: detection accuracy per layer, guidance curves
(effect and perplexity over alpha) and the PNES fit."""

from __future__ import annotations

from typing import Any

import xarray as xr

__all__ = ["detection", "guidance", "pnes_fit"]


def _axes(ax: Any) -> Any:
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(5, 3.5))[1]


def detection(result: xr.Dataset, *, ax: Any = None, label: str | None = None, train: bool = True) -> Any:
    """Validation (solid) and training (dashed) accuracy per layer.

    ``result`` is ``probe.accuracy`` (dim ``layer``), or a Dataset with an extra dim (e.g.
    ``kind`` or ``concept``) whose entries become one line each.
    """
    ax = _axes(ax)
    extra = [d for d in result["val_accuracy"].dims if d != "layer"]
    if extra:
        for value in result[extra[0]].values:
            detection(result.sel({extra[0]: value}), ax=ax, label=str(value), train=train)
        return ax
    line = ax.plot(result["layer"].values, result["val_accuracy"].values, marker="o", ms=3, label=label or "validation")
    if train and "train_accuracy" in result:
        ax.plot(
            result["layer"].values,
            result["train_accuracy"].values,
            ls="--",
            color=line[0].get_color(),
            alpha=0.6,
            label=None if label else "train",
        )
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("layer")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0.4, 1.02)
    ax.legend(frameon=False, fontsize="small")
    return ax


def guidance(curve: xr.Dataset, *, ax: Any = None, label: str | None = None) -> Any:
    """Concept effect (left axis, with its standard error) and perplexity on the reference
    texts (right axis, log scale) over the guidance strength of a :func:`guidance_curve`."""
    ax = _axes(ax)
    alpha = curve["alpha"].values
    effect = curve["effect"].values
    line = ax.plot(alpha, effect, marker="o", ms=3, label=label or "effect")
    if "effect_sem" in curve:
        sem = curve["effect_sem"].values
        ax.fill_between(alpha, effect - sem, effect + sem, color=line[0].get_color(), alpha=0.2, lw=0)
    ax.set_xlabel("alpha (x mean activation norm)" if curve.attrs.get("relative", 1) else "alpha")
    ax.set_ylabel(f"effect ({curve.attrs.get('scorer', 'score')})")
    twin = ax.twinx()
    twin.plot(alpha, curve["perplexity"].values, color="grey", ls="--", marker="s", ms=3, label="perplexity")
    twin.set_yscale("log")
    twin.set_ylabel("perplexity (reference texts)")
    handles = ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    ax.legend(handles[0] + more[0], handles[1] + more[1], frameon=False, fontsize="small")
    return ax


def pnes_fit(fit: xr.Dataset, *, ax: Any = None, label: str | None = None) -> Any:
    """Perplexity-normalised effect over alpha (points) and the fitted curve of :func:`pnes`."""
    ax = _axes(ax)
    points = ax.plot(fit["alpha"].values, fit["normalized_effect"].values, "s", ms=4)
    text = f"PNES {float(fit['pnes']):.3f}, $r^2$ {float(fit['r_squared']):.2f}"
    ax.plot(
        fit["grid_alpha"].values,
        fit["fit_curve"].values,
        color=points[0].get_color(),
        label=f"{label}: {text}" if label else text,
    )
    ax.axhline(0, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("alpha")
    ax.set_ylabel("normalised effect")
    ax.legend(frameon=False, fontsize="small")
    return ax
