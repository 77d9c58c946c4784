"""Structured pruning by fusion (Intra-Fusion, Theus et al. 2024): whole units of every
symmetry group are removed, and instead of discarding the removed units their weights are
fused into the kept ones by optimal transport, with an importance score as the marginal.

The groups are the ones :func:`landscape.symmetry.symmetry_graph` finds by tracing, so any
traced model can be pruned (the units of a residual stream are pruned together, the columns
of the next layer follow the rows of the last one). BatchNorm is folded into the layer before
it first, so that a unit is one affine map whose weights can be averaged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr
from torch import Tensor, nn

from landscape.core.data import as_splits, batch_slices
from landscape.core.device import resolve_device
from landscape.core.errors import bad_argument
from landscape.core.io import checkpoint_record, provenance_attrs
from landscape.core.metrics import model_output_logits
from landscape.core.progress import progress_bar
from landscape.core.spec import spec_of
from landscape.core.state import State, as_state, check_compatible
from landscape.symmetry import (
    AFFINE_LAYERS,
    Atom,
    FoldedNorm,
    Layout,
    Prod,
    Sum,
    SymmetryGraph,
    Transform,
    channel_statistics,
    fold_batchnorm,
    map_units,
    resize_model,
    symmetry_graph,
    unfold_batchnorm,
    unit_rows,
)

__all__ = ["IMPORTANCES", "MARGINALS", "PRUNE_METHODS", "Pruned", "intra_fusion", "plain_groups", "unit_importance"]

IMPORTANCES = ("l1", "l2", "taylor")
PRUNE_METHODS = ("fuse", "discard")
MARGINALS = ("importance", "uniform")

Importance = str | Callable[[nn.Module, State, object], Mapping[str, Tensor]]


@dataclass
class Pruned:
    """The result of :func:`intra_fusion`.

    Attributes
    ----------
    model : torch.nn.Module
        The narrower network (a copy of the original with resized layers), loaded with ``state``.
    state : State
        Its weights.
    kept : dict of str to numpy.ndarray
        Per pruned group, the indices of the units that stay (most important first are kept;
        in unit order).
    plans : dict of str to numpy.ndarray
        Per pruned group, the transport plan (kept units x original units) that fused the
        units (``method="fuse"``), or the selection matrix (``method="discard"``).
    importance : dict of str to numpy.ndarray
        The importance of every original unit.
    method, sparsity, importance_kind : str, float or dict, str
    folded : tuple of FoldedNorm
        The BatchNorm layers that were folded (and given statistics again when data was given).
    """

    model: nn.Module
    state: State
    kept: dict[str, np.ndarray]
    plans: dict[str, np.ndarray]
    importance: dict[str, np.ndarray]
    method: str
    sparsity: float | dict[str, float]
    importance_kind: str
    folded: tuple[FoldedNorm, ...] = ()
    history: xr.Dataset | None = None
    attrs: dict[str, object] = field(default_factory=dict)

    def to_dataset(self) -> xr.Dataset:
        """Per group: ``size`` and ``kept_units`` (dim ``group``); ``attrs`` hold the method,
        sparsity, importance and provenance."""
        names = list(self.importance)
        sizes = [len(self.importance[g]) for g in names]
        kept = [len(self.kept.get(g, self.importance[g])) for g in names]
        return xr.Dataset(
            {
                "size": ("group", np.array(sizes, dtype=np.int64)),
                "kept_units": ("group", np.array(kept, dtype=np.int64)),
            },
            coords={"group": names},
            attrs=self.attrs,
        )

    def __repr__(self) -> str:
        total = sum(len(v) for v in self.importance.values())
        kept = sum(len(self.kept.get(g, v)) for g, v in self.importance.items())
        return f"Pruned(method={self.method!r}, {kept} of {total} units kept in {len(self.importance)} groups)"


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------


def _training_pair(data: object, *, function: str, n_examples: int | None) -> tuple[Tensor, Tensor]:
    """The ``train`` split (else the first one), its first ``n_examples`` examples."""
    splits, _ = as_splits(data, function=function, argument="data")
    name = "train" if "train" in splits else next(iter(splits))
    x, y = splits[name]
    if n_examples is not None:
        if not isinstance(n_examples, int) or n_examples < 1:
            raise bad_argument(function, "n_examples", expected="a positive integer or None", found=repr(n_examples))
        x, y = x[:n_examples], y[:n_examples]
    return x, y


def _atoms(layout: Layout) -> list[Atom]:
    if isinstance(layout, Atom):
        return [layout]
    if isinstance(layout, (Prod, Sum)):
        return [a for c in layout.children for a in _atoms(c)]
    return []


def plain_groups(graph: SymmetryGraph) -> list[str]:
    """Groups whose units can be removed on their own: on every axis they touch they are the
    only group (factors of structured axes, such as GroupNorm groups or attention heads, are
    left out)."""
    shared = set()
    for lays in graph.layouts.values():
        for lay in lays:
            found = _atoms(lay)
            if len(found) > 1:
                shared.update(str(a.group) for a in found)
    return [g for g in graph.groups if g not in shared]


def _group_rows(graph: SymmetryGraph, state: Mapping[str, Tensor], group: str, keys: set[str]) -> Tensor:
    """(units, entries): every entry of the parameters in ``keys`` that belongs to each unit."""
    rows = []
    for ref in graph.groups[group].axes:
        if ref.key not in keys:
            continue
        layout = graph.layouts[ref.key][ref.axis]
        rows.append(unit_rows(state[ref.key].detach().double().cpu(), ref.axis, layout, ref.path))
    return torch.cat(rows, dim=1)


def _loss_gradient(
    model: nn.Module, state: State, x: Tensor, y: Tensor, *, batch_size: int, device: torch.device
) -> State:
    """Gradient of the mean cross-entropy over ``(x, y)`` at ``state`` (eval mode)."""
    import copy

    work = copy.deepcopy(model)
    work.load_state_dict(state)
    work.to(device).eval()
    params = dict(work.named_parameters())
    for p in params.values():
        p.requires_grad_(True)
        p.grad = None
    dtype = next((p.dtype for p in params.values() if p.is_floating_point()), torch.float32)
    n = x.shape[0]
    for s in batch_slices(n, batch_size):
        xb = x[s].to(device)
        xb = xb.to(dtype) if xb.is_floating_point() else xb
        logits = model_output_logits(work(xb))
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y[s].to(device).reshape(-1), reduction="sum")
        (loss / n).backward()
    return State({k: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().cpu() for k, p in params.items()})


def unit_importance(
    model: nn.Module,
    state: Mapping[str, Tensor] | nn.Module,
    data: object = None,
    *,
    kind: str = "l1",
    graph: SymmetryGraph | None = None,
    n_examples: int | None = None,
    batch_size: int = 256,
    device: str | torch.device = "auto",
) -> dict[str, Tensor]:
    """The importance of every unit of every symmetry group.

    A unit's entries are its weights in every parameter the group acts on: the rows of the
    layers that produce it (and their biases and norm parameters) and the columns of the layers
    that read it.

    Parameters
    ----------
    model
        The architecture.
    state
        The weights (:func:`intra_fusion` passes them with BatchNorm folded, as the paper does).
    data
        Labelled data for ``"taylor"`` (the ``train`` split, or the first split).
    kind
        ``"l1"``: the sum of the absolute values of the unit's entries; ``"l2"``: the sum of
        their squares (the torch-pruning magnitude criteria Intra-Fusion uses); ``"taylor"``:
        the sum over the unit's entries of ``|w * dL/dw|``, the first-order estimate of the
        loss change when the unit is removed, with ``L`` the mean cross-entropy on ``data``.
    graph
        The model's symmetry graph (traced when None).
    n_examples, batch_size
        Examples of ``data`` to use (default all) and examples per forward pass.
    device
        Where the gradients of ``"taylor"`` are computed.

    Returns
    -------
    dict of str to Tensor
        Non-negative float64 scores per group, on the CPU.

    Examples
    --------
    >>> import landscape as ls
    >>> model = ls.models.create("mlp", width=8, depth=1, seed=0)
    >>> scores = unit_importance(model, model, kind="l1")
    >>> scores["features.fc1"].shape
    torch.Size([8])
    """
    if kind not in IMPORTANCES:
        raise bad_argument("unit_importance", "kind", expected=f"one of {IMPORTANCES}", found=repr(kind))
    state = as_state(state, function="unit_importance", argument="state")
    check_compatible(model.state_dict(), state, function="unit_importance", names=("model", "state"))
    graph = graph if graph is not None else symmetry_graph(model)
    keys = {name for name, _ in model.named_parameters()}
    if kind == "taylor":
        if data is None:
            raise bad_argument(
                "unit_importance", "data", expected="labelled data for kind='taylor'", found=None, fix="Pass data=..."
            )
        x, y = _training_pair(data, function="unit_importance", n_examples=n_examples)
        grad = _loss_gradient(model, state, x, y, batch_size=batch_size, device=resolve_device(device))
        product = State({k: (state[k].double() * grad[k].double()).abs() for k in keys})
        return {g: _group_rows(graph, product, g, keys).sum(1) for g in graph.groups}
    scores = {}
    for g in graph.groups:
        rows = _group_rows(graph, state, g, keys)
        scores[g] = rows.abs().sum(1) if kind == "l1" else (rows * rows).sum(1)
    return scores


def _keep_counts(graph: SymmetryGraph, groups: list[str], sparsity: object) -> dict[str, int]:
    def count(g: str, s: object) -> int:
        if not isinstance(s, (int, float)) or isinstance(s, bool) or not 0 <= float(s) < 1:
            raise bad_argument(
                "intra_fusion",
                "sparsity",
                expected="a fraction of units to remove in [0, 1), or {group: fraction}",
                found=repr(s),
            )
        size = graph.groups[g].size
        return max(1, size - round(float(s) * size))

    if isinstance(sparsity, Mapping):
        unknown = [g for g in sparsity if g not in groups]
        if unknown:
            raise bad_argument(
                "intra_fusion", "sparsity", expected=f"prunable group names ({groups[:5]})", found=repr(unknown[0])
            )
        return {g: count(g, s) for g, s in sparsity.items()}
    return {g: count(g, sparsity) for g in groups}


def _transport_plan(rows: Tensor, importance: Tensor, keep: Tensor, marginals: str) -> Tensor:
    """The plan (kept x all units) that moves every unit onto the kept ones: exact OT with the
    L1 distance between the units' weight vectors scaled to unit length as the cost (as the
    reference implementation does)."""
    import ot

    unit = rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cost = torch.cdist(unit, unit[keep], p=1).numpy()
    if marginals == "importance":
        imp = importance.numpy().astype(np.float64)
        if not np.all(np.isfinite(imp)) or imp.sum() <= 0:
            imp = np.ones_like(imp)
        source = imp / imp.sum()
        target = imp[keep.numpy()]
        target = target / target.sum() if target.sum() > 0 else np.full(len(target), 1.0 / len(target))
    else:
        source = np.full(rows.shape[0], 1.0 / rows.shape[0])
        target = np.full(len(keep), 1.0 / len(keep))
    plan = ot.emd(source, target, cost, numItermax=10_000_000)
    return torch.as_tensor(plan.T, dtype=torch.float64)


class _UnitMap(Transform):
    """One (kept x all units) matrix ``M`` acting alike on every axis of the group:
    ``t' = M t`` along the axis, whether the axis produces the units or reads them."""

    def __init__(self, matrix: Tensor) -> None:
        self.m = matrix.double()

    @property
    def source_size(self) -> int:
        return int(self.m.shape[1])

    @property
    def target_size(self) -> int:
        return int(self.m.shape[0])

    def matrix(self, variance: str = "out") -> Tensor:
        return self.m


