"""ZipIt! (Stoica et al. 2024): merge the features of N networks, within each network as well
as across them, and optionally only up to a chosen layer, keeping the later layers of every
network as separate heads.

Features are matched greedily by the correlation of their activations: the most correlated
pair of features, from the same network or from different ones, is merged first. A merged
feature is the average of its members (its incoming weights, biases and norm parameters
are averaged); the next layer reads it wherever it read one of the members ("unmerge"). The
symmetry groups of the traced graph say which parameter axes carry each feature.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.fx as fx
from torch import Tensor, nn

from landscape.alignment.neuron_interpolation import _check_plain, inputs_of
from landscape.core import recompute_bn
from landscape.core.data import as_splits
from landscape.core.device import resolve_device
from landscape.core.errors import bad_argument
from landscape.core.io import checkpoint_record, provenance_attrs
from landscape.core.progress import progress_bar
from landscape.core.spec import spec_of
from landscape.core.state import State, as_state, check_compatible
from landscape.symmetry import (
    AFFINE_LAYERS,
    Atom,
    Fixed,
    Layout,
    Prod,
    Sum,
    SymmetryGraph,
    Transform,
    map_units,
    resize_model,
    symmetry_graph,
    unit_rows,
)

__all__ = ["Zipped", "ZippedModel", "match_features", "zipit"]


# ---------------------------------------------------------------------------------------
# Matching
# ---------------------------------------------------------------------------------------


def match_features(
    correlation: Tensor,
    owners: Tensor,
    clusters: int,
    *,
    alpha: float = 0.3,
    beta: float = 0.125,
    device: str | torch.device = "auto",
) -> Tensor:
    """ZipIt's greedy matching: merge the most correlated pair of features (or of merged
    features) until ``clusters`` remain.

    The similarity of a merged feature to any other is the smaller of its members' (complete
    linkage), multiplied by ``alpha`` after every merge, as in the reference implementation,
    so that features already merged are less likely to absorb more (``alpha <= 0`` forbids a
    merged feature to take more features from the networks its members came from). Each
    network may merge at most ``floor(beta * (features - clusters) / networks)`` pairs within
    itself (features of the same network); ``beta=0`` merges across networks only.

    Parameters
    ----------
    correlation
        (features, features) correlations of all networks' features.
    owners
        (features,) the network each feature belongs to (0..N-1).
    clusters
        Number of merged features to keep.
    alpha, beta
        The reference's hyperparameters (its defaults).
    device
        Where the matching runs.

    Returns
    -------
    Tensor
        (features,) the merged feature (0..clusters-1) of every feature, on the CPU; merged
        features are numbered in the order of their first member.

    Examples
    --------
    >>> import torch
    >>> corr = torch.tensor([[1.0, 0.1, 0.9, 0.0], [0.1, 1.0, 0.0, 0.8], [0.9, 0.0, 1.0, 0.2], [0.0, 0.8, 0.2, 1.0]])
    >>> match_features(corr, torch.tensor([0, 0, 1, 1]), 2).tolist()
    [0, 1, 0, 1]
    """
    sims = correlation.to(resolve_device(device, function="match_features"), torch.float64).clone()
    f = sims.shape[0]
    if owners.shape != (f,) or not 1 <= clusters <= f:
        raise bad_argument(
            "match_features", "clusters", expected=f"between 1 and {f} (one owner per feature)", found=repr(clusters)
        )
    owner = owners.to(sims.device).long().clone()
    networks = int(owner.max()) + 1
    never = torch.tensor(float("-inf"), dtype=sims.dtype, device=sims.device)
    sims.fill_diagonal_(float("-inf"))
    budget = [int(np.floor(beta * (f - clusters) / networks)) for _ in range(networks)]
    for m in range(networks):
        if budget[m] <= 0:
            same = owner == m
            sims[same[:, None] & same[None, :]] = never
    members = {i: [i] for i in range(f)}
    active = torch.ones(f, dtype=torch.bool, device=sims.device)
    while len(members) > clusters:
        flat = int(torch.argmax(sims))
        i, j = divmod(flat, f)
        if not torch.isfinite(sims[i, j]):
            # nothing left that may merge (e.g. beta and alpha forbid it): merge the closest anyway
            rest = torch.nonzero(active).flatten().tolist()
            i, j = rest[0], rest[1]
        i, j = min(i, j), max(i, j)
        origin_i, origin_j = int(owner[i]), int(owner[j])
        members[i] += members.pop(j)
        active[j] = False
        row = torch.minimum(sims[i], sims[j])
        if alpha > 0:
            row = row * alpha
        else:
            for origin in {origin_i, origin_j}:
                row[owner == origin] = never
        row[~active] = never
        row[i] = never
        sims[i], sims[:, i] = row, row
        sims[j], sims[:, j] = never, never
        if origin_i == origin_j:
            budget[origin_i] -= 1
            if budget[origin_i] <= 0:
                same = (owner == origin_i) & active
                sims[same[:, None] & same[None, :]] = never
    labels = torch.empty(f, dtype=torch.long)
    for k, first in enumerate(sorted(members)):
        labels[members[first]] = k
    return labels


# ---------------------------------------------------------------------------------------
# The zipped network
# ---------------------------------------------------------------------------------------


class _Matrices(Transform):
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


def _run_node(node: fx.Node, root: nn.Module, env: Mapping[fx.Node, object], inputs: tuple) -> object:
    args = fx.node.map_arg(node.args, lambda n: env[n])
    kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n])
    if node.op == "placeholder":
        return inputs[[n for n in node.graph.nodes if n.op == "placeholder"].index(node)]
    if node.op == "call_module":
        return root.get_submodule(str(node.target))(*args, **kwargs)
    if node.op == "call_function":
        return node.target(*args, **kwargs)
    if node.op == "call_method":
        return getattr(args[0], str(node.target))(*args[1:], **kwargs)
    if node.op == "get_attr":
        value = root
        for part in str(node.target).split("."):
            value = getattr(value, part)
        return value
    return args[0]  # output


class ZippedModel(nn.Module):
    """A network zipped up to a layer: the merged trunk runs once, then every parent's own
    later layers (its head) run on the trunk's features mapped back to that parent's units.

    The output is the mean of the heads' outputs (logits); :meth:`head_outputs` gives them
    stacked. Built by :func:`zipit`; its state is ``trunk.*`` and ``heads.<i>.*``.
    """

    def __init__(
        self,
        trunk: nn.Module,
        heads: Sequence[nn.Module],
        traced: fx.GraphModule,
        trunk_nodes: Sequence[str],
        layouts: Mapping[str, tuple[Layout, ...]],
        gathers: Sequence[Mapping[str, Tensor]],
        sizes: Mapping[str, int],
    ) -> None:
        super().__init__()
        self.trunk = trunk
        self.heads = nn.ModuleList(heads)
        object.__setattr__(self, "_traced", traced)  # the graph to run, not a submodule
        self._trunk_nodes = list(trunk_nodes)
        self._layouts = dict(layouts)
        self._sizes = dict(sizes)
        self._gather_names: list[dict[str, str]] = []
        for i, gather in enumerate(gathers):
            names = {}
            for k, (g, index) in enumerate(gather.items()):
                names[g] = f"gather_{i}_{k}"
                self.register_buffer(names[g], index.clone())  # in the state: it defines the model
            self._gather_names.append(names)

    def _gather(self, value: object, node: str, head: int) -> object:
        """The trunk's value at ``node`` on head ``head``'s units (each unit reads its merged feature)."""
        if not isinstance(value, Tensor) or node not in self._layouts:
            return value
        index = {g: getattr(self, name) for g, name in self._gather_names[head].items()}

        def act(t: Tensor, dim: int, group: str) -> Tensor:
            return t.index_select(dim, index[group]) if group in index else t

        for axis, layout in enumerate(self._layouts[node]):
            if not isinstance(layout, Fixed) and axis < value.dim():
                value = map_units(value, axis, layout, act, self._sizes)
        return value

    def head_outputs(self, *inputs: Tensor) -> Tensor:
        """The heads' outputs, stacked on a leading head axis."""
        nodes = list(self._traced.graph.nodes)
        trunk = set(self._trunk_nodes)
        env: dict[fx.Node, object] = {}
        for node in nodes:
            if node.name in trunk:
                env[node] = _run_node(node, self.trunk, env, inputs)
        outputs = []
        for h, head in enumerate(self.heads):
            local = {n: self._gather(v, n.name, h) for n, v in env.items()}
            result = None
            for node in nodes:
                if node.name in trunk:
                    continue
                local[node] = _run_node(node, head, local, inputs)
                if node.op == "output":
                    result = local[node]
            outputs.append(result)
        return torch.stack(outputs)

    def forward(self, *inputs: Tensor) -> Tensor:
        return self.head_outputs(*inputs).mean(0)


