"""Building symmetry graphs: trace a model and turn the union-find's classes into groups."""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence

import networkx as nx
import torch.fx as fx
from torch import Tensor, nn

from landscape.core.errors import bad_argument
from landscape.core.spec import spec_of
from landscape.symmetry._classes import FIXED, KIND_NAMES, ORTHOGONAL, PERMUTATION, Classes
from landscape.symmetry._graph import AxisRef, Group, RepairSite, SymmetryGraph
from landscape.symmetry._trace import FRONTENDS, TInfo, expand_info, trace_model
from landscape.symmetry.layout import Atom, Fixed, Layout, Prod, Sum, atoms, occurrences, relabel

__all__ = ["example_input_for", "symmetry_graph"]

UNKNOWN_POLICIES = ("error", "fixed")
NORM_POLICIES = ("fold", "keep")


def example_input_for(model: nn.Module, *, batch: int = 2, function: str = "symmetry_graph") -> tuple:
    """Example inputs for a zoo model, from its spec (random, shaped like real inputs)."""
    from landscape.models import example_input

    x = example_input(model, batch=batch)
    if x is None:
        raise bad_argument(
            function,
            "example_input",
            expected="an example input for a model that is not from the zoo",
            found=None,
            fix="Pass example_input=x (a batch of one or two real inputs), or data=... where the function takes it.",
        )
    return (x,)


def _as_inputs(example_input: object, model: nn.Module, function: str) -> tuple:
    if example_input is None:
        return example_input_for(model, function=function)
    if isinstance(example_input, Tensor):
        return (example_input,)
    if isinstance(example_input, tuple) and all(isinstance(x, Tensor) for x in example_input):
        return example_input
    raise bad_argument(function, "example_input", expected="a tensor or a tuple of tensors", found=example_input)


