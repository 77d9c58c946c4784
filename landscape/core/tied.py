"""Tied weights: several state keys that name one tensor (an embedding shared with the
output layer, say). Hugging Face checkpoints store only one of them, and
``torch.func.functional_call`` refuses two values for tied keys, so the engine works with one
canonical key per group."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from landscape.core.state import State, as_state

__all__ = ["canonical_state", "expand_tied", "tied_groups"]


def tied_groups(model: nn.Module) -> list[list[str]]:
    """Groups of two or more state keys that refer to the same tensor, in registration order."""
    by_tensor: dict[int, list[str]] = {}
    named = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    persistent = set(model.state_dict(keep_vars=True))
    for name, tensor in named:
        if name in persistent:
            by_tensor.setdefault(id(tensor), []).append(name)
    return [names for names in by_tensor.values() if len(names) > 1]


def canonical_state(state: Mapping[str, Tensor], groups: list[list[str]]) -> State:
    """Keep one key per tied group (the first registered), taking its tensor from whichever
    key of the group the state has."""
    state = as_state(state)
    if not groups:
        return state
    out = dict(state)
    for names in groups:
        present = [n for n in names if n in out]
        if not present:
            continue
        tensor = out[present[0]]
        for n in names:
            out.pop(n, None)
        out[names[0]] = tensor
    return State(out, provenance=state.provenance)


def expand_tied(state: Mapping[str, Tensor], groups: list[list[str]]) -> State:
    """Fill every key of each tied group (for ``load_state_dict``)."""
    state = as_state(state)
    if not groups:
        return state
    out = dict(state)
    for names in groups:
        present = [n for n in names if n in out]
        for n in names:
            if present and n not in out:
                out[n] = out[present[0]]
    return State(out, provenance=state.provenance)
