"""Align network ``b`` to network ``a``: weight matching, activation matching, Procrustes
and least-squares maps, and optimal transport."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import torch
from torch import Tensor, nn

from landscape.alignment._activations import (
    cross_correlations,
    example_from,
    inputs_from,
    joint_moments,
    site_units,
)
from landscape.alignment._descent import GroupSpec, check_solver_options, coordinate_descent
from landscape.alignment._result import Alignment, load
from landscape.alignment._terms import ActivationTerm, GramTerm, TensorTerm
from landscape.core.device import resolve_device
from landscape.core.errors import StateMismatchError, bad_argument
from landscape.core.progress import progress_bar
from landscape.core.state import State, check_compatible
from landscape.core.validate import check_finite_state
from landscape.symmetry import KINDS, Fixed, SymmetryGraph, example_input_for, symmetry_graph
from landscape.symmetry.layout import atoms

__all__ = ["KIND_CHOICES", "METHODS", "activation_sites", "align", "build_graph", "group_specs", "run_alignment"]

METHODS = ("weights", "activations", "learned", "ot", "sinkhorn")
SOLVERS = {"weights": "lap", "activations": "lap", "learned": "lap", "ot": "emd", "sinkhorn": "sinkhorn"}
KIND_CHOICES = ("permutation", "orthogonal", "invertible", "max")


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


def group_specs(graph: SymmetryGraph, kinds: str, *, function: str = "align") -> dict[str, GroupSpec]:
    """What to solve each group for: the widest kind it allows, up to ``kinds``
    (``"max"``: all it allows). Groups with rotary embeddings have no permutation but the
    identity, so they are left alone when only permutations are asked for."""
    if kinds not in KIND_CHOICES:
        raise bad_argument(function, "kinds", expected=f"one of {KIND_CHOICES}", found=repr(kinds))
    cap = len(KINDS) - 1 if kinds == "max" else KINDS.index(kinds)
    specs = {}
    for name, g in graph.groups.items():
        kind = KINDS[min(KINDS.index(g.kind), cap)]
        if g.rotary and kind == "permutation":
            continue
        specs[name] = GroupSpec(kind, g.per, g.heads, g.centered, g.rotary)
    return specs


def align(
    model: nn.Module,
    a: Mapping[str, Tensor] | nn.Module | str,
    b: Mapping[str, Tensor] | nn.Module | str,
    *,
    method: str = "weights",
    kinds: str | None = None,
    data: object = None,
    on: str | None = None,
    reg: float = 0.01,
    marginals: str = "uniform",
    graph: SymmetryGraph | None = None,
    example_input: Tensor | tuple[Tensor, ...] | None = None,
    b_model: nn.Module | None = None,
    max_iter: int = 100,
    seed: int = 0,
    n_examples: int | None = None,
    batch_size: int = 1024,
    epochs: int = 3,
    lr: float = 1e-3,
    alphas: tuple[float, float] = (0.4, 0.6),
    device: str | torch.device = "auto",
    progress: bool = True,
) -> Alignment:
    """Find the transform of ``b``'s hidden units that best matches ``a``.

    Every symmetry group is solved with the solver of its kind (Theus et al. 2025):
    permutations by linear assignment, orthogonal maps (a transformer's residual stream, once
    its norm gains are folded into the layers that read it) by Procrustes, invertible maps
    (each attention head's query/key and value/output coordinates) by least squares, the
    heads themselves by an assignment of pairs of heads scored by how well their coordinates
    match.

    Parameters
    ----------
    model
        The architecture of both networks; its symmetry groups are found by
        :func:`~landscape.symmetry.symmetry_graph` (pass ``graph=`` to reuse one).
    a, b
        States, modules or checkpoint paths; ``b`` is mapped onto ``a``.
    method
        ``"weights"``: weight matching, coordinate descent over the groups in random order,
        each solved on the parameters given the others (Ainsworth et al. 2023).
        ``"activations"``: the same on the units' activations on ``data`` at every place a
        layer reads them (correlations for permutations, as Ainsworth et al. 2023 and Jordan
        et al. 2023; second moments for orthogonal and invertible maps). ``"ot"``: exact
        optimal transport between units (``ot.emd``); ``"sinkhorn"``: entropic transport
        (``ot.sinkhorn``, regularisation ``reg``); soft plans are applied by barycentric
        projection (Singh & Jaggi 2020). The transport cost is the squared distance between
        units, so exact OT with uniform marginals between equal widths picks the same
        permutation as weight matching. ``"learned"``: weight matching, then the maps are
        refined by gradient descent on the training loss of ``(1 - t) a + t T(b)`` for ``t``
        drawn from ``alphas`` (straight-through permutations, Ainsworth et al. 2023; the
        learned alignment of Theus et al. 2025), for ``epochs`` passes over ``data`` with Adam
        at ``lr`` in batches of ``batch_size``.
    kinds
        The widest maps to solve for: ``"permutation"``, ``"orthogonal"`` (orthogonal where the
        graph allows it, permutations elsewhere), ``"invertible"``/``"max"`` (everything each
        group allows). Default ``"max"``, and ``"permutation"`` for transport.
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
    b_model
        The architecture of ``b`` when its widths differ (transport only; needed with
        activations).
    max_iter
        Rounds of coordinate descent at most.
    seed
        Seed of the order in which groups are visited.
    n_examples, batch_size
        Examples of ``data`` to use (default all) and examples per forward pass (per step
        for ``"learned"``).
    epochs, lr, alphas
        For ``"learned"``: passes over the training data, Adam's learning rate, and the range
        the interpolation coefficient is drawn from.
    device
        Where activations are computed and the matching's products run (``"auto"``: CUDA
        when present); the maps come back on the CPU.
    progress
        Show a progress bar.

    Returns
    -------
    Alignment
        ``.apply(b)`` is the aligned state; ``.to_dataset()`` the maps and history.

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
        or (method in ("weights", "learned") and on != "weights")
        or (method == "activations" and on != "activations")
    ):
        raise bad_argument(
            "align",
            "on",
            expected="'weights' or 'activations' (only for method='ot'/'sinkhorn')",
            found=repr(on),
        )
    if kinds is None:
        kinds = "permutation" if method in ("ot", "sinkhorn") else "max"
    if kinds not in KIND_CHOICES:
        raise bad_argument("align", "kinds", expected=f"one of {KIND_CHOICES}", found=repr(kinds))
    if method in ("ot", "sinkhorn") and kinds != "permutation":
        raise bad_argument(
            "align",
            "kinds",
            expected="'permutation' for transport (plans between units)",
            found=repr(kinds),
            fix="Use method='weights' or 'activations' for orthogonal and invertible maps.",
        )
    check_solver_options("align", method, reg, marginals)
    if not isinstance(max_iter, int) or max_iter < 1:
        raise bad_argument("align", "max_iter", expected="a positive integer", found=repr(max_iter))
    if method == "learned":
        if data is None:
            raise bad_argument(
                "align",
                "data",
                expected="labelled training data for method='learned'",
                found=None,
                fix="Pass data=landscape.datasets.digits() (or your (x, y) pair).",
            )
        if not isinstance(epochs, int) or epochs < 0:
            raise bad_argument("align", "epochs", expected="a non-negative integer", found=repr(epochs))
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise bad_argument("align", "lr", expected="a positive learning rate", found=repr(lr))
        if not (len(alphas) == 2 and 0 <= alphas[0] <= alphas[1] <= 1):
            raise bad_argument("align", "alphas", expected="(low, high) with 0 <= low <= high <= 1", found=repr(alphas))
    if on == "activations" and data is None:
        raise bad_argument(
            "align",
            "data",
            expected=f"data to compute activations on (method={method!r}"
            + (", on='activations')" if method != "activations" else ")"),
            found=None,
            fix="Pass data=landscape.datasets.mnist1d() (or your (x, y) pair), or use method='weights'.",
        )
    dev = resolve_device(device, function="align")
    sa = load(a, function="align", argument="a")
    sb = load(b, function="align", argument="b")
    check_finite_state(sa, function="align", argument="a")  # scipy's assignment fails on NaN
    check_finite_state(sb, function="align", argument="b")
    check_compatible(model.state_dict(), sa, function="align", names=("model", "a"))
    graph = build_graph(model, graph, example_input, data, function="align")
    graph.sizes_of(sa, function="align", argument="a")  # the graph fits a
    try:
        check_compatible(sa, sb, function="align", names=("a", "b"))
    except StateMismatchError as err:
        if set(sa) != set(sb) or method not in ("ot", "sinkhorn"):
            raise StateMismatchError(
                str(err)
                + (
                    " Weight and activation matching need equal widths; method='ot' or 'sinkhorn' aligns different widths."
                    if set(sa) == set(sb)
                    else ""
                )
            ) from None
    b_graph = None
    if b_model is not None:
        b_graph = symmetry_graph(b_model, graph.example_inputs)
    return run_alignment(
        graph,
        sa,
        sb,
        method=method,
        kinds=kinds,
        on=on,
        reg=reg,
        marginals=marginals,
        data=data,
        parameters={name for name, _ in model.named_parameters()},
        b_graph=b_graph,
        max_iter=max_iter,
        seed=seed,
        n_examples=n_examples,
        batch_size=batch_size,
        device=dev,
        progress=progress,
        model=model,
        learning={"epochs": epochs, "lr": lr, "alphas": tuple(alphas)},
    )


