"""Model fusion by neuron interpolation (Luenam et al. 2025): the parents' neurons of every layer
are grouped into as many clusters as the fused layer has units, weighted by how much each
neuron contributes to the prediction, and the fused network is fitted layer by layer, by least
squares on its own inputs, to the clusters' weighted mean outputs.

The layers and groups come from the traced symmetry graph, so any model made of Linear and
Conv layers (with BatchNorm, residual additions, pooling, flattening) can be fused without a
hand-written description.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from landscape.core import run_points
from landscape.core.data import as_splits, batch_slices
from landscape.core.device import resolve_device
from landscape.core.errors import bad_argument
from landscape.core.io import checkpoint_record
from landscape.core.metrics import model_output_logits
from landscape.core.progress import progress_bar
from landscape.core.state import State, as_state, check_compatible
from landscape.symmetry import (
    AFFINE_LAYERS,
    Atom,
    Fixed,
    FoldedNorm,
    Prod,
    Sum,
    SymmetryGraph,
    Transform,
    fold_batchnorm,
    symmetry_graph,
    unfold_batchnorm,
)

__all__ = ["ATTRIBUTIONS", "neuron_attribution", "neuron_interpolation", "weighted_kmeans"]

ATTRIBUTIONS = ("conductance", "gradient_x_activation", "uniform")


# ---------------------------------------------------------------------------------------
# Inputs, parents and layers
# ---------------------------------------------------------------------------------------


def _load(value: object, *, function: str, argument: str) -> State:
    if isinstance(value, (str, os.PathLike)):
        from landscape.core.checkpoints import load_state

        return load_state(value)
    return as_state(value, function=function, argument=argument)


def _labelled(data: object, *, function: str, n_examples: int | None) -> tuple[Tensor, Tensor]:
    if data is None:
        raise bad_argument(
            function,
            "data",
            expected="labelled data to fit the fused layers on (Splits, a dict of splits or an (x, y) pair)",
            found=None,
            fix="Pass data=landscape.datasets.mnist1d() or your (x, y) pair.",
        )
    splits, _ = as_splits(data, function=function, argument="data")
    x, y = splits["train" if "train" in splits else next(iter(splits))]
    if n_examples is not None:
        if not isinstance(n_examples, int) or n_examples < 1:
            raise bad_argument(function, "n_examples", expected="a positive integer or None", found=repr(n_examples))
        x, y = x[:n_examples], y[:n_examples]
    return x, y


@dataclass(frozen=True)
class _Layer:
    """A Linear/Conv layer the fusion fits: where its weight and bias live, the module whose
    output is the unit's value (the folded norm when it holds the layer's shift), and the
    group its outputs belong to (None for a fixed output, e.g. the classifier)."""

    name: str
    weight: str
    bias: str | None
    output: str
    group: str | None


def _layers(graph: SymmetryGraph, folds: Sequence[FoldedNorm], function: str) -> list[_Layer]:
    modules = dict(graph.module.named_modules())
    holder = {f.layer: f for f in folds}
    found = []
    for node in graph.module.graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(str(node.target)), AFFINE_LAYERS):
            continue
        name = str(node.target)
        module = modules[name]
        if isinstance(module, nn.Linear):
            pass
        elif module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str):
            raise bad_argument(
                function,
                "model",
                expected="Linear layers and convolutions with groups=1, zero padding given as numbers",
                found=f"{name!r} ({module})",
                fix="Fuse this model with fuse(..., method='ot') instead.",
            )
        weight = f"{name}.weight"
        fold = holder.get(name)
        bias = fold.bias if fold is not None else (f"{name}.bias" if module.bias is not None else None)
        output = fold.norm if fold is not None and fold.bias != f"{name}.bias" else name
        layout = graph.layouts[weight][0]
        if isinstance(layout, Fixed):
            group = None
        elif isinstance(layout, Atom):
            group = str(layout.group)
        else:
            raise bad_argument(
                function,
                "model",
                expected="layers whose output units form one symmetry group",
                found=f"{name!r} with output layout {layout}",
                fix="Fuse this model with fuse(..., method='ot') instead.",
            )
        found.append(_Layer(name, weight, bias, output, group))
    return found


def _working_copy(model: nn.Module, state: Mapping[str, Tensor], device: torch.device) -> nn.Module:
    """A copy in eval mode on ``device`` whose in-place activations are made out-of-place, so
    that captured values and their gradients are not overwritten (``ReLU(inplace=True)``)."""
    work = copy.deepcopy(model)
    work.load_state_dict(state)
    for module in work.modules():
        if getattr(module, "inplace", False) is True:
            module.inplace = False
    return work.to(device).eval()


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the wanted value is captured."""

    def __init__(self, value: Tensor) -> None:
        self.value = value


