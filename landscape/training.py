"""A small deterministic trainer for demos and analyses.

The initialisation seed and the data-order seed are separate, so that two children can be
trained from one checkpoint with different data orders (instability analysis), and a mask
keeps pruned weights exactly zero through every optimiser step (lottery tickets).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn

from landscape.core._run import PRECISIONS, precision_scope
from landscape.core.data import as_splits, batch_slices
from landscape.core.device import resolve_device
from landscape.core.errors import bad_argument
from landscape.core.io import provenance_attrs
from landscape.core.metrics import mean_loss, model_output_logits
from landscape.core.progress import progress_bar
from landscape.core.state import State, as_state, check_compatible, state_of
from landscape.core.tied import canonical_state, expand_tied, tied_groups
from landscape.core.validate import check_class_labels, check_data_device

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "TrainConfig",
    "TrainResult",
    "init_state",
    "lr_at",
    "optimizer_for",
    "train",
]

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "linear")


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _non_negative_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# field -> (check, what it must be)
_FIELD_CHECKS: dict[str, tuple[Callable[[object], bool], str]] = {
    "epochs": (_positive_int, "a positive integer"),
    "steps": (lambda v: v is None or _positive_int(v), "None or a positive number of optimiser steps"),
    "optimizer": (lambda v: v in OPTIMIZERS, f"one of {OPTIMIZERS}"),
    "lr": (lambda v: _number(v) and v > 0, "a positive, finite learning rate"),
    "momentum": (lambda v: _number(v) and 0 <= v < 1, "a momentum in [0, 1)"),
    "weight_decay": (lambda v: _number(v) and v >= 0, "a non-negative, finite weight decay"),
    "schedule": (lambda v: v in SCHEDULES, f"one of {SCHEDULES}"),
    "warmup": (_non_negative_int, "a non-negative number of warm-up steps"),
    "batch_size": (_positive_int, "a positive integer"),
    "data_seed": (lambda v: v is None or _non_negative_int(v), "None or a non-negative integer seed"),
    "eval_every": (lambda v: v is None or _positive_int(v), "None or a positive number of steps"),
    "precision": (lambda v: v in PRECISIONS, f"one of {PRECISIONS}"),
}


def _check_fields(values: Mapping[str, object], *, function: str, prefix: str = "") -> None:
    for name, value in values.items():
        check, expected = _FIELD_CHECKS[name]
        if not check(value):
            raise bad_argument(function, prefix + name, expected=expected, found=repr(value))


@dataclass(frozen=True)
class TrainConfig:
    """The recipe of a training run, shared by :func:`train` and every analysis that trains.

    ``imp``, ``linear_basins``/``basin_starts``, ``instability``/``instability_sweep`` and
    ``distill_random_teacher`` take one as ``train=``; ``train(..., config=)`` takes one too.
    What is not recipe (the start, masks, checkpoints, device) stays an argument of the call.
    Fields are validated on construction; :meth:`replace` makes a changed copy.

    Attributes
    ----------
    epochs : int
        Passes over the training split (default 10).
    steps : int or None
        Optimiser steps; overrides ``epochs`` when set.
    optimizer : str
        ``"sgd"`` (with ``momentum``), ``"adam"`` or ``"adamw"``.
    lr : float
        Peak learning rate (default 0.05).
    momentum : float
        SGD momentum in [0, 1) (default 0.9); unused by Adam and AdamW.
    weight_decay : float
        L2 penalty (SGD, Adam) or decoupled weight decay (AdamW); default 0.
    schedule : str
        ``"constant"``, ``"cosine"`` or ``"linear"`` decay to 0 after the warm-up.
    warmup : int
        Linear warm-up steps from 0 (default 0).
    batch_size : int
        Examples per step (default 128); the last batch of an epoch may be smaller.
    data_seed : int or None
        Seed of the data order (and of dropout). None: the caller's default (0 for
        :func:`train`; the analysis's seed for ``imp``; each child's own seed for
        ``instability``, which therefore refuses one).
    eval_every : int or None
        Evaluate on the ``test`` split every this many steps (None: every epoch).
    precision : str
        ``"float32"`` (default; on CUDA with TF32 off), ``"tf32"`` (TF32 matrix products on
        CUDA; float32 elsewhere) or ``"bfloat16"`` (autocast of the forward pass and the loss;
        weights, gradients and optimiser state stay float32). The test-split evaluations run
        in float32 whatever the training precision.

    Examples
    --------
    >>> config = TrainConfig(epochs=20, lr=0.1)
    >>> config.replace(optimizer="adamw", lr=1e-3).optimizer
    'adamw'
    >>> TrainConfig(batch_size=0)
    Traceback (most recent call last):
    ...
    landscape.core.errors.LandscapeError: TrainConfig(batch_size=...): expected a positive integer; found 0.
    """

    epochs: int = 10
    steps: int | None = None
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup: int = 0
    batch_size: int = 128
    data_seed: int | None = None
    eval_every: int | None = None
    precision: str = "float32"

    def __post_init__(self) -> None:
        _check_fields(self.as_dict(), function="TrainConfig")

    def replace(self, **changes: object) -> TrainConfig:
        """A copy with ``changes`` applied (validated like a new config)."""
        unknown = sorted(set(changes) - set(_FIELD_CHECKS))
        if unknown:
            raise bad_argument(
                "TrainConfig.replace",
                unknown[0],
                expected=f"a field of TrainConfig: {sorted(_FIELD_CHECKS)}",
                found=repr(unknown[0]),
            )
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, object]:
        """The fields as a plain dict (for settings fingerprints and provenance)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def total_steps(self, n_examples: int) -> int:
        """Optimiser steps of a run on ``n_examples`` training examples: ``steps`` when set,
        else ``epochs`` times the batches per epoch."""
        return int(self.steps) if self.steps is not None else self.epochs * -(-int(n_examples) // self.batch_size)

    @classmethod
    def coerce(
        cls,
        value: TrainConfig | Mapping[str, object] | None,
        *,
        function: str,
        argument: str = "train",
        default: TrainConfig | None = None,
    ) -> TrainConfig:
        """A TrainConfig from a TrainConfig, a mapping of its fields, or None (``default``,
        else ``TrainConfig()``); errors name ``function`` and ``argument``."""
        if value is None:
            return default if default is not None else cls()
        if isinstance(value, TrainConfig):
            return value
        if not isinstance(value, Mapping):
            raise bad_argument(
                function, argument, expected="a landscape.training.TrainConfig (or a dict of its fields)", found=value
            )
        unknown = [k for k in value if k not in _FIELD_CHECKS]
        if unknown:
            raise bad_argument(
                function,
                argument,
                expected=f"fields of TrainConfig {sorted(_FIELD_CHECKS)}",
                found=f"{unknown[0]!r}",
                fix=f"{function} sets the start, masks, checkpoints, device and progress itself.",
            )
        base = default if default is not None else cls()
        _check_fields(dict(value), function=function, prefix=f"{argument}.")
        return dataclasses.replace(base, **dict(value))


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes
    ----------
    state : State
        Parameters and buffers after the last step (on the CPU).
    checkpoints : dict of int to State
        States after the requested numbers of optimiser steps (step 0 is the start).
    history : xarray.Dataset
        ``loss``, ``accuracy`` and ``lr`` over ``step`` (per training batch) and, when an
        evaluation split exists, ``test_loss`` and ``test_accuracy`` over ``eval_step``.
    """

    state: State
    checkpoints: dict[int, State] = field(default_factory=dict)
    history: xr.Dataset = field(default_factory=xr.Dataset)


def init_state(model: nn.Module, seed: int) -> State:
    """A fresh initialisation of ``model``'s architecture from ``seed``.

    Zoo models are rebuilt from their spec (the same numbers as ``models.create(..., seed=seed)``).
    Other models call ``reset_parameters()`` (or ``_reset_parameters()``, as
    ``nn.MultiheadAttention`` names it) on every submodule that has one, in module order,
    under the seed; a parameter that no such method covers would keep its value across seeds,
    so that is an error naming it. Torch's global random state is left untouched.
    """
    from landscape.models import from_spec, spec_of

    spec = spec_of(model)
    if spec is not None:
        return state_of(from_spec(spec, seed=seed))
    fresh = copy.deepcopy(model)
    covered: set[int] = set()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        for module in fresh.modules():
            reset = getattr(module, "reset_parameters", None) or getattr(module, "_reset_parameters", None)
            if callable(reset):
                reset()
                covered.update(id(p) for p in module.parameters(recurse=False))
                if not any(True for _ in module.parameters(recurse=False)):
                    covered.update(id(p) for p in module.parameters())
    missed = [name for name, p in fresh.named_parameters() if id(p) not in covered]
    if missed:
        raise bad_argument(
            "init_state",
            "model",
            expected="a model whose every parameter a reset_parameters() method initialises",
            found=f"parameters no such method covers: {missed[:6]}",
            fix="Build the model under torch.manual_seed(seed) yourself and pass start=landscape.state_of(model).",
        )
    return state_of(fresh)


def lr_at(step: int, total: int, *, lr: float, schedule: str = "constant", warmup: int = 0) -> float:
    """Learning rate before optimiser step ``step`` (0-based) of ``total``.

    Linear warm-up from 0 over ``warmup`` steps, then ``constant``, ``cosine`` (to 0 at the
    end) or ``linear`` (to 0 at the end) decay.
    """
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    if schedule == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return lr * (1.0 - progress)
    return lr


def _optimizer(
    name: str, params: Iterable[Tensor], lr: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise bad_argument("train", "optimizer", expected=f"one of {OPTIMIZERS}", found=repr(name))


def optimizer_for(config: TrainConfig, params: Iterable[Tensor] | Iterable[dict]) -> torch.optim.Optimizer:
    """The optimiser ``config`` names, at its learning rate, momentum and weight decay.

    ``params`` may be parameter groups (dicts); a group's own ``weight_decay`` wins, as torch
    has it (e.g. no decay on biases).
    """
    return _optimizer(config.optimizer, params, config.lr, config.momentum, config.weight_decay)


def _check_mask(mask: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    params = dict(model.named_parameters())
    unknown = [k for k in mask if k not in params]
    if unknown:
        raise bad_argument(
            "train",
            "mask",
            expected="keys that name parameters of the model",
            found=f"unknown keys {unknown[:5]}",
            fix="Build masks with landscape.pruning.",
        )
    for k, m in mask.items():
        if tuple(m.shape) != tuple(params[k].shape):
            raise bad_argument(
                "train",
                "mask",
                expected=f"mask {k!r} of shape {tuple(params[k].shape)}",
                found=f"shape {tuple(m.shape)}",
            )
    return {k: m.to(torch.bool) for k, m in mask.items()}


def _resolve_config(config: TrainConfig | None, overrides: Mapping[str, object]) -> TrainConfig:
    if config is not None and not isinstance(config, TrainConfig):
        raise bad_argument(
            "train",
            "config",
            expected="a landscape.training.TrainConfig or None",
            found=config,
            fix="Build one with TrainConfig(epochs=..., lr=...), or pass the fields as keywords.",
        )
    _check_fields(overrides, function="train")
    return (config or TrainConfig()).replace(**overrides)


def train(
    model: nn.Module,
    data: object,
    *,
    config: TrainConfig | None = None,
    epochs: int | None = None,
    steps: int | None = None,
    optimizer: str | None = None,
    lr: float | None = None,
    momentum: float | None = None,
    weight_decay: float | None = None,
    schedule: str | None = None,
    warmup: int | None = None,
    batch_size: int | None = None,
    init_seed: int | None = None,
    data_seed: int | None = None,
    start: Mapping[str, Tensor] | None = None,
    resume_step: int = 0,
    checkpoint_steps: Iterable[int] = (),
    mask: Mapping[str, Tensor] | None = None,
    loss: Callable[[Tensor, Tensor], Tensor] | None = None,
    eval_every: int | None = None,
    precision: str | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> TrainResult:
    """Train a copy of ``model`` with mini-batch SGD/Adam/AdamW; the same seeds give the same numbers.

    Parameters
    ----------
    model
        The architecture (and, unless ``start`` or ``init_seed`` is given, the starting
        weights). It is not modified.
    data
        :class:`~landscape.core.data.Splits` (trains on ``train``, evaluates on ``test``),
        a dict of splits, or one ``(x, y)`` pair.
    config
        The recipe (:class:`TrainConfig`; default ``TrainConfig()``: 10 epochs of SGD at lr
        0.05, momentum 0.9, batch size 128).
    epochs, steps, optimizer, lr, momentum, weight_decay, schedule, warmup, batch_size, data_seed, eval_every, precision
        Fields of :class:`TrainConfig`; each one given overrides the field of ``config``.
        ``steps`` (optimiser steps) overrides ``epochs``; ``"sgd"`` uses ``momentum``;
        ``schedule`` is ``"constant"``, ``"cosine"`` or ``"linear"`` decay after ``warmup``
        linear warm-up steps; the last batch of an epoch may be smaller; ``data_seed`` (default
        0) seeds the data order and dropout, independently of the initialisation;
        ``eval_every`` evaluates on the ``test`` split every this many steps (default: every
        epoch); ``precision`` is ``"float32"``, ``"tf32"`` or ``"bfloat16"`` (autocast).
    init_seed
        Re-initialise the weights from this seed (see :func:`init_state`).
    start
        A State to start from (e.g. a checkpoint at step k); overrides ``init_seed``.
    resume_step
        Continue a run from its step k, as when rewinding to it (with ``start`` its state at k):
        the learning-rate schedule and the data order (same ``data_seed``) pick up where
        that run was at step k. ``steps``/``epochs`` still count the steps to take now, and
        the schedule spans ``resume_step + steps``. The optimiser state starts fresh.
    checkpoint_steps
        Optimiser steps after which to keep a copy of the state (0 = the start).
    mask
        Booleans per parameter name; masked weights are zeroed at the start and stay exactly
        zero (their gradients are zeroed before, and the weights re-masked after, every step).
    loss
        ``loss(logits, targets) -> scalar``; default mean cross-entropy.
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``...
    progress
        Show a progress bar.

    Returns
    -------
    TrainResult
        ``state``, ``checkpoints`` and ``history`` (dims ``step`` and ``eval_step``).

    Examples
    --------
    >>> import landscape as ls
    >>> data = ls.datasets.mnist1d(n_train=256, n_test=64)
    >>> model = ls.models.create("mlp", width=16, depth=1, seed=0)
    >>> result = ls.train(model, data, epochs=1, batch_size=64, progress=False)
    >>> int(result.history.sizes["step"])
    4
    """
    if not isinstance(model, nn.Module):
        raise bad_argument("train", "model", expected="an nn.Module", found=model)
    check_data_device(data, function="train", argument="data")  # before as_splits reads any value
    splits, single = as_splits(data, function="train", argument="data")
    train_split = "data" if single else "train"
    if train_split not in splits:
        raise bad_argument("train", "data", expected="a 'train' split", found=f"splits {list(splits)}")
    x_train, y_train = splits[train_split]
    eval_pair = None if single or "test" not in splits else splits["test"]
    overrides = {
        "epochs": epochs,
        "steps": steps,
        "optimizer": optimizer,
        "lr": lr,
        "momentum": momentum,
        "weight_decay": weight_decay,
        "schedule": schedule,
        "warmup": warmup,
        "batch_size": batch_size,
        "data_seed": data_seed,
        "eval_every": eval_every,
        "precision": precision,
    }
    recipe = _resolve_config(config, {k: v for k, v in overrides.items() if v is not None})
    optimizer, lr, momentum, weight_decay = recipe.optimizer, recipe.lr, recipe.momentum, recipe.weight_decay
    schedule, warmup, batch_size = recipe.schedule, recipe.warmup, recipe.batch_size
    data_seed = 0 if recipe.data_seed is None else recipe.data_seed
    n = x_train.shape[0]
    per_epoch = -(-n // batch_size)
    total = recipe.total_steps(n)
    wanted = sorted({int(s) for s in checkpoint_steps})
    if wanted and (wanted[0] < 0 or wanted[-1] > total):
        raise bad_argument(
            "train",
            "checkpoint_steps",
            expected=f"steps between 0 and the run's {total} steps",
            found=repr(wanted),
            fix="Train longer (epochs/steps) or ask for earlier checkpoints.",
        )
    device = resolve_device(device, function="train")

    work = copy.deepcopy(model)
    if start is not None:
        groups = tied_groups(work)
        start_state = canonical_state(as_state(start, function="train", argument="start"), groups)
        check_compatible(
            canonical_state(work.state_dict(), groups), start_state, function="train", names=("model", "start")
        )
        work.load_state_dict(expand_tied(start_state, groups))
    elif init_seed is not None:
        work.load_state_dict(init_state(model, init_seed))
    work.to(device).train()
    masks = _check_mask(mask, work) if mask is not None else {}
    params = dict(work.named_parameters())
    with torch.no_grad():
        for k, m in masks.items():
            params[k].mul_(m.to(device))
    masks = {k: m.to(device) for k, m in masks.items()}
    opt = _optimizer(optimizer, work.parameters(), lr, momentum, weight_decay)
    loss_fn = loss or mean_loss

    dtype = next((p.dtype for p in work.parameters() if p.is_floating_point()), torch.float32)
    x_train = x_train.to(device=device, dtype=dtype) if x_train.is_floating_point() else x_train.to(device)
    y_train = y_train.to(device)
    if not isinstance(resume_step, int) or resume_step < 0:
        raise bad_argument("train", "resume_step", expected="a step >= 0", found=repr(resume_step))
    order_gen = torch.Generator().manual_seed(int(data_seed))
    for _ in range(resume_step // per_epoch):  # replay the orders of the epochs already done
        torch.randperm(n, generator=order_gen)
    skip_batches = resume_step % per_epoch
    checkpoints: dict[int, State] = {}
    # Per-step loss and accuracy stay on the device until the end: reading them per step would
    # wait for the device at every step (a host synchronisation that stalls a GPU's queue).
    losses = torch.zeros(total, device=device, dtype=torch.float32)
    lrs = np.zeros(total)
    eval_steps: list[int] = []
    eval_loss: list[float] = []
    eval_acc: list[float] = []
    eval_every = recipe.eval_every or per_epoch

    def snapshot(step: int) -> State:
        state = State({k: v.detach().cpu().clone() for k, v in work.state_dict().items()})
        state.provenance = {
            "format": "trained",
            "source": "landscape.train",
            "step": step,
            "init_seed": init_seed,
            "data_seed": data_seed,
        }
        return state

    def evaluate_test(step: int) -> None:
        assert eval_pair is not None
        from landscape.core.evaluate import evaluate

        # Through the engine, at the current weights (BatchNorm's running statistics as they are).
        done = evaluate(work, state_of(work), {"test": eval_pair}, device=device, progress=False)
        eval_steps.append(step)
        eval_loss.append(float(done.loss.sel(split="test").isel(point=0)))
        eval_acc.append(float(done.accuracy.sel(split="test").isel(point=0)))

    if 0 in wanted:
        checkpoints[0] = snapshot(0)
    step = 0
    # Dropout draws from torch's global generator: seed it from the data seed, and restore it after.
    # TF32 flags are set once for the run; autocast (bfloat16) wraps each forward pass and loss.
    autocast = recipe.precision == "bfloat16"
    flags = "float32" if autocast else recipe.precision
    keep = set(wanted)
    current_rate = None
    correct = torch.zeros(total, device=device, dtype=torch.int64)
    sizes = np.zeros(total)
    with (
        torch.random.fork_rng(devices=[device] if device.type == "cuda" else []),
        precision_scope(flags, device),
        progress_bar(total=total, desc="train", unit="step", disable=not progress) as bar,
    ):
        torch.manual_seed(int(data_seed) + 1)
        while step < total:
            order = torch.randperm(n, generator=order_gen).to(device)
            for batch in itertools.islice(batch_slices(n, batch_size), skip_batches, None):
                if step >= total:
                    break
                idx = order[batch]
                xb, yb = x_train[idx], y_train[idx]
                rate = lr_at(resume_step + step, resume_step + total, lr=lr, schedule=schedule, warmup=warmup)
                if rate != current_rate:
                    for group in opt.param_groups:
                        group["lr"] = rate
                    current_rate = rate
                with torch.autocast(device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext():
                    logits = model_output_logits(work(xb))
                    if step == 0 and loss is None:  # the logits' width is the class count cross-entropy needs
                        for labels in (y_train, *(() if eval_pair is None else (eval_pair[1],))):
                            check_class_labels(labels, logits.shape[-1], function="train", argument="data")
                    value = loss_fn(logits, yb)
                opt.zero_grad(set_to_none=True)
                value.backward()
                if masks:
                    for k, m in masks.items():
                        if params[k].grad is not None:
                            params[k].grad.mul_(m)
                opt.step()
                if masks:
                    with torch.no_grad():
                        for k, m in masks.items():
                            params[k].mul_(m)
                losses[step] = value.detach()
                correct[step] = (logits.detach().argmax(dim=-1) == yb).sum()
                sizes[step] = yb.numel()
                lrs[step] = rate
                step += 1
                bar.update(1)
                if step in keep:
                    checkpoints[step] = snapshot(step)
                if eval_pair is not None and (step % eval_every == 0 or step == total):
                    evaluate_test(step)
            skip_batches = 0
    history = xr.Dataset(
        {
            "loss": (("step",), losses.cpu().double().numpy()),
            "accuracy": (("step",), correct.cpu().double().numpy() / sizes),
            "lr": (("step",), lrs),
        },
        coords={"step": np.arange(1, total + 1)},
    )
    if eval_steps:
        history["test_loss"] = (("eval_step",), np.array(eval_loss))
        history["test_accuracy"] = (("eval_step",), np.array(eval_acc))
        history = history.assign_coords(eval_step=np.array(eval_steps))
    from landscape.core.spec import spec_of

    history.attrs = provenance_attrs(
        model=spec_of(model) or type(model).__name__,
        optimizer=optimizer,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        schedule=schedule,
        warmup=warmup,
        batch_size=batch_size,
        precision=recipe.precision,
        steps=total,
        init_seed=init_seed,
        data_seed=data_seed,
        masked=bool(masks),
        data=splits.name,
    )
    work.eval()
    return TrainResult(state=snapshot(total), checkpoints=checkpoints, history=history)