def _selection(keep: Tensor, n: int) -> Tensor:
    m = torch.zeros(len(keep), n, dtype=torch.float64)
    m[torch.arange(len(keep)), keep] = 1.0
    return m


def _fusion_matrix(plan: Tensor) -> Tensor:
    """Intra-Fusion's map: the plan with every source unit's column divided by its mass, so
    each removed unit's weights are added to the kept units in the fractions it is moved."""
    mass = plan.sum(dim=0, keepdim=True)
    return torch.where(mass > 0, plan / mass.clamp_min(1e-300), torch.zeros_like(plan))


def _affine_keys(graph: SymmetryGraph, folds: tuple[FoldedNorm, ...]) -> set[str]:
    """Weights and biases of Linear/Conv layers, and the norm biases holding folded shifts."""
    keys = {f.bias for f in folds}
    for name, module in graph.module.named_modules():
        if isinstance(module, AFFINE_LAYERS):
            keys.update(f"{name}.{k}" if name else k for k, _ in module.named_parameters(recurse=False))
    return keys


def _repair(
    model: nn.Module,
    state: State,
    pruned_model: nn.Module,
    pruned_state: State,
    kept: Mapping[str, Tensor],
    x: Tensor,
    *,
    batch_size: int,
    device: torch.device,
) -> State:
    """REPAIR for pruning: every unit right before a nonlinearity (and the output) gets the
    mean and standard deviation the unit it continues had in the original network."""
    from landscape.alignment import correct_statistics

    pruned_graph = symmetry_graph(pruned_model, (x[:2],))
    sites = [s for s in pruned_graph.repair_sites if s.axis == 1]
    before = channel_statistics(model, state, x, [s.module for s in sites], batch_size=batch_size, device=device)
    targets = {}
    for s in sites:
        mean, var = before[s.module]

        def select(t: Tensor, dim: int, group: str) -> Tensor:
            return t.index_select(dim, kept[group]) if group in kept else t

        targets[s.node] = (map_units(mean, 0, s.layout, select), map_units(var.sqrt(), 0, s.layout, select))
    return correct_statistics(pruned_graph, pruned_state, x, targets, sites=sites, batch_size=batch_size)


