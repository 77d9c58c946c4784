"""Align one network to another: weight matching, activation matching and optimal transport."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn

from landscape.alignment.activations import cross_correlations, example_from, inputs_from
from landscape.alignment.engine import (
    GramTerm,
    MatchResult,
    TensorTerm,
    check_solver_options,
    coordinate_descent,
)
from landscape.core.errors import StateMismatchError, bad_argument
from landscape.core.io import checkpoint_record, provenance_attrs
from landscape.core.progress import progress_bar
from landscape.core.state import State, as_state, check_compatible
from landscape.core.validate import check_finite_state
from landscape.symmetry import Fixed, Permutation, SoftMap, SymmetryGraph, Transform, example_input_for, symmetry_graph
from landscape.symmetry.graph import apply_maps
from landscape.symmetry.layout import atoms

__all__ = ["METHODS", "Alignment", "activation_sites", "align", "build_graph", "load", "run_alignment"]

METHODS = ("weights", "activations", "ot", "sinkhorn")
SOLVERS = {"weights": "lap", "activations": "lap", "ot": "emd", "sinkhorn": "sinkhorn"}


def load(value: object, *, function: str, argument: str) -> State:
    """A State from a module, a mapping of tensors or a checkpoint path."""
    if isinstance(value, (str, os.PathLike)):
        from landscape.core.checkpoints import load_state

        return load_state(value)
    return as_state(value, function=function, argument=argument)


class Alignment:
    """The result of :func:`align`: one transform per symmetry group that maps the other
    network's units onto the reference's.

    Attributes
    ----------
    graph : SymmetryGraph
    maps : dict of str to Transform
        :class:`~landscape.symmetry.Permutation` for matching (and exact OT between equal
        widths), :class:`~landscape.symmetry.SoftMap` (a transport plan applied by barycentric
        projection) otherwise.
    method : str
    history : MatchResult
        Objective after every round and every step.

    Examples
    --------
    >>> import landscape as ls
    >>> model = ls.models.create("mlp", width=8, depth=1, seed=0)
    >>> other = ls.models.create("mlp", width=8, depth=1, seed=1)
    >>> result = align(model, model, other, method="weights", progress=False)
    >>> aligned = result.apply(other)
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
        reference: State,
        other: State,
        ref_sizes: Mapping[str, int],
        other_sizes: Mapping[str, int],
        terms: list[str],
    ) -> None:
        self.graph = graph
        self.history = history
        self.maps: dict[str, Transform] = dict(history.maps)
        self.method = method
        self.options = dict(options)
        self.ref_sizes = dict(ref_sizes)
        self.other_sizes = dict(other_sizes)
        self.terms = terms
        self._reference_record = checkpoint_record(reference)
        self._other_record = checkpoint_record(other)
        self.distance_before = _distance(reference, other, graph)
        self.distance_after = _distance(reference, self.apply(other), graph)

    @property
    def permutations(self) -> dict[str, np.ndarray]:
        """The permutation of every group aligned by one (unit ``i`` of the aligned network is
        unit ``perm[i]`` of the other network)."""
        return {g: m.index.numpy().copy() for g, m in self.maps.items() if isinstance(m, Permutation)}

    def apply(self, state: Mapping[str, Tensor] | nn.Module | str) -> State:
        """The aligned copy of ``state`` (the other network, or another checkpoint of it).

        Returns
        -------
        State
            Same keys as ``state``, at the reference's widths.
        """
        state = load(state, function="Alignment.apply", argument="state")
        sizes = self.graph.sizes_of(state, function="Alignment.apply")
        wrong = [g for g in self.maps if sizes[g] != self.other_sizes[g]]
        if wrong:
            g = wrong[0]
            raise bad_argument(
                "Alignment.apply",
                "state",
                expected=f"a state of the aligned network's widths (group {g!r}: {self.other_sizes[g]} units)",
                found=f"{sizes[g]} units",
            )
        out = apply_maps(self.graph, state, self.maps, sizes)
        out.provenance = {
            "format": "aligned",
            "source": f"landscape.alignment.align(method={self.method!r})",
            "derived": f"aligned to {self._reference_record.get('sha256', '?')[:12]}",
        }
        return out

    def to_dataset(self) -> xr.Dataset:
        """Per-group maps and the objective history.

        Returns
        -------
        xarray.Dataset
            ``size``, ``kind``, ``moved`` over ``group`` (``moved``: units that changed place,
            NaN for soft maps); ``objective`` over ``round`` (round 0 is the start);
            ``step_objective``, ``step_group``, ``step_changed`` over ``step``; per group
            ``perm[<group>]`` over ``unit[<group>]``, or ``plan[<group>]`` over
            (``unit[<group>]``, ``other_unit[<group>]``) for soft maps. ``attrs`` hold the
            method, its options, the distances before and after, and provenance.
        """
        names = list(self.graph.groups)
        moved = []
        variables: dict[str, tuple] = {}
        for g in names:
            m = self.maps.get(g)
            if isinstance(m, Permutation):
                moved.append(int((m.index != torch.arange(m.source_size)).sum()))
                variables[f"perm[{g}]"] = ((f"unit[{g}]",), m.index.numpy().copy())
            elif isinstance(m, SoftMap):
                moved.append(np.nan)
                variables[f"plan[{g}]"] = ((f"unit[{g}]", f"other_unit[{g}]"), m.plan.numpy().copy())
            else:
                moved.append(0)
        steps = self.history.steps
        data = {
            "size": ("group", np.array([self.graph.groups[g].size for g in names], dtype=np.int64)),
            "kind": ("group", np.array([self.graph.groups[g].kind for g in names], dtype=object)),
            "moved": ("group", np.array(moved, dtype=np.float64)),
            "objective": ("round", np.array(self.history.objective, dtype=np.float64)),
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
            reference=self._reference_record,
            other=self._other_record,
            rounds=self.history.rounds,
            converged=self.history.converged,
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


def _distance(a: Mapping[str, Tensor], b: Mapping[str, Tensor], graph: SymmetryGraph) -> float:
    total = 0.0
    for k, t in a.items():
        if k not in b or not t.is_floating_point() or tuple(b[k].shape) != tuple(t.shape):
            if k in b and t.is_floating_point():
                return float("nan")
            continue
        total += float(((t.double() - b[k].double()) ** 2).sum())
    return math.sqrt(total)


def build_graph(
    model: nn.Module, graph: SymmetryGraph | None, example_input: object, data: object, *, function: str
) -> SymmetryGraph:
    if graph is not None:
        if not isinstance(graph, SymmetryGraph):
            raise bad_argument(function, "graph", expected="a SymmetryGraph or None", found=graph)
        return graph
    if example_input is None:
        example_input = example_from(data)
    if example_input is None:
        example_input = example_input_for(model, function=function)
    return symmetry_graph(model, example_input)


def align(
    model: nn.Module,
    reference: Mapping[str, Tensor] | nn.Module | str,
    other: Mapping[str, Tensor] | nn.Module | str,
    *,
    method: str = "weights",
    data: object = None,
    on: str | None = None,
    reg: float = 0.01,
    marginals: str = "uniform",
    graph: SymmetryGraph | None = None,
    example_input: Tensor | tuple[Tensor, ...] | None = None,
    other_model: nn.Module | None = None,
    max_iter: int = 100,
    seed: int = 0,
    n_examples: int | None = None,
    batch_size: int = 1024,
    progress: bool = True,
) -> Alignment:
    """Find the transform of ``other``'s hidden units that best matches ``reference``.

    Parameters
    ----------
    model
        The architecture of both networks; its symmetry groups are found by
        :func:`~landscape.symmetry.symmetry_graph` (pass ``graph=`` to reuse one).
    reference, other
        States, modules or checkpoint paths.
    method
        ``"weights"``: weight matching, coordinate descent over the groups in random order
        with one linear assignment per group, until a round changes nothing (Ainsworth et
        al. 2023). ``"activations"``: linear assignment on the correlation of the units'
        activations on ``data`` at every place a layer reads them (Ainsworth et al. 2023;
        Jordan et al. 2023). ``"ot"``: exact optimal transport between units (``ot.emd``);
        ``"sinkhorn"``: entropic transport (``ot.sinkhorn``, regularisation ``reg``); soft
        plans are applied by barycentric projection (Singh & Jaggi 2020). The transport cost is
        the squared distance between units, so exact OT with uniform marginals between equal
        widths picks the same permutation as weight matching.
    data
        Needed for ``"activations"`` (and ``on="activations"``): Splits (the ``train`` split is
        used), an ``(x, y)`` pair or a tensor of inputs.
    on
        For ``"ot"``/``"sinkhorn"``: ``"weights"`` (default) or ``"activations"``.
    reg
        Entropic regularisation of ``"sinkhorn"``, relative to the mean transport cost.
    marginals
        ``"uniform"``, or ``"importance"`` (proportional to each unit's weight norm, or its
        activations' root-mean-square).
    graph, example_input
        A symmetry graph to reuse, or an example input to trace with (default: from ``data``,
        or the zoo model's input shape).
    other_model
        The architecture of ``other`` when its widths differ (transport only; needed with
        activations).
    max_iter
        Rounds of coordinate descent at most.
    seed
        Seed of the order in which groups are visited.
    n_examples, batch_size
        Examples of ``data`` to use (default all) and examples per forward pass.
    progress
        Show a progress bar.

    Returns
    -------
    Alignment
        ``.apply(other)`` is the aligned state; ``.to_dataset()`` the maps and history.

    Examples
    --------
    >>> import landscape as ls
    >>> model = ls.models.create("mlp", width=16, depth=2, seed=0)
    >>> a, b = ls.state_of(model), ls.state_of(ls.models.create("mlp", width=16, depth=2, seed=1))
    >>> result = align(model, a, b, method="weights", progress=False)
    >>> result.distance_after < result.distance_before
    True
    """
    if not isinstance(model, nn.Module):
        raise bad_argument("align", "model", expected="an nn.Module (the architecture)", found=model)
    if method not in METHODS:
        raise bad_argument("align", "method", expected=f"one of {METHODS}", found=repr(method))
    if on is None:
        on = "activations" if method == "activations" else "weights"
    if (
        on not in ("weights", "activations")
        or (method == "weights" and on != "weights")
        or (method == "activations" and on != "activations")
    ):
        raise bad_argument(
            "align",
            "on",
            expected="'weights' or 'activations' (only for method='ot'/'sinkhorn')",
            found=repr(on),
        )
    check_solver_options("align", method, reg, marginals)
    if not isinstance(max_iter, int) or max_iter < 1:
        raise bad_argument("align", "max_iter", expected="a positive integer", found=repr(max_iter))
    if on == "activations" and data is None:
        raise bad_argument(
            "align",
            "data",
            expected=f"data to compute activations on (method={method!r}"
            + (", on='activations')" if method != "activations" else ")"),
            found=None,
            fix="Pass data=landscape.datasets.mnist1d() (or your (x, y) pair), or use method='weights'.",
        )
    ref = load(reference, function="align", argument="reference")
    oth = load(other, function="align", argument="other")
    check_finite_state(ref, function="align", argument="reference")  # scipy's assignment fails on NaN
    check_finite_state(oth, function="align", argument="other")
    check_compatible(model.state_dict(), ref, function="align", names=("model", "reference"))
    graph = build_graph(model, graph, example_input, data, function="align")
    graph.sizes_of(ref, function="align", argument="reference")  # the graph fits the reference
    try:
        check_compatible(ref, oth, function="align", names=("reference", "other"))
    except StateMismatchError as err:
        if set(ref) != set(oth) or method not in ("ot", "sinkhorn"):
            raise StateMismatchError(
                str(err)
                + (
                    " Weight and activation matching need equal widths; method='ot' or 'sinkhorn' aligns different widths."
                    if set(ref) == set(oth)
                    else ""
                )
            ) from None
    other_graph = None
    if other_model is not None:
        other_graph = symmetry_graph(other_model, graph.example_inputs)
    return run_alignment(
        graph,
        ref,
        oth,
        method=method,
        on=on,
        reg=reg,
        marginals=marginals,
        data=data,
        parameters={name for name, _ in model.named_parameters()},
        other_graph=other_graph,
        max_iter=max_iter,
        seed=seed,
        n_examples=n_examples,
        batch_size=batch_size,
        progress=progress,
    )


def run_alignment(
    graph: SymmetryGraph,
    ref: State,
    oth: State,
    *,
    method: str,
    on: str,
    reg: float,
    marginals: str,
    data: object,
    parameters: set[str],
    ref_graph: SymmetryGraph | None = None,
    other_graph: SymmetryGraph | None = None,
    max_iter: int = 100,
    seed: int = 0,
    n_examples: int | None = None,
    batch_size: int = 1024,
    progress: bool = False,
) -> Alignment:
    """The work of :func:`align` on validated states (the reference may be narrower than
    ``graph``'s model, as in fusion into fewer units)."""
    ref_sizes = graph.sizes_of(ref, function="align", argument="reference")
    other_sizes = graph.sizes_of(oth, function="align", argument="other")
    options = {
        "on": on,
        "reg": reg if method == "sinkhorn" else None,
        "marginals": marginals,
        "seed": seed,
        "max_iter": max_iter,
    }
    if on == "weights":
        terms: list[TensorTerm] = [
            TensorTerm(k, ref[k], oth[k], graph.layouts[k], graph.variances[k])
            for k in ref
            if k in parameters
            and ref[k].is_floating_point()
            and any(True for lay in graph.layouts[k] for _ in atoms(lay))
        ]
    else:
        terms = _activation_terms(graph, ref, oth, data, ref_graph, other_graph, n_examples, batch_size)
        options["n_examples"] = n_examples
    groups = [g for g in graph.groups if any(g in t.groups for t in terms)]
    with progress_bar(total=max_iter, desc=f"align ({method})", unit="round", disable=not progress) as bar:

        def tick(r: int, value: float) -> None:
            bar.update(1)
            bar.set_postfix(objective=f"{value:.4g}")

        history = coordinate_descent(
            terms,
            groups,
            ref_sizes,
            other_sizes,
            solver=SOLVERS[method],
            reg=reg,
            marginals=marginals,
            max_iter=max_iter,
            seed=seed,
            progress=tick,
        )
    return Alignment(
        graph,
        history,
        method=method,
        options=options,
        reference=ref,
        other=oth,
        ref_sizes=ref_sizes,
        other_sizes=other_sizes,
        terms=[t.name for t in terms],
    )


def activation_sites(graph: SymmetryGraph) -> list[tuple[str, int]]:
    """The activations that activation matching correlates: every place a layer reads a
    group's units (falling back, for a group no layer reads, to where it first appears)."""
    chosen: list[tuple[str, int]] = []
    for g, grp in graph.groups.items():
        sites = list(graph.sites.get(g, []))
        if not sites:
            for node, axis, _ in grp.activations:
                lays = graph.activations[node]
                if sum(1 for lay in lays if not isinstance(lay, Fixed)) == 1:
                    sites = [(node, axis)]
                    break
        for s in sites:
            if s not in chosen:
                chosen.append(s)
    return chosen


def _activation_terms(
    graph: SymmetryGraph,
    ref: State,
    oth: State,
    data: object,
    ref_graph: SymmetryGraph | None,
    other_graph: SymmetryGraph | None,
    n_examples: int | None,
    batch_size: int,
) -> list[TensorTerm]:
    x = inputs_from(data, function="align", n_examples=n_examples)
    sites = activation_sites(graph)
    if not sites:
        return []
    stats = cross_correlations(
        ref_graph or graph, ref, oth, x, sites, other_graph=other_graph or graph, batch_size=batch_size
    )
    terms: list[TensorTerm] = []
    for (node, axis), (corr, ref_rms, other_rms) in stats.items():
        layout = graph.activations[node][axis]
        terms.append(GramTerm(f"{node}:{axis}", corr, layout, ref_rms, other_rms))
    return terms
