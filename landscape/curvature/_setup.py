"""From what users pass (a model, a state, data) to what the products need: a private copy of
the model on the device, the point's trainable parameters and fixed tensors, and one split of
the data, cast and moved once."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from landscape.core import recompute_bn
from landscape.core.batchnorm import bn_buffer_keys
from landscape.core.data import Splits, as_splits
from landscape.core.errors import bad_argument, describe
from landscape.core.io import checkpoint_record
from landscape.core.metrics import Metric
from landscape.core.metrics import loss as cross_entropy
from landscape.core.spec import spec_of
from landscape.core.state import State, as_state, check_compatible, state_of
from landscape.core.tied import canonical_state, tied_groups

__all__ = [
    "BN_POLICIES",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_BN_BATCH_SIZE",
    "MATRICES",
    "Problem",
    "Setup",
    "check_positive_int",
    "prepare",
    "resolve_blocks",
    "resolve_keys",
]

MATRICES = ("hessian", "ggn")
BN_POLICIES = ("keep", "reset")
DEFAULT_BATCH_SIZE = 1024
DEFAULT_BN_BATCH_SIZE = 1024


def check_positive_int(function: str, **values: object) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad_argument(function, name, expected="a positive integer", found=describe(value))


@dataclass
class Setup:
    """What does not change from point to point: the model copy, the data split and the
    options, checked once."""

    function: str
    model: nn.Module  # private copy, on the device, in eval mode
    groups: list[list[str]]  # tied keys
    trainable: list[str]  # canonical keys of the floating-point parameters that require grad
    splits: Splits
    split: str
    x: Tensor  # the split's inputs on the device (floating inputs in the model's dtype)
    y: Tensor
    bn: str
    bn_inputs: Tensor | None
    bn_batch_size: int
    matrix: str
    loss: Metric
    batch_size: int
    device: torch.device
    model_description: object

    def data_attrs(self) -> dict[str, object]:
        sizes = {name: int(y.shape[0]) for name, (_, y) in self.splits.items()}
        return {"name": self.splits.name, "sizes": sizes, "split": self.split, "examples": int(self.y.shape[0])}


@dataclass
class Problem:
    """The curvature problem at one point: the parameters to differentiate (``params``, in the
    order of the flattened vectors) and everything held fixed (``fixed``: buffers, with
    recomputed BatchNorm statistics under ``bn="reset"``, frozen parameters, parameters
    outside the chosen block)."""

    setup: Setup
    state: State  # the point as given (canonical keys)
    params: dict[str, Tensor]
    fixed: dict[str, Tensor]


def _default_state(model: nn.Module, state: object, function: str) -> State:
    if state is None:
        return state_of(model)
    return as_state(state, function=function, argument="state")


def prepare(
    model: nn.Module,
    data: object,
    *,
    function: str,
    matrix: str = "hessian",
    split: str = "train",
    loss: Metric | None = None,
    batch_size: int | None = None,
    bn: str = "keep",
    bn_data: object = None,
    bn_batch_size: int = DEFAULT_BN_BATCH_SIZE,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> Setup:
    """Check the options and move the model and the chosen split to ``device`` once."""
    if not isinstance(model, nn.Module):
        raise bad_argument(
            function,
            "model",
            expected="an nn.Module",
            found=model,
            fix="Build one with landscape.models.create(...) or pass your own module.",
        )
    if matrix not in MATRICES:
        raise bad_argument(function, "matrix", expected=f"one of {MATRICES}", found=repr(matrix))
    if bn not in BN_POLICIES:
        raise bad_argument(function, "bn", expected="'keep' or 'reset'", found=repr(bn))
    if batch_size is not None:
        check_positive_int(function, batch_size=batch_size)
    check_positive_int(function, bn_batch_size=bn_batch_size)
    if loss is not None and not callable(loss):
        raise bad_argument(
            function,
            "loss",
            expected="None (cross-entropy) or a callable loss(logits, targets) like the engine's metrics",
            found=loss,
        )
    splits, single = as_splits(data, function=function, argument="data")
    if single:
        split = "data"
    elif split not in splits:
        raise bad_argument(
            function,
            "split",
            expected=f"one of the data's splits {list(splits)}",
            found=repr(split),
            fix="Curvature is computed on one split; pass split='train' or the name of another.",
        )
    groups = tied_groups(model)
    work = copy.deepcopy(model).to(device).eval()
    trainable = [
        key for key, p in work.named_parameters() if p.requires_grad and (p.is_floating_point() or p.is_complex())
    ]
    if not trainable:
        raise bad_argument(
            function,
            "model",
            expected="at least one floating-point parameter that requires grad",
            found="none (every parameter is frozen)",
            fix="Curvature is taken with respect to the trainable parameters; unfreeze some with requires_grad_().",
        )
    x, y = splits[split]
    x = x.to(device=device, dtype=dtype) if x.is_floating_point() else x.to(device)
    bn_inputs = None
    if bn == "reset":
        if bn_buffer_keys(work):
            bn_inputs = _bn_inputs(bn_data, splits, function, device, dtype)
        else:
            warnings.warn(f"{function}(bn='reset'): the model has no BatchNorm layer; nothing to reset.", stacklevel=3)
    return Setup(
        function=function,
        model=work,
        groups=groups,
        trainable=trainable,
        splits=splits,
        split=split,
        x=x,
        y=y.to(device),
        bn=bn,
        bn_inputs=bn_inputs,
        bn_batch_size=bn_batch_size,
        matrix=matrix,
        loss=loss or cross_entropy,
        batch_size=batch_size or DEFAULT_BATCH_SIZE,
        device=device,
        model_description=spec_of(model) or type(model).__name__,
    )


def _bn_inputs(bn_data: object, splits: Splits, function: str, device: torch.device, dtype: torch.dtype) -> Tensor:
    if bn_data is None:
        if "train" not in splits:
            raise bad_argument(
                function,
                "bn_data",
                expected="training inputs for bn='reset'",
                found=f"None, and data has no 'train' split (splits: {list(splits)})",
                fix="Pass bn_data=(x_train, y_train) or data with a 'train' split.",
            )
        x = splits["train"][0]
    elif isinstance(bn_data, Tensor):
        x = bn_data
    else:
        x = next(iter(as_splits(bn_data, function=function, argument="bn_data")[0].values()))[0]
    return x.to(device=device, dtype=dtype) if x.is_floating_point() else x.to(device)


def recompute_bn_statistics(
    model: nn.Module, values: dict[str, Tensor], inputs: Tensor, batch_size: int
) -> dict[str, Tensor]:
    """The point ``values`` with the running statistics of every BatchNorm layer recomputed
    from ``inputs`` by the engine (:func:`landscape.core.recompute_bn`: the example-weighted
    average of the batch statistics over batches of ``batch_size``), on ``inputs``' device."""
    fresh = recompute_bn(model, values, inputs, batch_size=batch_size, device=inputs.device)
    return {k: fresh[k].to(inputs.device) for k in bn_buffer_keys(model)}


