"""Shared look: labels, colours and axis creation for every figure."""

from __future__ import annotations

from typing import Any

SPLIT_COLORS = {"train": "#1f77b4", "test": "#d62728", "data": "#333333"}
LABELS = {
    "loss": "cross-entropy loss",
    "accuracy": "accuracy (%)",
    "error": "error (%)",
    "alpha": "interpolation coefficient α",
}
PERCENT = {"accuracy", "error"}


def new_axes(ncols: int = 1, *, width: float = 4.2, height: float = 3.2) -> list[Any]:
    import matplotlib.pyplot as plt

    _, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False, constrained_layout=True)
    return list(axes[0])


def scaled(values: Any, metric: str) -> Any:
    """Accuracy and error are shown in percent."""
    return values * 100 if metric in PERCENT else values


def label(metric: str) -> str:
    return LABELS.get(metric, metric)


def split_color(split: str, index: int) -> str:
    return SPLIT_COLORS.get(split, f"C{index + 2}")
