"""Curvature statistics at every point of a point set (a line, a plane, a list of states),
labelled like :func:`landscape.evaluate`'s results, written as they go and resumable."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import xarray as xr
from torch import nn

from landscape.core.errors import bad_argument, describe
from landscape.core.family import AffineFamily, as_family
from landscape.core.io import open_run, run_settings
from landscape.core.metrics import Metric
from landscape.core.progress import progress_bar
from landscape.core.state import State
from landscape.core.tied import canonical_state, tied_groups
from landscape.curvature._api import (
    DEFAULT_TOL,
    BlocksArg,
    _check_eigen_options,
    _common_attrs,
    eigen_blocks,
    loss_name,
    products_for,
    setup_for,
    trace_blocks,
)
from landscape.curvature._setup import (
    DEFAULT_BN_BATCH_SIZE,
    Problem,
    Setup,
    check_positive_int,
    point_problem,
    resolve_blocks,
)

__all__ = ["STATISTICS", "curvature"]

STATISTICS = ("top_eigenvalue", "eigenvalues", "trace", "loss")


def _check_statistics(function: str, statistics: object) -> tuple[str, ...]:
    chosen = (statistics,) if isinstance(statistics, str) else tuple(statistics)  # type: ignore[arg-type]
    unknown = [s for s in chosen if s not in STATISTICS]
    if not chosen or unknown or len(set(chosen)) != len(chosen):
        raise bad_argument(
            function,
            "statistics",
            expected=f"distinct names from {STATISTICS}",
            found=describe(statistics) if not unknown else repr(unknown[0]),
        )
    return chosen


def _point_statistics(
    problem: Problem,
    statistics: tuple[str, ...],
    blocks: dict[str, list[str]] | None,
    *,
    k: int,
    which: str,
    probes: int,
    tol: float,
    maxiter: int | None,
    seed: int,
) -> xr.Dataset:
    """The chosen statistics at one point, as a Dataset without the point set's dims."""
    variables: dict[str, object] = {}
    count = 0
    layer = ("layer",) if blocks is not None else ()
    names = list(blocks) if blocks is not None else [""]

    def stacked(values: dict[str, object]) -> np.ndarray:
        return np.stack([np.asarray(values[name], dtype=np.float64) for name in names]) if blocks else values[""]

    if "top_eigenvalue" in statistics or "eigenvalues" in statistics:
        wanted = k if "eigenvalues" in statistics else 1
        values, _, used = eigen_blocks(
            problem, blocks, k=wanted, which=which, tol=tol, maxiter=maxiter, seed=seed, tick=lambda n: None
        )
        count += used
        eig = stacked(values)
        if "eigenvalues" in statistics:
            variables["eigenvalues"] = ((*layer, "k"), eig)
        if "top_eigenvalue" in statistics:
            variables["top_eigenvalue"] = (layer, eig[..., 0])
    if "trace" in statistics:
        mean, se, used = trace_blocks(problem, blocks, probes=probes, seed=seed, tick=lambda n: None)
        count += used
        variables["trace"] = (layer, stacked(mean))
        variables["trace_se"] = (layer, stacked(se))
    if "loss" in statistics:
        variables["loss"] = ((), products_for(problem).mean_loss())
    variables["products"] = ((), count)
    coords: dict[str, object] = {}
    if "eigenvalues" in statistics:
        coords["k"] = np.arange(1, k + 1)
    if blocks is not None:
        coords["layer"] = names
    return xr.Dataset(variables, coords=coords)


def _settings(
    setup: Setup,
    family: AffineFamily,
    statistics: tuple[str, ...],
    blocks: dict[str, list[str]] | None,
    options: dict[str, object],
) -> dict[str, object]:
    """The run fingerprint (:func:`landscape.core.io.run_settings`): everything that changes
    the numbers, for a resumed run to check against."""
    data = {"x": setup.x, "y": setup.y}
    if setup.bn_inputs is not None:
        data["bn_inputs"] = setup.bn_inputs
    return run_settings(
        "curvature",
        model=setup.model,
        states={f"basis-{i}": state for i, state in enumerate(family.basis)},
        data=data,
        options={
            "weights": family.weights.tolist(),
            "dims": list(family.dims),
            "split": setup.data_attrs(),
            "matrix": setup.matrix,
            "loss": loss_name(setup),
            "bn": setup.bn,
            "bn_batch_size": setup.bn_batch_size,
            # the batches split the sums over examples: other batches change the last bits
            "batch_size": setup.batch_size,
            "statistics": list(statistics),
            "blocks": blocks,
            **options,
        },
    )


