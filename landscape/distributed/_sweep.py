"""Map a function over a grid of settings, each cell a task, each result saved as it finishes."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from landscape.core.data import batch_slices
from landscape.core.errors import bad_argument, describe
from landscape.core.io import open_run, to_json
from landscape.core.progress import progress_bar
from landscape.distributed._client import connected
from landscape.distributed._fingerprint import sweep_settings
from landscape.distributed._tasks import run_pieces

__all__ = ["sweep"]


def _unchanged(payload: Any) -> Any:
    return payload


def _call_cell(payload: tuple[Callable[..., Any], Mapping[str, Any]], cell: Mapping[str, Any]) -> Any:
    function, shared = payload
    return function(**cell, **shared)


def _check_grid(grid: object) -> dict[str, list[Any]]:
    if not isinstance(grid, Mapping) or not grid:
        raise bad_argument("sweep", "grid", expected="a non-empty dict of setting name -> values", found=describe(grid))
    checked = {}
    for name, values in grid.items():
        if (
            not isinstance(name, str)
            or isinstance(values, (str, bytes))
            or not isinstance(values, (Sequence, range, np.ndarray))
        ):
            raise bad_argument(
                "sweep",
                "grid",
                expected="string names mapped to lists of values, e.g. {'seed': [0, 1, 2], 'width': [32, 128]}",
                found=f"{name!r}: {describe(values)}",
            )
        values = [v.item() if isinstance(v, np.generic) else v for v in values]
        if not values or len(set(map(repr, values))) != len(values):
            raise bad_argument(
                "sweep", "grid", expected=f"distinct values for {name!r}, at least one", found=repr(values)
            )
        checked[name] = values
    return checked


def _as_dataset(result: object, cell: Mapping[str, Any], function: Callable[..., Any]) -> xr.Dataset:
    if isinstance(result, xr.DataArray):
        result = result.to_dataset(name=result.name or "value")
    if not isinstance(result, xr.Dataset):
        raise bad_argument(
            "sweep",
            "function",
            expected="a function that returns an xarray Dataset or DataArray",
            found=f"{getattr(function, '__qualname__', function)!r} returned {describe(result)} for {dict(cell)}",
        )
    clash = [name for name in cell if name in result.dims]
    if clash:
        raise bad_argument(
            "sweep",
            "grid",
            expected="setting names that are not dims of the function's result",
            found=f"{clash} (dims of the result: {list(result.dims)})",
            fix="Rename the grid's settings.",
        )
    return result.expand_dims({name: [value] for name, value in cell.items()})


def sweep(
    function: Callable[..., xr.Dataset | xr.DataArray],
    grid: Mapping[str, Sequence[Any]],
    *,
    shared: Mapping[str, Any] | None = None,
    out: str | os.PathLike | None = None,
    client: object = None,
    progress: bool = True,
) -> xr.Dataset:
    """Call ``function(**cell, **shared)`` for every cell of ``grid`` and gather the results.

    Each cell is one Dask task with a ``client`` (else they run one after another in this
    process). ``shared`` (data, a model, checkpoints) travels to each worker once, not once
    per cell. With ``out``, every result is saved to ``out/cell-i-j....nc`` as soon as it
    finishes and a re-run with the same function, grid and shared values computes only the
    missing cells; a worker that dies is replaced and its cell run again by Dask.

    Parameters
    ----------
    function
        Returns an xarray Dataset (or DataArray) for one cell; it must be importable on the
        workers (a function of an installed module, or one defined in the script or notebook
        that calls ``sweep``, which travels by value). Use ``device="auto"`` inside it: on a
        cluster of :func:`local_cluster` it is the worker's own GPU.
    grid
        Setting name -> values; cells are all combinations, in C order (the last setting
        varies fastest). Names become the result's dims.
    shared
        Keyword arguments passed unchanged to every call.
    out
        Folder for the per-cell results (resumable); a folder holding another sweep (another
        function, grid or shared values) is refused.
    client
        A ``distributed.Client``, a Dask cluster or a scheduler address; None runs in this process.
    progress
        Show a progress bar over cells.

    Returns
    -------
    xarray.Dataset
        The results over the grid's dims followed by the result's own dims; attrs that all
        cells share, plus ``sweep_function``, ``sweep_grid``, ``cells_computed``,
        ``cells_resumed`` and ``workers``.

    Examples
    --------
    >>> import xarray as xr
    >>> from landscape.distributed import sweep
    >>> def cell(seed, width, offset):
    ...     return xr.Dataset({"value": seed * 100 + width + offset})
    >>> result = sweep(cell, {"seed": [0, 1], "width": [8, 16, 32]}, shared={"offset": 0.5}, progress=False)
    >>> result.value.dims, float(result.value.sel(seed=1, width=16))
    (('seed', 'width'), 116.5)
    """
    if not callable(function):
        raise bad_argument("sweep", "function", expected="a callable", found=describe(function))
    axes = _check_grid(grid)
    shared = dict(shared or {})
    overlap = sorted(set(shared) & set(axes))
    if overlap:
        raise bad_argument("sweep", "shared", expected="names that are not grid settings", found=repr(overlap))
    indices = list(itertools.product(*(range(len(v)) for v in axes.values())))
    cells = [{name: axes[name][i] for name, i in zip(axes, index)} for index in indices]
    names = ["cell-" + "-".join(map(str, index)) for index in indices]
    name = f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', type(function).__qualname__)}"
    settings = sweep_settings(function, axes, shared) if out is not None else None
    results: dict[int, xr.Dataset] = {}
    with open_run(out, settings, function="sweep") as run:
        todo = [i for i in range(len(cells)) if run is None or not run.done(names[i])]
        with connected(client, function="sweep") as dask_client:
            with progress_bar(total=len(cells), desc="sweep", unit="cell", disable=not progress) as bar:
                bar.update(len(cells) - len(todo))
                for i, result in run_pieces(
                    dask_client,
                    kind="sweep",
                    payload=(function, shared),
                    prepare=_unchanged,
                    task=_call_cell,
                    items=[(i, cells[i]) for i in todo],
                ):
                    results[i] = _as_dataset(result, cells[i], function)
                    if run is not None:
                        run.save(names[i], results[i])
                    bar.update(1)
            workers = len(dask_client.nthreads()) if dask_client is not None else 0
        for i in range(len(cells)):
            if i not in results:
                results[i] = run.load(names[i])
    nested: Any = [results[i] for i in range(len(cells))]
    for size in reversed([len(v) for v in axes.values()][1:]):
        nested = [nested[rows] for rows in batch_slices(len(nested), size)]
    combined = xr.combine_nested(nested, concat_dim=list(axes), combine_attrs="drop_conflicts")
    combined.attrs.update(
        sweep_function=name,
        sweep_grid=to_json(axes),
        cells_computed=len(todo),
        cells_resumed=len(cells) - len(todo),
        workers=workers,
    )
    return combined