@dataclass
class Zipped:
    """The result of :func:`zipit`.

    Attributes
    ----------
    model : torch.nn.Module
        The merged network (the architecture, narrower when ``width < 1``), or a
        :class:`ZippedModel` with one head per parent when zipped only up to a layer.
    state : State
        Its weights (BatchNorm statistics recomputed on the data when ``reset_bn``).
    merges : dict of str to Tensor
        Per zipped group, the merged feature of every parent feature (parents' units in order).
    up_to : str or None
    attrs : dict
    """

    model: nn.Module
    state: State
    merges: dict[str, Tensor]
    up_to: str | None
    attrs: dict[str, object] = field(default_factory=dict)

    def __repr__(self) -> str:
        kind = "partial" if self.up_to else "full"
        return f"Zipped({kind}, {len(self.merges)} groups merged, up_to={self.up_to!r})"


def _inside(node: fx.Node, name: str) -> bool:
    """Whether the traced node is ``name`` or is computed inside the module ``name``."""
    if node.name == name:
        return True
    within = f"{name}."
    if node.op == "call_module" and (node.target == name or str(node.target).startswith(within)):
        return True
    stack = node.meta.get("nn_module_stack", {}) or {}
    return any(str(path) == name or str(path).startswith(within) for path, *_ in stack.values())


