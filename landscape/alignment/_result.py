"""The result of :func:`~landscape.alignment.align`: one map per symmetry group."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn

from landscape.alignment._descent import MatchResult
from landscape.core.errors import bad_argument
from landscape.core.io import checkpoint_record, provenance_attrs
from landscape.core.state import State, as_state
from landscape.symmetry import LinearMap, PerHead, Permutation, SoftMap, SymmetryGraph, Transform, apply_maps

__all__ = ["Alignment", "load"]


def load(value: object, *, function: str, argument: str) -> State:
    """A State from a module, a mapping of tensors or a checkpoint path."""
    if isinstance(value, (str, os.PathLike)):
        from landscape.core.checkpoints import load_state

        return load_state(value)
    return as_state(value, function=function, argument=argument)


def distance(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> float:
    """Euclidean distance between two states (NaN when their shapes differ)."""
    total = 0.0
    for k, t in a.items():
        if k not in b or not t.is_floating_point() or tuple(b[k].shape) != tuple(t.shape):
            if k in b and t.is_floating_point():
                return float("nan")
            continue
        total += float(((t.double() - b[k].double()) ** 2).sum())
    return math.sqrt(total)


class Alignment:
    """The result of :func:`align`: one transform per symmetry group that maps ``b``'s units
    onto ``a``'s.

    Attributes
    ----------
    graph : SymmetryGraph
    maps : dict of str to Transform
        :class:`~landscape.symmetry.Permutation` for matching (and exact OT between equal
        widths), :class:`~landscape.symmetry.LinearMap` for orthogonal and invertible maps,
        :class:`~landscape.symmetry.PerHead` for the coordinates of attention heads,
        :class:`~landscape.symmetry.SoftMap` (a transport plan applied by barycentric
        projection) otherwise.
    method : str
    history : MatchResult
        Objective and distance after every round and step.
    folded : bool
        Whether the maps act on states whose norm gains are folded into the layers that read
        them (``graph.fold``); :meth:`apply` takes care of it.

    Examples
    --------
    >>> import landscape as ls
    >>> from landscape.alignment import align
    >>> model = ls.models.create("mlp", width=8, depth=1, seed=0)
    >>> b = ls.models.create("mlp", width=8, depth=1, seed=1)
    >>> result = align(model, model, b, method="weights", progress=False)
    >>> aligned = result.apply(b)
    >>> result.to_dataset().objective.dims
    ('round',)
    """

    def __init__(
        self,
        graph: SymmetryGraph,
        history: MatchResult,
        *,
        method: str,
        options: Mapping[str, object],
        a: State,
        b: State,
        a_sizes: Mapping[str, int],
        b_sizes: Mapping[str, int],
        terms: list[str],
        folded: bool = False,
    ) -> None:
        self.graph = graph
        self.history = history
        self.maps: dict[str, Transform] = dict(history.maps)
        self.method = method
        self.options = dict(options)
        self.a_sizes = dict(a_sizes)
        self.b_sizes = dict(b_sizes)
        self.terms = terms
        self.folded = folded
        self._a = a
        self._a_record = checkpoint_record(a)
        self._b_record = checkpoint_record(b)
        self.distance_before = distance(a, b)
        self.distance_after = distance(a, self.apply(b))

    @property
    def permutations(self) -> dict[str, np.ndarray]:
        """The permutation of every group aligned by one (unit ``i`` of the aligned network is
        unit ``perm[i]`` of ``b``)."""
        return {g: m.index.numpy().copy() for g, m in self.maps.items() if isinstance(m, Permutation)}

    def apply(self, state: Mapping[str, Tensor] | nn.Module | str, *, folded: bool = False) -> State:
        """The aligned copy of ``state`` (``b``, or another checkpoint of it).

        When the maps act on folded norms (orthogonal maps of a transformer's residual stream),
        the result is written with ``a``'s norm gains (:meth:`SymmetryGraph.unfold`): the same
        function, and interpolating from ``a`` to it is interpolating between the folded
        networks. ``folded=True`` returns the folded form instead.

        Returns
        -------
        State
            Same keys as ``state``, at ``a``'s widths.
        """
        state = load(state, function="Alignment.apply", argument="state")
        sizes = self.graph.sizes_of(state, function="Alignment.apply")
        wrong = [g for g in self.maps if sizes[g] != self.b_sizes[g]]
        if wrong:
            g = wrong[0]
            raise bad_argument(
                "Alignment.apply",
                "state",
                expected=f"a state of the aligned network's widths (group {g!r}: {self.b_sizes[g]} units)",
                found=f"{sizes[g]} units",
            )
        out = apply_maps(self.graph, state, self.maps, sizes)
        if self.folded:
            out = self.graph.fold(out) if folded else self.graph.unfold(out, self._a)
        out.provenance = {
            "format": "aligned",
            "source": f"landscape.alignment.align(method={self.method!r})",
            "derived": f"aligned to {self._a_record.get('sha256', '?')[:12]}",
        }
        return out

    def to_dataset(self) -> xr.Dataset:
        """Per-group maps and the objective history.

        Returns
        -------
        xarray.Dataset
            ``size``, ``kind``, ``solved``, ``moved`` over ``group`` (``kind``: what the graph
            allows; ``solved``: the kind of map found; ``moved``: units that changed place, NaN for
            other maps); ``objective`` and ``distance`` over ``round`` (round 0 is the start);
            ``step_objective``, ``step_group``, ``step_changed`` over ``step``; per group
            ``perm[<group>]`` over ``unit[<group>]``, ``plan[<group>]`` over (``unit[<group>]``,
            ``other_unit[<group>]``) for soft maps, ``matrix[<group>]`` over (``head[<group>]``,
            ``unit[<group>]``, ``other_unit[<group>]``) for linear maps (one head when the group
            has none). ``attrs`` hold the method, its options, the distances before and after,
            and provenance.
        """
        names = list(self.graph.groups)
        moved, solved = [], []
        variables: dict[str, tuple] = {}
        for g in names:
            m = self.maps.get(g)
            solved.append("none" if m is None else m.kind if not isinstance(m, SoftMap) else "transport")
            if isinstance(m, Permutation):
                moved.append(int((m.index != torch.arange(m.source_size)).sum()))
                variables[f"perm[{g}]"] = ((f"unit[{g}]",), m.index.numpy().copy())
            elif isinstance(m, SoftMap):
                moved.append(np.nan)
                variables[f"plan[{g}]"] = ((f"unit[{g}]", f"other_unit[{g}]"), m.plan.numpy().copy())
            elif isinstance(m, (LinearMap, PerHead)):
                moved.append(np.nan)
                heads = m.maps if isinstance(m, PerHead) else [m]
                stack = np.stack([h.matrix("out").numpy() for h in heads])
                variables[f"matrix[{g}]"] = ((f"head[{g}]", f"unit[{g}]", f"other_unit[{g}]"), stack)
            else:
                moved.append(0)
        steps = self.history.steps
        data = {
            "size": ("group", np.array([self.graph.groups[g].size for g in names], dtype=np.int64)),
            "kind": ("group", np.array([self.graph.groups[g].kind for g in names], dtype=object)),
            "solved": ("group", np.array(solved, dtype=object)),
            "moved": ("group", np.array(moved, dtype=np.float64)),
            "objective": ("round", np.array(self.history.objective, dtype=np.float64)),
            "distance": ("round", np.array(self.history.distance, dtype=np.float64)),
            "step_objective": ("step", np.array([s[2] for s in steps], dtype=np.float64)),
            "step_group": ("step", np.array([s[1] for s in steps], dtype=object)),
            "step_round": ("step", np.array([s[0] for s in steps], dtype=np.int64)),
            "step_changed": ("step", np.array([s[3] for s in steps], dtype=bool)),
            **variables,
        }
        coords = {"group": names, "round": np.arange(len(self.history.objective)), "step": np.arange(len(steps))}
        attrs = provenance_attrs(
            analysis="alignment",
            method=self.method,
            model=self.graph.model_spec,
            a=self._a_record,
            b=self._b_record,
            rounds=self.history.rounds,
            converged=self.history.converged,
            folded=self.folded,
            distance_before=self.distance_before,
            distance_after=self.distance_after,
            objective_before=self.history.objective[0],
            objective_after=self.history.objective[-1],
            terms=len(self.terms),
            **{k: v for k, v in self.options.items() if v is not None},
        )
        return xr.Dataset(data, coords=coords, attrs=attrs)

    def __repr__(self) -> str:
        before, after = self.history.objective[0], self.history.objective[-1]
        kinds = {type(m).__name__ for m in self.maps.values()}
        return (
            f"Alignment(method={self.method!r}, {len(self.maps)} groups ({', '.join(sorted(kinds))}), "
            f"{self.history.rounds} rounds, objective {before:.4g} -> {after:.4g}, "
            f"distance {self.distance_before:.4g} -> {self.distance_after:.4g})"
        )