def symmetry_graph(
    model: nn.Module,
    example_input: Tensor | tuple[Tensor, ...] | None = None,
    *,
    spec: Mapping[str, Sequence[object]] | None = None,
    fixed: Sequence[str] = (),
    unknown: str = "error",
    norms: str = "fold",
    frontend: str = "auto",
) -> SymmetryGraph:
    """Find the symmetry groups of a model's parameters by tracing it.

    The model is traced with torch.fx and every operation's effect on the axes is worked
    out: a Linear/Conv layer's output axis shares one group with the next layer's input axis,
    through elementwise activations, BatchNorm/LayerNorm/GroupNorm parameters, residual
    additions, concatenations, flattening of conv channels and pooling; inputs and outputs
    stay fixed. Groups are the connected components of these joins (a union-find). GroupNorm
    with several groups, grouped convolutions and attention heads give structured axes whose
    transforms are Kronecker products (groups move as blocks, and one permutation acts
    within every block), a subgroup of the true symmetry that is always safe.

    Transformers get the wider symmetries of Theus et al. (2025): attention heads permute
    (``<attn>.heads``); within each head the query/key coordinates admit any invertible map
    ``M`` (queries ``M``, keys ``M^-T``; with rotary embeddings only maps that commute with the
    rotations) and the value coordinates another (``<attn>.qk``, ``<attn>.vo``); the residual
    stream admits orthogonal maps once the norms' gains are folded into the layers that read
    them (``norms="fold"``), those that keep the all-ones vector where a LayerNorm subtracts
    the mean. Models torch.fx cannot trace (Hugging Face transformers) are captured with
    torch.export.

    Parameters
    ----------
    model
        Any module torch.fx can trace (zoo models work as they are).
    example_input
        A batch of inputs (a tensor or a tuple of tensors). Zoo models default to random
        inputs of the right shape.
    spec
        Skip tracing and take the groups from a manual spec: ``{group name: ["param.name:axis",
        ...]}``; an optional third field ``":in"``/``":out"`` sets how the axis transforms
        (default: axis 0 ``out``, other axes of 2-D+ tensors ``in``). Manual groups allow
        permutations only; check them with :meth:`SymmetryGraph.check`.
    fixed
        Module names (``"features.blocks.0.attn"``) or fx node names to treat as opaque blocks
        whose axes stay fixed, and parameter axes (``"features.fc1.weight:0"``) to fix.
    unknown
        ``"error"`` (default): an operation without a rule raises
        :class:`UnsupportedOperationError` naming it. ``"fixed"``: keep every axis it touches
        fixed instead.
    norms
        ``"fold"`` (default): a LayerNorm/RMSNorm whose every reader is a linear layer counts
        as gain-free, its gain and bias folded into the readers before any map other than a
        permutation is applied (:meth:`SymmetryGraph.fold`). ``"keep"``: norm gains restrict
        their streams to permutations.
    frontend
        ``"auto"`` (torch.fx, then torch.export when fx cannot trace the model), ``"fx"`` or
        ``"export"``.

    Returns
    -------
    SymmetryGraph

    Examples
    --------
    >>> import landscape as ls
    >>> graph = symmetry_graph(ls.models.create("mlp", width=16, depth=2, seed=0))
    >>> [(g.name, g.size, g.kind) for g in graph.groups.values()]
    [('features.fc1', 16, 'permutation'), ('features.fc2', 16, 'permutation')]
    """
    if not isinstance(model, nn.Module):
        raise bad_argument("symmetry_graph", "model", expected="an nn.Module", found=model)
    if unknown not in UNKNOWN_POLICIES:
        raise bad_argument("symmetry_graph", "unknown", expected=f"one of {UNKNOWN_POLICIES}", found=repr(unknown))
    if norms not in NORM_POLICIES:
        raise bad_argument("symmetry_graph", "norms", expected=f"one of {NORM_POLICIES}", found=repr(norms))
    if frontend not in FRONTENDS:
        raise bad_argument("symmetry_graph", "frontend", expected=f"one of {FRONTENDS}", found=repr(frontend))
    if isinstance(fixed, str):
        fixed = [fixed]
    state = model.state_dict()
    if spec is not None:
        inputs = (
            _as_inputs(example_input, model, "symmetry_graph") if example_input is not None or spec_of(model) else ()
        )
        return _from_spec(model, spec, inputs)
    inputs = _as_inputs(example_input, model, "symmetry_graph")
    module_names = {name for name, _ in model.named_modules()}
    fixed_axes: list[tuple[str, int]] = []
    opaque: list[str] = []
    for item in fixed:
        match = re.fullmatch(r"(.+):(\d+)", str(item))
        if match and match.group(1) in state:
            axis = int(match.group(2))
            if axis >= state[match.group(1)].dim():
                raise bad_argument(
                    "symmetry_graph", "fixed", expected=f"an axis of {match.group(1)!r}", found=repr(item)
                )
            fixed_axes.append((match.group(1), axis))
        elif isinstance(item, str):
            opaque.append(item)
        else:
            raise bad_argument("symmetry_graph", "fixed", expected="module names or 'param:axis' strings", found=item)

    def stray_names(node_names: set[str]) -> list[str]:
        return [o for o in opaque if o not in module_names and o not in node_names]

    # fx node names have no dots: a dotted name that is not a module is a typo
    if any("." in o for o in stray_names(set())):
        stray = [o for o in stray_names(set()) if "." in o]
    else:
        result = trace_model(model, inputs, opaque=opaque, unknown=unknown, norms=norms, frontend=frontend)
        stray = stray_names({n.name for n in result.graph_module.graph.nodes})
    if stray:
        raise bad_argument(
            "symmetry_graph",
            "fixed",
            expected="module names, fx node names or 'param.name:axis' strings",
            found=repr(stray[0]),
            fix=f"Module names are e.g. {sorted(module_names - {''})[:4]}.",
        )
    return _finalize(result, model, inputs, fixed_axes, result.names)


class _Parity:
    """Union-find over the classes' roots with a parity bit: odd members transform by the
    inverse transpose of their component's map (the two sides of a dot product)."""

    def __init__(self) -> None:
        self.parent: dict[int, tuple[int, int]] = {}
        self.conflict: set[int] = set()

    def find(self, r: int) -> tuple[int, int]:
        if r not in self.parent:
            self.parent[r] = (r, 0)
            return r, 0
        p, bit = self.parent[r]
        if p == r:
            return r, 0
        root, up = self.find(p)
        self.parent[r] = (root, bit ^ up)
        return root, bit ^ up

    def union(self, a: int, b: int, odd: int) -> None:
        ra, pa = self.find(a)
        rb, pb = self.find(b)
        if ra == rb:
            if pa ^ pb != odd:
                self.conflict.add(ra)  # M = M^-T: orthogonal maps only
            return
        self.parent[rb] = (ra, pa ^ pb ^ odd)
        if rb in self.conflict:
            self.conflict.add(ra)