def _load(value: object, *, argument: str) -> State:
    if isinstance(value, (str, os.PathLike)):
        from landscape.core.checkpoints import load_state

        return load_state(value)
    return as_state(value, function="zipit", argument=argument)


def _inputs(data: object, n_examples: int | None) -> Tensor:
    if data is None:
        raise bad_argument(
            "zipit", "data", expected="data to correlate features on", found=None, fix="Pass data=(x, y) or Splits."
        )
    if isinstance(data, Tensor):
        x = data
    else:
        splits, _ = as_splits(data, function="zipit", argument="data")
        x = splits["train" if "train" in splits else next(iter(splits))][0]
    if n_examples is not None:
        if not isinstance(n_examples, int) or n_examples < 1:
            raise bad_argument("zipit", "n_examples", expected="a positive integer or None", found=repr(n_examples))
        x = x[:n_examples]
    return x


def _atoms(layout: Layout) -> list[tuple[tuple[int, ...], Atom]]:
    if isinstance(layout, Atom):
        return [((), layout)]
    if isinstance(layout, (Prod, Sum)):
        return [((q, *path), a) for q, c in enumerate(layout.children) for path, a in _atoms(c)]
    return []


def _correlations(
    model: nn.Module,
    parents: Sequence[State],
    graph: SymmetryGraph,
    groups: Sequence[str],
    x: Tensor,
    *,
    batch_size: int,
    device: torch.device,
) -> dict[str, Tensor]:
    """Per group, the correlations between all parents' features where layers read them."""
    modules = dict(graph.module.named_modules())
    readers: dict[str, list[tuple[str, int, tuple[int, ...], Layout]]] = {g: [] for g in groups}
    for name, module in modules.items():
        if not isinstance(module, AFFINE_LAYERS):
            continue
        layout = graph.layouts[f"{name}.weight"][1]
        for path, atom in _atoms(layout):
            if str(atom.group) in readers:
                readers[str(atom.group)].append((name, 1, path, layout))
    missing = [g for g, r in readers.items() if not r]
    if missing:
        raise bad_argument(
            "zipit",
            "model",
            expected="every merged group read by a Linear/Conv layer",
            found=f"group {missing[0]!r} read by none",
            fix="Merge only up to an earlier layer (up_to=...), or fuse with fuse(..., method='ot').",
        )
    names = sorted({r[0] for rs in readers.values() for r in rs})
    sums: dict[str, list] = {g: [0, 0.0, 0.0] for g in groups}
    streams = [inputs_of(model, p, x, names, batch_size=batch_size, device=device) for p in parents]
    for batches in zip(*streams):
        for g in groups:
            columns = []
            for values in batches:
                parts = []
                for name, _, path, layout in readers[g]:
                    value = values[name]
                    linear = isinstance(modules[name], nn.Linear)
                    axis = value.dim() - 1 if linear else 1
                    parts.append(unit_rows(value.double(), axis, layout, path).T)
                columns.append(torch.cat(parts, dim=0))
            feats = torch.cat(columns, dim=1)  # (samples, all parents' features)
            acc = sums[g]
            acc[0] += feats.shape[0]
            acc[1] = acc[1] + feats.sum(0)
            acc[2] = acc[2] + feats.T @ feats
    out = {}
    for g, (n, s1, s2) in sums.items():
        mean = s1 / n
        cov = s2 / n - mean[:, None] * mean[None, :]
        std = torch.diagonal(cov).clamp_min(0).sqrt()
        constant = std <= 1e-6 * std.max().clamp_min(1e-300)
        live = ~constant[:, None] & ~constant[None, :]
        corr = torch.where(live, cov / (std[:, None] * std[None, :]).clamp_min(1e-300), torch.zeros_like(cov))
        # two constant features (dead units) with one value are the same feature: merging them
        # is exact, so they count as perfectly correlated (a correlation leaves them at 0)
        same = (mean[:, None] - mean[None, :]).abs() <= 1e-6 * (1 + mean.abs().max())
        out[g] = torch.where(constant[:, None] & constant[None, :] & same, torch.ones_like(corr), corr)
    return out


