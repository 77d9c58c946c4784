"""Figures: every function takes a result (and optionally where to draw), computes nothing,
and returns the matplotlib Axes it drew on. matplotlib is imported on first use."""

from __future__ import annotations

import importlib
from typing import Any

# name -> module that defines it
_FUNCTIONS = {
    "curve": "landscape.plot.connectivity",
    "curves": "landscape.plot.connectivity",
    "surface": "landscape.plot.connectivity",
    "instability": "landscape.plot.connectivity",
    "objective_history": "landscape.plot.alignment",
    "permutation_matrix": "landscape.plot.alignment",
    "alignment_barriers": "landscape.plot.alignment",
    "fusion_accuracy": "landscape.plot.alignment",
    "probe_history": "landscape.plot.lottery",
    "locality": "landscape.plot.lottery",
    "imp": "landscape.plot.lottery",
    "basins": "landscape.plot.lottery",
    "detection": "landscape.plot.concepts",
    "guidance": "landscape.plot.concepts",
    "pnes_fit": "landscape.plot.concepts",
    "eigenvalue_density": "landscape.plot.curvature",
    "curvature_curve": "landscape.plot.curvature",
}

__all__ = sorted(_FUNCTIONS)


def __getattr__(name: str) -> Any:
    if name not in _FUNCTIONS:
        raise AttributeError(f"module 'landscape.plot' has no attribute {name!r}")
    value = getattr(importlib.import_module(_FUNCTIONS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