def _captured(
    model: nn.Module, state: Mapping[str, Tensor], x: Tensor, module: str, *, inputs: bool, batch_size: int, device
) -> Iterator[Tensor]:
    """The input (or output) of one module, batch by batch; each forward pass stops there."""
    work = _working_copy(model, state, device)
    target = work.get_submodule(module)

    def pre(_m: nn.Module, args: tuple) -> None:
        raise _Stop(args[0])

    def post(_m: nn.Module, _args: tuple, out: Tensor) -> None:
        raise _Stop(out)

    handle = target.register_forward_pre_hook(pre) if inputs else target.register_forward_hook(post)
    dtype = next((p.dtype for p in work.parameters() if p.is_floating_point()), torch.float32)
    try:
        for s in batch_slices(x.shape[0], batch_size):
            xb = x[s].to(device)
            try:
                with torch.no_grad():
                    work(xb.to(dtype) if xb.is_floating_point() else xb)
            except _Stop as stop:
                yield stop.value.detach()
                continue
            raise bad_argument("neuron_interpolation", "model", expected=f"{module!r} to run", found="it did not run")
    finally:
        handle.remove()


def inputs_of(
    model: nn.Module,
    state: Mapping[str, Tensor],
    x: Tensor,
    modules: Sequence[str],
    *,
    batch_size: int,
    device: torch.device,
) -> Iterator[dict[str, Tensor]]:
    """The first input of each named module, batch by batch (detached copies)."""
    work = _working_copy(model, state, device)
    seen: dict[str, Tensor] = {}
    hooks = []
    for name in modules:

        def pre(_m: nn.Module, args: tuple, name: str = name) -> None:
            seen[name] = args[0].detach().clone()

        hooks.append(work.get_submodule(name).register_forward_pre_hook(pre))
    dtype = next((p.dtype for p in work.parameters() if p.is_floating_point()), torch.float32)
    try:
        for s in batch_slices(x.shape[0], batch_size):
            seen.clear()
            xb = x[s].to(device)
            with torch.no_grad():
                work(xb.to(dtype) if xb.is_floating_point() else xb)
            yield dict(seen)
    finally:
        for h in hooks:
            h.remove()


def _unit_matrix(value: Tensor, linear: bool) -> Tensor:
    """(samples, units): channels on axis 1 for convolutions, the last axis for Linear layers."""
    if linear:
        return value.reshape(-1, value.shape[-1])
    return value.movedim(1, -1).reshape(-1, value.shape[1])


def _design(value: Tensor, module: nn.Module, with_bias: bool) -> Tensor:
    """The rows the layer's weight multiplies: inputs (Linear) or patches (Conv), plus ones."""
    if isinstance(module, nn.Linear):
        rows = value.reshape(-1, value.shape[-1])
    else:
        dims = value.dim() - 2
        if dims == 1:
            value = value.unsqueeze(2)
        kernel = (1, *module.kernel_size) if dims == 1 else module.kernel_size
        stride = (1, *module.stride) if dims == 1 else module.stride
        padding = (0, *module.padding) if dims == 1 else module.padding
        dilation = (1, *module.dilation) if dims == 1 else module.dilation
        if dims not in (1, 2):
            raise bad_argument(
                "neuron_interpolation", "model", expected="1-D or 2-D convolutions", found=f"{dims}-D ({module})"
            )
        patches = F.unfold(value, kernel, dilation=dilation, padding=padding, stride=stride)
        rows = patches.transpose(1, 2).reshape(-1, patches.shape[1])
    rows = rows.double()
    if with_bias:
        rows = torch.cat([rows, torch.ones(rows.shape[0], 1, dtype=rows.dtype, device=rows.device)], dim=1)
    return rows


