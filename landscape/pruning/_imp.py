"""Iterative magnitude pruning with rewinding (Frankle & Carbin 2019; Frankle et al. 2020), with
its two controls in the same run, written round by round so that a killed run resumes."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
import xarray as xr
from torch import Tensor, nn

from landscape.core.data import Splits, as_splits
from landscape.core.device import resolve_device
from landscape.core.errors import bad_argument, describe
from landscape.core.io import checkpoint_record, data_fingerprint, open_run, provenance_attrs, run_settings
from landscape.core.spec import spec_of
from landscape.core.state import State, as_state, check_compatible
from landscape.pruning._imp_rounds import Fitter, dense_round, pruned_round, round_dataset
from landscape.pruning._imp_store import RoundStore
from landscape.pruning._masks import SCOPES, check_rate, full_mask
from landscape.training import TrainConfig, init_state

__all__ = ["BRANCHES", "imp"]

BRANCHES = ("imp", "reinit", "random_mask")


def _check_inputs(
    fn: str, model: object, data: object, rounds: object, scope: str, controls: Sequence[str] | str
) -> tuple[Splits, tuple[str, ...]]:
    if not isinstance(model, nn.Module):
        raise bad_argument(fn, "model", expected="an nn.Module (the architecture)", found=model)
    if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
        raise bad_argument(fn, "rounds", expected="a positive number of pruning rounds", found=describe(rounds))
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
    return splits, controls


def _check_rewind(fn: str, rewind_step: object, total: int, config: TrainConfig, n_train: int) -> None:
    if not isinstance(rewind_step, int) or isinstance(rewind_step, bool) or not 0 <= rewind_step < total:
        per_epoch = -(-n_train // config.batch_size)
        length = f"{config.epochs} epochs of {per_epoch}" if config.steps is None else "train.steps"
        raise bad_argument(
            fn,
            "rewind_step",
            expected=f"a step in [0, {total}) of the run's {total} steps ({length})",
            found=repr(rewind_step),
            fix="Rewind to an earlier step, or train longer with train=TrainConfig(epochs=...).",
        )


def imp(
    model: nn.Module,
    data: object,
    *,
    rounds: int,
    rewind_step: int = 0,
    start: Mapping[str, Tensor] | None = None,
    train: TrainConfig | Mapping[str, object] | None = None,
    prune_rate: float = 0.2,
    scope: str = "global",
    parameters: Sequence[str] | None = None,
    prune_first: bool = True,
    prune_output: bool | None = None,
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
        The recipe of every run, a :class:`~landscape.training.TrainConfig` (or a dict of its
        fields); default ``TrainConfig()`` (10 epochs of SGD at lr 0.05, momentum 0.9, batch
        128). T is its ``steps``, or its ``epochs`` in steps; its ``data_seed`` defaults to
        ``seed``.
    prune_rate
        Fraction of the remaining weights pruned per round, in (0, 1); ``(1 - prune_rate)^r``
        remain after r rounds.
    scope
        ``"global"`` or ``"layer"`` magnitude ranking (see
        :func:`~landscape.pruning.magnitude_prune`).
    parameters
        Names of the prunable parameters; default :func:`~landscape.pruning.prunable_parameters`
        with ``prune_first`` and ``prune_output``: the convolution and linear weights, not
        biases or normalisation parameters.
    prune_first, prune_output
        Whether the first layer and the output layer are pruned. Defaults as in open_lth for
        the model's family (:data:`~landscape.pruning.OPEN_LTH_PRUNES_OUTPUT`): the first layer
        always; the output layer for ResNets, not for the LeNet-like MLP, the VGG-like CNNs,
        ViT, GPT or models outside the zoo.
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
        Where to train and evaluate (``"auto"``: CUDA when present; states and results come
        back on the CPU); whether to show progress bars.

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
    splits, controls = _check_inputs(fn, model, data, rounds, scope, controls)
    rate = check_rate(prune_rate, fn)
    config = TrainConfig.coerce(train, function=fn)
    if config.data_seed is None:
        config = config.replace(data_seed=int(seed))
    n_train = splits["train"][0].shape[0]
    total = config.total_steps(n_train)
    _check_rewind(fn, rewind_step, total, config, n_train)
    dev = resolve_device(device, function=fn)
    start_state = init_state(model, int(seed)) if start is None else as_state(start, function=fn, argument="start")
    check_compatible(model.state_dict(), start_state, function=fn, names=("model", "start"))
    mask0 = full_mask(model, parameters=parameters, prune_first=prune_first, prune_output=prune_output)
    check_compatible({k: v for k, v in start_state.items() if k in mask0}, mask0, function=fn, names=("start", "mask"))

    settings = {
        "analysis": "imp",
        "model": spec_of(model) or type(model).__name__,
        "data": getattr(splits, "name", "data"),
        "data_fingerprint": data_fingerprint(splits),
        "train": config.as_dict(),
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
    fit = Fitter(model, splits, config, total, dev, progress)
    branches = ("imp", *controls)
    reinit = init_state(model, int(seed) + 1)
    results: list[xr.Dataset] = []
    with open_run(out, fingerprint, function=fn) as run:
        store = RoundStore(run)
        for r in range(rounds + 1):
            step_name = f"round-{r:03d}"
            if run is not None and run.done(step_name):
                results.append(run.load(step_name))
                continue
            if r == 0:
                mask = mask0
                values = dense_round(
                    fit, store, branches=branches, start=start_state, reinit=reinit, mask=mask, rewind_step=rewind_step
                )
            else:
                values, mask = pruned_round(
                    fit,
                    store,
                    r,
                    branches=branches,
                    reinit=reinit,
                    rate=rate,
                    scope=scope,
                    rewind_step=rewind_step,
                    seed=int(seed),
                )
            ds = round_dataset(r, branches, values, mask)
            if run is not None:
                run.save(step_name, ds)  # written last: a round counts as done only when all its files exist
            results.append(ds)
    return _combined(results, settings, start_state, total=total, rounds=rounds, branches=branches, seed=int(seed))


def _combined(
    results: list[xr.Dataset],
    settings: dict[str, object],
    start: State,
    *,
    total: int,
    rounds: int,
    branches: tuple[str, ...],
    seed: int,
) -> xr.Dataset:
    combined = xr.concat(results, dim="round")
    combined["test_accuracy"].attrs["description"] = "accuracy on the test split after training"
    combined["train_loss"].attrs["description"] = "mean training loss over the last epoch's steps"
    combined["mask_sparsity"].attrs["description"] = "pruned fraction of the prunable weights in the branch's mask"
    combined.attrs = provenance_attrs(
        **settings,
        start=checkpoint_record(start),
        total_steps=total,
        rounds=rounds,
        branches=list(branches),
        definitions={
            "imp": "rewound weights with the magnitude mask",
            "reinit": f"re-initialisation (seed {seed + 1}) with the magnitude mask",
            "random_mask": "rewound weights with a random mask of the same per-layer sparsity",
        },
    )
    return combined
