"""``evaluate`` in pieces: a point family split along its leading dimension, each piece
evaluated as a task on a Dask worker (or in this process), written into a zarr store as it
finishes when ``out=`` is given, and assembled into the Dataset one ``evaluate`` call returns."""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn

from landscape.core import DEFAULT_BN_BATCH_SIZE
from landscape.core._sources import as_sources
from landscape.core.data import Splits, as_splits
from landscape.core.device import resolve_device
from landscape.core.errors import bad_argument, describe
from landscape.core.evaluate import evaluate
from landscape.core.family import AffineFamily, as_family
from landscape.core.io import checkpoint_record, provenance_attrs
from landscape.core.metrics import Metric, resolve_metrics
from landscape.core.progress import progress_bar
from landscape.core.spec import spec_of
from landscape.distributed._client import connected, worker_threads
from landscape.distributed._fingerprint import evaluate_settings, settings_fingerprint
from landscape.distributed._store import PieceStore
from landscape.distributed._tasks import run_pieces

__all__ = ["evaluate_sharded"]

# Pieces per worker thread: enough that the last pieces even out the workers' loads (at most
# one piece of imbalance), few enough that the cost of a task (about 10 ms) stays small.
PIECES_PER_THREAD = 8
# Without a client the pieces only bound what a stopped run loses.
PIECES_IN_PROCESS = 16


@dataclass
class _Job:
    """What travels to each worker once."""

    model: nn.Module
    family: AffineFamily
    data: object
    bn_data: object
    options: dict[str, Any]


@dataclass
class _Prepared:
    """A job on its worker: the model, data and basis on the worker's device."""

    model: nn.Module
    family: AffineFamily
    data: object
    bn_data: object
    options: dict[str, Any]


def _is_pair(value: object) -> bool:
    return (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, (torch.Tensor, np.ndarray)) for v in value)
    )


def _on_device(data: object, device: torch.device) -> object:
    """Labelled tensors in memory (an ``(x, y)`` pair, a dict of pairs, Splits) moved to
    ``device`` in the same structure, so that every piece finds them there; other data
    (DataLoaders, token data) is left as it is and read by each piece."""
    if _is_pair(data):
        return tuple(torch.as_tensor(v).to(device) for v in data)
    if isinstance(data, Splits) or (isinstance(data, Mapping) and data and all(_is_pair(v) for v in data.values())):
        splits, _ = as_splits(data, function="evaluate")
        moved = {name: (x.to(device), y.to(device)) for name, (x, y) in splits.items()}
        if isinstance(data, Splits):
            return Splits(moved, name=data.name, num_classes=data.num_classes, meta=data.meta)
        return moved
    return data


def _prepare(job: _Job) -> _Prepared:
    # Resolved on the worker: device="auto" is each worker's own GPU (one visible per worker).
    device = resolve_device(job.options["device"], function="evaluate")
    model = copy.deepcopy(job.model).to(device)
    bn_data = job.bn_data.to(device) if isinstance(job.bn_data, torch.Tensor) else job.bn_data
    job.family.device_basis(device)  # moved once; the pieces share it
    return _Prepared(model, job.family, _on_device(job.data, device), bn_data, {**job.options, "device": str(device)})


def _evaluate_rows(prepared: _Prepared, rows: slice) -> xr.Dataset:
    return evaluate(
        prepared.model,
        prepared.family.take(rows),
        prepared.data,
        bn_data=prepared.bn_data,
        progress=False,
        **prepared.options,
    )


def _template(family: AffineFamily, splits: Sequence[str], single: bool, names: Sequence[str]) -> xr.Dataset:
    """The result's variables at full size (NaN), dims and coordinates, as ``evaluate`` returns them."""
    dims = family.dims if single else (*family.dims, "split")
    shape = family.shape if single else (*family.shape, len(splits))
    coords: dict[str, object] = dict(family.coords)
    if not single:
        coords["split"] = list(splits)
    return xr.Dataset({name: (dims, np.full(shape, np.nan)) for name in names}, coords=coords)