def _pairs(a: Layout, b: Layout) -> list[tuple[Layout, Layout]] | None:
    """Matching leaves of two layouts of the same structure (None when they differ)."""
    if a.size != b.size:
        return None
    if isinstance(a, (Atom, Fixed)) and isinstance(b, (Atom, Fixed)):
        return [(a, b)]
    if type(a) is not type(b) or len(a.children) != len(b.children):
        return None
    out: list[tuple[Layout, Layout]] = []
    for x, y in zip(a.children, b.children):
        found = _pairs(x, y)
        if found is None:
            return None
        out += found
    return out


def _resolve_duals(classes: Classes) -> _Parity:
    """Turn the dot products between activations into parity links between roots."""
    changed = True
    handled: set[int] = set()
    while changed:  # joins of mismatched structures may change other structures
        changed = False
        for i, (la, lb, why) in enumerate(classes.duals):
            if i in handled:
                continue
            if _pairs(classes.expand(la), classes.expand(lb)) is None:
                # Structures that cannot be paired: the old, narrower rule (one orthogonal map).
                classes.join(la, lb, why)
                classes.restrict(la, ORTHOGONAL, why)
                handled.add(i)
                changed = True
    parity = _Parity()
    for i, (la, lb, why) in enumerate(classes.duals):
        if i in handled:
            continue
        for a, b in _pairs(classes.expand(la), classes.expand(lb)) or []:
            if isinstance(a, Fixed) and isinstance(b, Fixed):
                continue
            if isinstance(a, Fixed) or isinstance(b, Fixed):
                classes.fix(b if isinstance(a, Fixed) else a, why)  # M^-T = I forces M = I
                continue
            parity.union(classes.find(int(a.group)), classes.find(int(b.group)), 1)
    return parity


def _flagged(classes: Classes, records: list[tuple[Layout, str]], *, even: bool) -> set[int]:
    """Roots marked centered/rotary; a mark on a structured axis narrows it instead."""
    roots: set[int] = set()
    for lay, why in records:
        e = classes.expand(lay)
        if isinstance(e, Fixed):
            continue
        if isinstance(e, Atom) and (not even or e.size % 2 == 0):
            roots.add(classes.find(int(e.group)))
        elif even:
            classes.fix(e, why)
        else:
            classes.restrict(e, PERMUTATION, why)
    return roots


