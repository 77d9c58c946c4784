"""Linear basins: is supervised training from a given state stable to SGD noise?

Sarnthein et al. (2023) find that the random-teacher student lies at the border of a linear
basin of the supervised loss: two children trained from it with different data orders are
(nearly) linearly connected, like children of a supervised checkpoint a few steps in, and
unlike children of the random initialisation. :func:`linear_basins` measures the barrier
between such children (``landscape.connectivity.instability``) for several starting states.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn

from landscape.connectivity import instability
from landscape.core.errors import bad_argument
from landscape.core.io import checkpoint_record, open_run, provenance_attrs, run_settings
from landscape.core.spec import spec_of
from landscape.core.state import State, as_state, content_hash
from landscape.training import TrainConfig, init_state
from landscape.training import train as train_model

__all__ = ["basin_starts", "linear_basins"]


def basin_starts(
    model: nn.Module,
    data: object,
    *,
    student: Mapping[str, Tensor] | None = None,
    init: Mapping[str, Tensor] | None = None,
    steps: Sequence[int] = (),
    seed: int = 0,
    train: TrainConfig | Mapping[str, object] | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> dict[str, State]:
    """The starting states compared by :func:`linear_basins`.

    Parameters
    ----------
    model, data
        Architecture and data (supervised checkpoints are trained on ``data``).
    student
        A distilled student (e.g. ``distill_random_teacher(...).student``); labelled ``"student"``.
    init
        The random initialisation (default: ``model`` initialised at ``seed``; for a student,
        pass its teacher, the initialisation it was distilled from); labelled ``"init"``.
    steps
        Optimiser steps of supervised training from ``init`` whose checkpoints to include,
        labelled ``"supervised@<step>"``.
    seed
        Initialisation seed (when ``init`` is not given) and data order of the supervised run.
    train
        The supervised run's recipe (:class:`~landscape.training.TrainConfig` or a dict of
        its fields; default ``TrainConfig()``, 10 epochs of SGD at lr 0.05, momentum 0.9,
        batch 128); its ``steps`` are set to the last of ``steps``, its ``data_seed``
        defaults to ``seed``.
    device, progress
        Where to train; whether to show a progress bar.

    Returns
    -------
    dict of str to State
        In the order init, student, supervised checkpoints (on the CPU).

    Examples
    --------
    >>> import landscape as ls
    >>> data = ls.datasets.mnist1d(n_train=128, n_test=64)
    >>> model = ls.models.create("mlp", width=8, depth=1, seed=0)
    >>> list(basin_starts(model, data, steps=[2], train={"batch_size": 64}, progress=False))
    ['init', 'supervised@2']
    """
    init_state_ = (
        as_state(init, function="basin_starts", argument="init") if init is not None else init_state(model, seed)
    )
    starts: dict[str, State] = {"init": init_state_}
    if student is not None:
        starts["student"] = as_state(student, function="basin_starts", argument="student")
    wanted = sorted({int(s) for s in steps})
    if wanted:
        if wanted[0] < 1:
            raise bad_argument(
                "basin_starts", "steps", expected="positive step counts (step 0 is `init`)", found=repr(wanted)
            )
        config = TrainConfig.coerce(train, function="basin_starts")
        config = config.replace(steps=wanted[-1], data_seed=int(seed) if config.data_seed is None else config.data_seed)
        run = train_model(
            model, data, config=config, start=init_state_, checkpoint_steps=wanted, device=device, progress=progress
        )
        for s in wanted:
            starts[f"supervised@{s}"] = run.checkpoints[s]
    return starts


def linear_basins(
    model: nn.Module,
    starts: Mapping[str, Mapping[str, Tensor]],
    data: object,
    *,
    seeds: Sequence[int] = (0, 1),
    train: TrainConfig | Mapping[str, object] | None = None,
    alphas: int | Sequence[float] = 11,
    kind: str = "max_minus_mean",
    threshold: float = 0.02,
    bn: str = "keep",
    out: str | os.PathLike | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> xr.Dataset:
    """Barriers between children trained from each start with different data orders.

    Parameters
    ----------
    model
        The architecture.
    starts
        Labelled starting states, e.g. from :func:`basin_starts`: ``{"init": ..., "student":
        ..., "supervised@50": ...}``.
    data
        ``train`` and ``test`` splits.
    seeds
        The two children's data-order seeds.
    train
        The children's recipe (:class:`~landscape.training.TrainConfig` or a dict of its
        fields; default ``TrainConfig()``: 10 epochs of SGD, lr 0.05, momentum 0.9, batch 128).
    alphas, kind, threshold, bn
        As in :func:`landscape.connectivity.instability`.
    out
        A folder: each start's result is written as it finishes and a re-run resumes; a
        folder holding a run with other settings is refused.
    device, progress
        Where to train and evaluate (``"auto"``: CUDA when present; results come back on the
        CPU); progress bars.

    Returns
    -------
    xarray.Dataset
        ``loss``, ``accuracy``, ``error`` over (``start``, ``alpha``, ``split``), and
        ``error_barrier``, ``loss_barrier``, ``stable`` over (``start``, ``split``).

    Examples
    --------
    >>> import landscape as ls
    >>> data = ls.datasets.mnist1d(n_train=256, n_test=128)
    >>> model = ls.models.create("mlp", width=16, depth=1, seed=0)
    >>> starts = ls.distillation.basin_starts(model, data, steps=[4], train={"epochs": 1, "batch_size": 64}, progress=False)
    >>> result = ls.distillation.linear_basins(model, starts, data, train={"epochs": 1}, alphas=5, progress=False)
    >>> result.error_barrier.dims
    ('start', 'split')
    """
    fn = "linear_basins"
    if not isinstance(starts, Mapping) or not starts:
        raise bad_argument(fn, "starts", expected="a non-empty mapping from labels to states", found=starts)
    states = {str(k): as_state(v, function=fn, argument=f"starts[{k!r}]") for k, v in starts.items()}
    config = TrainConfig.coerce(train, function=fn)
    settings = {
        "analysis": "linear_basins",
        "model": spec_of(model) or type(model).__name__,
        "starts": {k: content_hash(v) for k, v in states.items()},
        "seeds": [int(s) for s in seeds],
        "train": config.as_dict(),
        "alphas": alphas if isinstance(alphas, int) else [float(a) for a in alphas],
        "kind": kind,
        "threshold": threshold,
        "bn": bn,
    }
    # The one run fingerprint (architecture, starts, data, options, version): a re-run on
    # other data is refused instead of returning the first data's results.
    fingerprint = (
        run_settings(
            fn,
            model=model,
            states=states,
            data=data,
            options={k: v for k, v in settings.items() if k not in ("analysis", "model", "starts")},
        )
        if out is not None
        else None
    )
    results = []
    with open_run(out, fingerprint, function=fn) as run:
        for i, (label, state) in enumerate(states.items()):
            name = f"start-{i:02d}"
            if run is not None and run.done(name):
                results.append(run.load(name))
                continue
            curve = instability(
                model,
                state,
                data,
                seeds=seeds,
                train=config,
                alphas=alphas,
                kind=kind,
                threshold=threshold,
                bn=bn,
                device=device,
                progress=progress,
            )
            curve = curve.expand_dims(start=[label])
            curve["stable"] = curve["stable"].astype(np.int8)  # netCDF stores no booleans
            curve.attrs = {}
            if run is not None:
                run.save(name, curve)
            results.append(curve)
    combined = xr.concat(results, dim="start")
    combined["stable"] = combined["stable"].astype(bool)
    combined.attrs = provenance_attrs(
        **settings,
        start_records={k: checkpoint_record(v) for k, v in states.items()},
        barrier_kind=kind,
    )
    return combined
