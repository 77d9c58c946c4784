"""The symmetry graph of a model: which parameter axes share one transform, found by tracing."""

from __future__ import annotations

import copy
import itertools
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import torch
import torch.fx as fx
import xarray as xr
from torch import Tensor, nn

from landscape.core.errors import LandscapeError, StateMismatchError, bad_argument
from landscape.core.io import provenance_attrs
from landscape.core.spec import spec_of
from landscape.core.state import State, as_state
from landscape.symmetry._classes import KIND_NAMES, ORTHOGONAL, Classes
from landscape.symmetry.layout import (
    Atom,
    Fixed,
    Layout,
    apply_axis,
    atoms,
    node_size,
    occurrences,
    relabel,
)
from landscape.symmetry.layout import (
    describe as describe_layout,
)
from landscape.symmetry.trace import TInfo, UnsupportedOperationError, expand_info, trace_model
from landscape.symmetry.transforms import (
    KINDS,
    Permutation,
    SoftMap,
    Transform,
    as_transform,
    random_transform,
)

__all__ = [
    "AxisRef",
    "Group",
    "RepairSite",
    "SymmetryCheckError",
    "SymmetryGraph",
    "UnsupportedOperationError",
    "example_input_for",
    "symmetry_graph",
]

UNKNOWN_POLICIES = ("error", "fixed")


class SymmetryCheckError(LandscapeError):
    """A transform that the graph allows changed the network's function."""


@dataclass(frozen=True)
class AxisRef:
    """One place a group acts: axis ``axis`` of state entry ``key`` (the atom at ``path`` of
    the axis layout), transforming as ``variance`` (``"out"`` or ``"in"``)."""

    key: str
    axis: int
    path: tuple[int, ...] = ()
    variance: str = "out"

    def __str__(self) -> str:
        part = f"[{'.'.join(map(str, self.path))}]" if self.path else ""
        return f"{self.key}:{self.axis}{part}"


@dataclass(frozen=True)
class RepairSite:
    """A per-channel affine layer right before a nonlinearity (or the network's output),
    whose statistics REPAIR corrects."""

    node: str
    module: str
    weight: str
    bias: str
    axis: int
    layout: Layout
    output: bool = False


@dataclass
class Group:
    """A set of units that may be transformed together without changing the function.

    Attributes
    ----------
    name
        Named after the first layer that produces it (``"features.fc1"``); ``#k`` marks the
        k-th factor of a structured axis (attention heads, GroupNorm groups).
    size
        Number of units.
    kind
        The widest transforms the graph allows: ``"permutation"``, ``"orthogonal"`` or
        ``"invertible"`` (each includes the previous ones).
    axes
        Every parameter axis (or factor of one) the group acts on.
    activations
        ``(node, axis, path)`` of the traced activations that carry the group.
    """

    name: str
    size: int
    kind: str
    axes: tuple[AxisRef, ...] = ()
    activations: tuple[tuple[str, int, tuple[int, ...]], ...] = ()
    kind_reason: str | None = None

    def allows(self, kind: str) -> bool:
        return KINDS.index(kind) <= KINDS.index(self.kind)

    def __repr__(self) -> str:
        return f"Group({self.name!r}, size={self.size}, kind={self.kind!r}, {len(self.axes)} parameter axes)"