def zipit(
    model: nn.Module,
    states: Sequence[Mapping[str, Tensor] | nn.Module | str],
    data: object,
    *,
    up_to: str | None = None,
    width: float = 1.0,
    alpha: float = 0.3,
    beta: float = 0.125,
    weights: Sequence[float] | None = None,
    reset_bn: bool = True,
    graph: SymmetryGraph | None = None,
    n_examples: int | None = None,
    batch_size: int = 256,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> Zipped:
    """Merge ``N >= 1`` networks with ZipIt! (Stoica et al. 2024), fully or up to a layer.

    For every symmetry group, the features of all parents (``N x units``) are correlated on
    ``data`` where layers read them and matched greedily (:func:`match_features`), within and
    across parents, into ``width x units`` merged features. Each parent's weights are mapped
    onto the merged features (a merged feature's incoming weights, bias and norm parameters
    are the average of its members'; the layers after it read it wherever they read a member)
    and the mapped parents are averaged. With ``up_to``, only what the network computes up to
    and including that layer is merged; every parent keeps its own later layers as a head,
    fed the merged features mapped back to its own units, and the result averages the heads'
    outputs. BatchNorm statistics are recomputed on ``data`` afterwards (``reset_bn``).

    Parameters
    ----------
    model
        The parents' architecture.
    states
        The parents (states, modules or checkpoint paths); one parent is merged within itself
        (with ``width < 1``).
    data
        Inputs to correlate features and to recompute BatchNorm statistics on (the ``train``
        split of Splits, an ``(x, y)`` pair, or a tensor of inputs).
    up_to
        A module name (``"features.act2"``, or a container such as ``"layer2"``) or traced
        node name: merge everything computed up to the last operation inside it and keep the
        rest separate. None merges the whole network.
    width
        Merged features per group as a fraction of one parent's units (1: the parents' width).
    alpha, beta
        ZipIt's matching hyperparameters (see :func:`match_features`; the reference's defaults).
    weights
        Weights of the parents in every average (default equal).
    reset_bn
        Recompute BatchNorm running statistics on ``data`` (ZipIt resets them).
    graph
        The model's symmetry graph (traced on ``data`` when None).
    n_examples, batch_size
        Examples of ``data`` to use (default all) and examples per forward pass.
    device
        Where forward passes run.
    progress
        Show a progress bar.

    Returns
    -------
    Zipped
        ``.model`` and ``.state`` (the merged architecture, or a :class:`ZippedModel` with one
        head per parent), and the matching of every merged group.

    Examples
    --------
    >>> import torch, landscape as ls
    >>> model = ls.models.create("mlp", width=8, depth=2, seed=0)
    >>> parents = [ls.models.create("mlp", width=8, depth=2, seed=s) for s in (1, 2)]
    >>> x = torch.randn(64, 40)
    >>> zipped = zipit(model, parents, x, up_to="features.act1", progress=False)
    >>> zipped.model(x).shape
    torch.Size([64, 10])
    """
    if not isinstance(model, nn.Module):
        raise bad_argument("zipit", "model", expected="an nn.Module (the architecture)", found=model)
    if isinstance(states, (str, bytes, Mapping)) or not isinstance(states, Sequence) or not states:
        raise bad_argument("zipit", "states", expected="a list of states, modules or checkpoint paths", found=states)
    if not isinstance(width, (int, float)) or not 0 < width <= 1:
        raise bad_argument("zipit", "width", expected="a fraction in (0, 1]", found=repr(width))
    if len(states) == 1 and width == 1:
        raise bad_argument(
            "zipit", "width", expected="a fraction below 1 to merge one network within itself", found=repr(width)
        )
    parents = [_load(s, argument=f"states[{i}]") for i, s in enumerate(states)]
    for i, s in enumerate(parents):
        check_compatible(model.state_dict(), s, function="zipit", names=("model", f"states[{i}]"))
    n = len(parents)
    if weights is None:
        omega = np.full(n, 1.0 / n)
    else:
        omega = np.asarray(weights, dtype=np.float64)
        if omega.shape != (n,) or np.any(omega <= 0):
            raise bad_argument("zipit", "weights", expected=f"{n} positive weights", found=weights)
        omega = omega / omega.sum()
    x = _inputs(data, n_examples)
    dev = resolve_device(device, function="zipit")
    graph = graph if graph is not None else symmetry_graph(model, (x[:2],))
    if graph.module is None:
        raise bad_argument("zipit", "graph", expected="a traced symmetry graph", found="one from a manual spec")
    _check_plain(graph, "zipit")
    nodes = list(graph.module.graph.nodes)
    if up_to is None:
        trunk = [node.name for node in nodes]
    else:
        cut = [i for i, node in enumerate(nodes) if _inside(node, up_to)]
        if not cut:
            raise bad_argument(
                "zipit",
                "up_to",
                expected="a module name or traced node name of the model",
                found=repr(up_to),
                fix=f"Module names are e.g. {[str(n.target) for n in nodes if n.op == 'call_module'][:6]}.",
            )
        trunk = [node.name for node in nodes[: cut[-1] + 1]]
    trunk_set = set(trunk)
    used: set[str] = set()
    for node in nodes:
        if node.name in trunk_set and node.op in ("call_module", "get_attr"):
            prefix = str(node.target)
            used.update(k for k in graph.layouts if k == prefix or k.startswith(prefix + "."))
    groups = [
        g
        for g in graph.groups
        if any(str(a.group) == g for k in used for lay in graph.layouts[k] for _, a in _atoms(lay))
    ]
    with progress_bar(total=len(groups) + 2, desc="zipit", unit="step", disable=not progress) as bar:
        correlations = _correlations(model, parents, graph, groups, x, batch_size=batch_size, device=dev)
        bar.update(1)
        merges: dict[str, Tensor] = {}
        maps: list[dict[str, _Matrices]] = [{} for _ in range(n)]
        gathers: list[dict[str, Tensor]] = [{} for _ in range(n)]
        for g in groups:
            size = graph.groups[g].size
            owners = torch.arange(n).repeat_interleave(size)
            k = max(1, round(width * size))
            labels = match_features(correlations[g], owners, k, alpha=alpha, beta=beta, device=dev)
            merges[g] = labels
            share = torch.as_tensor(omega, dtype=torch.float64)[owners]
            member = torch.zeros(k, n * size, dtype=torch.float64)
            member[labels, torch.arange(n * size)] = share
            merge = member / member.sum(1, keepdim=True)  # rows: the weighted average of members
            for m in range(n):
                block = slice(m * size, (m + 1) * size)
                unmerge = torch.zeros(k, size, dtype=torch.float64)
                unmerge[labels[block], torch.arange(size)] = 1.0
                maps[m][g] = _Matrices(merge[:, block] / float(omega[m]), unmerge)
                gathers[m][g] = labels[block].clone()
            bar.update(1)
        merged = None
        for m, parent in enumerate(parents):
            moved = graph.apply(parent, maps[m], validate=False)
            part = {k: v.double() * float(omega[m]) if v.is_floating_point() else v for k, v in moved.items()}
            merged = (
                part if merged is None else {k: merged[k] + v if v.is_floating_point() else v for k, v in part.items()}
            )
        merged_state = State(
            {k: merged[k].to(parents[0][k].dtype) if parents[0][k].is_floating_point() else merged[k] for k in merged}
        )
        trunk_model = resize_model(model, merged_state)
        if up_to is None:
            zipped_model, zipped_state = trunk_model, merged_state
        else:
            heads = []
            for parent in parents:
                head = copy.deepcopy(model)
                head.load_state_dict(parent)
                heads.append(head)
            layouts = {node: graph.activations[node] for node in trunk if node in graph.activations}
            sizes = {g: int(merges[g].max()) + 1 for g in groups}
            zipped_model = ZippedModel(trunk_model, heads, graph.module, trunk, layouts, gathers, sizes)
            zipped_state = State({k: v.detach().clone() for k, v in zipped_model.state_dict().items()})
        if reset_bn:
            zipped_state = recompute_bn(zipped_model, zipped_state, x, batch_size=batch_size, device=dev)
        zipped_model.load_state_dict(zipped_state)
        bar.update(1)
    zipped_state.provenance = {
        "format": "zipped",
        "source": f"landscape.alignment.zipit(up_to={up_to!r})",
        "derived": "zip of " + ", ".join(checkpoint_record(p).get("sha256", "?")[:12] for p in parents),
    }
    attrs = provenance_attrs(
        analysis="zipit",
        up_to=up_to,
        width=float(width),
        alpha=float(alpha),
        beta=float(beta),
        reset_bn=bool(reset_bn),
        parents=[checkpoint_record(p) for p in parents],
        model=spec_of(model),
        merged_groups=list(groups),
    )
    return Zipped(zipped_model, zipped_state, merges, up_to, attrs)