# ---------------------------------------------------------------------------------------
# Attribution
# ---------------------------------------------------------------------------------------


def _attribution_batch(
    work: nn.Module, xb: Tensor, yb: Tensor, modules: Sequence[str], kind: str, steps: int
) -> dict[str, Tensor]:
    """Signed attributions (examples, units, ...) of the outputs of ``modules`` to the logit
    of each example's label, on one batch."""
    values: dict[str, Tensor] = {}
    hooks = []
    for name in modules:

        def hook(_m: nn.Module, _args: tuple, out: Tensor, name: str = name) -> None:
            out.retain_grad()
            values[name] = out

        hooks.append(work.get_submodule(name).register_forward_hook(hook))
    try:
        # every point of the path from the zero input, for every example, in one pass: the
        # examples are independent (eval mode), so one backward gives every point's gradient
        alphas = [1.0] if kind == "gradient_x_activation" else [k / steps for k in range(steps + 1)]
        scale = torch.tensor(alphas, dtype=xb.dtype, device=xb.device)
        path = (scale.reshape(-1, *([1] * xb.dim())) * xb.unsqueeze(0)).reshape(-1, *xb.shape[1:])
        logits = model_output_logits(work(path))
        targets = yb.reshape(1, -1).expand(len(alphas), -1).reshape(-1, 1)
        logits.reshape(-1, logits.shape[-1]).gather(1, targets).sum().backward()
        total = {}
        for name in modules:
            a = values[name].detach()
            g = values[name].grad
            g = torch.zeros_like(a) if g is None else g.detach()
            a = a.reshape(len(alphas), xb.shape[0], *a.shape[1:])
            g = g.reshape(len(alphas), xb.shape[0], *g.shape[1:])
            total[name] = g[0] * a[0] if kind == "gradient_x_activation" else (g[1:] * (a[1:] - a[:-1])).sum(0)
    finally:
        for h in hooks:
            h.remove()
    return total