@dataclass
class SymmetryGraph:
    """The permutation (and wider) symmetry groups of a model's parameters.

    Built by :func:`symmetry_graph`. Each state entry's axes are described by layouts
    (:mod:`landscape.symmetry.layout`) whose atoms name groups; :meth:`apply` transforms a
    state, :meth:`check` verifies that transforms leave the function unchanged.

    Attributes
    ----------
    groups : dict of str to Group
        In the order the network computes them (input to output).
    layouts : dict of str to tuple of Layout
        One layout per axis of every state entry (``Fixed`` where nothing acts).
    variances : dict of str to tuple of str
        ``"out"`` or ``"in"`` per axis of every state entry.
    shapes : dict of str to tuple of int
    activations : dict of str to tuple of Layout
        Layouts of the traced activations, by fx node name.
    sites : dict of str to list of (str, int)
        Per group, the activations (fx node, axis) that a parametrised layer reads: what
        activation matching correlates.
    repair_sites : list of RepairSite
    nx : networkx.Graph
        Nodes are parameter axes (``"features.fc1.weight:0"``; factors of structured axes get a
        ``[path]`` suffix) and the activation axes of the trace (``"@node:axis"``), with
        attributes ``group``, ``size``, ``variance``; the connected components of the edges are
        the groups. Fixed parameter axes are isolated nodes with ``group=None``.
    notes : list of str
        Decisions worth knowing (axes fixed by an opaque module, unmatched structures).
    """

    groups: dict[str, Group]
    layouts: dict[str, tuple[Layout, ...]]
    variances: dict[str, tuple[str, ...]]
    shapes: dict[str, tuple[int, ...]]
    activations: dict[str, tuple[Layout, ...]] = field(default_factory=dict)
    sites: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    repair_sites: list[RepairSite] = field(default_factory=list)
    nx: nx.Graph = field(default_factory=nx.Graph)
    module: fx.GraphModule | None = None
    example_inputs: tuple = ()
    notes: list[str] = field(default_factory=list)
    source: str = "trace"
    explanations: dict[str, str] = field(default_factory=dict)
    model_spec: object = None

    # -- inspection -----------------------------------------------------------------
    def __repr__(self) -> str:
        shown = ", ".join(f"{g.name} ({g.size}, {g.kind})" for g in list(self.groups.values())[:6])
        more = f", ... {len(self.groups) - 6} more" if len(self.groups) > 6 else ""
        moving = sum(1 for lays in self.layouts.values() if any(not isinstance(lay, Fixed) for lay in lays))
        return f"SymmetryGraph({len(self.groups)} groups: {shown}{more}; {moving} of {len(self.layouts)} state entries move)"

    def summary(self) -> str:
        """A plain-text table of the groups and where they act."""
        lines = [f"{'group':40s} {'size':>6s}  {'kind':12s} axes"]
        for g in self.groups.values():
            axes = ", ".join(str(a) for a in g.axes[:4]) + (f", ... ({len(g.axes)})" if len(g.axes) > 4 else "")
            lines.append(f"{g.name:40s} {g.size:6d}  {g.kind:12s} {axes}")
        fixed = [k for k, lays in self.layouts.items() if lays and all(isinstance(lay, Fixed) for lay in lays)]
        lines.append(f"{len(fixed)} state entries are fixed entirely (inputs, outputs, counters).")
        return "\n".join(lines)

    def to_dataset(self) -> xr.Dataset:
        """The groups as a Dataset over dim ``group``: ``size``, ``kind``, ``n_axes``."""
        names = list(self.groups)
        return xr.Dataset(
            {
                "size": ("group", np.array([g.size for g in self.groups.values()], dtype=np.int64)),
                "kind": ("group", np.array([g.kind for g in self.groups.values()], dtype=object)),
                "n_axes": ("group", np.array([len(g.axes) for g in self.groups.values()], dtype=np.int64)),
            },
            coords={"group": names},
            attrs=provenance_attrs(analysis="symmetry_graph", source=self.source, model=self.model_spec),
        )

    def explain(self, axis: str) -> str:
        """Why a parameter axis (``"features.fc1.weight:1"``) has the layout it has."""
        match = re.fullmatch(r"(.+):(\d+)", axis)
        if not match or match.group(1) not in self.layouts or int(match.group(2)) >= len(self.layouts[match.group(1)]):
            raise bad_argument(
                "SymmetryGraph.explain",
                "axis",
                expected="'key:axis' naming an axis of a state entry",
                found=repr(axis),
                fix=f"Keys are e.g. {list(self.layouts)[:3]}.",
            )
        key, k = match.group(1), int(match.group(2))
        layout = self.layouts[key][k]
        text = f"{axis}: {describe_layout(layout)} ({self.variances[key][k]})"
        if axis in self.explanations:
            text += f"; {self.explanations[axis]}"
        for a in atoms(layout):
            g = self.groups[str(a.group)]
            if g.kind_reason and g.kind != "invertible":
                text += f"; group {g.name!r} allows {g.kind} maps only because of {g.kind_reason}"
        return text

    # -- sizes and transforms ---------------------------------------------------------
    def _check_keys(self, state: Mapping[str, Tensor], function: str, argument: str) -> None:
        missing = [k for k in self.layouts if k not in state]
        extra = [k for k in state if k not in self.layouts]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing {missing[:5]}")
            if extra:
                parts.append(f"unexpected {extra[:5]}")
            raise StateMismatchError(
                f"{function}({argument}=...): expected the state entries of the model the symmetry graph was "
                f"built from; found {'; '.join(parts)}. Is this a checkpoint of the same architecture?"
            )

    def sizes_of(
        self, state: Mapping[str, Tensor], *, function: str = "SymmetryGraph.sizes_of", argument: str = "state"
    ) -> dict[str, int]:
        """The number of units of every group in ``state`` (models of other widths give other
        sizes); raises :class:`StateMismatchError` when the shapes fit no assignment of sizes."""
        self._check_keys(state, function, argument)
        sizes: dict[str, int] = {}
        pending: list[tuple[str, int, Layout, int]] = []
        for key, lays in self.layouts.items():
            shape = tuple(state[key].shape)
            if len(shape) != len(lays):
                raise StateMismatchError(
                    f"{function}({argument}=...): expected {key!r} to have {len(lays)} axes; found shape {shape}."
                )
            for k, (lay, n) in enumerate(zip(lays, shape)):
                if isinstance(lay, Atom):
                    g = str(lay.group)
                    if sizes.setdefault(g, n) != n:
                        raise StateMismatchError(
                            f"{function}({argument}=...): expected group {g!r} to have one size; found {sizes[g]} "
                            f"and {n} units (at {key}:{k})."
                        )
                else:
                    pending.append((key, k, lay, n))
        progress = True
        while progress:
            progress = False
            for _, _, lay, n in pending:
                unknown = [a for a in atoms(lay) if str(a.group) not in sizes]
                if len({a.group for a in unknown}) == 1 and len(unknown) == 1:
                    a = unknown[0]
                    for trial in range(1, n + 1):
                        if node_size(lay, {**sizes, str(a.group): trial}) == n:
                            sizes[str(a.group)] = trial
                            progress = True
                            break
        for g in self.groups:
            sizes.setdefault(g, self.groups[g].size)
        for key, k, lay, n in pending:
            if node_size(lay, sizes) != n:
                raise StateMismatchError(
                    f"{function}({argument}=...): expected {key}:{k} of length {node_size(lay, sizes)} "
                    f"({describe_layout(lay)}); found {n}. Is this a checkpoint of the same architecture?"
                )
        return sizes

    def identity(self) -> dict[str, Permutation]:
        """The identity permutation of every group."""
        return {g: Permutation(torch.arange(grp.size)) for g, grp in self.groups.items()}

    def random_transforms(self, *, seed: int = 0, kind: str = "permutation") -> dict[str, Transform]:
        """A random transform of every group.

        Parameters
        ----------
        seed
            Seed of the draw.
        kind
            ``"permutation"`` for every group, ``"max"`` for the widest kind each group
            allows, or ``"orthogonal"``/``"invertible"`` where allowed (permutations elsewhere).
        """
        if kind not in (*KINDS, "max"):
            raise bad_argument("random_transforms", "kind", expected=f"one of {(*KINDS, 'max')}", found=repr(kind))
        generator = torch.Generator().manual_seed(int(seed))
        out: dict[str, Transform] = {}
        for name, g in self.groups.items():
            chosen = g.kind if kind == "max" else (kind if g.allows(kind) else "permutation")
            out[name] = random_transform(g.size, chosen, generator)
        return out

    def apply(
        self, state: Mapping[str, Tensor] | nn.Module, transforms: Mapping[str, object], *, validate: bool = True
    ) -> State:
        """Transform a state by one transform per group (groups left out stay as they are).

        Parameters
        ----------
        state
            A state of the model (or of a model of the same architecture at other widths,
            for soft maps).
        transforms
            Group name to a permutation (1-D integer array: unit ``i`` of the result is unit
            ``index[i]`` of ``state``), a square matrix (orthogonal or invertible: activations
            ``h`` become ``M h``), or a :class:`~landscape.symmetry.transforms.Transform`.
        validate
            Refuse transforms the group does not allow (an orthogonal map of a
            permutation-only group, a soft map). ``graph.check(..., transforms=...)`` turns it
            off to show what such a transform does.

        Returns
        -------
        State
            Same keys; permutations keep dtypes and values exactly.

        Examples
        --------
        >>> import torch, landscape as ls
        >>> model = ls.models.create("mlp", width=4, depth=1, seed=0)
        >>> graph = symmetry_graph(model)
        >>> moved = graph.apply(ls.state_of(model), {"features.fc1": [3, 2, 1, 0]})
        >>> torch.equal(moved["features.fc1.weight"], ls.state_of(model)["features.fc1.weight"].flip(0))
        True
        """
        state = as_state(state, function="apply", argument="state")
        if not isinstance(transforms, Mapping):
            raise bad_argument(
                "apply", "transforms", expected="a mapping from group name to transform", found=transforms
            )
        unknown = [g for g in transforms if g not in self.groups]
        if unknown:
            raise bad_argument(
                "apply",
                "transforms",
                expected=f"group names of this graph ({list(self.groups)[:6]}{'...' if len(self.groups) > 6 else ''})",
                found=f"unknown group {unknown[0]!r}",
            )
        sizes = self.sizes_of(state, function="apply")
        maps: dict[str, Transform] = {}
        for g, value in transforms.items():
            t = as_transform(value, group=g, size=sizes[g], function="apply")
            if validate:
                if isinstance(t, SoftMap):
                    raise bad_argument(
                        "apply",
                        f"transforms[{g!r}]",
                        expected="a symmetry of the group (permutation, or a matrix the group allows)",
                        found="a soft map (transport plan), which is not a symmetry",
                        fix="Use Alignment.apply for aligned states, or validate=False.",
                    )
                if not self.groups[g].allows(t.kind):
                    reason = self.groups[g].kind_reason
                    raise bad_argument(
                        "apply",
                        f"transforms[{g!r}]",
                        expected=f"a transform group {g!r} allows ({self.groups[g].kind} maps"
                        + (f", because of {reason})" if reason else ")"),
                        found=f"an {t.kind} map" if t.kind[0] in "oi" else f"a {t.kind} map",
                        fix="Pass a permutation, or validate=False to see what the map does (graph.check).",
                    )
            maps[g] = t
        return apply_maps(self, state, maps, sizes)

    # -- checking ---------------------------------------------------------------------
    def check(
        self,
        model: nn.Module,
        state: Mapping[str, Tensor] | None = None,
        *,
        kind: str = "max",
        trials: int = 2,
        seed: int = 0,
        atol: float = 1e-5,
        transforms: Mapping[str, object] | None = None,
        inputs: object = None,
    ) -> xr.Dataset:
        """Verify that transforming each group leaves the network's outputs unchanged.

        Runs ``model`` in float64 with ``state`` and with transformed states, once with all
        groups transformed and once per group alone, and raises
        :class:`SymmetryCheckError` naming the group when an output moves by more than
        ``atol`` (relative to the output's scale, at least 1).

        Parameters
        ----------
        model
            The architecture (in eval mode; BatchNorm uses the running statistics of ``state``).
        state
            Defaults to the model's own weights.
        kind
            Transforms to draw (see :meth:`random_transforms`); ``"max"`` tests the widest
            kind each group claims.
        trials
            Independent draws.
        seed
            Seed of the draws and of the random inputs.
        atol
            Tolerance on the largest output change.
        transforms
            Check these transforms instead of random ones (applied without validation, so a
            transform the group does not allow is caught here).
        inputs
            Inputs to run (default: 8 random inputs shaped like the example input).

        Returns
        -------
        xarray.Dataset
            ``deviation`` (dims ``round``, ``group``): largest output change with only that group
            transformed; ``deviation_all`` (dim ``round``): with every group transformed.

        Examples
        --------
        >>> import landscape as ls
        >>> model = ls.models.create("mlp", width=8, depth=2, seed=0)
        >>> result = symmetry_graph(model).check(model)
        >>> bool(result.attrs["passed"])
        True
        """
        if not isinstance(model, nn.Module):
            raise bad_argument("SymmetryGraph.check", "model", expected="an nn.Module", found=model)
        state = as_state(model if state is None else state, function="SymmetryGraph.check", argument="state")
        self._check_keys(state, "SymmetryGraph.check", "state")
        work = copy.deepcopy(model).double().eval()
        x = self._check_inputs(inputs, seed)
        state = State(_double(state))
        base = _run(work, state, x)
        scale = max(1.0, _max_abs(base))
        rounds = 1 if transforms is not None else int(trials)
        names = list(self.groups)
        per_group = np.zeros((rounds, len(names)))
        together = np.zeros(rounds)
        used_kind: dict[str, str] = {}
        for r in range(rounds):
            if transforms is not None:
                sizes = self.sizes_of(state, function="SymmetryGraph.check")
                drawn = {
                    g: as_transform(v, group=g, size=sizes[g], function="SymmetryGraph.check")
                    for g, v in transforms.items()
                }
            else:
                drawn = self.random_transforms(seed=seed * 1009 + r, kind=kind)
            for g, t in drawn.items():
                used_kind[g] = t.kind
            moved = apply_maps(self, state, drawn)
            together[r] = _max_abs(_diff(_run(work, moved, x), base))
            for j, g in enumerate(names):
                if g in drawn:
                    one = apply_maps(self, state, {g: drawn[g]})
                    per_group[r, j] = _max_abs(_diff(_run(work, one, x), base))
        tol = atol * scale
        bad = [(names[j], float(per_group[:, j].max())) for j in range(len(names)) if per_group[:, j].max() > tol]
        result = xr.Dataset(
            {
                "deviation": (("round", "group"), per_group),
                "deviation_all": (("round",), together),
                "kind": ("group", np.array([used_kind.get(g, "none") for g in names], dtype=object)),
            },
            coords={"round": np.arange(rounds), "group": names},
            attrs=provenance_attrs(
                analysis="symmetry_check", atol=atol, scale=scale, seed=seed, passed=not bad and together.max() <= tol
            ),
        )
        if bad or together.max() > tol:
            if bad:
                g, dev = max(bad, key=lambda item: item[1])
                grp = self.groups[g]
                where = ", ".join(str(a) for a in grp.axes[:6])
                raise SymmetryCheckError(
                    f"SymmetryGraph.check: expected the transformed network to compute the same function (outputs "
                    f"within {atol:g} x {scale:.3g}); found max |output change| = {dev:.3g} after a "
                    f"{used_kind.get(g, 'random')} transform of group {g!r} (size {grp.size}, acting on {where}). "
                    + (
                        "That transform is not a symmetry of this group."
                        if transforms is not None
                        else "The group is wrong: if it came from a manual spec, fix the spec; if it was traced, "
                        "please report it and pass fixed=[...] naming the module meanwhile."
                    )
                )
            raise SymmetryCheckError(
                f"SymmetryGraph.check: expected the transformed network to compute the same function; found max "
                f"|output change| = {together.max():.3g} with all groups transformed together, though each group "
                "alone passes. Two groups interact in a way the graph does not describe; please report it."
            )
        return result

    def _check_inputs(self, inputs: object, seed: int) -> tuple:
        if inputs is not None:
            xs = inputs if isinstance(inputs, tuple) else (inputs,)
        else:
            if not self.example_inputs:
                raise bad_argument(
                    "SymmetryGraph.check",
                    "inputs",
                    expected="inputs to run (the graph was built without an example input)",
                    found=None,
                    fix="Pass inputs=..., or build the graph with symmetry_graph(model, example_input).",
                )
            generator = torch.Generator().manual_seed(int(seed) + 7)
            xs = []
            for ex in self.example_inputs:
                if isinstance(ex, Tensor) and ex.is_floating_point():
                    xs.append(torch.randn((8, *ex.shape[1:]), generator=generator, dtype=torch.float64))
                elif isinstance(ex, Tensor):
                    high = int(ex.max()) + 1 if ex.numel() else 2
                    xs.append(torch.randint(0, max(high, 2), (8, *ex.shape[1:]), generator=generator))
                else:
                    xs.append(ex)
            xs = tuple(xs)
        return tuple(x.double() if isinstance(x, Tensor) and x.is_floating_point() else x for x in xs)


