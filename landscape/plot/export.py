"""Surfaces as VTK files for ParaView and VisIt, written by meshio.

Li et al. (2018) render their published loss surfaces in ParaView from VTK files; this writes
the same kind of file from any result over (``alpha``, ``beta``). meshio writes VTK's XML
unstructured grid (``.vtu``) and the legacy format (``.vtk``); it has no writer for
PolyData (``.vtp``), which ParaView treats no differently for a surface, so ``.vtu`` is the
default.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from landscape.core.errors import bad_argument
from landscape.plot.style import PathLike

__all__ = ["VTK_SUFFIXES", "export_vtk"]

VTK_SUFFIXES = {".vtu": "vtu", ".vtk": "vtk"}


def export_vtk(
    ds: xr.Dataset,
    path: PathLike,
    *,
    metric: str = "loss",
    split: str | None = "test",
    log: bool = False,
    vmax: float | None = None,
) -> Path:
    """Write a surface over (``alpha``, ``beta``) as a quadrilateral mesh whose height is
    ``metric``, with every variable of the result attached to the points.

    Parameters
    ----------
    ds
        From :func:`landscape.connectivity.plane` or :func:`~landscape.connectivity.random_plane`.
    path
        ``.vtu`` (VTK XML unstructured grid) or ``.vtk`` (legacy VTK).
    metric, split
        The height of the surface; variables that keep other dims after selecting ``split``
        are left out.
    log
        Height is log10 of the metric (the attached values stay as they are).
    vmax
        Clip the height at this value (before the log), as Li et al.'s ``--zmax``.

    Returns
    -------
    pathlib.Path
        The file written. Its points are ``(alpha, beta, height)`` in the order of the
        result's ``beta`` (outer) and ``alpha`` (inner) coordinates; point data hold each
        variable over (alpha, beta) as the result stores it (fractions for accuracy and
        error), and ``height``. Non-finite heights are drawn at the largest finite one; the
        point data keep them as they are.

    Examples
    --------
    >>> surface = connectivity.random_plane(model, a, data, resolution=41)  # doctest: +SKIP
    >>> plot.export_vtk(surface, "surface.vtu", log=True)  # then File > Open in ParaView  # doctest: +SKIP
    """
    import meshio

    target = Path(path)
    if target.suffix.lower() not in VTK_SUFFIXES:
        raise bad_argument(
            "plot.export_vtk",
            "path",
            expected=f"a file name ending in {' or '.join(VTK_SUFFIXES)}",
            found=repr(str(path)),
            fix="Use .vtu (ParaView opens it as it opens .vtp; meshio writes no .vtp).",
        )
    if "alpha" not in ds.dims or "beta" not in ds.dims:
        raise bad_argument(
            "plot.export_vtk", "ds", expected="a result over alpha and beta", found=f"dims {dict(ds.sizes)}"
        )
    if metric not in ds:
        raise bad_argument(
            "plot.export_vtk", "metric", expected=f"a variable of the result {sorted(ds.data_vars)}", found=repr(metric)
        )
    selected = ds.sel(split=split) if split is not None and "split" in ds.dims else ds
    fields = {
        str(name): np.asarray(var.transpose("beta", "alpha").values, dtype=np.float64).ravel()
        for name, var in selected.data_vars.items()
        if set(var.dims) == {"alpha", "beta"} and np.issubdtype(var.dtype, np.number)
    }
    if metric not in fields:
        raise bad_argument(
            "plot.export_vtk",
            "split",
            expected=f"a split that leaves {metric!r} over alpha and beta only",
            found=f"dims {selected[metric].dims}",
        )
    height = fields[metric].copy()
    if vmax is not None:
        height = np.minimum(height, vmax)
    finite = np.isfinite(height)
    if log:
        if not np.any(finite) or height[finite].min() <= 0:
            raise bad_argument(
                "plot.export_vtk", "log", expected=f"positive values of {metric!r}", found="zero or negative values"
            )
        height = np.log10(height)
    if not np.all(finite):
        height[~finite] = height[finite].max() if np.any(finite) else 0.0
    alphas, betas = ds.alpha.values.astype(np.float64), ds.beta.values.astype(np.float64)
    grid_alpha, grid_beta = np.meshgrid(alphas, betas)  # (beta, alpha), alpha fastest
    points = np.column_stack([grid_alpha.ravel(), grid_beta.ravel(), height])
    n_alpha, n_beta = alphas.size, betas.size
    corner = (np.arange(n_beta - 1)[:, None] * n_alpha + np.arange(n_alpha - 1)[None, :]).ravel()
    quads = np.column_stack([corner, corner + 1, corner + 1 + n_alpha, corner + n_alpha])
    mesh = meshio.Mesh(points, [("quad", quads)], point_data={**fields, "height": height})
    target.parent.mkdir(parents=True, exist_ok=True)
    mesh.write(target, file_format=VTK_SUFFIXES[target.suffix.lower()])
    return target
