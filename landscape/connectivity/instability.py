"""Instability analysis (Frankle et al. 2020): train two copies of a network from the same
state with different data orders, and measure the barrier between the results."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn

from landscape.connectivity.barriers import barrier
from landscape.connectivity.interpolation import interpolate
from landscape.core.errors import bad_argument
from landscape.core.io import open_run, run_settings, to_json
from landscape.core.state import as_state
from landscape.training import TrainConfig
from landscape.training import train as train_model

__all__ = ["instability", "instability_sweep"]


def instability(
    model: nn.Module,
    state_at_k: Mapping[str, Tensor],
    data: object,
    *,
    seeds: Sequence[int] = (0, 1),
    train: TrainConfig | Mapping[str, object] | None = None,
    alphas: int | Sequence[float] = 30,
    kind: str = "max_minus_mean",
    threshold: float = 0.02,
    bn: str = "keep",
    device: str | torch.device = "auto",
    progress: bool = True,
) -> xr.Dataset:
    """Train two children of ``state_at_k`` with data-order seeds ``seeds`` and interpolate them.

    Frankle et al. (2020) call a network *stable* (to SGD noise) when the error barrier
    between such children is below 2 percentage points; ``threshold`` sets that limit.

    Parameters
    ----------
    model
        The architecture.
    state_at_k
        The state both children start from (e.g. a checkpoint after k steps).
    data
        Training and evaluation data with ``train`` and ``test`` splits.
    seeds
        Two data-order seeds.
    train
        The children's recipe, a :class:`~landscape.training.TrainConfig` (or a dict of its
        fields; default ``TrainConfig()``). Its ``data_seed`` must be None: ``seeds`` sets it.
    alphas
        Interpolation points between the children.
    kind
        Barrier definition (see :func:`barrier`); Frankle et al. use the increase over the
        mean of the endpoints, ``"max_minus_mean"``.
    threshold
        Error barrier (a fraction, 0.02 = 2 points) below which the network counts as stable.

    Returns
    -------
    xarray.Dataset
        The interpolation curve (``loss``, ``accuracy``, ``error`` over ``alpha``, ``split``)
        plus ``error_barrier``, ``loss_barrier`` and ``stable`` over ``split``.
    """
    if len(seeds) != 2 or seeds[0] == seeds[1]:
        raise bad_argument("instability", "seeds", expected="two different data-order seeds", found=repr(tuple(seeds)))
    if not 0 < threshold < 1:
        raise bad_argument("instability", "threshold", expected="a fraction in (0, 1)", found=repr(threshold))
    config = TrainConfig.coerce(train, function="instability")
    if config.data_seed is not None:
        raise bad_argument(
            "instability",
            "train",
            expected="a recipe without 'data_seed' (the children's data orders are `seeds`)",
            found=f"data_seed={config.data_seed!r}",
            fix="Pass the children's data-order seeds as seeds=(s0, s1).",
        )
    start = as_state(state_at_k, function="instability", argument="state_at_k")
    children = [
        train_model(model, data, config=config, start=start, data_seed=int(s), device=device, progress=progress).state
        for s in seeds
    ]
    curve = interpolate(model, children[0], children[1], data, alphas=alphas, bn=bn, device=device, progress=progress)
    curve["error_barrier"] = barrier(curve, metric="error", kind=kind)
    curve["loss_barrier"] = barrier(curve, metric="loss", kind=kind)
    curve["stable"] = curve["error_barrier"] < threshold
    curve.attrs.update(
        analysis="instability",
        seeds=list(map(int, seeds)),
        threshold=threshold,
        barrier_kind=kind,
        train=to_json(config.as_dict()),
    )
    return curve


def instability_sweep(
    model: nn.Module,
    checkpoints: Mapping[int, Mapping[str, Tensor]],
    data: object,
    *,
    total_steps: int | None = None,
    train: TrainConfig | Mapping[str, object] | None = None,
    out: str | os.PathLike | None = None,
    **options: object,
) -> xr.Dataset:
    """:func:`instability` at several training steps.

    Parameters
    ----------
    checkpoints
        States by training step (e.g. ``train(..., checkpoint_steps=...).checkpoints``).
    total_steps
        Frankle et al.'s protocol: the children of the state at step k train for the
        remaining ``total_steps - k`` steps. Without it, every child trains as ``train`` says.
    train
        The children's recipe (:class:`~landscape.training.TrainConfig` or a dict of its fields).
    out
        A folder: each step's result is written there as it finishes and a re-run with the
        same folder and settings resumes at the next step; a folder that holds a run with
        other settings (model, checkpoints, data, options, version) is refused, naming them.
    **options
        Passed to :func:`instability` (seeds, alphas, kind, threshold, bn, device, progress).

    Returns
    -------
    xarray.Dataset
        The per-step results concatenated over a new ``step`` dimension: curves over
        (``step``, ``alpha``, ``split``) and ``error_barrier``, ``loss_barrier``, ``stable``
        over (``step``, ``split``).
    """
    if not checkpoints:
        raise bad_argument(
            "instability_sweep",
            "checkpoints",
            expected="at least one step",
            found="none",
            fix="Pass e.g. landscape.train(..., checkpoint_steps=[0, 100]).checkpoints.",
        )
    steps = sorted(int(s) for s in checkpoints)
    if total_steps is not None and total_steps <= steps[-1]:
        raise bad_argument(
            "instability_sweep",
            "total_steps",
            expected=f"more than the last step ({steps[-1]})",
            found=repr(total_steps),
        )
    config = TrainConfig.coerce(train, function="instability_sweep")
    fingerprint = (
        run_settings(
            "instability_sweep",
            model=model,
            states={str(step): as_state(checkpoints[step], function="instability_sweep") for step in steps},
            data=data,
            options={
                "total_steps": total_steps,
                "train": config.as_dict(),
                **{k: v for k, v in options.items() if k not in ("device", "progress")},
            },
        )
        if out is not None
        else None
    )
    results = []
    with open_run(out, fingerprint, function="instability_sweep") as run:
        for step in steps:
            name = f"step-{step:09d}"
            if run is not None and run.done(name):
                done = run.load(name)
                results.append(done.assign(stable=done["stable"].astype(bool)))
                continue
            child_training = config if total_steps is None else config.replace(steps=total_steps - step)
            result = instability(model, checkpoints[step], data, train=child_training, **options)
            if run is not None:
                run.save(name, result.assign(stable=result["stable"].astype(np.int8)))  # netCDF stores no booleans
            results.append(result)
    combined = xr.concat(results, dim="step", combine_attrs="drop_conflicts").assign_coords(step=np.array(steps))
    combined.attrs["analysis"] = "instability_sweep"
    if total_steps is not None:
        combined.attrs["total_steps"] = total_steps
    return combined