def _default_pieces(family: AffineFamily, client: Any) -> int:
    target = PIECES_PER_THREAD * worker_threads(client) if client is not None else PIECES_IN_PROCESS
    if family.is_structured:
        # A piece with no more points than basis states would lose the strategies that use
        # the family's linearity (and give slightly different rounding).
        inner = len(family) // family.shape[0]
        target = min(target, family.shape[0] // math.ceil((len(family.basis) + 1) / inner))
    return max(1, min(target, family.shape[0]))


def evaluate_sharded(
    model: nn.Module,
    points: object,
    data: object,
    *,
    metrics: str | Metric | Sequence[str | Metric] | Mapping[str, Metric] = ("loss", "accuracy"),
    batch_size: int | None = None,
    bn: str = "keep",
    bn_data: object = None,
    bn_batch_size: int = DEFAULT_BN_BATCH_SIZE,
    device: str | torch.device = "auto",
    strategy: str = "auto",
    precision: str = "float32",
    points_per_chunk: int | None = None,
    progress: bool = True,
    client: object = None,
    out: str | os.PathLike | None = None,
    pieces: int | None = None,
) -> xr.Dataset:
    """:func:`landscape.evaluate` in pieces, on a Dask cluster and/or into a resumable zarr store.

    The point family is split along its leading dimension (``alpha`` for lines and planes)
    into ``pieces`` contiguous pieces (:meth:`AffineFamily.chunks`). With a ``client``, each
    piece is a task: the model, data and points travel to each worker once and are prepared
    there once (moved to the worker's device), and each task evaluates its piece with
    :func:`landscape.evaluate`. With ``out``, the result is a zarr store created before the
    first piece runs; each finished piece is written into its region, and a re-run with the
    same settings computes only the pieces not yet written. The values equal one
    :func:`landscape.evaluate` call's (each point is evaluated the same way; 1e-6 relative).

    Parameters
    ----------
    model, points, data, metrics, batch_size, bn, bn_data, bn_batch_size, strategy, precision, points_per_chunk, progress
        As in :func:`landscape.evaluate`; the progress bar counts points finished across all
        workers. Labelled tensors in memory are moved to each worker's device once;
        DataLoaders and token data are read again by each piece.
    device
        Resolved on each worker: ``"auto"`` uses the worker's GPU when it has one (one GPU
        visible per worker with :func:`local_cluster` or dask-cuda), else its CPU.
    client
        A ``distributed.Client``, a Dask cluster, or a scheduler address
        (``"tcp://host:8786"``); None runs the pieces one after another in this process.
    out
        Path of a zarr store (``"surface.zarr"``) to write the result into as it grows, and to
        resume from. Its settings are the library's run fingerprint
        (:func:`landscape.core.io.run_settings`): the model's architecture, the points, the
        data, the metrics, the BatchNorm policy and the precision (not batch sizes, device or
        strategy, which change no value beyond rounding); a store with other settings is
        refused, naming them.
    pieces
        Number of pieces (default: 8 per worker thread with a client, 16 without, fewer when
        the leading dimension is shorter). A store keeps the pieces it was created with.

    Returns
    -------
    xarray.Dataset
        What :func:`landscape.evaluate` returns: one variable per metric over the point set's
        dims (``point``, ``alpha``, or ``alpha`` and ``beta``) and ``split``; ``attrs`` add
        ``pieces_computed`` and ``pieces_resumed`` (from the store), ``workers`` and, with
        ``out=``, ``settings_fingerprint``.

    Examples
    --------
    >>> import torch, landscape as ls
    >>> from landscape.distributed import evaluate_sharded
    >>> model = ls.models.create("mlp", width=8, depth=1, seed=0)
    >>> a, b = ls.state_of(model), ls.state_of(ls.models.create("mlp", width=8, depth=1, seed=1))
    >>> data = (torch.randn(32, 40), torch.randint(0, 10, (32,)))
    >>> line = ls.AffineFamily.line(a, b, alphas=9)
    >>> ds = evaluate_sharded(model, line, data, pieces=3, progress=False)
    >>> ds.loss.dims, ds.attrs["pieces_computed"]
    (('alpha',), 3)
    """
    function = "evaluate"
    if not isinstance(model, nn.Module):
        raise bad_argument(function, "model", expected="an nn.Module", found=model)
    family = as_family(points, function=function, argument="points")
    # The engine's own reading of the data: the split names and whether there is a split dim.
    sources, single, data_name, _ = as_sources(data, function=function, argument="data")
    names = list(resolve_metrics(metrics, function=function))
    if bn not in ("keep", "reset"):
        raise bad_argument(function, "bn", expected="'keep' or 'reset'", found=repr(bn))
    if pieces is not None and (not isinstance(pieces, int) or isinstance(pieces, bool) or pieces < 1):
        raise bad_argument(function, "pieces", expected="a positive integer", found=describe(pieces))
    options = {
        "metrics": metrics,
        "batch_size": batch_size,
        "bn": bn,
        "bn_batch_size": bn_batch_size,
        "device": device,
        "strategy": strategy,
        "precision": precision,
        "points_per_chunk": points_per_chunk,
    }
    # The settings are fingerprinted only for a store: fingerprinting reads all the data.
    settings = (
        evaluate_settings(
            model,
            family,
            data,
            metrics=resolve_metrics(metrics, function=function),
            bn=bn,
            bn_data=bn_data,
            bn_batch_size=bn_batch_size,
            precision=precision,
        )
        if out is not None
        else None
    )
    fingerprint = settings_fingerprint(settings) if settings is not None else None
    leading = family.dims[0]
    inner = len(family) // family.shape[0]
    with connected(client, function=function) as dask_client:
        bounds = family.chunks(pieces or _default_pieces(family, dask_client))
        store = None
        if out is not None:
            store = PieceStore.open(
                out,
                template=_template(family, list(sources), single, names),
                bounds=bounds,
                fingerprint=fingerprint,
                settings=settings,
                attrs=_store_attrs(model, family, data_name, sources, names, bn),
                function=function,
            )
            bounds = store.bounds
        todo = store.remaining if store is not None else list(range(len(bounds)))
        job = _Job(model, family, data, bn_data, options)
        finished: dict[int, xr.Dataset] = {}
        seen: list[dict] = []
        with progress_bar(total=len(family), desc=function, unit="pt", disable=not progress) as bar:
            bar.update(sum(bounds[i].stop - bounds[i].start for i in range(len(bounds)) if i not in todo) * inner)
            for index, piece in run_pieces(
                dask_client,
                kind="evaluate",
                payload=job,
                prepare=_prepare,
                task=_evaluate_rows,
                items=[(i, bounds[i]) for i in todo],
            ):
                if store is not None:
                    store.write(index, piece)
                else:
                    finished[index] = piece
                seen.append(dict(piece.attrs))
                bar.update((bounds[index].stop - bounds[index].start) * inner)
        workers = len(dask_client.nthreads()) if dask_client is not None else 0
    run_attrs = _run_attrs(seen, fingerprint, computed=len(todo), total=len(bounds), workers=workers)
    if store is not None:
        store.finish(run_attrs)
        return store.load()
    result = xr.concat([finished[i] for i in range(len(bounds))], dim=leading, combine_attrs="override")
    result.attrs.update(run_attrs)
    return result


def _store_attrs(
    model: nn.Module, family: AffineFamily, data_name: str, sources: Mapping[str, Any], names: list[str], bn: str
) -> dict:
    """Provenance known before any piece runs (the pieces add strategy, device, batch size)."""
    return provenance_attrs(
        model=spec_of(model) or type(model).__name__,
        checkpoints=[checkpoint_record(s) for s in family.basis if s.provenance],
        data={"name": data_name, "sizes": {k: int(getattr(src, "size", 0)) for k, src in sources.items()}},
        metrics=names,
        bn=bn,
    )


def _run_attrs(seen: list[dict], fingerprint: str | None, *, computed: int, total: int, workers: int) -> dict:
    """Attributes of the pieces computed in this call, merged: values that differ between
    pieces (the device of each worker, a strategy) are joined with commas."""
    merged: dict[str, object] = {}
    for key in dict.fromkeys(k for attrs in seen for k in attrs):
        values = list(dict.fromkeys(str(a[key]) for a in seen if key in a))
        merged[key] = seen[0][key] if len(values) == 1 else ", ".join(values)
    merged.pop("created", None)
    if fingerprint is not None:
        merged["settings_fingerprint"] = fingerprint
    merged.update(
        pieces_computed=computed,
        pieces_resumed=total - computed,
        workers=workers,
    )
    return merged