def neuron_attribution(
    model: nn.Module,
    state: Mapping[str, Tensor] | nn.Module,
    data: object,
    *,
    layers: Sequence[str],
    kind: str = "conductance",
    steps: int = 10,
    n_examples: int | None = None,
    batch_size: int = 256,
    device: str | torch.device = "auto",
) -> dict[str, Tensor]:
    """How much each output unit of each named layer contributes to the logit of the label.

    ``"conductance"`` (Dhamdhere et al. 2019; the score Luenam et al. 2025 use): the integral of
    ``d logit / d unit`` times the unit's change along the straight path from the zero input
    to the example, by a Riemann sum over ``steps`` points with the unit's exact differences
    (so the conductances of a layer every path crosses sum to ``logit(x) - logit(0)``).
    ``"gradient_x_activation"``: ``unit * d logit / d unit`` at the example. ``"uniform"``: ones.
    Scores are the absolute attributions summed over positions and averaged over examples. The
    ``steps + 1`` points of the path of a batch run as one pass of ``(steps + 1) x batch_size``
    examples.

    Parameters
    ----------
    model, state
        The network (BatchNorm in eval mode).
    data
        Labelled data; the ``train`` split (else the first) is used.
    layers
        Module names whose outputs are scored; channels on axis 1 (Conv) or the last axis (Linear).
    kind, steps
        The attribution and the number of path steps for ``"conductance"``.
    n_examples, batch_size, device
        Examples to use (default all), examples per pass, where to run.

    Returns
    -------
    dict of str to Tensor
        Non-negative float64 scores per layer (one per output unit), on the CPU.

    Examples
    --------
    >>> import torch, landscape as ls
    >>> model = ls.models.create("mlp", width=8, depth=1, seed=0)
    >>> data = (torch.randn(16, 40), torch.randint(0, 10, (16,)))
    >>> neuron_attribution(model, model, data, layers=["features.fc1"])["features.fc1"].shape
    torch.Size([8])
    """
    if kind not in ATTRIBUTIONS:
        raise bad_argument("neuron_attribution", "kind", expected=f"one of {ATTRIBUTIONS}", found=repr(kind))
    if not isinstance(steps, int) or steps < 1:
        raise bad_argument("neuron_attribution", "steps", expected="a positive integer", found=repr(steps))
    state = _load(state, function="neuron_attribution", argument="state")
    x, y = _labelled(data, function="neuron_attribution", n_examples=n_examples)
    dev = resolve_device(device, function="neuron_attribution")
    work = _working_copy(model, state, dev)
    modules = dict(work.named_modules())
    unknown = [name for name in layers if name not in modules]
    if unknown:
        raise bad_argument("neuron_attribution", "layers", expected="module names of the model", found=repr(unknown[0]))
    linear = {name: isinstance(modules[name], nn.Linear) for name in layers}
    if kind == "uniform":
        sizes = {}
        for name in layers:
            for value in _captured(model, state, x[:1], name, inputs=False, batch_size=1, device=dev):
                sizes[name] = value.shape[-1] if linear[name] else value.shape[1]
        return {name: torch.ones(sizes[name], dtype=torch.float64) for name in layers}
    dtype = next((p.dtype for p in work.parameters() if p.is_floating_point()), torch.float32)
    totals: dict[str, Tensor] = {}
    for s in batch_slices(x.shape[0], batch_size):
        xb = x[s].to(dev)
        xb = xb.to(dtype) if xb.is_floating_point() else xb
        found = _attribution_batch(work, xb, y[s].to(dev), list(layers), kind, steps)
        for name, value in found.items():
            units = _unit_matrix(value.abs().double(), linear[name]).sum(0)
            totals[name] = units if name not in totals else totals[name] + units
        work.zero_grad(set_to_none=True)
    return {name: (v / x.shape[0]).cpu() for name, v in totals.items()}


# ---------------------------------------------------------------------------------------
# Grouping
# ---------------------------------------------------------------------------------------


def weighted_kmeans(
    gram: Tensor,
    weights: Tensor,
    clusters: int,
    *,
    restarts: int = 4,
    max_iter: int = 100,
    seed: int = 0,
    device: str | torch.device = "auto",
) -> Tensor:
    """Weighted k-means of points given only their Gram matrix (kernel k-means), on the
    Gram matrix's device.

    Minimises ``sum_l w_l ||p_l - c(l)||^2`` with each centroid the weighted mean of its
    points; ``||p_l - c||^2`` is computed from ``G`` alone, so the points (here: units' outputs
    over thousands of examples) never need to be held. k-means++ seeding (weighted), Lloyd
    iterations until the assignment stops changing, an empty cluster takes the point farthest
    from its centroid; the best of ``restarts`` runs is kept.

    Parameters
    ----------
    gram
        (points, points) inner products.
    weights
        (points,) non-negative weights.
    clusters
        Number of clusters (at most the number of points).
    restarts, max_iter, seed
        Independent seedings, Lloyd iterations per seeding, seed of the seedings.
    device
        Where the iterations run.

    Returns
    -------
    Tensor
        (points,) cluster index of every point (long, on the CPU).

    Examples
    --------
    >>> import torch
    >>> p = torch.tensor([[0.0], [0.1], [5.0], [5.2]])
    >>> weighted_kmeans(p @ p.T, torch.ones(4), 2).tolist() in ([0, 0, 1, 1], [1, 1, 0, 0])
    True
    """
    g = gram.to(resolve_device(device, function="weighted_kmeans"), torch.float64)
    n = g.shape[0]
    if not 1 <= clusters <= n:
        raise bad_argument("weighted_kmeans", "clusters", expected=f"between 1 and {n}", found=repr(clusters))
    w = weights.to(g.device, torch.float64).clamp_min(0) + 1e-300
    diag = torch.diagonal(g)
    generator = torch.Generator().manual_seed(int(seed))
    best, best_cost = None, float("inf")
    for _ in range(restarts):
        centers = [int(torch.multinomial((w / w.sum()).cpu(), 1, generator=generator))]
        nearest = (diag + g[centers[0], centers[0]] - 2 * g[:, centers[0]]).clamp_min(0)
        while len(centers) < clusters:
            p = (w * nearest).cpu()
            p[centers] = 0
            pick = (
                int(torch.multinomial(p / p.sum(), 1, generator=generator))
                if p.sum() > 0
                else next(i for i in range(n) if i not in centers)
            )
            centers.append(pick)
            nearest = torch.minimum(nearest, (diag + g[pick, pick] - 2 * g[:, pick]).clamp_min(0))
        labels = torch.stack([(diag + g[c, c] - 2 * g[:, c]) for c in centers], dim=1).argmin(1)
        for _ in range(max_iter):
            members = torch.zeros(n, clusters, dtype=torch.float64, device=g.device)
            members[torch.arange(n, device=g.device), labels] = w
            mass = members.sum(0)
            a = members / mass.clamp_min(1e-300)
            ga = g @ a
            dist = (diag[:, None] - 2 * ga + (a * ga).sum(0)[None, :]).clamp_min(0)
            empty = torch.nonzero(mass <= 1e-300).flatten().tolist()
            new = dist.argmin(1)
            for k in empty:
                worst = int((w * dist.gather(1, new[:, None]).squeeze(1)).argmax())
                new[worst] = k
                dist[worst] = 0
            if torch.equal(new, labels):
                break
            labels = new
        members = torch.zeros(n, clusters, dtype=torch.float64, device=g.device)
        members[torch.arange(n, device=g.device), labels] = w
        a = members / members.sum(0).clamp_min(1e-300)
        ga = g @ a
        dist = (diag[:, None] - 2 * ga + (a * ga).sum(0)[None, :]).clamp_min(0)
        cost = float((w * dist.gather(1, labels[:, None]).squeeze(1)).sum())
        if cost < best_cost:
            best, best_cost = labels.clone(), cost
    return best.cpu()