def curvature(
    model: nn.Module,
    points: object,
    data: object,
    *,
    statistics: str | Sequence[str] = ("top_eigenvalue", "trace"),
    k: int = 5,
    which: str = "largest",
    probes: int = 100,
    matrix: str = "hessian",
    split: str = "train",
    blocks: BlocksArg = None,
    loss: Metric | None = None,
    tol: float = DEFAULT_TOL,
    maxiter: int | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    bn: str = "keep",
    bn_data: object = None,
    bn_batch_size: int = DEFAULT_BN_BATCH_SIZE,
    out: str | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> xr.Dataset:
    """Curvature statistics of the loss at every point of a point set.

    Each point is treated as :func:`hessian_eigenvalues` and :func:`hessian_trace` treat one
    state, with the same start vector and probes at every point (common random numbers, so
    that differences between points are not sampling noise). Draw the result beside the loss
    of :func:`landscape.connectivity.interpolate` with :func:`landscape.plot.curvature_curve`.

    Parameters
    ----------
    model
        The architecture.
    points
        Anything :func:`landscape.evaluate` accepts: a State, a list of States, a dict of
        named States, or an :class:`~landscape.AffineFamily` (``AffineFamily.line(a, b,
        alphas)``, ``AffineFamily.grid(...)``).
    data
        As in :func:`hessian_operator`.
    statistics
        Any of ``"top_eigenvalue"``, ``"eigenvalues"`` (the ``k`` first in ``which`` order;
        ``top_eigenvalue`` then comes from the same run), ``"trace"`` (Hutchinson, with its
        standard error) and ``"loss"`` (the mean loss on the split, under the same BatchNorm
        treatment).
    k, which, tol, maxiter
        As in :func:`hessian_eigenvalues`.
    probes
        Hutchinson probes per point.
    matrix, split, blocks, loss, seed, batch_size, device
        As in :func:`hessian_eigenvalues`.
    bn, bn_data, bn_batch_size
        As in :func:`landscape.evaluate`: ``"keep"`` uses each point's running statistics
        (interpolated along a line), ``"reset"`` recomputes them at every point.
    out
        A folder: each point's statistics are written there as soon as they are computed,
        and a re-run with the same settings resumes (a folder with other settings is refused).
    progress
        Show a progress bar over points.

    Returns
    -------
    xarray.Dataset
        The point set's dims (``alpha``; ``alpha`` and ``beta``; or ``point``), then
        ``layer`` with ``blocks`` and ``k`` for ``eigenvalues``: ``top_eigenvalue``,
        ``eigenvalues``, ``trace`` and ``trace_se``, ``loss`` (as requested), and
        ``products`` (matrix-vector products per point). ``attrs``: provenance and options.

    Examples
    --------
    >>> import torch, landscape as ls
    >>> from landscape.curvature import curvature
    >>> model = ls.models.create("mlp", width=8, depth=1, seed=0)
    >>> a, b = ls.state_of(model), ls.state_of(ls.models.create("mlp", width=8, depth=1, seed=1))
    >>> data = (torch.randn(64, 40), torch.randint(0, 10, (64,)))
    >>> line = ls.AffineFamily.line(a, b, alphas=3)
    >>> ds = curvature(model, line, data, statistics=("top_eigenvalue", "loss"), device="cpu", progress=False)
    >>> ds.top_eigenvalue.dims
    ('alpha',)
    """
    function = "curvature"
    chosen_statistics = _check_statistics(function, statistics)
    _check_eigen_options(function, k, which, tol, maxiter)
    check_positive_int(function, probes=probes)
    if not isinstance(model, nn.Module):
        raise bad_argument(function, "model", expected="an nn.Module", found=model)
    groups = tied_groups(model)
    family = as_family(
        points,
        function=function,
        argument="points",
        prepare=(lambda s: canonical_state(s, groups)) if groups else None,
    )
    setup = setup_for(
        function,
        model,
        family.basis[0],
        data,
        matrix=matrix,
        split=split,
        loss=loss,
        batch_size=batch_size,
        bn=bn,
        bn_data=bn_data,
        bn_batch_size=bn_batch_size,
        device=device,
    )
    blocks_resolved = resolve_blocks(setup, blocks)
    options = {"k": k, "which": which, "probes": probes, "tol": tol, "maxiter": maxiter, "seed": seed}
    settings = _settings(setup, family, chosen_statistics, blocks_resolved, options) if out is not None else None
    results: list[xr.Dataset] = []
    with (
        open_run(out, settings, function=function) as run,
        progress_bar(total=len(family), desc=function, unit="point", disable=not progress) as bar,
    ):
        for i in range(len(family)):
            step = f"point-{i:06d}"
            if run is not None and run.done(step):
                results.append(run.load(step))
            else:
                problem = point_problem(setup, State(family.state_on(i, setup.device)))
                result = _point_statistics(
                    problem,
                    chosen_statistics,
                    blocks_resolved,
                    k=k,
                    which=which,
                    probes=probes,
                    tol=tol,
                    maxiter=maxiter,
                    seed=seed,
                )
                if run is not None:
                    run.save(step, result)
                results.append(result)
            bar.update(1)
    combined = xr.concat(results, dim="_point", coords="minimal", compat="override", join="override")
    ds = _with_family_dims(combined, family)
    ds.attrs = _common_attrs(
        setup,
        list(family.basis),
        statistics=list(chosen_statistics),
        blocks=list(blocks_resolved) if blocks_resolved is not None else None,
        parameters=int(sum(family.basis[0][key].numel() for key in setup.trainable)),
        **options,
    )
    return ds


def _with_family_dims(combined: xr.Dataset, family: AffineFamily) -> xr.Dataset:
    """Replace the flat ``_point`` axis by the family's dims, in C order."""
    variables = {}
    for name, var in combined.data_vars.items():
        rest = [d for d in var.dims if d != "_point"]
        values = var.transpose("_point", *rest).values.reshape(*family.shape, *var.shape[1:])
        variables[name] = ((*family.dims, *rest), values)
    coords: dict[str, object] = dict(family.coords)
    for name, coord in combined.coords.items():
        if "_point" not in coord.dims:
            coords[name] = coord.values
    return xr.Dataset(variables, coords=coords)