def _finalize(
    result, model: nn.Module, inputs: tuple, fixed_axes: list[tuple[str, int]], names_hint: Mapping[int, str]
) -> SymmetryGraph:
    from landscape.core.tied import tied_groups

    classes: Classes = result.classes
    state = model.state_dict()
    # Tied state keys name one tensor: they share their layouts.
    for group in tied_groups(model):
        used = [k for k in group if any((k, a) in result.param_axes for a in range(state[k].dim()))]
        for k in used[1:]:
            for a in range(state[k].dim()):
                if (k, a) in result.param_axes and (used[0], a) in result.param_axes:
                    classes.join(result.param_axes[(used[0], a)], result.param_axes[(k, a)], f"tied weights {group}")
                    result.variances.setdefault((used[0], a), set()).update(result.variances.get((k, a), set()))
        if used:
            for k in group:
                for a in range(state[k].dim()):
                    if (used[0], a) in result.param_axes:
                        result.param_axes[(k, a)] = result.param_axes[(used[0], a)]
                        result.variances[(k, a)] = result.variances.setdefault((used[0], a), set())
    for key, axis in fixed_axes:
        if (key, axis) in result.param_axes:
            classes.fix(result.param_axes[(key, axis)], f"fixed=['{key}:{axis}']")
    # A parameter axis used both like an activation and contracted with one: M = M^-T.
    for (key, axis), used in result.variances.items():
        if len(used) > 1:
            classes.restrict(result.param_axes[(key, axis)], ORTHOGONAL, f"{key} used in two roles (weight tying)")
    parity = _resolve_duals(classes)
    centered = _flagged(classes, classes.centered, even=False)
    rotary = _flagged(classes, classes.rotary, even=True)

    def component(r: int) -> tuple[int, int]:
        root, bit = parity.find(r)
        return root, bit

    # Members of one dual component share kinds, flags and fate.
    members: dict[int, list[int]] = {}
    for r in list(parity.parent):
        members.setdefault(component(r)[0], []).append(r)
    for rep, rs in members.items():
        if any(classes.find(r) == FIXED for r in rs):
            for r in rs:
                classes.fix(Atom(r, classes.sizes[r]), "the other side of a dot product is fixed")
            continue
        rs = [r for r in rs if classes.find(r) == r]
        kind = min(classes.kinds[r] for r in rs)
        if rep in parity.conflict:
            kind = min(kind, ORTHOGONAL)
        is_rotary = any(r in rotary for r in rs)
        for r in rs:
            classes.kinds[r] = kind
            if is_rotary:
                rotary.add(r)
            if any(m in centered for m in rs):
                centered.add(r)
    for r in list(rotary):
        if classes.find(r) == r and classes.kinds[r] == PERMUTATION:
            classes.fix(Atom(r, classes.sizes[r]), "a permutation does not commute with the rotary embedding")
    # Only atoms that some activation carries are symmetries; the rest are fixed.
    evidence: set[int] = set()
    expanded: dict[str, object] = {}
    first_seen: dict[int, int] = {}
    for position, name in enumerate(result.node_order):
        e = expand_info(classes, result.infos.get(name))
        stack = [e]
        while stack:
            item = stack.pop()
            if isinstance(item, TInfo):
                if not item.is_param:
                    for lay in item.layout:
                        for a in atoms(lay):
                            evidence.add(int(a.group))
                            first_seen.setdefault(int(a.group), position)
            elif isinstance(item, list):
                stack.extend(item)
        if isinstance(e, TInfo) and not e.is_param:
            expanded[name] = e
    for lay in classes.carried:
        for a in atoms(classes.expand(lay)):
            evidence.add(int(a.group))
            first_seen.setdefault(int(a.group), len(result.node_order))
    param_layouts: dict[str, tuple[Layout, ...]] = {}
    in_params: set[int] = set()
    for key, t in state.items():
        lays = []
        for axis, size in enumerate(t.shape):
            atom = result.param_axes.get((key, axis))
            lay = classes.expand(atom) if atom is not None else Fixed(int(size))
            lay = relabel(lay, lambda a: a if int(a.group) in evidence else Fixed(a.size))
            lays.append(lay)
            in_params.update(int(a.group) for a in atoms(lay))
        param_layouts[key] = tuple(lays)
    variances: dict[str, tuple[str, ...]] = {}
    for key, t in state.items():
        vs = []
        for axis in range(t.dim()):
            used = result.variances.get((key, axis), set())
            vs.append("in" if used == {"in"} else "out")
        variances[key] = tuple(vs)
    # Groups: one per dual component (odd members act by the inverse transpose).
    rep_of: dict[int, tuple[int, int]] = {}
    for r in in_params:
        root, bit = component(r) if r in parity.parent else (r, 0)
        rep_of[r] = (root, bit)
    by_rep: dict[int, list[int]] = {}
    for r, (rep, _) in rep_of.items():
        by_rep.setdefault(rep, []).append(r)
    # A component is represented by the member seen first (the side that is not inverted).
    leader: dict[int, int] = {}
    for rep, rs in by_rep.items():
        rs.sort(key=lambda r: (rep_of[r][1], first_seen.get(r, 1 << 30), r))
        leader[rep] = rs[0]
    flip = {r: rep_of[r][1] ^ rep_of[leader[rep_of[r][0]]][1] for r in rep_of}
    hint: dict[int, str] = {}
    for atom, name in names_hint.items():
        r = classes.find(atom)
        if r in rep_of:
            hint.setdefault(leader[rep_of[r][0]], name)
    names = _names(param_layouts, variances, state, {leader[rep_of[r][0]] for r in rep_of}, hint, rep_of, leader)

    def label(a: Atom) -> Layout:
        r = int(a.group)
        if r not in rep_of:
            return Fixed(a.size)
        lead = leader[rep_of[r][0]]
        return Atom(names[lead], a.size, bool(flip[r]) ^ a.dual)

    layouts = {k: tuple(relabel(lay, label) for lay in lays) for k, lays in param_layouts.items()}
    activations = {n: tuple(relabel(lay, label) for lay in e.layout) for n, e in expanded.items()}
    keep = sorted(set(leader.values()), key=lambda r: (first_seen.get(r, 1 << 30), r))
    groups: dict[str, Group] = {}
    for lead in keep:
        rs = by_rep[rep_of[lead][0]]
        groups[names[lead]] = Group(
            names[lead],
            classes.sizes[lead],
            KIND_NAMES[min(classes.kinds[r] for r in rs)],
            kind_reason=next((classes.kind_reasons[r] for r in rs if r in classes.kind_reasons), None),
            centered=any(r in centered for r in rs),
            rotary=any(r in rotary for r in rs),
        )
    axes_of: dict[str, list[AxisRef]] = {g: [] for g in groups}
    for key, lays in layouts.items():
        for axis, lay in enumerate(lays):
            for path, a in occurrences(lay):
                variance = variances[key][axis]
                if a.dual:
                    variance = "in" if variance == "out" else "out"
                axes_of[str(a.group)].append(AxisRef(key, axis, path, variance))
    acts_of: dict[str, list[tuple[str, int, tuple[int, ...]]]] = {g: [] for g in groups}
    for node, lays in activations.items():
        for axis, lay in enumerate(lays):
            for path, a in occurrences(lay):
                acts_of[str(a.group)].append((node, axis, path))
    for g in groups.values():
        g.axes = tuple(axes_of[g.name])
        g.activations = tuple(acts_of[g.name])
    _per_head(classes, groups, layouts, activations, rep_of, leader, names)
    sites: dict[str, list[tuple[str, int]]] = {g: [] for g in groups}
    for node, axis in dict.fromkeys(result.contraction_sites):
        lays = activations.get(node)
        if lays is None:
            continue
        for a in atoms(lays[axis]):
            if (node, axis) not in sites[str(a.group)]:
                sites[str(a.group)].append((node, axis))
    repair_sites = _repair_sites(result, activations)
    explanations = {}
    for (key, axis), atom in result.param_axes.items():
        if isinstance(layouts[key][axis], Fixed) and isinstance(atom, Atom):
            why = classes.fixed_because(int(atom.group))
            if why:
                explanations[f"{key}:{axis}"] = f"fixed because of {why}"
            elif atom.size > 1:
                explanations[f"{key}:{axis}"] = (
                    "fixed: no activation carries its units (an input, output or unused axis)"
                )
    folds = [f for f in result.folds if f.weight in layouts or f.bias in layouts]
    graph = SymmetryGraph(
        groups=groups,
        layouts=layouts,
        variances=variances,
        shapes={k: tuple(t.shape) for k, t in state.items()},
        activations=activations,
        sites=sites,
        repair_sites=repair_sites,
        module=result.graph_module,
        example_inputs=inputs,
        notes=list(result.notes),
        source="trace",
        explanations=explanations,
        model_spec=spec_of(model),
        folds=folds,
        frontend=result.frontend,
    )
    graph.nx = _build_nx(graph)
    return graph