def _assignment(labels: Tensor, weights: Tensor, clusters: int) -> Tensor:
    """(units, clusters): each unit's weight within its cluster (columns sum to 1)."""
    a = torch.zeros(len(labels), clusters, dtype=torch.float64)
    a[torch.arange(len(labels)), labels.long()] = weights.double()
    mass = a.sum(0, keepdim=True)
    return torch.where(mass > 0, a / mass.clamp_min(1e-300), a)


class _Matrices(Transform):
    """A parent's map of one group onto the fused units: ``out`` for the axes that carry the
    units, ``inp`` for the axes that read them."""

    def __init__(self, out: Tensor, inp: Tensor) -> None:
        self.out, self.inp = out, inp

    @property
    def source_size(self) -> int:
        return int(self.out.shape[1])

    @property
    def target_size(self) -> int:
        return int(self.out.shape[0])

    def matrix(self, variance: str = "out") -> Tensor:
        return self.inp if variance == "in" else self.out


def _check_plain(graph: SymmetryGraph, function: str) -> None:
    for key, lays in graph.layouts.items():
        for lay in lays:
            if isinstance(lay, (Prod, Sum)) and sum(1 for c in _flat_children(lay) if isinstance(c, Atom)) > 1:
                raise bad_argument(
                    function,
                    "model",
                    expected="groups that are the only group on every axis they touch",
                    found=f"{key} with a structured axis ({lay})",
                    fix="GroupNorm with several groups and attention heads are not supported here; use fuse(..., method='ot').",
                )


def _flat_children(node: object) -> Iterator[object]:
    if isinstance(node, (Prod, Sum)):
        for c in node.children:
            yield from _flat_children(c)
    else:
        yield node


# ---------------------------------------------------------------------------------------
# Fusion
# ---------------------------------------------------------------------------------------


