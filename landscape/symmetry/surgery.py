"""Structural edits that fusion and structured pruning share: BatchNorm folded into the layer
before it (and back), the units of a group read out of a tensor, and a copy of a module built
at the widths of a state.

These work on any model that :func:`~landscape.symmetry.symmetry_graph` traces: which
BatchNorm follows which layer is read from the traced graph, and where a group's units sit in
a tensor from its axis layout.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import Tensor, nn

from landscape.core.errors import bad_argument
from landscape.core.spec import SPEC_ATTRIBUTE
from landscape.core.state import State, as_state

# The package's public names (this module is imported last by landscape.symmetry).
from landscape.symmetry import Atom, Fixed, Layout, Prod, Sum, SymmetryGraph

__all__ = [
    "AFFINE_LAYERS",
    "FoldedNorm",
    "channel_statistics",
    "fold_batchnorm",
    "layout_size",
    "map_units",
    "resize_model",
    "unfold_batchnorm",
    "unit_rows",
]

AFFINE_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class FoldedNorm:
    """A BatchNorm layer folded into the layer before it.

    Attributes
    ----------
    norm
        The BatchNorm module's name; after folding it computes the identity in eval mode
        (plus ``shift`` when the layer has no bias of its own).
    layer
        The Linear/Conv module it was folded into.
    bias
        The state key that holds the folded shift: the layer's bias, or the norm's bias when
        the layer has none.
    eps
        The norm's epsilon.
    """

    norm: str
    layer: str
    bias: str
    eps: float


def _key(module: str, name: str) -> str:
    return f"{module}.{name}" if module else name


def _norm_follows_layer(graph: SymmetryGraph, node: fx.Node, modules: Mapping[str, nn.Module]) -> str | None:
    """The Linear/Conv module whose output is this BatchNorm node's only input (and used by
    nothing else), or None."""
    if len(node.args) != 1 or node.kwargs:
        return None
    source = node.args[0]
    if not isinstance(source, fx.Node) or source.op != "call_module" or len(source.users) != 1:
        return None
    layer = modules.get(str(source.target))
    if not isinstance(layer, AFFINE_LAYERS) or getattr(layer, "transposed", False):
        return None
    lays = graph.activations.get(source.name)
    if lays is None or len(lays) < 2 or (isinstance(layer, nn.Linear) and len(lays) != 2):
        return None  # BatchNorm normalises axis 1; a Linear must produce (N, features)
    return str(source.target)


def fold_batchnorm(
    graph: SymmetryGraph, state: Mapping[str, Tensor] | nn.Module
) -> tuple[State, tuple[FoldedNorm, ...]]:
    """Fold every BatchNorm that directly follows a Linear/Conv layer into that layer.

    The layer's weight is scaled by ``gamma / sqrt(var + eps)`` per output unit and its bias
    becomes ``(bias - mean) * gamma / sqrt(var + eps) + beta``; the BatchNorm is set to the
    identity in eval mode (mean 0, variance ``1 - eps``, weight 1, bias 0). A layer without
    a bias keeps the shift in the norm's bias. The network computes the same function in eval
    mode, and each unit of the layer is now one affine map, so units can be averaged or fused
    without mixing normalisation statistics (Theus et al. 2024 fold BatchNorm this way).

    Parameters
    ----------
    graph
        The model's traced symmetry graph (which norm follows which layer is read from it).
    state
        A state of the model.

    Returns
    -------
    (State, tuple of FoldedNorm)
        The folded state (same keys and shapes) and the folds made, in network order. Norms
        after anything other than a Linear/Conv output used only by them, norms without
        running statistics and norms with neither a layer bias nor an affine bias are left as
        they are.

    Examples
    --------
    >>> import torch, landscape as ls
    >>> from landscape.symmetry import symmetry_graph
    >>> model = ls.models.create("mlp", width=8, depth=1, norm="batch", seed=0)
    >>> folded, folds = fold_batchnorm(symmetry_graph(model), model)
    >>> [f.norm for f in folds]
    ['features.norm1']
    """
    if not isinstance(graph, SymmetryGraph) or graph.module is None:
        raise bad_argument(
            "fold_batchnorm",
            "graph",
            expected="a traced SymmetryGraph (symmetry_graph(model))",
            found=graph if not isinstance(graph, SymmetryGraph) else "a graph from a manual spec",
            fix="Build the graph by tracing: symmetry_graph(model).",
        )
    state = as_state(state, function="fold_batchnorm", argument="state")
    modules = dict(graph.module.named_modules())
    out = dict(state)
    folds: list[FoldedNorm] = []
    for node in graph.module.graph.nodes:
        if node.op != "call_module":
            continue
        norm = modules.get(str(node.target))
        if not isinstance(norm, nn.modules.batchnorm._BatchNorm) or not norm.track_running_stats:
            continue
        layer_name = _norm_follows_layer(graph, node, modules)
        if layer_name is None:
            continue
        name = str(node.target)
        layer = modules[layer_name]
        has_bias = layer.bias is not None
        if not has_bias and not norm.affine:
            continue
        weight = state[_key(layer_name, "weight")]
        mean = state[_key(name, "running_mean")].double()
        var = state[_key(name, "running_var")].double()
        gamma = state[_key(name, "weight")].double() if norm.affine else torch.ones_like(mean)
        beta = state[_key(name, "bias")].double() if norm.affine else torch.zeros_like(mean)
        bias = state[_key(layer_name, "bias")].double() if has_bias else torch.zeros_like(mean)
        scale = gamma / torch.sqrt(var + norm.eps)
        shape = (-1,) + (1,) * (weight.dim() - 1)
        out[_key(layer_name, "weight")] = (weight.double() * scale.reshape(shape)).to(weight.dtype)
        shift = (bias - mean) * scale + beta
        holder = _key(layer_name, "bias") if has_bias else _key(name, "bias")
        out[holder] = shift.to(weight.dtype)
        dtype = state[_key(name, "running_mean")].dtype
        out[_key(name, "running_mean")] = torch.zeros_like(mean, dtype=dtype)
        out[_key(name, "running_var")] = torch.full_like(mean, 1.0 - norm.eps, dtype=dtype)
        if norm.affine:
            out[_key(name, "weight")] = torch.ones_like(gamma, dtype=state[_key(name, "weight")].dtype)
            if has_bias:
                out[_key(name, "bias")] = torch.zeros_like(beta, dtype=state[_key(name, "bias")].dtype)
        folds.append(FoldedNorm(name, layer_name, holder, float(norm.eps)))
    return State(out, provenance={"derived": "fold_batchnorm"}), tuple(folds)


def channel_statistics(
    model: nn.Module,
    state: Mapping[str, Tensor] | nn.Module,
    data: object,
    modules: Sequence[str],
    *,
    batch_size: int = 256,
    device: str | torch.device = "auto",
) -> dict[str, tuple[Tensor, Tensor]]:
    """Mean and variance (over examples and positions) of every channel of the outputs of
    named modules, on ``data``, through :func:`landscape.core.run_points`.

    Parameters
    ----------
    model, state
        The network (in eval mode).
    data
        Inputs, an ``(x, y)`` pair or Splits (every split is used).
    modules
        Module names; channels are axis 1 of their outputs ((N, C) or (N, C, ...)).
    batch_size, device
        Examples per forward pass, where to run.

    Returns
    -------
    dict of str to (Tensor, Tensor)
        Per module, float64 mean and population variance per channel, on the CPU.

    Examples
    --------
    >>> import torch, landscape as ls
    >>> model = ls.models.create("mlp", width=4, depth=1, seed=0)
    >>> mean, var = channel_statistics(model, model, torch.randn(32, 40), ["features.fc1"])["features.fc1"]
    >>> mean.shape
    torch.Size([4])
    """
    from landscape.core import run_points

    names = list(dict.fromkeys(modules))
    sums: dict[str, list] = {name: [0, 0.0, 0.0] for name in names}
    run = run_points(
        model, [state], data, features=names, batch_size=batch_size, device=device, function="channel_statistics"
    )
    try:
        for out in run:
            for name in names:
                value = out.features[name][0].double()
                units = value.movedim(1, -1).reshape(-1, value.shape[1])
                acc = sums[name]
                acc[0] += units.shape[0]
                acc[1] = acc[1] + units.sum(0)
                acc[2] = acc[2] + (units * units).sum(0)
    finally:
        run.close()
    out_stats = {}
    for name, (n, s1, s2) in sums.items():
        mean = s1 / n
        out_stats[name] = (mean.cpu(), (s2 / n - mean * mean).clamp_min(0).cpu())
    return out_stats


def unfold_batchnorm(
    model: nn.Module,
    state: Mapping[str, Tensor],
    folds: Sequence[FoldedNorm],
    data: object,
    *,
    batch_size: int = 256,
    device: str | torch.device = "auto",
) -> State:
    """Give folded BatchNorm layers running statistics again, keeping the function.

    Each folded norm gets ``running_mean = mean`` and ``running_var = var``, the statistics
    of its input (the folded layer's output) on ``data``, ``weight = sqrt(var + eps)`` and
    ``bias = mean + shift``: in eval mode it still computes the identity (plus the shift),
    and in train mode, where it normalises each batch by the batch's own statistics, nearly
    the same, so that a folded, fused or pruned network can be fine-tuned.

    Parameters
    ----------
    model
        The architecture of ``state`` (e.g. the narrower model of a pruned state).
    state
        A state whose norms were folded by :func:`fold_batchnorm`.
    folds
        The folds it returned (norms without an affine weight are left folded).
    data
        Inputs or labelled data to measure the statistics on.
    batch_size, device
        Examples per forward pass, where to run.

    Returns
    -------
    State

    Examples
    --------
    >>> import torch, landscape as ls
    >>> from landscape.symmetry import symmetry_graph
    >>> model = ls.models.create("mlp", width=4, depth=1, norm="batch", seed=0)
    >>> folded, folds = fold_batchnorm(symmetry_graph(model), model)
    >>> back = unfold_batchnorm(model, folded, folds, torch.randn(64, 40))
    >>> bool((back["features.norm1.running_var"] != folded["features.norm1.running_var"]).all())
    True
    """
    state = as_state(state, function="unfold_batchnorm", argument="state")
    chosen = [f for f in folds if _key(f.norm, "weight") in state]
    if not chosen:
        return State(dict(state), provenance={"derived": "unfold_batchnorm"})
    statistics = channel_statistics(model, state, data, [f.layer for f in chosen], batch_size=batch_size, device=device)
    out = dict(state)
    for fold in chosen:
        mean, var = statistics[fold.layer]
        bias_key = _key(fold.norm, "bias")
        shift = out[bias_key].double() if fold.bias == bias_key else torch.zeros_like(mean)
        dtype = out[_key(fold.norm, "running_mean")].dtype
        out[_key(fold.norm, "running_mean")] = mean.to(dtype)
        out[_key(fold.norm, "running_var")] = var.to(dtype)
        out[_key(fold.norm, "weight")] = torch.sqrt(var + fold.eps).to(out[_key(fold.norm, "weight")].dtype)
        out[bias_key] = (mean + shift).to(out[bias_key].dtype)
    return State(out, provenance={"derived": "unfold_batchnorm"})


# ---------------------------------------------------------------------------------------
# Units of a group inside a tensor
# ---------------------------------------------------------------------------------------


def layout_size(node: Layout, sizes: Mapping[str, int] | None = None) -> int:
    """Length of an axis laid out as ``node`` when group ``g`` has ``sizes[g]`` units."""
    if isinstance(node, Atom):
        return int(sizes.get(str(node.group), node.size)) if sizes else node.size
    if isinstance(node, Fixed):
        return node.size
    parts = [layout_size(c, sizes) for c in node.children]
    return math.prod(parts) if isinstance(node, Prod) else sum(parts)


def unit_rows(
    tensor: Tensor, axis: int, layout: Layout, path: tuple[int, ...] = (), sizes: Mapping[str, int] | None = None
) -> Tensor:
    """The entries of ``tensor`` that belong to each unit of the atom at ``path`` of axis
    ``axis`` (laid out as ``layout``), as a (units, everything else) matrix.

    Examples
    --------
    >>> import torch
    >>> from landscape.symmetry import Atom, Fixed, Prod
    >>> x = torch.arange(12.0).reshape(2, 6)  # axis 1: 3 channels x 2 positions
    >>> unit_rows(x, 1, Prod((Atom("g", 3), Fixed(2))), (0,)).shape
    torch.Size([3, 4])
    """
    if not path:
        if not isinstance(layout, Atom):
            raise bad_argument("unit_rows", "path", expected="the path of an atom of the layout", found="()")
        return tensor.movedim(axis, 0).reshape(tensor.shape[axis], -1)
    if not isinstance(layout, (Prod, Sum)):
        raise bad_argument("unit_rows", "path", expected="a path into a product or sum", found=repr(path))
    q = path[0]
    lengths = [layout_size(c, sizes) for c in layout.children]
    if isinstance(layout, Prod):
        shape = tuple(tensor.shape)
        t = tensor.reshape(*shape[:axis], *lengths, *shape[axis + 1 :])
        return unit_rows(t, axis + q, layout.children[q], path[1:], sizes)
    t = tensor.narrow(axis, sum(lengths[:q]), lengths[q])
    return unit_rows(t, axis, layout.children[q], path[1:], sizes)


def map_units(
    tensor: Tensor,
    axis: int,
    layout: Layout,
    act: Callable[[Tensor, int, str], Tensor],
    sizes: Mapping[str, int] | None = None,
) -> Tensor:
    """Transform axis ``axis`` of ``tensor`` group by group: ``act(t, dim, group)`` maps the
    units of one atom (on axis ``dim`` of ``t``) and may change their number; fixed parts stay.

    Examples
    --------
    >>> import torch
    >>> from landscape.symmetry import Atom
    >>> map_units(torch.arange(3.0), 0, Atom("g", 3), lambda t, d, g: t.flip(d))
    tensor([2., 1., 0.])
    """
    if isinstance(layout, Fixed):
        return tensor
    if isinstance(layout, Atom):
        return act(tensor, axis, str(layout.group))
    shape = tuple(tensor.shape)
    lengths = [layout_size(c, sizes) for c in layout.children]
    if isinstance(layout, Prod):
        t = tensor.reshape(*shape[:axis], *lengths, *shape[axis + 1 :])
        for q, child in enumerate(layout.children):
            t = map_units(t, axis + q, child, act, sizes)
        k = len(layout.children)
        return t.reshape(*t.shape[:axis], -1, *t.shape[axis + k :])
    pieces = tensor.split(lengths, dim=axis)
    return torch.cat([map_units(p, axis, c, act, sizes) for p, c in zip(pieces, layout.children)], dim=axis)


# ---------------------------------------------------------------------------------------
# A module at other widths
# ---------------------------------------------------------------------------------------


def _resize_attributes(module: nn.Module, shapes: Mapping[str, tuple[int, ...]], name: str) -> None:
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = shapes["weight"]
    elif isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and not module.transposed:
        module.out_channels = shapes["weight"][0]
        module.in_channels = shapes["weight"][1] * module.groups
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        module.num_features = next(iter(shapes.values()))[0]
    elif isinstance(module, nn.LayerNorm):
        module.normalized_shape = tuple(shapes["weight"] if "weight" in shapes else shapes["bias"])
    elif isinstance(module, nn.GroupNorm) and module.affine:
        channels = shapes["weight"][0]
        if channels % module.num_groups:
            raise bad_argument(
                "resize_model",
                "state",
                expected=f"a channel count of {name!r} divisible by its {module.num_groups} groups",
                found=str(channels),
            )
        module.num_channels = channels
    else:
        raise bad_argument(
            "resize_model",
            "state",
            expected="new shapes only for Linear, Conv, BatchNorm, LayerNorm and GroupNorm modules",
            found=f"new shapes for {name!r} ({type(module).__name__})",
            fix="Keep the units of groups that touch this module (e.g. leave its group out of the pruning).",
        )


def resize_model(model: nn.Module, state: Mapping[str, Tensor]) -> nn.Module:
    """A copy of ``model`` whose layers have the shapes of ``state``, loaded with it.

    Linear, Conv, BatchNorm, LayerNorm and GroupNorm modules whose parameters change shape get
    parameters of the new shapes and updated size attributes; nothing else changes. The copy
    carries no zoo spec (its widths are no longer the spec's).

    Parameters
    ----------
    model
        The architecture (not modified).
    state
        A state with the model's keys, some entries narrower (e.g. a pruned or fused state).

    Returns
    -------
    torch.nn.Module

    Examples
    --------
    >>> import landscape as ls
    >>> model = ls.models.create("mlp", width=8, depth=1, seed=0)
    >>> state = ls.state_of(model)
    >>> state["features.fc1.weight"] = state["features.fc1.weight"][:5]
    >>> state["features.fc1.bias"] = state["features.fc1.bias"][:5]
    >>> state["classifier.weight"] = state["classifier.weight"][:, :5]
    >>> resize_model(model, state).features.fc1
    Linear(in_features=40, out_features=5, bias=True)
    """
    if not isinstance(model, nn.Module):
        raise bad_argument("resize_model", "model", expected="an nn.Module", found=model)
    state = as_state(state, function="resize_model", argument="state")
    new = copy.deepcopy(model)
    own = new.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise bad_argument(
            "resize_model", "state", expected="every entry of the model's state", found=f"no {missing[0]!r}"
        )
    for name, module in new.named_modules():
        entries = dict(module.named_parameters(recurse=False)) | dict(module.named_buffers(recurse=False))
        shapes = {k: tuple(state[_key(name, k)].shape) for k in entries if _key(name, k) in state}
        if all(tuple(entries[k].shape) == s for k, s in shapes.items()):
            continue
        _resize_attributes(module, shapes, name)
        for k, shape in shapes.items():
            value = torch.zeros(shape, dtype=entries[k].dtype, device=entries[k].device)
            if isinstance(entries[k], nn.Parameter):
                setattr(module, k, nn.Parameter(value, requires_grad=entries[k].requires_grad))
            else:
                module.register_buffer(k, value)
    new.load_state_dict(state)
    if getattr(new, SPEC_ATTRIBUTE, None) is not None and any(
        tuple(state[k].shape) != tuple(v.shape) for k, v in own.items()
    ):
        setattr(new, SPEC_ATTRIBUTE, None)
    return new
