"""Figures: every function takes a result of the library (and optionally the Axes to draw on),
draws it, and returns the matplotlib Axes. matplotlib is imported on first use.

Results hold fractions; figures show accuracy and error in percent and say so in their labels.

In a script nothing appears on screen; save the figure with ``path=`` (the format follows the
suffix) or from the returned Axes::

    from landscape import plot

    plot.surface(surface, log_levels=True, path="surface.png")
    ax = plot.curves({"vanilla": before, "weights": after})
    ax.set_title("my title")
    ax.figure.savefig("curves.pdf", bbox_inches="tight")

3-D views: :func:`surface3d` (matplotlib; interactive in Jupyter with ``%matplotlib widget``)
and :func:`export_vtk` (a ``.vtu``/``.vtk`` file for ParaView, written by meshio).
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> module that defines it
_FUNCTIONS = {
    "curve": "landscape.plot.connectivity",
    "curves": "landscape.plot.connectivity",
    "surface": "landscape.plot.connectivity",
    "surface3d": "landscape.plot.connectivity",
    "export_vtk": "landscape.plot.export",
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