# ---------------------------------------------------------------------------------------
# Intra-Fusion
# ---------------------------------------------------------------------------------------


def intra_fusion(
    model: nn.Module,
    state: Mapping[str, Tensor] | nn.Module | None,
    data: object = None,
    *,
    sparsity: float | Mapping[str, float],
    importance: Importance = "l1",
    method: str = "fuse",
    marginals: str = "importance",
    repair: bool = False,
    groups: list[str] | None = None,
    finetune: Mapping[str, object] | None = None,
    graph: SymmetryGraph | None = None,
    n_examples: int | None = None,
    batch_size: int = 256,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> Pruned:
    """Remove a fraction of the units of every symmetry group, fusing them into the units kept.

    For each group, the units are ranked by ``importance`` and the least important
    ``sparsity`` fraction is removed. ``method="fuse"`` (Intra-Fusion, Theus et al. 2024)
    moves every unit onto the kept ones by exact optimal transport: the cost is the L1
    distance between the units' weight vectors (their rows in the layers that produce them
    and their columns in the layers that read them, scaled to unit length), the source
    marginal the importance of every unit, the target marginal that of the kept units
    (``marginals="importance"``). As in the reference implementation, each removed unit's
    weights (rows, biases and columns of Linear/Conv layers) are then added to the kept units
    in the fractions the plan moves it (``M = T diag(1 / source mass)``, applied to every axis
    of the group); the kept units' own weights stay; normalisation parameters keep the kept
    units' values. ``method="discard"`` is the usual structured pruning: the removed units are
    dropped. BatchNorm layers that follow a Linear/Conv layer are folded into it first (as the
    paper does) and, when ``data`` is given, get the pruned network's running statistics again
    afterwards (this does not change the function; it lets train-mode fine-tuning start from
    the same network).

    Parameters
    ----------
    model
        The architecture (not modified).
    state
        Its weights (a state, module or None for the model's own).
    data
        Data for ``importance="taylor"``, BatchNorm statistics, ``repair`` and ``finetune``.
    sparsity
        The fraction of units to remove in every prunable group (at least one unit stays), or
        ``{group: fraction}`` for chosen groups only.
    importance
        ``"l1"``, ``"l2"`` or ``"taylor"`` (see :func:`unit_importance`, computed with BatchNorm
        folded), or a callable ``importance(model, folded_state, data) -> {group: scores}``.
    method
        ``"fuse"`` (Intra-Fusion) or ``"discard"`` (the baseline: keep the most important units).
    marginals
        ``"importance"`` (source: every unit's importance; target: the kept units'
        importance; both normalised) or ``"uniform"`` for both (the reference code's default).
        With either, ``sparsity=0`` returns the network unchanged.
    repair
        Afterwards, give every unit right before a nonlinearity (and the output) the mean and
        standard deviation that the unit it continues had in the original network on ``data``
        (REPAIR, Jordan et al. 2023, applied to pruning; not part of Intra-Fusion).
    groups
        The groups to prune (default every group whose units can be removed on their own: not
        the factors of GroupNorm groups or attention heads).
    finetune
        Train the pruned network afterwards with these arguments of :func:`landscape.train`
        (e.g. ``{"epochs": 1, "lr": 0.01}``); needs ``data``.
    graph
        The model's symmetry graph (traced when None).
    n_examples, batch_size
        Examples of ``data`` for importance and statistics (default all), examples per pass.
    device
        Where gradients, statistics and fine-tuning run.
    progress
        Show a progress bar.

    Returns
    -------
    Pruned
        ``.model`` (narrower) and ``.state``, the kept units, plans and importance per group.

    Examples
    --------
    >>> import landscape as ls
    >>> model = ls.models.create("mlp", width=16, depth=2, seed=0)
    >>> pruned = intra_fusion(model, None, sparsity=0.5, progress=False)
    >>> pruned.model.features.fc1
    Linear(in_features=40, out_features=8, bias=True)
    """
    if not isinstance(model, nn.Module):
        raise bad_argument("intra_fusion", "model", expected="an nn.Module (the architecture)", found=model)
    if method not in PRUNE_METHODS:
        raise bad_argument("intra_fusion", "method", expected=f"one of {PRUNE_METHODS}", found=repr(method))
    if marginals not in MARGINALS:
        raise bad_argument("intra_fusion", "marginals", expected=f"one of {MARGINALS}", found=repr(marginals))
    if not callable(importance) and importance not in IMPORTANCES:
        raise bad_argument(
            "intra_fusion", "importance", expected=f"one of {IMPORTANCES} or a callable", found=repr(importance)
        )
    for name, wanted in (("finetune", finetune is not None), ("repair", bool(repair))):
        if wanted and data is None:
            raise bad_argument("intra_fusion", "data", expected=f"data for {name}", found=None, fix="Pass data=...")
    if finetune is not None and not isinstance(finetune, Mapping):
        raise bad_argument("intra_fusion", "finetune", expected="a dict of landscape.train arguments", found=finetune)
    state = as_state(model if state is None else state, function="intra_fusion", argument="state")
    check_compatible(model.state_dict(), state, function="intra_fusion", names=("model", "state"))
    dev = resolve_device(device, function="intra_fusion")
    x = None if data is None else _training_pair(data, function="intra_fusion", n_examples=n_examples)[0]
    if graph is None:
        graph = symmetry_graph(model, None if x is None else (x[:2],))
    if graph.module is None:
        raise bad_argument("intra_fusion", "graph", expected="a traced symmetry graph", found="one from a manual spec")
    prunable = plain_groups(graph)
    if groups is not None:
        unknown = [g for g in groups if g not in prunable]
        if unknown:
            raise bad_argument(
                "intra_fusion",
                "groups",
                expected=f"prunable groups of the model ({prunable[:6]})",
                found=repr(unknown[0]),
            )
        prunable = list(groups)
    counts = _keep_counts(graph, prunable, sparsity)
    folded, folds = fold_batchnorm(graph, state)
    if callable(importance):
        scores = {g: torch.as_tensor(v, dtype=torch.float64).cpu() for g, v in importance(model, folded, data).items()}
        kind = getattr(importance, "__name__", "callable")
    else:
        kind = importance
        scores = unit_importance(
            model, folded, data, kind=kind, graph=graph, n_examples=n_examples, batch_size=batch_size, device=dev
        )
    for g in counts:
        if g not in scores or tuple(scores[g].shape) != (graph.groups[g].size,):
            raise bad_argument(
                "intra_fusion",
                "importance",
                expected=f"scores of shape ({graph.groups[g].size},) for group {g!r}",
                found="none" if g not in scores else f"shape {tuple(scores[g].shape)}",
            )
    parameters = {name for name, _ in model.named_parameters()}
    fusing: dict[str, _UnitMap] = {}
    selecting: dict[str, _UnitMap] = {}
    kept: dict[str, Tensor] = {}
    plans: dict[str, np.ndarray] = {}
    with progress_bar(total=len(counts), desc=f"intra_fusion ({method})", unit="group", disable=not progress) as bar:
        for g, k in counts.items():
            n = graph.groups[g].size
            order = sorted(range(n), key=lambda i: (-float(scores[g][i]), i))  # ties keep the lower index
            keep = torch.tensor(sorted(order[:k]), dtype=torch.long)
            selection = _selection(keep, n)
            if method == "fuse":
                plan = _transport_plan(_group_rows(graph, folded, g, parameters), scores[g], keep, marginals)
                fusing[g] = _UnitMap(_fusion_matrix(plan))
            else:
                plan = selection
                fusing[g] = _UnitMap(selection)
            selecting[g] = _UnitMap(selection)
            kept[g] = keep
            plans[g] = plan.numpy()
            bar.update(1)
    fused = graph.apply(folded, fusing, validate=False)
    selected = graph.apply(folded, selecting, validate=False)
    affine = _affine_keys(graph, folds)
    pruned_state = State({key: fused[key] if key in affine else selected[key] for key in folded})
    pruned_model = resize_model(model, pruned_state)
    if x is not None and folds:
        pruned_state = unfold_batchnorm(pruned_model, pruned_state, folds, x, batch_size=batch_size, device=dev)
    if repair:
        pruned_state = _repair(model, state, pruned_model, pruned_state, kept, x, batch_size=batch_size, device=dev)
    history = None
    if finetune is not None:
        from landscape.training import train

        result = train(pruned_model, data, start=pruned_state, **{"progress": progress, "device": dev, **finetune})
        pruned_state, history = result.state, result.history
    pruned_model.load_state_dict(pruned_state)
    pruned_state = State(dict(pruned_state))
    pruned_state.provenance = {
        "format": "pruned",
        "source": f"landscape.pruning.intra_fusion(method={method!r})",
        "derived": f"pruned from {checkpoint_record(state).get('sha256', '?')[:12]}",
    }
    attrs = provenance_attrs(
        analysis="intra_fusion",
        method=method,
        importance=kind,
        marginals=marginals if method == "fuse" else None,
        repair=bool(repair),
        sparsity=dict(sparsity) if isinstance(sparsity, Mapping) else float(sparsity),
        model=spec_of(model),
        source=checkpoint_record(state),
        folded=[f.norm for f in folds],
        finetune=dict(finetune) if finetune is not None else None,
        units_before=int(sum(graph.groups[g].size for g in counts)),
        units_after=int(sum(counts.values())),
        fraction_of_parameters=_parameter_fraction(model, pruned_model),
    )
    return Pruned(
        model=pruned_model,
        state=pruned_state,
        kept={g: v.numpy() for g, v in kept.items()},
        plans=plans,
        importance={g: scores[g].numpy() for g in graph.groups if g in scores},
        method=method,
        sparsity=dict(sparsity) if isinstance(sparsity, Mapping) else float(sparsity),
        importance_kind=kind,
        folded=folds,
        history=history,
        attrs=attrs,
    )


def _parameter_fraction(before: nn.Module, after: nn.Module) -> float:
    total = sum(math.prod(p.shape) for p in before.parameters())
    return float(sum(math.prod(p.shape) for p in after.parameters()) / max(total, 1))
