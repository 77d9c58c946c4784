"""Shared look and plumbing of every figure: labels, colours, axis creation, percent scaling,
readable logarithmic ticks, and saving to a file.

Results hold fractions; figures show accuracy and error in percent and say so in the axis
label ("accuracy (%)", "error barrier (percentage points)").
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

SPLIT_COLORS = {"train": "#1f77b4", "test": "#d62728", "data": "#333333"}
LABELS = {
    "loss": "cross-entropy loss (nats)",
    "accuracy": "accuracy (%)",
    "error": "error (%)",
    "alpha": "interpolation coefficient α",
    "loss_barrier": "loss barrier (nats)",
    "error_barrier": "error barrier (percentage points)",
    "test_accuracy": "test accuracy (%)",
    "train_accuracy": "training accuracy (%)",
}
PERCENT = {"accuracy", "error", "error_barrier", "test_accuracy", "train_accuracy", "val_accuracy"}

PathLike = str | os.PathLike


def new_axes(ncols: int = 1, *, width: float = 4.2, height: float = 3.2) -> list[Any]:
    import matplotlib.pyplot as plt

    _, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False, constrained_layout=True)
    return list(axes[0])


def one_axes(ax: Any, *, width: float = 5.0, height: float = 3.5) -> Any:
    """``ax``, or the Axes of a new figure of the given size."""
    return ax if ax is not None else new_axes(1, width=width, height=height)[0]


def scaled(values: Any, metric: str) -> Any:
    """Accuracy and error (fractions in every result) are shown in percent."""
    return values * 100 if metric in PERCENT else values


def label(metric: str) -> str:
    return LABELS.get(metric, metric.replace("_", " "))


def split_color(split: str, index: int) -> str:
    return SPLIT_COLORS.get(split, f"C{index + 2}")


def save(axes: Any, path: PathLike | None, *, dpi: int = 150) -> None:
    """Write the figure that holds ``axes`` (one Axes or a list) to ``path`` when given; the
    format follows the suffix (.png, .pdf, .svg). The figure stays open for further drawing."""
    if path is None:
        return
    first = axes[0] if isinstance(axes, (list, tuple, np.ndarray)) else axes
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    first.figure.savefig(target, dpi=dpi, bbox_inches="tight")


def log_ticks(low: float, high: float, *, most: int = 7) -> list[float]:
    """Between 3 and ``most`` (at least 3) increasing tick values in [low, high] for a
    logarithmic axis, round ones where the range allows.

    Decades alone label a range narrower than ten with one tick or none, which is how colour
    bars of losses between 0.3 and 2 ended up labelled just "1"; this takes 1-2-5 steps (or
    1, 2, ..., 9, or steps of 0.5) when decades are too few, and the two ends and their
    geometric mean when even those are.
    """
    if not (math.isfinite(low) and math.isfinite(high)) or low <= 0 or high <= low:
        return [low] if math.isfinite(low) else []
    most = max(most, 3)
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    for mantissas in ((1.0,), (1.0, 2.0, 5.0), tuple(range(1, 10)), tuple(np.arange(1.0, 10.0, 0.5))):
        ticks = [float(m) * 10.0**e for e in range(first, last + 1) for m in mantissas]
        ticks = [t for t in ticks if low <= t <= high]
        if len(ticks) > most:
            ticks = ticks[:: math.ceil(len(ticks) / most)]
        if len(ticks) >= 3:
            return ticks
    return [low, math.sqrt(low * high), high]


def tick_text(value: float) -> str:
    """A number as a tick label, up to 3 significant digits without an exponent between 1e-4
    and 1e6 (0.05, 0.3, 2, 20, 1000), with one outside (2e-05, 3e+07)."""
    if value == 0 or not 1e-4 <= abs(value) < 1e6:
        return f"{value:.2g}"
    return np.format_float_positional(value, precision=3, unique=True, fractional=False, trim="-")


def short_formatter() -> Any:
    """Tick labels as short as the value allows (0.5, not 0.50), with matplotlib's minus sign."""
    import matplotlib.ticker as mticker

    return mticker.FuncFormatter(lambda value, _: f"{value:g}".replace("-", "\N{MINUS SIGN}"))


def mean_and_spread(values: Any, dims: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None]:
    """Mean and standard deviation over the repeat dims present (``seed``, ``pair``); no spread
    when there is no repeat."""
    present = [d for d in dims if d in values.dims and values.sizes[d] > 1]
    squeezed = values
    for d in dims:
        if d in squeezed.dims and squeezed.sizes[d] == 1:
            squeezed = squeezed.isel({d: 0})
    if not present:
        return np.asarray(squeezed.values), None
    return np.asarray(squeezed.mean(present).values), np.asarray(squeezed.std(present).values)