def point_problem(setup: Setup, state: object) -> Problem:
    """The problem at ``state`` (None: the model's own weights), differentiating every
    trainable parameter."""
    given = _default_state(setup.model, state, setup.function)
    canonical = canonical_state(given, setup.groups) if setup.groups else given
    check_compatible(
        canonical_state(setup.model.state_dict(), setup.groups),
        canonical,
        function=setup.function,
        names=("model", "state"),
    )
    values = {k: v.to(setup.device) for k, v in canonical.items()}
    if setup.bn_inputs is not None:
        values.update(recompute_bn_statistics(setup.model, values, setup.bn_inputs, setup.bn_batch_size))
    params = {k: values[k].detach() for k in setup.trainable}
    fixed = {k: v for k, v in values.items() if k not in params}
    return Problem(setup=setup, state=canonical, params=params, fixed=fixed)


def resolve_blocks(setup: Setup, blocks: str | Mapping[str, Sequence[str]] | None) -> dict[str, list[str]] | None:
    """Blocks of parameter keys: None (one matrix over every trainable parameter), ``"layer"``
    (one block per module that owns parameters), or ``{name: [keys]}``."""
    function = setup.function
    if blocks is None:
        return None
    if isinstance(blocks, str):
        if blocks != "layer":
            raise bad_argument(
                function, "blocks", expected="None, 'layer' or a dict {name: [parameter keys]}", found=repr(blocks)
            )
        out: dict[str, list[str]] = {}
        for key in setup.trainable:
            module = key.rpartition(".")[0]
            out.setdefault(module or "(model)", []).append(key)
        return out
    if not isinstance(blocks, Mapping) or not blocks:
        raise bad_argument(
            function, "blocks", expected="None, 'layer' or a non-empty dict {name: [parameter keys]}", found=blocks
        )
    return {str(name): resolve_keys(setup, keys, f"blocks[{name!r}]") for name, keys in blocks.items()}


def resolve_keys(setup: Setup, keys: object, argument: str) -> list[str]:
    """Parameter keys as the canonical keys of trainable parameters (tied aliases allowed),
    without repeats."""
    function = setup.function
    if isinstance(keys, str) or not isinstance(keys, Sequence) or not keys:
        raise bad_argument(function, argument, expected="a non-empty list of parameter keys", found=describe(keys))
    aliases = {alias: names[0] for names in setup.groups for alias in names}
    resolved: list[str] = []
    for key in keys:
        key = aliases.get(key, key)
        if key not in setup.trainable:
            more = "..." if len(setup.trainable) > 6 else ""
            raise bad_argument(
                function,
                argument,
                expected="keys of trainable floating-point parameters",
                found=repr(key),
                fix=f"Choose among {setup.trainable[:6]}{more}.",
            )
        if key not in resolved:
            resolved.append(key)
    return resolved


def as_direction(problem: Problem, vector: Tensor, like: Mapping[str, Tensor]) -> State:
    """A flat vector over ``problem.params`` as a State with the keys of ``like`` (the state the
    user passed): the vector's entries on the differentiated keys and their tied aliases,
    zeros everywhere else."""
    sizes = [t.numel() for t in problem.params.values()]
    pieces = dict(zip(problem.params, vector.detach().cpu().split(sizes)))
    aliases = {alias: names[0] for names in problem.setup.groups for alias in names}
    out = {}
    for key, tensor in like.items():
        source = aliases.get(key, key)
        if source in pieces:
            out[key] = pieces[source].reshape(tensor.shape).to(tensor.dtype)
        else:
            out[key] = torch.zeros_like(tensor, device="cpu")
    return State(out, provenance={"derived": "curvature eigenvector"})


def checkpoints_of(states: Sequence[State]) -> list[dict[str, object]]:
    return [checkpoint_record(s) for s in states if s.provenance]


def float_dtype(state: Mapping[str, Tensor], keys: Sequence[str]) -> torch.dtype:
    for k in keys:
        if k in state and state[k].is_floating_point():
            return state[k].dtype
    return torch.float32