def _names(
    param_layouts: Mapping[str, tuple[Layout, ...]],
    variances: Mapping[str, tuple[str, ...]],
    state: Mapping[str, Tensor],
    leaders: set[int],
    hint: Mapping[int, str],
    rep_of: Mapping[int, tuple[int, int]],
    leader: Mapping[int, int],
) -> dict[int, str]:
    """A name per group: the attention rules' names, else the first layer producing it
    (``"out"`` axis), with ``#path`` for factors of a structured axis."""
    names: dict[int, str] = {}
    taken: set[str] = set()

    def take(base: str) -> str:
        name, k = base, 2
        while name in taken:
            name, k = f"{base}~{k}", k + 1
        taken.add(name)
        return name

    for lead in sorted(hint, key=lambda r: hint[r]):
        names[lead] = take(hint[lead])
    for preference in (2, 1, 0):
        for key, lays in param_layouts.items():
            for axis, lay in enumerate(lays):
                produced = variances[key][axis] == "out"
                if preference == 2 and not (produced and key.endswith(".weight") and state[key].dim() >= 2):
                    continue
                if preference == 1 and not produced:
                    continue
                for path, a in occurrences(lay):
                    lead = leader[rep_of[int(a.group)][0]]
                    if lead in names:
                        continue
                    base = key.rsplit(".", 1)[0] if "." in key else key
                    if path:
                        base += "#" + ".".join(map(str, path))
                    names[lead] = take(base)
    return names


