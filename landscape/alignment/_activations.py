"""Activations of traced models: inputs from user data, the values at chosen graph nodes,
their per-unit statistics, the cross-correlations between two networks' units and their
joint second moments."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch
import torch.fx as fx
from torch import Tensor

from landscape.core.data import as_splits
from landscape.core.errors import bad_argument
from landscape.core.tied import canonical_state, tied_groups
from landscape.symmetry import Atom, Layout, Prod, SymmetryGraph

__all__ = [
    "Site",
    "capture",
    "cross_correlations",
    "example_from",
    "inputs_from",
    "joint_moments",
    "run",
    "site_units",
    "statistics",
]

Site = tuple[str, int]


def inputs_from(data: object, *, function: str, argument: str = "data", n_examples: int | None = None) -> Tensor:
    """The inputs to run: the ``train`` split of Splits/dicts (else the first split), the
    ``x`` of an ``(x, y)`` pair, or a tensor of inputs; the first ``n_examples`` of them."""
    if data is None:
        raise bad_argument(
            function,
            argument,
            expected="data to compute activations on: an (x, y) pair, Splits such as landscape.datasets.mnist1d(), or inputs",
            found=None,
            fix="Pass data=..., e.g. data=landscape.datasets.mnist1d().",
        )
    if isinstance(data, Tensor):
        x = data
    else:
        splits, _ = as_splits(data, function=function, argument=argument)
        name = "train" if "train" in splits else next(iter(splits))
        x = splits[name][0]
    if n_examples is not None:
        if not isinstance(n_examples, int) or n_examples < 1:
            raise bad_argument(function, "n_examples", expected="a positive integer or None", found=repr(n_examples))
        x = x[:n_examples]
    return x


def capture(graph: SymmetryGraph, nodes: Sequence[str], *, function: str) -> fx.GraphModule:
    """A module that returns the values of the named graph nodes (and computes nothing after them)."""
    if graph.module is None:
        raise bad_argument(
            function,
            "graph",
            expected="a traced symmetry graph (activations are needed)",
            found="a graph built from a manual spec",
            fix="Build the graph by tracing (symmetry_graph(model, example_input)), or use method='weights'.",
        )
    source = graph.module.graph
    new = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    wanted = set(nodes)
    last = max(i for i, n in enumerate(source.nodes) if n.name in wanted)
    for i, n in enumerate(source.nodes):
        if i > last and n.op != "placeholder":
            break
        env[n] = new.node_copy(n, lambda a: env[a])
    by_name = {n.name: env[n] for n in source.nodes if n in env}
    new.output(tuple(by_name[name] for name in nodes))
    module = fx.GraphModule(graph.module, new)
    module.graph.eliminate_dead_code()
    module.recompile()
    return module.eval()


def _module_state(module: torch.nn.Module, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    keys = set(module.state_dict().keys())
    return {k: v.detach() for k, v in canonical_state(state, tied_groups(module)).items() if k in keys}


def run(
    module: fx.GraphModule, state: Mapping[str, Tensor], x: Tensor, batch_size: int, *, device: torch.device
) -> Iterator[tuple[Tensor, ...]]:
    """The captured values, batch by batch, on ``device``: the engine's
    :func:`~landscape.core.run_points` runs ``module`` (which returns the nodes' values) at
    ``state``."""
    from landscape.core import run_points

    params = _module_state(module, state)
    dtype = next((v.dtype for v in params.values() if v.is_floating_point()), torch.float32)
    if x.is_floating_point():
        x = x.to(dtype)
    points = run_points(module, [params], x, batch_size=batch_size, device=device, function="align")
    try:
        for out in points:
            yield tuple(v[0] for v in out.output)
    finally:
        points.close()


def site_units(graph: SymmetryGraph, node: str, axis: int, heads: Mapping[str, str]) -> tuple[Layout, int | None]:
    """The layout of a site's units, and the axis of its heads when the site carries the
    coordinates of attention heads (``heads``: group -> heads group): then the units are the
    (head, coordinate) pairs."""
    lays = graph.activations[node]
    lay = lays[axis]
    if isinstance(lay, Atom) and str(lay.group) in heads:
        h = heads[str(lay.group)]
        where = [k for k, other in enumerate(lays) if isinstance(other, Atom) and str(other.group) == h]
        if where and where[0] != axis:
            return Prod((lays[where[0]], lay)), where[0]
    return lay, None


def units(t: Tensor, axis: int, heads_axis: int | None = None) -> Tensor:
    """(samples, units): every other axis counts as samples; with ``heads_axis`` the units are
    (head, coordinate) pairs, head-major."""
    if heads_axis is None:
        return t.movedim(axis, -1).reshape(-1, t.shape[axis]).double()
    moved = t.movedim((heads_axis, axis), (-2, -1))
    return moved.reshape(-1, t.shape[heads_axis] * t.shape[axis]).double()


def statistics(
    graph: SymmetryGraph,
    state: Mapping[str, Tensor],
    x: Tensor,
    sites: Sequence[Site],
    *,
    batch_size: int = 1024,
    device: torch.device | str = "cpu",
    function: str = "repair",
) -> dict[Site, tuple[Tensor, Tensor]]:
    """Mean and standard deviation of every unit at each ``(node, axis)``, in float64 (on the CPU)."""
    device = torch.device(device)
    nodes = list(dict.fromkeys(node for node, _ in sites))
    module = capture(graph, nodes, function=function)
    sums: dict[Site, list] = {s: [0, 0.0, 0.0] for s in sites}
    for values in run(module, state, x, batch_size, device=device):
        by_node = dict(zip(nodes, values))
        for node, axis in sites:
            u = units(by_node[node], axis)
            acc = sums[(node, axis)]
            acc[0] += u.shape[0]
            acc[1] = acc[1] + u.sum(0)
            acc[2] = acc[2] + (u * u).sum(0)
    out = {}
    for site, (n, s1, s2) in sums.items():
        mean = s1 / n
        var = (s2 / n - mean * mean).clamp_min(0)
        out[site] = (mean.cpu(), var.sqrt().cpu())
    return out


def _paired(
    graph: SymmetryGraph,
    a: Mapping[str, Tensor],
    b: Mapping[str, Tensor],
    x: Tensor,
    nodes: Sequence[str],
    *,
    b_graph: SymmetryGraph | None,
    batch_size: int,
    device: torch.device,
    function: str,
) -> Iterator[tuple[dict[str, Tensor], dict[str, Tensor]]]:
    module_a = capture(graph, nodes, function=function)
    module_b = capture(b_graph or graph, nodes, function=function)
    for values_a, values_b in zip(
        run(module_a, a, x, batch_size, device=device), run(module_b, b, x, batch_size, device=device)
    ):
        yield dict(zip(nodes, values_a)), dict(zip(nodes, values_b))


def cross_correlations(
    graph: SymmetryGraph,
    a: Mapping[str, Tensor],
    b: Mapping[str, Tensor],
    x: Tensor,
    sites: Sequence[Site],
    *,
    b_graph: SymmetryGraph | None = None,
    batch_size: int = 1024,
    device: torch.device | str = "cpu",
    function: str = "align",
) -> dict[Site, tuple[Tensor, Tensor, Tensor]]:
    """Pearson correlation between every unit of ``a`` and every unit of ``b`` at each site
    (``(n_a, n_b)``; 0 where a unit is constant), and each side's root-mean-square (on the CPU)."""
    device = torch.device(device)
    nodes = list(dict.fromkeys(node for node, _ in sites))
    acc: dict[Site, dict[str, object]] = {}
    for by_a, by_b in _paired(
        graph, a, b, x, nodes, b_graph=b_graph, batch_size=batch_size, device=device, function=function
    ):
        for node, axis in sites:
            ua = units(by_a[node], axis)
            ub = units(by_b[node], axis)
            s = acc.setdefault((node, axis), {"n": 0, "a": 0.0, "b": 0.0, "aa": 0.0, "bb": 0.0, "ab": 0.0})
            s["n"] += ua.shape[0]
            s["a"] = s["a"] + ua.sum(0)
            s["b"] = s["b"] + ub.sum(0)
            s["aa"] = s["aa"] + (ua * ua).sum(0)
            s["bb"] = s["bb"] + (ub * ub).sum(0)
            s["ab"] = s["ab"] + ua.T @ ub
    out = {}
    for site, s in acc.items():
        n = s["n"]
        ma, mb = s["a"] / n, s["b"] / n
        va = (s["aa"] / n - ma * ma).clamp_min(0)
        vb = (s["bb"] / n - mb * mb).clamp_min(0)
        cov = s["ab"] / n - ma[:, None] * mb[None, :]
        denom = va.sqrt()[:, None] * vb.sqrt()[None, :]
        corr = torch.where(denom > 1e-12, cov / denom.clamp_min(1e-300), torch.zeros_like(cov))
        out[site] = (corr.cpu(), (s["aa"] / n).sqrt().cpu(), (s["bb"] / n).sqrt().cpu())
    return out


def joint_moments(
    graph: SymmetryGraph,
    a: Mapping[str, Tensor],
    b: Mapping[str, Tensor],
    x: Tensor,
    sites: Mapping[Site, int | None],
    *,
    batch_size: int = 1024,
    device: torch.device | str = "cpu",
    function: str = "align",
) -> dict[Site, Tensor]:
    """``E[[u_a; u_b] [u_a; u_b]^T]`` (uncentred, ``(2n, 2n)``, on the CPU) of the units of
    both networks at each site; ``sites`` maps each site to the axis of its heads (or None)."""
    device = torch.device(device)
    nodes = list(dict.fromkeys(node for node, _ in sites))
    acc: dict[Site, list] = {}
    for by_a, by_b in _paired(
        graph, a, b, x, nodes, b_graph=None, batch_size=batch_size, device=device, function=function
    ):
        for (node, axis), heads_axis in sites.items():
            joint = torch.cat([units(by_a[node], axis, heads_axis), units(by_b[node], axis, heads_axis)], dim=1)
            entry = acc.setdefault((node, axis), [0, 0.0])
            entry[0] += joint.shape[0]
            entry[1] = entry[1] + joint.T @ joint
    return {site: (total / n).cpu() for site, (n, total) in acc.items()}


def example_from(data: object) -> tuple | None:
    """Two inputs from user data, for tracing (None when there is no data)."""
    if data is None:
        return None
    try:
        x = inputs_from(data, function="align", n_examples=2)
    except Exception:
        return None
    return (x,)