# ---------------------------------------------------------------------------------------
# Applying maps
# ---------------------------------------------------------------------------------------


def apply_maps(
    graph: SymmetryGraph,
    state: Mapping[str, Tensor],
    maps: Mapping[str, Transform],
    sizes: Mapping[str, int] | None = None,
    *,
    keys: Sequence[str] | None = None,
) -> State:
    """Apply ``maps`` (already validated) to ``state``; entries outside ``keys`` are copied."""
    if sizes is None:
        sizes = graph.sizes_of(state, function="apply")
    exact = all(isinstance(t, Permutation) for t in maps.values())
    out: dict[str, Tensor] = {}
    wanted = set(keys) if keys is not None else None
    for key, t in state.items():
        lays = graph.layouts[key]
        touched = {str(a.group) for lay in lays for a in atoms(lay)} & set(maps)
        if not touched or (wanted is not None and key not in wanted) or not (t.is_floating_point() or t.is_complex()):
            out[key] = t.clone() if touched and not t.is_floating_point() else t
            continue
        variances = graph.variances[key]
        work = t if exact else t.double()
        for k, lay in enumerate(lays):
            if isinstance(lay, Fixed):
                continue
            variance = variances[k]

            def act(tensor: Tensor, d: int, group: object, path: tuple, variance: str = variance) -> Tensor:
                m = maps.get(str(group))
                return tensor if m is None else m.apply(tensor, d, variance)

            work = apply_axis(work, k, lay, act, sizes)
        out[key] = work.to(t.dtype).contiguous() if not exact else work.contiguous()
    provenance = {"derived": "symmetry.apply"}
    return State(out, provenance=provenance)