def _per_head(
    classes: Classes,
    groups: dict[str, Group],
    layouts: Mapping[str, tuple[Layout, ...]],
    activations: Mapping[str, tuple[Layout, ...]],
    rep_of: Mapping[int, tuple[int, int]],
    leader: Mapping[int, int],
    names: Mapping[int, str],
) -> None:
    """Let the coordinates of attention heads have a map per head where that is sound: every
    parameter axis they occupy is a product with the heads, and every activation that carries
    them carries the heads too (a sum over heads, or a bias shared by the heads, forbids it)."""

    def group_of(r: int) -> str | None:
        r = classes.find(r)
        return names[leader[rep_of[r][0]]] if r in rep_of else None

    candidates: dict[str, list[str]] = {}
    for inner, heads, _ in classes.per_head:
        e = classes.expand(inner)
        if not isinstance(e, Atom):
            continue
        g = group_of(int(e.group))
        if g is None:
            continue
        for a in atoms(classes.expand(heads)):
            h = group_of(int(a.group))
            if h is not None and h != g and h not in candidates.setdefault(g, []):
                candidates[g].append(h)

    def products_hold(g: str, h: str) -> bool:
        def walk(node: Layout, parent: Prod | None) -> bool:
            if isinstance(node, Atom):
                if node.group != g:
                    return True
                return parent is not None and any(isinstance(c, Atom) and c.group == h for c in parent.children)
            if isinstance(node, (Prod, Sum)):
                return all(walk(c, node if isinstance(node, Prod) else parent) for c in node.children)
            return True

        return all(walk(lay, None) for lays in layouts.values() for lay in lays)

    def activations_hold(g: str, h: str) -> bool:
        for lays in activations.values():
            present = {str(a.group) for lay in lays for a in atoms(lay)}
            if g in present and h not in present:
                return False
        return True

    for g, hs in candidates.items():
        for h in hs:
            if h in groups and products_hold(g, h) and activations_hold(g, h):
                groups[g].per = h
                groups[g].heads = groups[h].size
                break


def _repair_sites(result, activations: dict[str, tuple[Layout, ...]]) -> list[RepairSite]:
    """The last per-channel affine layer before every elementwise nonlinearity (walking back
    through identities, dropout and residual additions), and before the network's output."""
    graph = result.graph_module.graph
    nodes = {n.name: n for n in graph.nodes}
    order = {name: i for i, name in enumerate(result.node_order)}
    found: dict[str, RepairSite] = {}
    outputs = [n for n in graph.nodes if n.op == "output"]
    starts = [(nodes[name].args[:1], False) for name in result.nonlinear]
    starts += [(_flat_nodes(n.args), True) for n in outputs]
    for args, is_output in starts:
        stack = [a for a in args if isinstance(a, fx.Node)]
        seen = set()
        while stack:
            m = stack.pop()
            if m.name in seen:
                continue
            seen.add(m.name)
            if m.name in result.affine:
                module, weight, bias, axis = result.affine[m.name]
                lays = activations.get(m.name)
                moves = lays is not None and any(True for _ in atoms(lays[axis]))
                if module and lays is not None and (moves or is_output):
                    previous = found.get(m.name)
                    found[m.name] = RepairSite(
                        m.name,
                        module,
                        weight,
                        bias,
                        axis,
                        lays[axis],
                        is_output and (previous is None or previous.output),
                    )
            elif m.name in result.transparent:
                stack.extend(a for a in m.args if isinstance(a, fx.Node) and a.name in activations)
    return sorted(found.values(), key=lambda s: order.get(s.node, 0))


def _flat_nodes(value: object) -> list[fx.Node]:
    if isinstance(value, fx.Node):
        return [value]
    if isinstance(value, (list, tuple)):
        return [n for v in value for n in _flat_nodes(v)]
    if isinstance(value, dict):
        return [n for v in value.values() for n in _flat_nodes(v)]
    return []


