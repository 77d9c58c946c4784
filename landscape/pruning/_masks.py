"""Pruning masks: States of booleans (True = kept), magnitude pruning and random masks.

A mask covers a chosen set of parameters (by default every convolution and linear weight, not
biases or normalisation parameters, with the first and output layers as open_lth prunes them
for the model's family, see :func:`prunable_parameters`); entries of the model that the mask
does not name are never pruned. ``landscape.train(..., mask=mask)`` keeps the pruned weights
exactly zero.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from landscape.core.errors import StateMismatchError, bad_argument
from landscape.core.spec import spec_of
from landscape.core.state import State, as_state

__all__ = [
    "OPEN_LTH_PRUNES_OUTPUT",
    "SCOPES",
    "apply_mask",
    "check_mask",
    "density",
    "full_mask",
    "layer_density",
    "magnitude_prune",
    "prunable_parameters",
    "prunes_output_by_default",
    "random_mask",
    "sparsity",
]

SCOPES = ("global", "layer")
_PRUNABLE_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


#: Whether open_lth's default lottery-ticket hyperparameters prune the output layer, per zoo
#: family: its LeNet (``mnist_lenet``) and VGG (``cifar_vgg``) set
#: ``pruning_layers_to_ignore='fc.weight'``, its ResNets ignore nothing. The zoo's MLP is a
#: LeNet, its 1-D and 2-D CNNs are VGG-style; ViT and GPT have no open_lth default and keep the
#: output layer like LeNet and VGG, as do models from outside the zoo. open_lth prunes the
#: first layer of every family.
OPEN_LTH_PRUNES_OUTPUT: dict[str, bool] = {
    "mlp": False,
    "cnn1d": False,
    "cnn2d": False,
    "resnet": True,
    "vit": False,
    "gpt": False,
}


def _layer_weights(model: nn.Module) -> list[str]:
    names = []
    for name, module in model.named_modules():
        if isinstance(module, _PRUNABLE_TYPES) and isinstance(getattr(module, "weight", None), nn.Parameter):
            names.append(f"{name}.weight" if name else "weight")
    return names


def _output_weight(model: nn.Module, weights: list[str]) -> str:
    classifier = getattr(model, "classifier", None)
    if isinstance(classifier, _PRUNABLE_TYPES) and "classifier.weight" in weights:
        return "classifier.weight"  # every zoo model is Classifier(features, classifier)
    return weights[-1]


def prunes_output_by_default(model: nn.Module) -> bool:
    """open_lth's default for the model's family (:data:`OPEN_LTH_PRUNES_OUTPUT`; False for
    models outside the zoo)."""
    spec = spec_of(model)
    return bool(OPEN_LTH_PRUNES_OUTPUT.get(spec.get("name"), False)) if spec else False


def prunable_parameters(model: nn.Module, *, prune_first: bool = True, prune_output: bool | None = None) -> list[str]:
    """Names of the weights of the ``nn.Linear`` and ``nn.Conv1d/2d/3d`` modules to prune, in
    model order.

    Parameters
    ----------
    model
        The architecture.
    prune_first
        Include the first such layer (in registration order); open_lth prunes it in every
        family (default True).
    prune_output
        Include the output layer (a zoo model's ``classifier``, else the last such layer).
        Default None: open_lth's default for the model's family, :data:`OPEN_LTH_PRUNES_OUTPUT`
        (ResNet yes; LeNet-like MLP, VGG-like CNNs, ViT, GPT and models outside the zoo no).

    Examples
    --------
    >>> import landscape as ls
    >>> prunable_parameters(ls.models.create("mlp", width=8, depth=1, seed=0))
    ['features.fc1.weight']
    >>> prunable_parameters(ls.models.create("mlp", width=8, depth=1, seed=0), prune_output=True)
    ['features.fc1.weight', 'classifier.weight']
    """
    if not isinstance(model, nn.Module):
        raise bad_argument("prunable_parameters", "model", expected="an nn.Module", found=model)
    weights = _layer_weights(model)
    if not weights:
        return []
    prune_output = prunes_output_by_default(model) if prune_output is None else bool(prune_output)
    excluded = set()
    if not prune_first:
        excluded.add(weights[0])
    if not prune_output:
        excluded.add(_output_weight(model, weights))
    return [name for name in weights if name not in excluded]


def full_mask(
    model: nn.Module,
    *,
    parameters: Iterable[str] | None = None,
    prune_first: bool = True,
    prune_output: bool | None = None,
) -> State:
    """A mask that keeps everything, over ``parameters`` (default :func:`prunable_parameters`
    with ``prune_first`` and ``prune_output``).

    Examples
    --------
    >>> import landscape as ls
    >>> mask = full_mask(ls.models.create("mlp", width=8, depth=1, seed=0))
    >>> sparsity(mask), list(mask)
    (0.0, ['features.fc1.weight'])
    """
    named = dict(model.named_parameters())
    chosen = (
        prunable_parameters(model, prune_first=prune_first, prune_output=prune_output)
        if parameters is None
        else list(parameters)
    )
    unknown = [k for k in chosen if k not in named]
    if unknown or not chosen:
        raise bad_argument(
            "full_mask",
            "parameters",
            expected=f"names of parameters of the model, such as {list(named)[:6]}",
            found=repr(unknown[:3] if unknown else chosen),
            fix="A model whose only layer is both first and output needs prune_first=True or prune_output=True.",
        )
    return State(
        {k: torch.ones_like(named[k], dtype=torch.bool, device="cpu") for k in chosen},
        provenance={"derived": "full_mask"},
    )


def check_mask(
    mask: Mapping[str, Tensor], state: Mapping[str, Tensor], *, function: str, argument: str = "mask"
) -> State:
    """Validate that ``mask`` holds booleans for entries of ``state`` with matching shapes.

    Raises
    ------
    StateMismatchError
        Naming the first key that ``state`` lacks or whose shape differs.
    LandscapeError
        When the mask is empty or not boolean.
    """
    mask = as_state(mask, function=function, argument=argument)
    if not mask:
        raise bad_argument(function, argument, expected="a mask with at least one entry", found="an empty mask")
    for k, m in mask.items():
        if m.dtype != torch.bool:
            raise bad_argument(
                function,
                argument,
                expected="boolean tensors (True = kept)",
                found=f"{m.dtype} for {k!r}",
                fix="Convert with {k: m.bool() for k, m in mask.items()}.",
            )
        if k not in state:
            raise bad_argument(
                function,
                argument,
                expected=f"keys that name entries of the state, such as {list(state)[:5]}",
                found=f"{k!r}, which the state lacks",
                fix="Was the mask built for another architecture?",
                cls=StateMismatchError,
            )
        if tuple(m.shape) != tuple(state[k].shape):
            raise bad_argument(
                function,
                argument,
                expected=f"mask {k!r} shaped like the state's entry, {tuple(state[k].shape)}",
                found=f"shape {tuple(m.shape)}",
                fix="Was the mask built for another architecture or width?",
                cls=StateMismatchError,
            )
    return mask


def apply_mask(state: Mapping[str, Tensor], mask: Mapping[str, Tensor]) -> State:
    """``state`` with the pruned entries set to exactly zero (a new State).

    Examples
    --------
    >>> import torch
    >>> apply_mask({"w": torch.ones(3)}, {"w": torch.tensor([True, False, True])})["w"]
    tensor([1., 0., 1.])
    """
    state = as_state(state, function="apply_mask", argument="state")
    mask = check_mask(mask, state, function="apply_mask")
    out = State({k: v.clone() for k, v in state.items()}, provenance=state.provenance)
    for k, m in mask.items():
        out[k] = torch.where(m.to(out[k].device), out[k], torch.zeros_like(out[k]))
    return out


def density(mask: Mapping[str, Tensor]) -> float:
    """Fraction of the masked entries that are kept."""
    total = sum(m.numel() for m in mask.values())
    if total == 0:
        raise bad_argument("density", "mask", expected="a non-empty mask", found="no entries")
    return sum(int(m.sum()) for m in mask.values()) / total


def sparsity(mask: Mapping[str, Tensor]) -> float:
    """Fraction of the masked entries that are pruned (``1 - density``)."""
    return 1.0 - density(mask)


def layer_density(mask: Mapping[str, Tensor]) -> dict[str, float]:
    """Kept fraction of every entry of the mask."""
    return {k: int(m.sum()) / m.numel() for k, m in mask.items()}


def check_rate(prune_rate: float, function: str) -> float:
    rate = float(prune_rate)
    if not 0.0 < rate < 1.0:
        raise bad_argument(
            function,
            "prune_rate",
            expected="a fraction strictly between 0 and 1 (of the remaining weights, per round)",
            found=repr(prune_rate),
            fix="Frankle & Carbin use 0.2: 0.8^r of the weights remain after r rounds.",
        )
    return rate


def _prune_smallest(scores: Tensor, alive: Tensor, count: int) -> Tensor:
    """Turn off the ``count`` alive entries with the smallest scores (ties: lower flat index first)."""
    alive_idx = torch.nonzero(alive, as_tuple=False).squeeze(1)
    if count <= 0 or alive_idx.numel() == 0:
        return alive.clone()
    order = torch.sort(scores[alive_idx], stable=True).indices[:count]
    new = alive.clone()
    new[alive_idx[order]] = False
    return new


def magnitude_prune(
    state: Mapping[str, Tensor],
    mask: Mapping[str, Tensor],
    *,
    prune_rate: float = 0.2,
    scope: str = "global",
) -> State:
    """Prune ``prune_rate`` of the remaining weights with the smallest magnitudes.

    Parameters
    ----------
    state
        The weights whose magnitudes decide (e.g. the end of a training run).
    mask
        The current mask (True = kept); only its entries are considered, and entries it has
        already pruned stay pruned.
    prune_rate
        Fraction of the remaining weights to prune, in (0, 1): ``round(prune_rate * remaining)``
        weights go, so that about ``(1 - prune_rate)^r`` remain after ``r`` rounds.
    scope
        ``"global"``: rank all masked weights together; ``"layer"``: prune every entry of the
        mask by the same fraction.

    Returns
    -------
    State
        The new mask. Weights with equal magnitude are pruned in order of their position
        (flat index, then mask order), so the result is deterministic.

    Examples
    --------
    >>> import torch
    >>> w = {"w": torch.tensor([0.1, -3.0, 0.2, 4.0, -0.05])}
    >>> magnitude_prune(w, {"w": torch.ones(5, dtype=torch.bool)}, prune_rate=0.4)["w"]
    tensor([False,  True,  True,  True, False])
    """
    state = as_state(state, function="magnitude_prune", argument="state")
    mask = check_mask(mask, state, function="magnitude_prune")
    rate = check_rate(prune_rate, "magnitude_prune")
    if scope not in SCOPES:
        raise bad_argument("magnitude_prune", "scope", expected=f"one of {SCOPES}", found=repr(scope))
    if scope == "layer":
        out = {}
        for k, m in mask.items():
            flat = m.reshape(-1)
            count = round(rate * int(flat.sum()))
            scores = state[k].detach().abs().reshape(-1).double().cpu()
            out[k] = _prune_smallest(scores, flat.cpu(), count).reshape(m.shape)
        return State(out, provenance={"derived": "magnitude_prune", "scope": scope, "prune_rate": rate})
    keys = list(mask)
    scores = torch.cat([state[k].detach().abs().reshape(-1).double().cpu() for k in keys])
    alive = torch.cat([mask[k].reshape(-1).cpu() for k in keys])
    count = round(rate * int(alive.sum()))
    new = _prune_smallest(scores, alive, count)
    out, offset = {}, 0
    for k in keys:
        size = mask[k].numel()
        out[k] = new[offset : offset + size].reshape(mask[k].shape)
        offset += size
    return State(out, provenance={"derived": "magnitude_prune", "scope": scope, "prune_rate": rate})


def random_mask(mask: Mapping[str, Tensor], *, seed: int = 0) -> State:
    """A random mask with the same number of kept weights in every entry as ``mask``.

    The control of Frankle & Carbin (2019): same per-layer sparsity, random positions.

    Examples
    --------
    >>> import torch
    >>> m = {"w": torch.tensor([True, False, False, True])}
    >>> int(random_mask(m, seed=1)["w"].sum())
    2
    """
    mask = as_state(mask, function="random_mask", argument="mask")
    for k, m in mask.items():
        if m.dtype != torch.bool:
            raise bad_argument("random_mask", "mask", expected="boolean tensors", found=f"{m.dtype} for {k!r}")
    gen = torch.Generator().manual_seed(int(seed))
    out = {}
    # Draw in sorted key order so the result does not depend on the mask's key order.
    for k in sorted(mask):
        m = mask[k]
        keep = int(m.sum())
        chosen = torch.randperm(m.numel(), generator=gen)[:keep]
        flat = torch.zeros(m.numel(), dtype=torch.bool)
        flat[chosen] = True
        out[k] = flat.reshape(m.shape)
    return State({k: out[k] for k in mask}, provenance={"derived": "random_mask", "seed": int(seed)})
