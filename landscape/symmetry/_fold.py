"""Folding norm gains into the linear layers that read them, and back.

``W (g * n(x) + b) = (W diag(g)) (n(x) + b / g)``: a LayerNorm or RMSNorm whose every reader
is a linear map computes the same function with gain one once its gain scales the readers'
input columns (and its bias is divided by the gain). A gain-free norm commutes with more maps
(orthogonal ones), which is what aligning transformers needs; the bias is a vector added to
the stream and transforms with it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from landscape.core.errors import LandscapeError
from landscape.core.state import State

__all__ = ["fold_state", "unfold_state"]


def _scale(weight: Tensor, axis: int, factor: Tensor) -> Tensor:
    shape = [1] * weight.dim()
    shape[axis] = -1
    return weight * factor.reshape(shape)


def _gain(graph, fold, state: Mapping[str, Tensor], function: str) -> Tensor:
    gain = state[fold.weight].double()
    if bool((gain == 0).any()):
        raise LandscapeError(
            f"{function}: expected norm gains without zeros (a zero gain erases its unit, which folding cannot "
            f"express); found zeros in {fold.weight!r}. Build the graph with norms='keep'."
        )
    return gain


def fold_state(graph, state: Mapping[str, Tensor]) -> State:
    """The state with every foldable norm's gain moved into its readers (exact in float64,
    stored in the state's dtypes); the gains become one."""
    out = dict(state)
    for fold in graph.folds:
        gain = _gain(graph, fold, state, "SymmetryGraph.fold")
        for wkey, axis in fold.consumers:
            out[wkey] = _scale(state[wkey].double(), axis, gain).to(state[wkey].dtype)
        if fold.bias is not None:
            out[fold.bias] = (state[fold.bias].double() / gain).to(state[fold.bias].dtype)
        out[fold.weight] = torch.ones_like(state[fold.weight])
    provenance = getattr(state, "provenance", {}) or {}
    return State(out, provenance={**provenance, "derived": "symmetry.fold"})


def unfold_state(graph, state: Mapping[str, Tensor], like: Mapping[str, Tensor]) -> State:
    """``state`` rewritten with ``like``'s norm gains (the same function)."""
    folded = fold_state(graph, state)
    out = dict(folded)
    for fold in graph.folds:
        gain = _gain(graph, fold, like, "SymmetryGraph.unfold")
        for wkey, axis in fold.consumers:
            out[wkey] = _scale(folded[wkey].double(), axis, 1.0 / gain).to(folded[wkey].dtype)
        if fold.bias is not None:
            out[fold.bias] = (folded[fold.bias].double() * gain).to(folded[fold.bias].dtype)
        out[fold.weight] = like[fold.weight].to(folded[fold.weight].dtype).clone()
    provenance = getattr(state, "provenance", {}) or {}
    return State(out, provenance={**provenance, "derived": "symmetry.unfold"})