def _build_nx(graph: SymmetryGraph) -> nx.Graph:
    g = nx.Graph()
    members: dict[str, list[str]] = {name: [] for name in graph.groups}
    for key, lays in graph.layouts.items():
        for axis, lay in enumerate(lays):
            base = f"{key}:{axis}"
            if isinstance(lay, Fixed):
                g.add_node(
                    base,
                    kind="parameter",
                    key=key,
                    axis=axis,
                    size=lay.size,
                    group=None,
                    variance=graph.variances[key][axis],
                )
                continue
            for path, a in occurrences(lay):
                node = base + (f"[{'.'.join(map(str, path))}]" if path else "")
                g.add_node(
                    node,
                    kind="parameter",
                    key=key,
                    axis=axis,
                    size=a.size,
                    group=str(a.group),
                    variance=graph.variances[key][axis],
                )
                members[str(a.group)].append(node)
    for act, lays in graph.activations.items():
        for axis, lay in enumerate(lays):
            for path, a in occurrences(lay):
                node = f"@{act}:{axis}" + (f"[{'.'.join(map(str, path))}]" if path else "")
                g.add_node(node, kind="activation", node=act, axis=axis, size=a.size, group=str(a.group))
                members[str(a.group)].append(node)
    for name, nodes in members.items():
        for u, v in itertools.pairwise(nodes):
            g.add_edge(u, v, group=name)
    return g


def _from_spec(model: nn.Module, spec: Mapping[str, Sequence[object]], inputs: tuple) -> SymmetryGraph:
    state = model.state_dict()
    if not isinstance(spec, Mapping) or not spec:
        raise bad_argument(
            "symmetry_graph",
            "spec",
            expected="a non-empty mapping {group name: ['param.name:axis', ...]}",
            found=spec,
        )
    layouts: dict[str, list[Layout]] = {k: [Fixed(int(s)) for s in t.shape] for k, t in state.items()}
    variances: dict[str, list[str]] = {
        k: ["out" if a == 0 or t.dim() < 2 else "in" for a in range(t.dim())] for k, t in state.items()
    }
    groups: dict[str, Group] = {}
    for name, entries in spec.items():
        size = None
        refs = []
        if isinstance(entries, (str, bytes)) or not isinstance(entries, Sequence):
            raise bad_argument(
                "symmetry_graph", f"spec[{name!r}]", expected="a list of 'param.name:axis' strings", found=entries
            )
        for entry in entries:
            if isinstance(entry, (tuple, list)):
                parts = [str(p) for p in entry]
            else:
                parts = (
                    str(entry).rsplit(":", 2)
                    if str(entry).count(":") >= 2 and str(entry).rsplit(":", 1)[1] in ("in", "out")
                    else str(entry).rsplit(":", 1)
                )
            if len(parts) < 2 or parts[0] not in state or not parts[1].isdigit():
                raise bad_argument(
                    "symmetry_graph",
                    f"spec[{name!r}]",
                    expected="entries 'param.name:axis' (optionally ':in'/':out') naming axes of the model's state",
                    found=repr(entry),
                    fix=f"State entries are e.g. {list(state)[:4]}.",
                )
            key, axis = parts[0], int(parts[1])
            if axis >= state[key].dim():
                raise bad_argument(
                    "symmetry_graph",
                    f"spec[{name!r}]",
                    expected=f"an axis of {key!r} (shape {tuple(state[key].shape)})",
                    found=repr(entry),
                )
            n = int(state[key].shape[axis])
            if size is None:
                size = n
            elif n != size:
                raise bad_argument(
                    "symmetry_graph",
                    f"spec[{name!r}]",
                    expected=f"axes of one length (the group's units; {size} so far)",
                    found=f"{entry!r} of length {n}",
                )
            if not isinstance(layouts[key][axis], Fixed):
                raise bad_argument(
                    "symmetry_graph", "spec", expected="each axis in one group only", found=f"{key}:{axis} twice"
                )
            layouts[key][axis] = Atom(str(name), n)
            if len(parts) == 3:
                variances[key][axis] = parts[2]
            refs.append(AxisRef(key, axis, (), variances[key][axis]))
        if size is None or size < 2:
            continue
        groups[str(name)] = Group(str(name), size, "permutation", tuple(refs), kind_reason="a manual spec")
    graph = SymmetryGraph(
        groups=groups,
        layouts={k: tuple(v) for k, v in layouts.items()},
        variances={k: tuple(v) for k, v in variances.items()},
        shapes={k: tuple(t.shape) for k, t in state.items()},
        example_inputs=inputs,
        source="spec",
        model_spec=spec_of(model),
    )
    graph.nx = _build_nx(graph)
    return graph
