"""Iterative magnitude pruning with rewinding (Frankle & Carbin 2019; Frankle et al. 2020), with
its two controls in the same run, written round by round so that a killed run resumes."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn

from landscape.core.data import as_splits
from landscape.core.errors import bad_argument, describe
from landscape.core.io import checkpoint_record, data_fingerprint, open_run, provenance_attrs, run_settings
from landscape.core.spec import spec_of
from landscape.core.state import State, as_state, check_compatible
from landscape.pruning.masks import (
    SCOPES,
    _check_rate,
    apply_mask,
    full_mask,
    magnitude_prune,
    random_mask,
    sparsity,
)
from landscape.training import init_state
from landscape.training import train as train_model

__all__ = ["BRANCHES", "DEFAULT_TRAIN", "imp"]

BRANCHES = ("imp", "reinit", "random_mask")
DEFAULT_TRAIN: dict[str, object] = {"epochs": 10, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "batch_size": 128}
_RESERVED = ("start", "resume_step", "mask", "init_seed", "checkpoint_steps", "steps", "progress", "device")


def imp(
    model: nn.Module,
    data: object,
    *,
    rounds: int,
    rewind_step: int = 0,
    start: Mapping[str, Tensor] | None = None,
    train: Mapping[str, object] | None = None,
    prune_rate: float = 0.2,
    scope: str = "global",
    parameters: Sequence[str] | None = None,
    controls: Sequence[str] = ("reinit", "random_mask"),
    seed: int = 0,
    out: str | os.PathLike | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> xr.Dataset:
    """Iterative magnitude pruning with rewinding, and its controls.

    Round 0 trains the dense network from ``start`` for the full run of T steps, keeping the
    state at ``rewind_step`` k. Every later round prunes ``prune_rate`` of the remaining
    weights with the smallest magnitudes at the end of the previous round's ``imp`` branch,
    then trains, for the remaining T - k steps (continuing the learning-rate schedule and data
    order of the dense run from step k) and with the pruned weights held at exactly zero,
    three branches:

    - ``imp``: the rewound weights (the state at step k; k = 0 is ``start`` itself) with the mask;
    - ``reinit``: a random re-initialisation (seed ``seed + 1``) with the same mask;
    - ``random_mask``: the rewound weights with a random mask of the same per-layer sparsity.

    In round 0 (no pruning) ``imp`` and ``random_mask`` are the same dense run and ``reinit`` is
    the dense network trained from the re-initialisation.

    Parameters
    ----------
    model
        The architecture.
    data
        :class:`~landscape.core.data.Splits` with ``train`` and ``test`` splits; test accuracy
        is measured on ``test`` after every run.
    rounds
        Pruning rounds after the dense round 0 (at least 1).
    rewind_step
        k, the optimiser step whose weights every round rewinds to; 0 rewinds to ``start``.
        Must be below the run's T steps.
    start
        The starting weights (e.g. a distilled student); default: the initialisation of
        ``model`` at ``seed``.
    train
        Keyword arguments of :func:`landscape.train` for every run (``epochs``, ``lr``,
        ``optimizer``, ``momentum``, ``weight_decay``, ``batch_size``, ``data_seed``...); default
        ``DEFAULT_TRAIN``. ``data_seed`` defaults to ``seed``.
    prune_rate
        Fraction of the remaining weights pruned per round, in (0, 1); ``(1 - prune_rate)^r``
        remain after r rounds.
    scope
        ``"global"`` or ``"layer"`` magnitude ranking (see
        :func:`~landscape.pruning.magnitude_prune`).
    parameters
        Names of the prunable parameters; default every convolution and linear weight.
    controls
        Which of ``"reinit"`` and ``"random_mask"`` to run besides ``imp``.
    seed
        Seeds the default start, the re-initialisation (``seed + 1``) and the random masks
        (``seed + round``).
    out
        A folder: every finished round is written there (results, masks, trained states) and
        a re-run with the same folder and settings resumes at the next round; a folder that
        holds a run with other settings is refused, naming them. ``rounds`` is not a setting,
        so a finished run can be extended.
    device, progress
        Where to train; whether to show progress bars.

    Returns
    -------
    xarray.Dataset
        ``test_accuracy``, ``test_loss``, ``train_loss`` and ``mask_sparsity`` over (``round``,
        ``branch``), with coordinates ``sparsity`` (pruned fraction of the prunable weights) and
        ``density`` along ``round`` (use ``.swap_dims(round="sparsity")`` to index by sparsity).

    Examples
    --------
    >>> import landscape as ls
    >>> data = ls.datasets.mnist1d(n_train=256, n_test=128)
    >>> model = ls.models.create("mlp", width=16, depth=1, seed=0)
    >>> result = ls.pruning.imp(model, data, rounds=1, train={"epochs": 1}, progress=False)
    >>> result.test_accuracy.dims, [round(float(s), 3) for s in result.sparsity]
    (('round', 'branch'), [0.0, 0.2])
    """
    fn = "imp"
    if not isinstance(model, nn.Module):
        raise bad_argument(fn, "model", expected="an nn.Module (the architecture)", found=model)
    if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
        raise bad_argument(fn, "rounds", expected="a positive number of pruning rounds", found=describe(rounds))
    rate = _check_rate(prune_rate, fn)
    if scope not in SCOPES:
        raise bad_argument(fn, "scope", expected=f"one of {SCOPES}", found=repr(scope))
    controls = tuple([controls] if isinstance(controls, str) else controls)
    unknown = [c for c in controls if c not in BRANCHES[1:]]
    if unknown or len(set(controls)) != len(controls):
        raise bad_argument(fn, "controls", expected=f"distinct names from {BRANCHES[1:]}", found=repr(controls))
    splits, single = as_splits(data, function=fn)
    if single or "train" not in splits or "test" not in splits:
        raise bad_argument(
            fn,
            "data",
            expected="'train' and 'test' splits (test accuracy is the result)",
            found=f"splits {list(splits)}",
        )
    options = dict(DEFAULT_TRAIN if train is None else train)
    for reserved in _RESERVED:
        if reserved in options:
            raise bad_argument(
                fn,
                "train",
                expected=f"training options without {reserved!r}",
                found=f"{reserved}={options[reserved]!r}",
                fix="imp sets start, mask, steps and checkpoints itself; pass start=, device= and progress= to imp.",
            )
    options.setdefault("data_seed", int(seed))
    epochs = options.get("epochs", 10)
    batch_size = options.get("batch_size", 128)
    if not isinstance(epochs, int) or epochs < 1 or not isinstance(batch_size, int) or batch_size < 1:
        raise bad_argument(
            fn,
            "train",
            expected="positive integer epochs and batch_size",
            found=f"epochs={epochs!r}, batch_size={batch_size!r}",
        )
    n_train = splits["train"][0].shape[0]
    total = epochs * -(-n_train // batch_size)
    if not isinstance(rewind_step, int) or isinstance(rewind_step, bool) or not 0 <= rewind_step < total:
        raise bad_argument(
            fn,
            "rewind_step",
            expected=f"a step in [0, {total}) of the run's {total} steps ({epochs} epochs of {-(-n_train // batch_size)})",
            found=repr(rewind_step),
            fix="Rewind to an earlier step, or train longer with train={'epochs': ...}.",
        )
    start_state = init_state(model, int(seed)) if start is None else as_state(start, function=fn, argument="start")
    check_compatible(model.state_dict(), start_state, function=fn, names=("model", "start"))
    mask0 = full_mask(model, parameters=parameters)
    check_compatible({k: v for k, v in start_state.items() if k in mask0}, mask0, function=fn, names=("start", "mask"))

    settings = {
        "analysis": "imp",
        "model": spec_of(model) or type(model).__name__,
        "data": getattr(splits, "name", "data"),
        "data_fingerprint": data_fingerprint(splits),
        "train": {k: options[k] for k in sorted(options)},
        "prune_rate": rate,
        "scope": scope,
        "parameters": list(mask0),
        "rewind_step": int(rewind_step),
        "controls": list(controls),
        "seed": int(seed),
    }
    # The one run fingerprint: architecture, start weights, data, every option, version.
    fingerprint = (
        run_settings(
            fn,
            model=model,
            states={"start": start_state},
            data=splits,
            options={k: v for k, v in settings.items() if k not in ("model", "data", "data_fingerprint")},
        )
        if out is not None
        else None
    )
    memory: dict[str, State] = {}

    def put(name: str, state: State) -> None:
        memory[name] = state
        if run is not None:
            run.save_state(name, state)

    def get(name: str) -> State:
        if name in memory:
            return memory[name]
        assert run is not None
        state = run.load_state(name)  # hash-checked: a replaced file is an error naming it
        if name.startswith("mask"):
            state = State({k: v.bool() for k, v in state.items()}, provenance=state.provenance)
        memory[name] = state
        return state

    def fit(start_from: Mapping[str, Tensor], mask: State | None, steps: int, keep: tuple[int, ...] = ()):
        # A rewound run continues the dense run from rewind_step: same schedule position and data order.
        return train_model(
            model,
            splits,
            start=start_from,
            steps=steps,
            resume_step=total - steps,
            mask=mask,
            checkpoint_steps=keep,
            device=device,
            progress=progress,
            **options,
        )

    per_epoch = -(-n_train // batch_size)

    def summary(result) -> tuple[float, float, float]:
        h = result.history
        last_epoch = h.loss[-min(int(h.sizes["step"]), per_epoch) :]
        return float(h.test_accuracy[-1]), float(h.test_loss[-1]), float(last_epoch.mean())

    branches = ("imp", *controls)
    reinit_state = init_state(model, int(seed) + 1)
    results: list[xr.Dataset] = []
    with open_run(out, fingerprint, function=fn) as run:
        for r in range(rounds + 1):
            step_name = f"round-{r:03d}"
            if run is not None and run.done(step_name):
                results.append(run.load(step_name))
                continue
            acc = np.full(len(branches), np.nan)
            tloss = np.full(len(branches), np.nan)
            trloss = np.full(len(branches), np.nan)
            msp = np.full(len(branches), np.nan)
            if r == 0:
                dense = fit(start_state, None, total, keep=(rewind_step,))
                put("rewind", dense.checkpoints[rewind_step])
                put("mask-000", mask0)
                put("trained-000", dense.state)
                imp_summary = summary(dense)
                for i, b in enumerate(branches):
                    if b == "reinit":
                        other = fit(reinit_state, None, total)
                        acc[i], tloss[i], trloss[i] = summary(other)
                    else:  # the random mask of a full mask is the full mask: the dense run itself
                        acc[i], tloss[i], trloss[i] = imp_summary
                    msp[i] = 0.0
                mask = mask0
            else:
                previous = get(f"trained-{r - 1:03d}")
                mask = magnitude_prune(previous, get(f"mask-{r - 1:03d}"), prune_rate=rate, scope=scope)
                rewind = get("rewind")
                remaining = total - rewind_step
                for i, b in enumerate(branches):
                    if b == "imp":
                        result = fit(apply_mask(rewind, mask), mask, remaining)
                        put(f"mask-{r:03d}", mask)
                        put(f"trained-{r:03d}", result.state)
                        msp[i] = sparsity(mask)
                    elif b == "reinit":
                        result = fit(apply_mask(reinit_state, mask), mask, remaining)
                        msp[i] = sparsity(mask)
                    else:
                        control = random_mask(mask, seed=int(seed) + r)
                        result = fit(apply_mask(rewind, control), control, remaining)
                        msp[i] = sparsity(control)
                    acc[i], tloss[i], trloss[i] = summary(result)
            ds = xr.Dataset(
                {
                    "test_accuracy": (("round", "branch"), acc[None]),
                    "test_loss": (("round", "branch"), tloss[None]),
                    "train_loss": (("round", "branch"), trloss[None]),
                    "mask_sparsity": (("round", "branch"), msp[None]),
                },
                coords={
                    "round": [r],
                    "branch": list(branches),
                    "sparsity": ("round", [sparsity(mask)]),
                    "density": ("round", [1.0 - sparsity(mask)]),
                },
            )
            if run is not None:
                run.save(step_name, ds)  # written last: a round counts as done only when all its files exist
            results.append(ds)
    combined = xr.concat(results, dim="round")
    combined["test_accuracy"].attrs["description"] = "accuracy on the test split after training"
    combined["train_loss"].attrs["description"] = "mean training loss over the last epoch's steps"
    combined["mask_sparsity"].attrs["description"] = "pruned fraction of the prunable weights in the branch's mask"
    combined.attrs = provenance_attrs(
        **settings,
        start=checkpoint_record(start_state),
        total_steps=total,
        rounds=rounds,
        branches=list(branches),
        definitions={
            "imp": "rewound weights with the magnitude mask",
            "reinit": f"re-initialisation (seed {int(seed) + 1}) with the magnitude mask",
            "random_mask": "rewound weights with a random mask of the same per-layer sparsity",
        },
    )
    return combined