def _double(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.double() if v.is_floating_point() else v for k, v in state.items()}


def _run(model: nn.Module, state: Mapping[str, Tensor], x: tuple) -> object:
    with torch.no_grad():
        return torch.func.functional_call(model, dict(state), x)


def _flat(value: object) -> Iterator[Tensor]:
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _flat(v)
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _flat(v)
    elif hasattr(value, "logits"):
        yield from _flat(value.logits)


def _diff(a: object, b: object) -> list[Tensor]:
    return [(x.double() - y.double()) for x, y in zip(_flat(a), _flat(b))]


def _max_abs(value: object) -> float:
    vals = [float(t.abs().max()) for t in _flat(value) if t.numel() and t.is_floating_point()]
    if any(not np.isfinite(v) for v in vals):
        return float("inf")
    return max(vals, default=0.0)


# ---------------------------------------------------------------------------------------
# Building graphs
# ---------------------------------------------------------------------------------------


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
        result = trace_model(model, inputs, opaque=opaque, unknown=unknown)
        stray = stray_names({n.name for n in result.graph_module.graph.nodes})
    if stray:
        raise bad_argument(
            "symmetry_graph",
            "fixed",
            expected="module names, fx node names or 'param.name:axis' strings",
            found=repr(stray[0]),
            fix=f"Module names are e.g. {sorted(module_names - {''})[:4]}.",
        )
    return _finalize(result, model, inputs, fixed_axes)


