"""Coordinate descent over symmetry groups: the one loop behind weight matching, activation
matching and optimal-transport alignment.

The objective is a sum of terms ``<R, T(O)>``: a reference tensor against the other network's
tensor after the groups' transforms. For weight matching the terms are the parameters; for
activation matching they are correlation matrices between the two networks' units at the
places a layer reads them. Given the other groups' transforms, each term is linear in one
group's transform, so the best permutation of that group is a linear assignment (Ainsworth
et al. 2023) and the best transport plan an optimal-transport problem (Singh & Jaggi 2020);
the loop visits the groups in random order until a round changes nothing.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from landscape.core.errors import bad_argument
from landscape.symmetry import Atom, Fixed, Layout, Permutation, SoftMap, Transform
from landscape.symmetry.layout import apply_axis, occurrences, select

__all__ = [
    "GramTerm",
    "MatchResult",
    "TensorTerm",
    "check_solver_options",
    "coordinate_descent",
    "solve_assignment",
    "solve_transport",
]


def _apply(
    tensor: Tensor,
    layouts: Sequence[Layout],
    variances: Sequence[str],
    maps: Mapping[str, Transform],
    sizes: Mapping[str, int],
    skip: Sequence[tuple[int, tuple[int, ...]]] = (),
) -> Tensor:
    out = tensor
    for k, lay in enumerate(layouts):
        if isinstance(lay, Fixed):
            continue

        def act(t: Tensor, d: int, group: object, path: tuple, k: int = k) -> Tensor:
            if (k, path) in skip:
                return t
            m = maps.get(str(group))
            return t if m is None else m.apply(t, d, variances[k])

        out = apply_axis(out, k, lay, act, sizes)
    return out


class TensorTerm:
    """``<ref, T(other)>`` for one tensor (a parameter), float64."""

    def __init__(
        self, name: str, ref: Tensor, other: Tensor, layouts: Sequence[Layout], variances: Sequence[str]
    ) -> None:
        self.name = name
        self.ref = ref.detach().double().cpu()
        self.other = other.detach().double().cpu()
        self.layouts = tuple(layouts)
        self.variances = tuple(variances)
        self.places = [(k, path, str(a.group)) for k, lay in enumerate(self.layouts) for path, a in occurrences(lay)]
        self.groups = {g for _, _, g in self.places}

    def objective(self, maps: Mapping[str, Transform], other_sizes: Mapping[str, int]) -> float:
        moved = _apply(self.other, self.layouts, self.variances, maps, other_sizes)
        if moved.shape != self.ref.shape:
            return float("nan")
        return float((self.ref * moved).sum())

    def similarity(
        self,
        group: str,
        maps: Mapping[str, Transform],
        ref_sizes: Mapping[str, int],
        other_sizes: Mapping[str, int],
        only: set[str] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor] | None:
        """``S[i, j]`` = inner product of reference unit ``i`` with other unit ``j`` (other groups
        transformed), the squared norms of the units (for the transport cost), and importance
        weights of the units; None when the term cannot be compared yet (a group of different
        width has no transform, or, with ``only``, a group outside ``only``)."""
        total = None
        for k, path, g in self.places:
            if g != group:
                continue
            others = {h for _, _, h in self.places if h != group}
            if any(h not in maps and ref_sizes[h] != other_sizes[h] for h in others):
                continue
            if only is not None and not others <= only:
                continue
            mixed = {h: (maps[h].target_size if h in maps else other_sizes[h]) for h in self.groups}
            mixed[group] = other_sizes[group]
            if (
                sum(1 for axis, _, h in self.places if h == group and axis == k) > 1
                and ref_sizes[group] != other_sizes[group]
            ):
                continue  # the same group twice on one axis, at different widths: not comparable
            moved = _apply(self.other, self.layouts, self.variances, maps, other_sizes, skip=[(k, path)])
            r = select(self.ref, k, self.layouts[k], path, ref_sizes)
            o = select(moved, k, self.layouts[k], path, mixed)
            if r.shape[1] != o.shape[1]:
                continue
            rsq, osq = (r * r).sum(1), (o * o).sum(1)
            part = (r @ o.T, rsq, osq, rsq, osq)
            total = part if total is None else tuple(x + y for x, y in zip(total, part))
        return total

    def siblings(self) -> set[tuple[str, str]]:
        """Pairs of groups that are factors of one product axis (GroupNorm groups and the
        channels within them, attention heads and head coordinates)."""
        return {(g, h) for lay in self.layouts for _, g, h in _sibling_pairs(lay)}

    def pair_block(
        self,
        group: str,
        partner: str,
        maps: Mapping[str, Transform],
        ref_sizes: Mapping[str, int],
        other_sizes: Mapping[str, int],
    ) -> Tensor | None:
        """``B[a, b, a', b']``: the similarity of reference unit ``(a, b)`` with other unit
        ``(a', b')`` of a product axis ``group x partner`` (everything else transformed)."""
        total = None
        for k, lay in enumerate(self.layouts):
            for prefix, pair, _ in _sibling_pairs(lay, with_paths=True):
                (qa, ga), (qb, gb) = pair
                if {ga, gb} != {group, partner}:
                    continue
                if ga != group:
                    (qa, ga), (qb, gb) = (qb, gb), (qa, ga)
                mixed = {h: (maps[h].target_size if h in maps else other_sizes[h]) for h in self.groups}
                mixed[group], mixed[partner] = other_sizes[group], other_sizes[partner]
                skip = [(k, (*prefix, qa)), (k, (*prefix, qb))]
                moved = _apply(self.other, self.layouts, self.variances, maps, other_sizes, skip=skip)
                r = _select_pair(self.ref, k, lay, prefix, qa, qb, ref_sizes)
                o = _select_pair(moved, k, lay, prefix, qa, qb, mixed)
                if r.shape[2] != o.shape[2]:
                    continue
                part = torch.einsum("abr,cdr->abcd", r, o)
                total = part if total is None else total + part
        return total


def _sibling_pairs(node: Layout, path: tuple[int, ...] = (), with_paths: bool = False):
    """``(prefix, g, h)`` (or ``(prefix, ((qa, g), (qb, h)), None)``) for every two atoms that
    are children of one product node."""
    from landscape.symmetry import Prod, Sum

    if isinstance(node, Prod):
        kids = [(q, str(c.group)) for q, c in enumerate(node.children) if isinstance(c, Atom)]
        for i, first in enumerate(kids):
            for second in kids[i + 1 :]:
                if with_paths:
                    yield path, (first, second), None
                else:
                    yield path, first[1], second[1]
                    yield path, second[1], first[1]
    if isinstance(node, (Prod, Sum)):
        for q, c in enumerate(node.children):
            yield from _sibling_pairs(c, (*path, q), with_paths)


def _select_pair(
    tensor: Tensor, dim: int, node: Layout, prefix: tuple[int, ...], qa: int, qb: int, sizes: Mapping[str, int]
) -> Tensor:
    """(units of child qa, units of child qb, everything else) of the product at ``prefix``."""
    from landscape.symmetry import Prod
    from landscape.symmetry.layout import node_size

    t = tensor
    for q in prefix:
        factors = [node_size(c, sizes) for c in node.children]
        if isinstance(node, Prod):
            t = t.reshape(*t.shape[:dim], *factors, *t.shape[dim + 1 :])
            dim += q
        else:
            t = t.narrow(dim, sum(factors[:q]), factors[q])
        node = node.children[q]
    factors = [node_size(c, sizes) for c in node.children]
    t = t.reshape(*t.shape[:dim], *factors, *t.shape[dim + 1 :])
    t = t.movedim((dim + qa, dim + qb), (0, 1))
    return t.reshape(factors[qa], factors[qb], -1)


def solve_block_assignment(block: Tensor) -> Permutation:
    """The permutation of the outer factor maximising ``max over the inner permutation`` of the
    block similarity: each pair of outer units is scored by the best matching of their inner
    units, then the outer units are matched. Exact for planted Kronecker permutations."""
    from scipy.optimize import linear_sum_assignment

    n = block.shape[0]
    scores = torch.zeros(n, n, dtype=torch.float64)
    for a in range(n):
        for c in range(n):
            sub = block[a, :, c, :].numpy()
            rows, cols = linear_sum_assignment(sub, maximize=True)
            scores[a, c] = float(sub[rows, cols].sum())
    return solve_assignment(scores)


class GramTerm(TensorTerm):
    """``sum_ij S[i, j] M[i, j]`` for a cross-correlation matrix ``S`` between the units of an
    activation axis of the two networks (``M`` is the axis's transform, as a matrix)."""

    def __init__(self, name: str, corr: Tensor, layout: Layout, ref_rms: Tensor, other_rms: Tensor) -> None:
        n_other = corr.shape[1]
        super().__init__(
            name,
            corr,
            torch.eye(n_other, dtype=torch.float64),
            (layout, Fixed(n_other)),
            ("out", "out"),
        )
        self.bare = isinstance(layout, Atom)
        self.ref_rms = ref_rms.double()
        self.other_rms = other_rms.double()

    def similarity(self, group, maps, ref_sizes, other_sizes, only=None):
        # Correlations of standardised units: every unit has norm 1, so the transport cost is
        # 2 - 2 corr; importance weights are the units' root-mean-square activations.
        if self.bare:
            s = self.ref
            ref_imp, other_imp = self.ref_rms**2, self.other_rms**2
        else:
            found = super().similarity(group, maps, ref_sizes, other_sizes, only)
            if found is None:
                return None
            s = found[0]
            ref_imp = torch.ones(s.shape[0], dtype=torch.float64)
            other_imp = torch.ones(s.shape[1], dtype=torch.float64)
        ones_r = torch.ones(s.shape[0], dtype=torch.float64)
        ones_o = torch.ones(s.shape[1], dtype=torch.float64)
        return s, ones_r, ones_o, ref_imp, other_imp


# ---------------------------------------------------------------------------------------
# Solvers
# ---------------------------------------------------------------------------------------


def solve_assignment(similarity: Tensor) -> Permutation:
    """The permutation maximising ``sum_i S[i, index[i]]`` (scipy's linear_sum_assignment)."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(similarity.numpy(), maximize=True)
    index = np.empty(similarity.shape[0], dtype=np.int64)
    index[rows] = cols
    return Permutation(index)


def solve_transport(
    cost: Tensor, a: np.ndarray, b: np.ndarray, *, reg: float | None, num_iter: int = 10_000_000
) -> Transform:
    """Exact (``reg=None``, ``ot.emd``) or entropic (``ot.sinkhorn``, stabilised) transport.

    The cost is divided by its mean first, so that ``reg`` is relative to a typical cost.
    A plan that is a scaled permutation matrix comes back as a :class:`Permutation`.
    """
    import ot

    c = cost.numpy().astype(np.float64)
    c = c - c.min()
    scale = c.mean()
    if scale > 0:
        c = c / scale
    if reg is None:
        plan = ot.emd(a, b, c, numItermax=num_iter)
        soft = SoftMap(plan)
        return soft.as_permutation() or soft
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # The stabilised (log-absorbing) iterations give the log domain's plan ~20x faster. The
        # marginal error allowed (1e-5 in norm) is ~0.1% of a unit's mass for 512 units.
        plan = ot.sinkhorn(a, b, c, reg, method="sinkhorn_stabilized", numItermax=2_000, stopThr=1e-5)
        if not np.all(np.isfinite(plan)):  # very small reg: fall back to the log domain
            plan = ot.sinkhorn(a, b, c, reg, method="sinkhorn_log", numItermax=2_000, stopThr=1e-5)
    if not np.all(np.isfinite(plan)):
        raise bad_argument(
            "align",
            "reg",
            expected="a regularisation Sinkhorn can reach",
            found=f"{reg} (the plan overflowed)",
            fix="Use a larger reg, or method='ot' for the exact plan.",
        )
    soft = SoftMap(plan)
    soft.converged = not any("converge" in str(w.message) for w in caught)
    return soft


# ---------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------


@dataclass
class MatchResult:
    maps: dict[str, Transform]
    objective: list[float] = field(default_factory=list)  # after each round (index 0: start)
    steps: list[tuple[int, str, float, bool]] = field(default_factory=list)  # round, group, objective, changed
    rounds: int = 0
    converged: bool = False


def _same(a: Transform | None, b: Transform) -> bool:
    if a is None:
        return False
    if isinstance(a, Permutation) and isinstance(b, Permutation):
        return a == b
    if isinstance(a, SoftMap) and isinstance(b, SoftMap) and a.plan.shape == b.plan.shape:
        return float((a.plan - b.plan).abs().max()) <= 1e-6 * float(a.plan.abs().max())
    return False


def coordinate_descent(
    terms: Sequence[TensorTerm],
    groups: Sequence[str],
    ref_sizes: Mapping[str, int],
    other_sizes: Mapping[str, int],
    *,
    solver: str,
    reg: float | None = None,
    marginals: str = "uniform",
    max_iter: int = 100,
    seed: int = 0,
    tol: float = 1e-9,
    soft_tol: float = 1e-4,
    progress: Callable[[int, float], None] | None = None,
) -> MatchResult:
    """Maximise ``sum(term objectives)`` over one transform per group.

    Round 0 initialises: the groups are visited from input to output and each is matched on
    the terms whose other groups are already matched (the layer-wise scheme of Singh & Jaggi
    2020; it recovers planted permutations of feed-forward and residual networks exactly).
    Between equal widths the initialisation is kept only if it beats the identity. Then
    rounds of coordinate descent visit the groups in random order, each matched on every
    term given the others (Ainsworth et al. 2023), until a round changes nothing.

    ``solver="lap"``: permutations by linear assignment; after round 0 a step is kept only
    when it raises the objective, so the objective never decreases. ``solver="emd"`` /
    ``"sinkhorn"``: transport plans (soft maps where the plan is not a permutation) with
    ``marginals`` ``"uniform"`` or ``"importance"`` (proportional to the units' norms).
    Soft maps are not monotone; their rounds stop when the objective changes by less than
    ``soft_tol`` (relative) from one round to the next.
    """
    by_group: dict[str, list[TensorTerm]] = {g: [t for t in terms if g in t.groups] for g in groups}
    active = [g for g in groups if by_group[g]]
    equal = all(ref_sizes[g] == other_sizes[g] for g in active)
    identity: dict[str, Transform] = {g: Permutation(torch.arange(ref_sizes[g])) for g in active} if equal else {}

    def objective(maps: Mapping[str, Transform], selected: Sequence[TensorTerm] = terms) -> float:
        if not equal and len(maps) < len(active):
            return float("nan")
        return float(sum(t.objective(maps, other_sizes) for t in selected))

    def solve(g: str, maps: Mapping[str, Transform], only: set[str] | None = None) -> Transform | None:
        parts = [t.similarity(g, maps, ref_sizes, other_sizes, only) for t in by_group[g]]
        parts = [p for p in parts if p is not None]
        if not parts:
            return None
        s = sum(p[0] for p in parts)
        if solver == "lap":
            return solve_assignment(s)
        ref_sq, other_sq = sum(p[1] for p in parts), sum(p[2] for p in parts)
        cost = (ref_sq[:, None] + other_sq[None, :] - 2 * s).clamp_min(0)
        if marginals == "importance":
            a = sum(p[3] for p in parts).sqrt().numpy() + 1e-12
            b = sum(p[4] for p in parts).sqrt().numpy() + 1e-12
            a, b = a / a.sum(), b / b.sum()
        else:
            a = np.full(s.shape[0], 1.0 / s.shape[0])
            b = np.full(s.shape[1], 1.0 / s.shape[1])
        return solve_transport(cost, a, b, reg=reg if solver == "sinkhorn" else None)

    partners: dict[str, set[str]] = {g: set() for g in active}
    for t in terms:
        for g, h in t.siblings():
            if g in partners and h in partners:
                partners[g].add(h)

    # -- round 0: input to output, on what is already matched -------------------------
    result = MatchResult(maps=dict(identity), objective=[objective(identity)])
    init: dict[str, Transform] = dict(identity)
    done: set[str] = set()
    for g in active:
        if g in done:
            continue
        if solver in ("lap", "emd") and equal and len(partners[g]) == 1 and next(iter(partners[g])) not in done:
            # A factor of a product axis (GroupNorm groups, attention heads): score each pair
            # of its units by the best matching of the partner's units, then match the partner.
            (h,) = partners[g]
            blocks = [t.pair_block(g, h, init, ref_sizes, other_sizes) for t in by_group[g] if h in t.groups]
            blocks = [b for b in blocks if b is not None]
            if blocks:
                init[g] = solve_block_assignment(sum(blocks))
                found = solve(h, init)
                if found is not None:
                    init[h] = found
                done.update((g, h))
                result.steps.append((0, g, float("nan"), True))
                result.steps.append((0, h, float("nan"), True))
                continue
        found = solve(g, init, only=done)
        if found is None:
            found = solve(g, init)
        if found is not None:
            init[g] = found
        done.add(g)
        result.steps.append((0, g, float("nan"), True))
    maps = init
    if equal and not objective(init) >= objective(identity):
        maps = dict(identity)
    current = objective(maps)
    result.steps = [(r, g, current, True) for r, g, _, _ in result.steps]
    result.maps = maps
    result.objective.append(current)
    result.rounds = 1
    if progress is not None:
        progress(0, current)

    # -- coordinate descent in random order ---------------------------------------------
    rng = np.random.default_rng(seed)
    for r in range(1, max_iter):
        changed = 0
        for g in [active[i] for i in rng.permutation(len(active))]:
            new = solve(g, maps)
            old = maps.get(g)
            if new is None or _same(old, new):
                result.steps.append((r, g, current, False))
                continue
            if isinstance(new, Permutation) and isinstance(old, Permutation):
                before = objective(maps, by_group[g])
                maps[g] = new
                if not objective(maps, by_group[g]) > before + tol * max(1.0, abs(before)):
                    maps[g] = old  # no improvement: keep the old permutation
                    result.steps.append((r, g, current, False))
                    continue
            else:
                maps[g] = new
            changed += 1
            current = objective(maps)
            result.steps.append((r, g, current, True))
        previous = result.objective[-1]
        result.objective.append(current)
        result.rounds = r + 1
        if progress is not None:
            progress(r, current)
        soft = any(not isinstance(m, Permutation) for m in maps.values())
        if changed == 0 or (soft and abs(current - previous) <= soft_tol * max(1.0, abs(previous))):
            result.converged = True
            break
    if max_iter == 1:
        result.converged = False
    return result


def check_solver_options(function: str, method: str, reg: float, marginals: str) -> None:
    if method == "sinkhorn" and not (isinstance(reg, (int, float)) and reg > 0):
        raise bad_argument(
            function, "reg", expected="a positive entropic regularisation for 'sinkhorn'", found=repr(reg)
        )
    if marginals not in ("uniform", "importance"):
        raise bad_argument(function, "marginals", expected="'uniform' or 'importance'", found=repr(marginals))