def neuron_interpolation(
    model: nn.Module,
    states: Sequence[Mapping[str, Tensor] | nn.Module | str],
    data: object,
    *,
    attribution: str | Callable[..., Mapping[str, Tensor]] = "conductance",
    weights: Sequence[float] | None = None,
    steps: int = 10,
    restarts: int = 4,
    rcond: float = 1e-10,
    graph: SymmetryGraph | None = None,
    n_examples: int | None = None,
    batch_size: int = 256,
    seed: int = 0,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> State:
    """Fuse ``N >= 1`` networks by neuron interpolation (Luenam et al. 2025, linear
    k-means variant).

    1. BatchNorm is folded into the layer before it in every parent, so that each unit is one
       affine map of its inputs.
    2. Every unit of every parent gets an attribution score (``attribution``, on ``data``),
       normalised to sum to 1 per parent and layer and multiplied by the parent's weight.
    3. For every symmetry group, the parents' units are clustered by weighted k-means into as
       many clusters as the group has units, by their outputs on ``data`` (for a residual
       stream: the outputs of every layer that adds to it). A cluster's target is the
       weighted mean of its units' outputs; output layers (fixed units such as the classes)
       take the weighted mean over parents of each unit.
    4. Layer by layer, from input to output, the fused layer's weights and bias are the least
       squares fit of the targets given the fused network's own inputs to that layer (earlier
       layers already fused), computed from the accumulated normal equations in float64 on
       the device (minimum-norm solution). Norm parameters take the clusters' weighted means.
    5. The folded BatchNorm layers get the fused network's running statistics again.

    Parameters
    ----------
    model
        The parents' architecture.
    states
        The parents (states, modules or checkpoint paths).
    data
        Labelled data for attribution, clustering and fitting (the ``train`` split, or the first).
    attribution
        ``"conductance"`` (default, with ``steps`` path steps), ``"gradient_x_activation"`` or
        ``"uniform"`` (see :func:`neuron_attribution`), or a callable
        ``attribution(model, folded_state, data, layers=...) -> {module: scores}``.
    weights
        Weights of the parents (default equal; normalised to sum to 1).
    steps
        Path steps of conductance.
    restarts
        k-means restarts (the best objective is kept).
    rcond
        Eigenvalues of the normal matrix below ``rcond`` times the largest are treated as zero.
    graph
        The model's symmetry graph (traced on ``data`` when None).
    n_examples, batch_size
        Examples of ``data`` to use (default all) and examples per forward pass.
    seed
        Seed of the k-means initialisation.
    device
        Where forward passes, attribution and least squares run.
    progress
        Show a progress bar.

    Returns
    -------
    State
        The fused state, of ``model``'s architecture; its provenance records the parents.

    Examples
    --------
    >>> import torch, landscape as ls
    >>> model = ls.models.create("mlp", width=8, depth=1, seed=0)
    >>> parents = [ls.models.create("mlp", width=8, depth=1, seed=s) for s in (1, 2)]
    >>> data = (torch.randn(64, 40), torch.randint(0, 10, (64,)))
    >>> fused = neuron_interpolation(model, parents, data, progress=False)
    >>> fused["features.fc1.weight"].shape
    torch.Size([8, 40])
    """
    function = "neuron_interpolation"
    if not isinstance(model, nn.Module):
        raise bad_argument(function, "model", expected="an nn.Module (the architecture)", found=model)
    if isinstance(states, (str, bytes, Mapping)) or not isinstance(states, Sequence) or not states:
        raise bad_argument(function, "states", expected="a list of states, modules or checkpoint paths", found=states)
    if not callable(attribution) and attribution not in ATTRIBUTIONS:
        raise bad_argument(
            function, "attribution", expected=f"one of {ATTRIBUTIONS} or a callable", found=repr(attribution)
        )
    if not isinstance(restarts, int) or restarts < 1:
        raise bad_argument(function, "restarts", expected="a positive integer", found=repr(restarts))
    parents = [_load(s, function=function, argument=f"states[{i}]") for i, s in enumerate(states)]
    for i, s in enumerate(parents):
        check_compatible(model.state_dict(), s, function=function, names=("model", f"states[{i}]"))
    if weights is None:
        omega = np.full(len(parents), 1.0 / len(parents))
    else:
        omega = np.asarray(weights, dtype=np.float64)
        if omega.shape != (len(parents),) or np.any(omega < 0) or omega.sum() <= 0:
            raise bad_argument(function, "weights", expected=f"{len(parents)} non-negative weights", found=weights)
        omega = omega / omega.sum()
    x, y = _labelled(data, function=function, n_examples=n_examples)
    dev = resolve_device(device, function=function)
    graph = graph if graph is not None else symmetry_graph(model, (x[:2],))
    if graph.module is None:
        raise bad_argument(function, "graph", expected="a traced symmetry graph", found="one from a manual spec")
    _check_plain(graph, function)
    folded = []
    folds: tuple[FoldedNorm, ...] = ()
    for parent in parents:
        f, folds = fold_batchnorm(graph, parent)
        folded.append(f)
    layers = _layers(graph, folds, function)
    modules = dict(graph.module.named_modules())
    outputs = [layer.output for layer in layers]
    total_steps = len(parents) + len(graph.groups) + len(layers)
    with progress_bar(total=total_steps, desc="neuron interpolation", unit="step", disable=not progress) as bar:
        # -- attribution of every parent's units, normalised per layer -------------------
        scores: list[dict[str, Tensor]] = []
        for m, state in enumerate(folded):
            if callable(attribution):
                found = attribution(model, state, (x, y), layers=outputs)
            else:
                found = neuron_attribution(
                    model,
                    state,
                    (x, y),
                    layers=outputs,
                    kind=attribution,
                    steps=steps,
                    batch_size=batch_size,
                    device=dev,
                )
            normalised = {}
            for name in outputs:
                s = torch.as_tensor(found[name], dtype=torch.float64).cpu().clamp_min(0) + 1e-12
                normalised[name] = float(omega[m]) * s / s.sum()
            scores.append(normalised)
            bar.update(1)
        # -- every parent's unit outputs (with BatchNorm folded) on the data ---------------
        recorded = [_unit_outputs(model, state, x, layers, modules, batch_size, dev) for state in folded]
        # -- clusters per group from the Gram matrix of the parents' unit outputs ---------
        producers: dict[str, list[_Layer]] = {}
        for layer in layers:
            if layer.group is not None:
                producers.setdefault(layer.group, []).append(layer)
        sizes = {g: graph.groups[g].size for g in graph.groups}
        assignments: dict[str, Tensor] = {}
        for g in graph.groups:
            if g not in producers:
                raise bad_argument(
                    function,
                    "model",
                    expected="every symmetry group produced by a Linear/Conv layer",
                    found=f"group {g!r} produced by none",
                    fix="Fuse this model with fuse(..., method='ot') instead.",
                )
            gram = None
            for layer in producers[g]:
                for s in batch_slices(x.shape[0], batch_size):
                    units = torch.cat([r[layer.output][s] for r in recorded], dim=1).to(dev, torch.float64)
                    part = units.T @ units
                    gram = part if gram is None else gram + part
            unit_weights = torch.cat([sum(sc[layer.output] for layer in producers[g]) for sc in scores])
            labels = weighted_kmeans(gram, unit_weights, sizes[g], restarts=restarts, seed=seed, device=dev)
            assignments[g] = _assignment(labels, unit_weights, sizes[g])
            bar.update(1)
        # -- starting point: per-unit parameters as the clusters' weighted means --------------
        fused = _cluster_means(graph, folded, assignments, omega)
        # -- layer by layer least squares ---------------------------------------------------
        for layer in layers:
            fused = _fit_layer(
                model, modules[layer.name], layer, fused, recorded, scores, assignments, x, dev, batch_size, rcond
            )
            bar.update(1)
    if folds:
        fused = unfold_batchnorm(model, fused, folds, x, batch_size=batch_size, device=dev)
    fused = State(dict(fused))
    fused.provenance = {
        "format": "fused",
        "source": f"landscape.alignment.neuron_interpolation(attribution={getattr(attribution, '__name__', attribution)!r})",
        "derived": "fusion of " + ", ".join(checkpoint_record(p).get("sha256", "?")[:12] for p in parents),
    }
    return fused


def _unit_outputs(
    model: nn.Module,
    state: State,
    x: Tensor,
    layers: Sequence[_Layer],
    modules: Mapping[str, nn.Module],
    batch_size: int,
    device: torch.device,
) -> dict[str, Tensor]:
    """Every layer's unit values on ``x`` as (samples, units) float32 on the CPU (positions of
    a convolution count as samples, in the order the least-squares rows use)."""
    names = list(dict.fromkeys(layer.output for layer in layers))
    parts: dict[str, list[Tensor]] = {layer.output: [] for layer in layers}
    run = run_points(
        model, [state], x, features=names, batch_size=batch_size, device=device, function="neuron_interpolation"
    )
    try:
        for out in run:
            for layer in layers:
                value = out.features[layer.output][0]
                linear = isinstance(modules[layer.name], nn.Linear)
                parts[layer.output].append(_unit_matrix(value, linear).float().cpu())
    finally:
        run.close()
    return {name: torch.cat(values) for name, values in parts.items()}


def _cluster_means(
    graph: SymmetryGraph, parents: Sequence[State], assignments: Mapping[str, Tensor], omega: np.ndarray
) -> State:
    """Every parameter as the parents' average with each group's units replaced by their
    clusters' weighted means (``sum_m omega_m T_m(state_m)`` with ``T_m = A_m^T / omega_m``)."""
    total = None
    for m, (state, w) in enumerate(zip(parents, omega)):
        maps = {}
        for g, a in assignments.items():
            n = graph.groups[g].size
            part = a[m * n : (m + 1) * n].T / max(float(w), 1e-300)  # (clusters, units of parent m)
            maps[g] = _Matrices(part, part)
        moved = graph.apply(state, maps, validate=False)
        scaled = {k: (v.double() * float(w) if v.is_floating_point() else v) for k, v in moved.items()}
        total = (
            scaled if total is None else {k: total[k] + v if v.is_floating_point() else v for k, v in scaled.items()}
        )
    like = parents[0]
    return State({k: total[k].to(like[k].dtype) if like[k].is_floating_point() else like[k].clone() for k in like})


def _fit_layer(
    model: nn.Module,
    module: nn.Module,
    layer: _Layer,
    fused: State,
    recorded: Sequence[Mapping[str, Tensor]],
    scores: Sequence[Mapping[str, Tensor]],
    assignments: Mapping[str, Tensor],
    x: Tensor,
    device: torch.device,
    batch_size: int,
    rcond: float,
) -> State:
    """Least squares fit of one layer of the fused network to its targets."""
    with_bias = layer.bias is not None
    if layer.group is not None:
        mixing = assignments[layer.group].to(device)  # (N * units, units)
    else:
        per_parent = torch.stack([sc[layer.output] for sc in scores])  # (N, units)
        share = per_parent / per_parent.sum(0, keepdim=True)
        mixing = torch.cat([torch.diag(row) for row in share]).to(device)
    per_example = recorded[0][layer.output].shape[0] // x.shape[0]
    gram = None
    cross = None
    inputs = _captured(model, fused, x, layer.name, inputs=True, batch_size=batch_size, device=device)
    for s, value in zip(batch_slices(x.shape[0], batch_size), inputs):
        rows = _design(value, module, with_bias)
        samples = slice(s.start * per_example, s.stop * per_example)
        target = torch.cat([r[layer.output][samples] for r in recorded], dim=1).to(device, torch.float64) @ mixing
        part = rows.T @ rows
        gram = part if gram is None else gram + part
        cross = rows.T @ target if cross is None else cross + rows.T @ target
    values, vectors = torch.linalg.eigh(gram)
    keep = values > values.max().clamp_min(0) * rcond
    inverse = (vectors[:, keep] / values[keep]) @ vectors[:, keep].T
    solution = (inverse @ cross).T.cpu()  # (units, inputs [+ 1])
    out = State(dict(fused))
    weight = fused[layer.weight]
    if with_bias:
        out[layer.bias] = solution[:, -1].to(fused[layer.bias].dtype)
        solution = solution[:, :-1]
    out[layer.weight] = solution.reshape(weight.shape).to(weight.dtype)
    return out
