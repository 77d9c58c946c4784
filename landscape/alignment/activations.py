"""Activations of traced models: inputs from user data, the values at chosen graph nodes,
their per-unit statistics and the cross-correlations between two networks' units."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch
import torch.fx as fx
from torch import Tensor

from landscape.core.data import as_splits
from landscape.core.errors import bad_argument
from landscape.symmetry import SymmetryGraph

__all__ = ["capture", "cross_correlations", "example_from", "inputs_from", "run", "statistics"]


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
    return {k: v for k, v in state.items() if k in keys}


def run(
    module: fx.GraphModule, state: Mapping[str, Tensor], x: Tensor, batch_size: int
) -> Iterator[tuple[Tensor, ...]]:
    """The captured values, batch by batch."""
    # The traced module lives on the CPU (with any buffers that are not in the state).
    params = {k: v.detach().cpu() for k, v in _module_state(module, state).items()}
    dtype = next((v.dtype for v in params.values() if v.is_floating_point()), torch.float32)
    for start in range(0, x.shape[0], batch_size):
        xb = x[start : start + batch_size].cpu()
        if xb.is_floating_point():
            xb = xb.to(dtype)
        # no_grad only around the call: a generator suspended inside it would leave grad off
        with torch.no_grad():
            values = torch.func.functional_call(module, params, (xb,), strict=False)
        yield values


def _units(t: Tensor, axis: int) -> Tensor:
    """(samples, units): every other axis counts as samples."""
    return t.movedim(axis, -1).reshape(-1, t.shape[axis]).double()


def statistics(
    graph: SymmetryGraph,
    state: Mapping[str, Tensor],
    x: Tensor,
    sites: Sequence[tuple[str, int]],
    *,
    batch_size: int = 1024,
    function: str = "repair",
) -> dict[tuple[str, int], tuple[Tensor, Tensor]]:
    """Mean and standard deviation of every unit at each ``(node, axis)``, in float64."""
    nodes = list(dict.fromkeys(node for node, _ in sites))
    module = capture(graph, nodes, function=function)
    sums: dict[tuple[str, int], list] = {s: [0, 0.0, 0.0] for s in sites}
    for values in run(module, state, x, batch_size):
        by_node = dict(zip(nodes, values))
        for node, axis in sites:
            u = _units(by_node[node], axis)
            acc = sums[(node, axis)]
            acc[0] += u.shape[0]
            acc[1] = acc[1] + u.sum(0)
            acc[2] = acc[2] + (u * u).sum(0)
    out = {}
    for site, (n, s1, s2) in sums.items():
        mean = s1 / n
        var = (s2 / n - mean * mean).clamp_min(0)
        out[site] = (mean, var.sqrt())
    return out


def cross_correlations(
    graph: SymmetryGraph,
    reference: Mapping[str, Tensor],
    other: Mapping[str, Tensor],
    x: Tensor,
    sites: Sequence[tuple[str, int]],
    *,
    other_graph: SymmetryGraph | None = None,
    batch_size: int = 1024,
    function: str = "align",
) -> dict[tuple[str, int], tuple[Tensor, Tensor, Tensor]]:
    """Pearson correlation between every reference unit and every other unit at each site
    (``(n_ref, n_other)``; 0 where a unit is constant), and each side's root-mean-square."""
    nodes = list(dict.fromkeys(node for node, _ in sites))
    ref_module = capture(graph, nodes, function=function)
    other_module = capture(other_graph or graph, nodes, function=function)
    acc: dict[tuple[str, int], dict[str, object]] = {}
    for ref_values, other_values in zip(
        run(ref_module, reference, x, batch_size), run(other_module, other, x, batch_size)
    ):
        ref_by = dict(zip(nodes, ref_values))
        other_by = dict(zip(nodes, other_values))
        for node, axis in sites:
            a = _units(ref_by[node], axis)
            b = _units(other_by[node], axis)
            s = acc.setdefault((node, axis), {"n": 0, "a": 0.0, "b": 0.0, "aa": 0.0, "bb": 0.0, "ab": 0.0})
            s["n"] += a.shape[0]
            s["a"] = s["a"] + a.sum(0)
            s["b"] = s["b"] + b.sum(0)
            s["aa"] = s["aa"] + (a * a).sum(0)
            s["bb"] = s["bb"] + (b * b).sum(0)
            s["ab"] = s["ab"] + a.T @ b
    out = {}
    for site, s in acc.items():
        n = s["n"]
        ma, mb = s["a"] / n, s["b"] / n
        va = (s["aa"] / n - ma * ma).clamp_min(0)
        vb = (s["bb"] / n - mb * mb).clamp_min(0)
        cov = s["ab"] / n - ma[:, None] * mb[None, :]
        denom = va.sqrt()[:, None] * vb.sqrt()[None, :]
        corr = torch.where(denom > 1e-12, cov / denom.clamp_min(1e-300), torch.zeros_like(cov))
        out[site] = (corr, (s["aa"] / n).sqrt(), (s["bb"] / n).sqrt())
    return out


def example_from(data: object) -> tuple | None:
    """Two inputs from user data, for tracing (None when there is no data)."""
    if data is None:
        return None
    try:
        x = inputs_from(data, function="align", n_examples=2)
    except Exception:
        return None
    return (x,)