def _finalize(result, model: nn.Module, inputs: tuple, fixed_axes: list[tuple[str, int]]) -> SymmetryGraph:
    classes: Classes = result.classes
    state = model.state_dict()
    for key, axis in fixed_axes:
        if (key, axis) in result.param_axes:
            classes.fix(result.param_axes[(key, axis)], f"fixed=['{key}:{axis}']")
    # A parameter axis used both like an activation and contracted with one: M = M^-T.
    for (key, axis), used in result.variances.items():
        if len(used) > 1:
            classes.restrict(result.param_axes[(key, axis)], ORTHOGONAL, f"{key} used in two roles (weight tying)")
    # Only atoms that some activation carries are symmetries; the rest are fixed.
    evidence: set[int] = set()
    expanded: dict[str, TInfo] = {}
    first_seen: dict[int, int] = {}
    for position, name in enumerate(result.node_order):
        info = result.infos.get(name)
        e = expand_info(classes, info)
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
    keep = sorted(in_params, key=lambda r: (first_seen.get(r, 1 << 30), r))
    variances: dict[str, tuple[str, ...]] = {}
    for key, t in state.items():
        vs = []
        for axis in range(t.dim()):
            used = result.variances.get((key, axis), set())
            vs.append("in" if used == {"in"} else "out")
        variances[key] = tuple(vs)
    # Names: the first layer producing the group ("out" axis), with #path for factors.
    names: dict[int, str] = {}
    taken: set[str] = set()
    for preference in (2, 1, 0):
        for key, lays in param_layouts.items():
            for axis, lay in enumerate(lays):
                produced = variances[key][axis] == "out"
                if preference == 2 and not (produced and key.endswith(".weight") and state[key].dim() >= 2):
                    continue
                if preference == 1 and not produced:
                    continue
                for path, a in occurrences(lay):
                    r = int(a.group)
                    if r in names:
                        continue
                    base = key.rsplit(".", 1)[0] if "." in key else key
                    if path:
                        base += "#" + ".".join(map(str, path))
                    name, k = base, 2
                    while name in taken:
                        name, k = f"{base}~{k}", k + 1
                    names[r] = name
                    taken.add(name)

    def label(a: Atom) -> Layout:
        r = int(a.group)
        return Atom(names[r], a.size) if r in names else Fixed(a.size)

    layouts = {k: tuple(relabel(lay, label) for lay in lays) for k, lays in param_layouts.items()}
    activations = {n: tuple(relabel(lay, label) for lay in e.layout) for n, e in expanded.items()}
    groups: dict[str, Group] = {}
    for r in keep:
        groups[names[r]] = Group(
            names[r],
            classes.sizes[r],
            KIND_NAMES[classes.kinds[r]],
            kind_reason=classes.kind_reasons.get(r),
        )
    axes_of: dict[str, list[AxisRef]] = {g: [] for g in groups}
    for key, lays in layouts.items():
        for axis, lay in enumerate(lays):
            for path, a in occurrences(lay):
                axes_of[str(a.group)].append(AxisRef(key, axis, path, variances[key][axis]))
    acts_of: dict[str, list[tuple[str, int, tuple[int, ...]]]] = {g: [] for g in groups}
    for node, lays in activations.items():
        for axis, lay in enumerate(lays):
            for path, a in occurrences(lay):
                acts_of[str(a.group)].append((node, axis, path))
    for g in groups.values():
        g.axes = tuple(axes_of[g.name])
        g.activations = tuple(acts_of[g.name])
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
    )
    graph.nx = _build_nx(graph)
    return graph


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