def run_alignment(
    graph: SymmetryGraph,
    a: State,
    b: State,
    *,
    method: str,
    on: str,
    reg: float,
    marginals: str,
    data: object,
    parameters: set[str],
    kinds: str = "permutation",
    a_graph: SymmetryGraph | None = None,
    b_graph: SymmetryGraph | None = None,
    max_iter: int = 100,
    seed: int = 0,
    n_examples: int | None = None,
    batch_size: int = 1024,
    device: torch.device | str = "cpu",
    progress: bool = False,
    model: nn.Module | None = None,
    learning: Mapping[str, object] | None = None,
) -> Alignment:
    """The work of :func:`align` on validated states (``a`` may be narrower than ``graph``'s
    model, as in fusion into fewer units)."""
    device = torch.device(device)
    a_sizes = graph.sizes_of(a, function="align", argument="a")
    b_sizes = graph.sizes_of(b, function="align", argument="b")
    specs = group_specs(graph, kinds)
    # Orthogonal maps of a stream need gain-free norms: fold both networks first.
    folded = bool(graph.folds) and any(specs[g].kind != "permutation" for g in graph.folded_groups if g in specs)
    fa, fb = (graph.fold(a), graph.fold(b)) if folded else (a, b)
    options = {
        "on": on,
        "kinds": kinds,
        "reg": reg if method == "sinkhorn" else None,
        "marginals": marginals,
        "seed": seed,
        "max_iter": max_iter,
        "device": str(device),
    }
    constants = graph.fold_constants if folded else set()  # ones in both folded networks
    if on == "weights":
        terms: list[TensorTerm] = [
            TensorTerm(k, fa[k].to(device), fb[k].to(device), graph.layouts[k], graph.variances[k])
            for k in fa
            if k in parameters
            and k not in constants
            and fa[k].is_floating_point()
            and any(True for lay in graph.layouts[k] for _ in atoms(lay))
        ]
    else:
        terms = _activation_terms(graph, fa, fb, data, a_graph, b_graph, specs, n_examples, batch_size, device)
        options["n_examples"] = n_examples
    groups = [g for g in graph.groups if g in specs and any(g in t.groups for t in terms)]
    with progress_bar(total=max_iter, desc=f"align ({method})", unit="round", disable=not progress) as bar:

        def tick(r: int, value: float) -> None:
            bar.update(1)
            bar.set_postfix(objective=f"{value:.4g}")

        start = specs
        if method == "learned":  # learning starts from norm-preserving maps (well conditioned)
            start = {g: replace(sp, kind="orthogonal") if sp.kind == "invertible" else sp for g, sp in specs.items()}
        history = coordinate_descent(
            terms,
            groups,
            a_sizes,
            b_sizes,
            solver=SOLVERS[method],
            specs=start,
            reg=reg,
            marginals=marginals,
            max_iter=max_iter,
            seed=seed,
            progress=tick,
        )
    if method == "learned":
        from landscape.alignment._learned import learn_maps
        from landscape.core.data import as_splits

        splits, _ = as_splits(data, function="align")
        x, y = splits["train"] if "train" in splits else next(iter(splits.values()))
        if n_examples is not None:
            x, y = x[:n_examples], y[:n_examples]
        learning = dict(learning or {})
        maps, losses = learn_maps(
            model,
            graph,
            fa,
            fb,
            history.maps,
            specs,
            x,
            y,
            epochs=int(learning.get("epochs", 3)),
            lr=float(learning.get("lr", 1e-3)),
            batch_size=min(batch_size, 128),
            alphas=tuple(learning.get("alphas", (0.4, 0.6))),
            seed=seed,
            device=device,
            progress=progress,
        )
        history.maps = {**history.maps, **maps}
        options.update({k: v for k, v in learning.items()})
        options["final_loss"] = losses[-1] if losses else None
    return Alignment(
        graph,
        history,
        method=method,
        options=options,
        a=a,
        b=b,
        a_sizes=a_sizes,
        b_sizes=b_sizes,
        terms=[t.name for t in terms],
        folded=folded,
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
    a: State,
    b: State,
    data: object,
    a_graph: SymmetryGraph | None,
    b_graph: SymmetryGraph | None,
    specs: Mapping[str, GroupSpec],
    n_examples: int | None,
    batch_size: int,
    device: torch.device,
) -> list[TensorTerm]:
    x = inputs_from(data, function="align", n_examples=n_examples)
    sites = activation_sites(graph)
    if not sites:
        return []
    heads = {g: s.per for g, s in specs.items() if s.per is not None}
    correlated, moments = [], {}
    for node, axis in sites:
        layout, heads_axis = site_units(graph, node, axis, heads)
        if (
            all(specs.get(str(at.group), GroupSpec()).kind == "permutation" for at in atoms(layout))
            and heads_axis is None
        ):
            correlated.append((node, axis))
        else:
            moments[(node, axis)] = (layout, heads_axis)
    terms: list[TensorTerm] = []
    if correlated:
        stats = cross_correlations(
            a_graph or graph, a, b, x, correlated, b_graph=b_graph or graph, batch_size=batch_size, device=device
        )
        for (node, axis), (corr, a_rms, b_rms) in stats.items():
            terms.append(GramTerm(f"{node}:{axis}", corr, graph.activations[node][axis], a_rms, b_rms))
    if moments:
        found = joint_moments(
            graph, a, b, x, {s: h for s, (_, h) in moments.items()}, batch_size=batch_size, device=device
        )
        for (node, axis), m in found.items():
            layout = moments[(node, axis)][0]
            terms.append(ActivationTerm(f"{node}:{axis}", m, layout, m.shape[0] // 2))
    return terms
