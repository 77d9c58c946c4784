"""The result of :func:`~landscape.symmetry.symmetry_graph`: the groups of a model's
parameters, where they act, and how to transform and check states with them."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import torch
import torch.fx as fx
import xarray as xr
from torch import Tensor, nn

from landscape.core.errors import LandscapeError, StateMismatchError, bad_argument
from landscape.core.io import provenance_attrs
from landscape.core.state import State, as_state
from landscape.symmetry._patterns import Fold
from landscape.symmetry.layout import Atom, Fixed, Layout, atoms, node_size
from landscape.symmetry.layout import describe as describe_layout
from landscape.symmetry.transforms import (
    KINDS,
    PerHead,
    Permutation,
    SoftMap,
    Transform,
    as_transform,
    random_transform,
)

__all__ = ["AxisRef", "Group", "RepairSite", "SymmetryCheckError", "SymmetryGraph"]


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
        k-th factor of a structured axis (GroupNorm groups); attention groups are named after
        their module: ``<attn>.heads`` (the heads), ``<attn>.qk`` (the query/key coordinates
        of every head; keys transform by the inverse transpose), ``<attn>.vo`` (the value
        coordinates, read by the output projection).
    size
        Number of units (per head, for a per-head group).
    kind
        The widest transforms the graph allows: ``"permutation"``, ``"orthogonal"`` or
        ``"invertible"`` (each includes the previous ones).
    axes
        Every parameter axis (or factor of one) the group acts on.
    activations
        ``(node, axis, path)`` of the traced activations that carry the group.
    per
        For the coordinates of attention heads: the heads group; each head has maps of its own.
    centered
        Maps must keep the all-ones vector (the residual stream read by mean-centering
        LayerNorms).
    rotary
        Maps must commute with rotary position embeddings: a complex number (scale and
        rotation) for each pair of coordinates ``(i, i + size/2)``.
    """

    name: str
    size: int
    kind: str
    axes: tuple[AxisRef, ...] = ()
    activations: tuple[tuple[str, int, tuple[int, ...]], ...] = ()
    kind_reason: str | None = None
    per: str | None = None
    heads: int = 1
    centered: bool = False
    rotary: bool = False

    def allows(self, kind: str) -> bool:
        return KINDS.index(kind) <= KINDS.index(self.kind)

    def admits(self, transform: Transform, *, atol: float = 1e-6) -> str | None:
        """Why ``transform`` is not a symmetry of this group (None when it is)."""
        if isinstance(transform, SoftMap):
            return "a soft map (transport plan) is not a symmetry"
        maps = transform.maps if isinstance(transform, PerHead) else [transform]
        if isinstance(transform, PerHead):
            if self.per is None:
                return "per-head maps, but the group is not the coordinates of attention heads"
            if transform.heads != self.heads or transform.over != self.per:
                return f"per-head maps over {transform.heads} heads of {transform.over!r}; expected {self.heads} of {self.per!r}"
        for m in maps:
            if not self.allows(m.kind):
                return f"an {m.kind} map" if m.kind[0] in "oi" else f"a {m.kind} map"
            if isinstance(m, Permutation):
                if self.rotary and not m.is_identity():
                    return "a permutation, which does not commute with the rotary embedding"
                continue
            matrix = m.matrix("out")
            if self.centered:
                ones = torch.ones(matrix.shape[1], dtype=matrix.dtype)
                if float((matrix @ ones - ones).abs().max()) > atol * matrix.shape[1]:
                    return "a map that moves the all-ones vector (LayerNorm subtracts the mean)"
            if self.rotary:
                from landscape.symmetry.transforms import rotary_matrix

                half = matrix.shape[0] // 2
                i = torch.arange(half)
                pairs = torch.stack([matrix[i, i], matrix[i + half, i]], dim=1)
                if float((rotary_matrix(pairs) - matrix).abs().max()) > atol * max(1.0, float(matrix.abs().max())):
                    return "a map that does not commute with the rotary embedding"
        return None

    def __repr__(self) -> str:
        extra = "".join(
            [
                f", per head of {self.per!r}" if self.per else "",
                ", centered" if self.centered else "",
                ", rotary" if self.rotary else "",
            ]
        )
        return f"Group({self.name!r}, size={self.size}, kind={self.kind!r}{extra}, {len(self.axes)} parameter axes)"


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
    folds : list of Fold
        Norms whose gain folds into the linear layers that read them (:meth:`fold`);
        states are folded before a map other than a permutation touches the
        groups they normalise.
    frontend : str
        ``"fx"`` or ``"export"``: how the model was captured.
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
    folds: list[Fold] = field(default_factory=list)
    frontend: str = "fx"

    @property
    def fold_constants(self) -> set[str]:
        """The norm gains that folding sets to one."""
        return {f.weight for f in self.folds}

    @property
    def folded_groups(self) -> set[str]:
        """Groups that act on a foldable norm's parameters (the streams it normalises)."""
        keys = self.fold_constants
        return {str(a.group) for k in keys for lay in self.layouts.get(k, ()) for a in atoms(lay)}

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
            Per-head groups get a map per head; centered and rotary groups get maps of their
            structure.
        """
        if kind not in (*KINDS, "max"):
            raise bad_argument("random_transforms", "kind", expected=f"one of {(*KINDS, 'max')}", found=repr(kind))
        generator = torch.Generator().manual_seed(int(seed))
        out: dict[str, Transform] = {}
        for name, g in self.groups.items():
            chosen = g.kind if kind == "max" else (kind if g.allows(kind) else "permutation")
            if g.rotary and chosen == "permutation":
                continue  # only the identity commutes with the rotations

            def one(chosen: str = chosen, g: Group = g) -> Transform:
                return random_transform(g.size, chosen, generator, centered=g.centered, rotary=g.rotary)

            out[name] = PerHead([one() for _ in range(g.heads)], g.per) if g.per is not None else one()
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
        >>> graph = ls.symmetry.symmetry_graph(model)
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
            t = as_transform(value, group=g, size=sizes[g], function="apply", over=self.groups[g].per)
            if validate:
                reason = self.groups[g].admits(t)
                if reason is not None:
                    why = self.groups[g].kind_reason
                    raise bad_argument(
                        "apply",
                        f"transforms[{g!r}]",
                        expected=f"a transform group {g!r} allows ({self.groups[g].kind} maps"
                        + (f", because of {why})" if why else ")"),
                        found=reason,
                        fix="Pass a permutation, or validate=False to see what the map does (graph.check).",
                    )
            maps[g] = t
        from landscape.symmetry._apply import apply_maps

        return apply_maps(self, state, maps, sizes)

    # -- folding ------------------------------------------------------------------------
    def fold(self, state: Mapping[str, Tensor] | nn.Module) -> State:
        """The same function with every foldable norm's gain moved into the linear layers that
        read it (gains become one, biases are divided by the gains).

        Examples
        --------
        >>> import torch, landscape as ls
        >>> model = ls.models.create("vit", dim=8, depth=1, heads=2, seed=0)
        >>> graph = ls.symmetry.symmetry_graph(model)
        >>> folded = graph.fold(model)
        >>> bool((folded["features.norm.weight"] == 1).all())
        True
        """
        from landscape.symmetry._fold import fold_state

        return fold_state(self, as_state(state, function="SymmetryGraph.fold", argument="state"))

    def unfold(self, state: Mapping[str, Tensor] | nn.Module, like: Mapping[str, Tensor] | nn.Module) -> State:
        """``state`` (folded or not) written with the norm gains of ``like``: the
        same function, and interpolating between ``like`` and the result is interpolating
        between their folded forms."""
        from landscape.symmetry._fold import unfold_state

        return unfold_state(
            self,
            as_state(state, function="SymmetryGraph.unfold", argument="state"),
            as_state(like, function="SymmetryGraph.unfold", argument="like"),
        )

    # -- checking ---------------------------------------------------------------------
    def check(
        self,
        model: nn.Module,
        state: Mapping[str, Tensor] | None = None,
        *,
        kind: str = "max",
        trials: int = 2,
        seed: int = 0,
        rtol: float = 1e-6,
        transforms: Mapping[str, object] | None = None,
        inputs: object = None,
        device: str | torch.device = "auto",
    ) -> xr.Dataset:
        """Verify that transforming each group leaves the network's outputs unchanged.

        Runs ``model`` in float64 with ``state`` and with transformed states, once with all
        groups transformed and once per group alone, and raises :class:`SymmetryCheckError`
        naming the group when an output moves by more than ``rtol`` times the outputs' scale
        (how much they vary across the inputs). Folding the norms is checked the same way.
        Outputs that do not depend on the input test nothing, and are an error.

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
        rtol
            Tolerance on the largest output change, relative to the outputs' scale.
        transforms
            Check these transforms instead of random ones (applied without validation, so a
            transform the group does not allow is caught here).
        inputs
            Inputs to run (default: 8 random inputs shaped like the example input).
        device
            ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``: where the forward passes run.

        Returns
        -------
        xarray.Dataset
            ``deviation`` (dims ``round``, ``group``): largest output change with only that group
            transformed, relative to the scale; ``deviation_all`` (dim ``round``): with every group
            transformed. ``attrs``: ``scale``, ``rtol``, ``fold_deviation``, ``passed``.

        Examples
        --------
        >>> import landscape as ls
        >>> model = ls.models.create("mlp", width=8, depth=2, seed=0)
        >>> result = ls.symmetry.symmetry_graph(model).check(model)
        >>> bool(result.attrs["passed"])
        True
        """
        from landscape.symmetry._check import check

        return check(
            self,
            model,
            state,
            kind=kind,
            trials=trials,
            seed=seed,
            rtol=rtol,
            transforms=transforms,
            inputs=inputs,
            device=device,
        )
