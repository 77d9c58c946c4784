"""Coordinate descent over symmetry groups: the one loop behind weight matching, activation
matching and optimal-transport alignment.

Given the other groups' maps, the objective is linear in one group's permutation (or
orthogonal map), so the best one is a linear assignment (Ainsworth et al. 2023) or a
Procrustes problem; for an invertible map it is a least-squares problem, and the best
transport plan an optimal-transport problem (Singh & Jaggi 2020). The loop visits the groups
in random order until a round changes nothing. The heads of an attention layer are matched
together with the maps of every head's coordinates: each pair of heads is scored by how well
their coordinates can be matched, then the heads are assigned and each head's maps solved.

A term's statistics for a group are cached until another group in the term changes, and the
objective is updated from them, so a round costs only the products that changed.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from landscape.alignment._solvers import (
    best_value,
    map_value,
    solve_assignment,
    solve_block_assignment,
    solve_map,
    solve_transport,
)
from landscape.alignment._terms import Stats, TensorTerm
from landscape.core.errors import bad_argument
from landscape.symmetry import LinearMap, PerHead, Permutation, SoftMap, Transform

__all__ = ["GroupSpec", "MatchResult", "check_solver_options", "coordinate_descent"]


@dataclass(frozen=True)
class GroupSpec:
    """How to solve one group: the kind of map, and its structure (see ``Group``)."""

    kind: str = "permutation"
    per: str | None = None
    heads: int = 1
    centered: bool = False
    rotary: bool = False


@dataclass
class MatchResult:
    maps: dict[str, Transform]
    objective: list[float] = field(default_factory=list)  # after each round (index 0: start)
    distance: list[float] = field(default_factory=list)
    steps: list[tuple[int, str, float, bool]] = field(default_factory=list)  # round, group, objective, changed
    rounds: int = 0
    converged: bool = False


def _same(a: Transform | None, b: Transform) -> bool:
    if a is None:
        return False
    if isinstance(a, PerHead) and isinstance(b, PerHead):
        return len(a.maps) == len(b.maps) and all(_same(x, y) for x, y in zip(a.maps, b.maps))
    if isinstance(a, Permutation) and isinstance(b, Permutation):
        return a == b
    if isinstance(a, SoftMap) and isinstance(b, SoftMap) and a.plan.shape == b.plan.shape:
        return float((a.plan - b.plan).abs().max()) <= 1e-6 * float(a.plan.abs().max())
    if isinstance(a, LinearMap) and isinstance(b, LinearMap) and a.m.shape == b.m.shape:
        return float((a.m - b.m).abs().max()) <= 1e-9 * max(1.0, float(a.m.abs().max()))
    return False


def _norm_preserving(t: Transform) -> bool:
    if isinstance(t, PerHead):
        return all(_norm_preserving(m) for m in t.maps)
    return isinstance(t, Permutation) or (isinstance(t, LinearMap) and t.kind == "orthogonal")


def _value(t: Transform, s: torch.Tensor) -> float:
    if isinstance(t, PerHead):
        return sum(map_value(m, s[h]) for h, m in enumerate(t.maps))
    return map_value(t, s)


def coordinate_descent(
    terms: Sequence[TensorTerm],
    groups: Sequence[str],
    ref_sizes: Mapping[str, int],
    other_sizes: Mapping[str, int],
    *,
    solver: str,
    specs: Mapping[str, GroupSpec] | None = None,
    reg: float | None = None,
    marginals: str = "uniform",
    max_iter: int = 100,
    seed: int = 0,
    tol: float = 1e-9,
    soft_tol: float = 1e-4,
    progress: Callable[[int, float], None] | None = None,
) -> MatchResult:
    """Best maps of ``b``'s groups onto ``a``'s, one group at a time.

    Round 0 initialises: the groups are visited from input to output and each is matched on
    the terms whose other groups are already matched (the layer-wise scheme of Singh & Jaggi
    2020; it recovers planted permutations of feed-forward and residual networks exactly).
    Between equal widths the initialisation is kept only if it beats the identity. Then
    rounds of coordinate descent visit the groups in random order, each solved on every
    term given the others (Ainsworth et al. 2023), until a round changes nothing.

    ``solver="lap"``: each group by the solver of its kind (``specs``: linear assignment,
    Procrustes, least squares; per head where the group is the coordinates of attention heads);
    a step is kept only when it improves the objective (the inner product ``<a, T(b)>`` while
    every map keeps norms, the distance ``||a - T(b)||`` once some map is invertible), so the
    objective never gets worse. ``solver="emd"``/``"sinkhorn"``: transport plans (soft maps
    where the plan is not a permutation) with ``marginals`` ``"uniform"`` or ``"importance"``;
    their rounds stop when the objective changes by less than ``soft_tol`` (relative).
    """
    specs = dict(specs or {})
    by_group: dict[str, list[int]] = {g: [i for i, t in enumerate(terms) if g in t.groups] for g in groups}
    active = [g for g in groups if by_group[g]]
    for g in active:
        specs.setdefault(g, GroupSpec())
    transport = solver in ("emd", "sinkhorn")
    if transport:  # plans between units (each head's coordinates with a plan of its own)
        specs = {g: GroupSpec(per=sp.per, heads=sp.heads) for g, sp in specs.items()}
    children: dict[str, list[str]] = {g: [c for c in active if specs[c].per == g] for g in active}
    heads_of = {c: specs[c].per for c in active if specs[c].per in children and specs[c].per in active}
    equal = all(ref_sizes[g] == other_sizes[g] for g in active)
    identity: dict[str, Transform] = {g: Permutation(torch.arange(ref_sizes[g])) for g in active} if equal else {}
    by_distance = any(specs[g].kind == "invertible" for g in active) and not transport
    # Improvements below float32's resolution are noise when some products run in float32.
    if any(t.ref.dtype == torch.float32 for t in terms):
        tol = max(tol, 1e-7)
    # Every change of a map gets a fresh stamp: cached statistics are keyed by the stamps of
    # the other groups' maps (a rejected step restores the old stamp, never reuses a new one).
    stamp = itertools.count(1)
    version = dict.fromkeys(active, 0)
    cache: dict[tuple[int, str, str], tuple[tuple, Stats | None, dict]] = {}

    def stats(i: int, g: str, maps: Mapping[str, Transform], *, per: str | None, grams: bool, without=frozenset()):
        t = terms[i]
        key = tuple((h, version.get(h, 0), h in maps) for h in sorted(t.groups) if h != g)
        tag = (i, g, f"{per}|{grams}|{sorted(without)}")
        hit = cache.get(tag)
        if hit is not None and hit[0] == key:
            return hit[1]
        found = None
        if hit is not None and hit[1] is not None and per is None and not grams and not transport and not without:
            # A few units of a neighbour moved: update the products instead of redoing them.
            found = t.updated(g, hit[1], hit[2], maps, other_sizes)
        if found is None:
            found = t.stats(g, maps, ref_sizes, other_sizes, per=per, grams=grams, norms=transport, without=without)
        cache[tag] = (key, found, {h: maps.get(h) for h in t.groups if h != g})
        return found

    # The statistics a group's current map was solved from: solving again from the same ones
    # gives the same map, so it is skipped (a converged round costs no assignment).
    solved_from: dict[str, tuple | None] = {}

    def inputs_of(g: str, maps: Mapping[str, Transform], indices: Sequence[int]) -> tuple:
        return tuple(
            (i, tuple((h, version.get(h, 0), h in maps) for h in sorted(terms[i].groups) if h != g)) for i in indices
        )

    # -- values of the terms under the current maps ------------------------------------------
    values: list[tuple[float, float]] = []

    def recompute(indices: Sequence[int], maps: Mapping[str, Transform]) -> None:
        for i in indices:
            values[i] = terms[i].value(maps, other_sizes)

    def total(vals: Sequence[tuple[float, float]] | None = None) -> tuple[float, float]:
        vals = values if vals is None else vals
        return float(sum(v[0] for v in vals)), float(sum(v[1] for v in vals))

    def criterion(inner: float, dist: float) -> float:
        return -dist if by_distance else inner

    # -- solving one group ---------------------------------------------------------------------
    def solve(g: str, maps: Mapping[str, Transform], only: set[str] | None = None) -> tuple[Transform, dict] | None:
        spec = specs[g]
        per = spec.per if g in heads_of else None
        grams = spec.kind == "invertible" and not transport
        included = [i for i in by_group[g] if only is None or (terms[i].groups - {g}) <= only]
        signature = inputs_of(g, maps, included)
        if only is None and g in maps and solved_from.get(g) == signature:
            return maps[g], {}  # nothing it depends on changed
        parts = {i: stats(i, g, maps, per=per, grams=grams) for i in included}
        parts = {i: p for i, p in parts.items() if p is not None}
        if not parts:
            return None
        solved_from[g] = signature if only is None else None
        summed = _sum(list(parts.values()))
        if transport:
            if per is not None:
                plans = [_transport(_head(summed, h), solver, reg, marginals) for h in range(summed.s.shape[0])]
                return PerHead(plans, per), parts
            return _transport(summed, solver, reg, marginals), parts
        if per is not None:
            found = [
                solve_map(
                    spec.kind,
                    summed.s[h],
                    summed.goo[h] if summed.goo is not None else None,
                    summed.grr[h] if summed.grr is not None else None,
                    centered=spec.centered,
                    rotary=spec.rotary,
                )
                for h in range(summed.s.shape[0])
            ]
            return PerHead(found, per), parts
        return solve_map(spec.kind, summed.s, summed.goo, summed.grr, centered=spec.centered, rotary=spec.rotary), parts

    def solve_heads(h: str, maps: dict[str, Transform]) -> Permutation:
        """The heads' permutation that lets their coordinates match best."""
        kids = children[h]
        n = ref_sizes[h]
        scores = torch.zeros(n, n, dtype=torch.float64)
        for c in kids:
            spec = specs[c]
            grams = spec.kind == "invertible"
            blocks = [terms[i].head_blocks(h, c, maps, ref_sizes, other_sizes, grams=grams) for i in by_group[c]]
            blocks = [b for b in blocks if b is not None]
            if not blocks:
                continue
            b = _sum(blocks)
            for x in range(n):
                for y in range(n):
                    scores[x, y] += best_value(
                        spec.kind,
                        b.s[x, y],
                        b.goo[x, y] if b.goo is not None else None,
                        b.grr[x, y] if b.grr is not None else None,
                        centered=spec.centered,
                        rotary=spec.rotary,
                    )
        own = [stats(i, h, maps, per=None, grams=False, without=set(kids)) for i in by_group[h]]
        own = [p for p in own if p is not None]
        if own:
            scores += _sum(own).s
        return solve_assignment(scores)

    def move_heads(h: str, maps: dict[str, Transform]) -> None:
        """The heads' permutation, then each of their coordinate groups' maps under it."""
        maps[h] = solve_heads(h, maps)
        version[h] = next(stamp)
        for c in children[h]:
            got = solve(c, maps)
            if got is not None:
                maps[c] = got[0]
                version[c] = next(stamp)

    def step(g: str, maps: dict[str, Transform], r: int) -> bool:
        """One coordinate step (a heads group moves with its heads' coordinates); kept only if
        the objective improves. Returns whether anything changed."""
        moved = [g, *children.get(g, [])] if children.get(g) else [g]
        old = {m: maps.get(m) for m in moved}
        old_version = {m: version[m] for m in moved}
        before = criterion(*total())
        parts_of: dict[str, dict] = {}
        if children.get(g):
            move_heads(g, maps)
        else:
            got = solve(g, maps)
            if got is None or _same(maps.get(g), got[0]):
                return False
            maps[g], parts_of[g] = got
            version[g] = next(stamp)
        if all(_same(old[m], maps[m]) for m in moved if maps.get(m) is not None and old[m] is not None):
            for m in moved:
                if old[m] is not None:
                    maps[m] = old[m]
                version[m] = old_version[m]
            return False
        touched = sorted({i for m in moved for i in by_group[m]})
        saved = [values[i] for i in touched]
        incremental = (
            len(moved) == 1
            and g in parts_of
            and old[g] is not None
            and _norm_preserving(old[g])
            and _norm_preserving(maps[g])
            and all(p.linear for p in parts_of[g].values())
            and set(parts_of[g]) == set(by_group[g])
        )
        if incremental:
            for i, p in parts_of[g].items():
                delta = _value(maps[g], p.s) - _value(old[g], p.s)
                values[i] = (values[i][0] + delta, values[i][1] - 2 * delta)
        else:
            recompute(touched, maps)
        after = criterion(*total())
        if r > 0 and not after > before + tol * max(1.0, abs(before)):
            for m in moved:
                if old[m] is None:
                    maps.pop(m, None)
                else:
                    maps[m] = old[m]
                version[m] = old_version[m]  # statistics computed under the old maps hold again
            for i, v in zip(touched, saved):
                values[i] = v
            return False
        return True

    # -- round 0: input to output, on what is already matched ----------------------------
    maps: dict[str, Transform] = dict(identity)
    values.extend(t.value(maps, other_sizes) if equal else (float("nan"), float("nan")) for t in terms)
    start = total()
    result = MatchResult(maps=dict(identity), objective=[start[0]], distance=[start[1]])
    partners: dict[str, set[str]] = {g: set() for g in active}
    for t in terms:
        for g, h in t.siblings():
            if g in partners and h in partners and specs[g].per != h and specs[h].per != g:
                partners[g].add(h)
    done: set[str] = set()
    for g in active:
        if g in done:
            continue
        if g in heads_of and heads_of[g] not in done:
            continue  # solved with its heads
        if children.get(g) and equal:
            move_heads(g, maps)
            done.update((g, *children[g]))
            result.steps.extend((0, m, float("nan"), True) for m in (g, *children[g]))
            continue
        if solver in ("lap", "emd") and equal and len(partners[g]) == 1 and next(iter(partners[g])) not in done:
            # A factor of a product axis (GroupNorm groups): score each pair of its units by the
            # best matching of the partner's units, then match the partner.
            (h,) = partners[g]
            if specs[g].kind == "permutation" and specs[h].kind == "permutation":
                blocks = [
                    terms[i].pair_block(g, h, maps, ref_sizes, other_sizes) for i in by_group[g] if h in terms[i].groups
                ]
                blocks = [b for b in blocks if b is not None]
                if blocks:
                    maps[g] = solve_block_assignment(sum(blocks))
                    version[g] = next(stamp)
                    got = solve(h, maps)
                    if got is not None:
                        maps[h] = got[0]
                        version[h] = next(stamp)
                    done.update((g, h))
                    result.steps.append((0, g, float("nan"), True))
                    result.steps.append((0, h, float("nan"), True))
                    continue
        got = solve(g, maps, only=done)
        if got is None:
            got = solve(g, maps)
        if got is not None:
            maps[g] = got[0]
            version[g] = next(stamp)
        done.add(g)
        result.steps.append((0, g, float("nan"), True))
    recompute(range(len(terms)), maps) if equal or all(g in maps for g in active) else None
    if not equal and len(maps) < len(active):
        values[:] = [(float("nan"), float("nan"))] * len(terms)
    if equal and not criterion(*total()) >= criterion(*start):
        maps = dict(identity)
        for g in active:
            version[g] = next(stamp)
        recompute(range(len(terms)), maps)
    current = total()
    result.steps = [(r, g, current[0], True) for r, g, _, _ in result.steps]
    result.maps = maps
    result.objective.append(current[0])
    result.distance.append(current[1])
    result.rounds = 1
    if progress is not None:
        progress(0, current[0])

    # -- coordinate descent in random order ---------------------------------------------
    rng = np.random.default_rng(seed)
    order = [g for g in active if g not in heads_of]
    for r in range(1, max_iter):
        changed = 0
        for g in [order[i] for i in rng.permutation(len(order))]:
            if transport:
                for m in [g, *children.get(g, [])]:  # heads first, then each head's coordinates
                    got = (solve_heads(m, maps), None) if m == g and children.get(g) and equal else solve(m, maps)
                    if got is None or got[0] is None or _same(maps.get(m), got[0]):
                        result.steps.append((r, m, total()[0], False))
                        continue
                    maps[m] = got[0]
                    version[m] = next(stamp)
                    recompute(by_group[m], maps)
                    changed += 1
                    result.steps.append((r, m, total()[0], True))
                continue
            kept = step(g, maps, r)
            changed += kept
            result.steps.append((r, g, total()[0], kept))
            for c in children.get(g, []):  # each head's coordinates, given the heads
                kept = step(c, maps, r)
                changed += kept
                result.steps.append((r, c, total()[0], kept))
        previous = result.objective[-1]
        current = total()
        result.objective.append(current[0])
        result.distance.append(current[1])
        result.rounds = r + 1
        if progress is not None:
            progress(r, current[0])
        soft = any(isinstance(m, SoftMap) for m in maps.values())
        if changed == 0 or (soft and abs(current[0] - previous) <= soft_tol * max(1.0, abs(previous))):
            result.converged = True
            break
    if max_iter == 1:
        result.converged = False
    result.maps = maps
    return result


def _sum(parts: list[Stats]) -> Stats:
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    return total


def _head(s: Stats, h: int) -> Stats:
    """One head's statistics."""
    return Stats(
        *(None if t is None else t[h] for t in (s.s, s.goo, s.grr, s.ref_sq, s.other_sq, s.ref_imp, s.other_imp))
    )


def _transport(s: Stats, solver: str, reg: float | None, marginals: str) -> Transform:
    cost = (s.ref_sq[:, None] + s.other_sq[None, :] - 2 * s.s).clamp_min(0)
    if marginals == "importance":
        a = s.ref_imp.sqrt().numpy() + 1e-12
        b = s.other_imp.sqrt().numpy() + 1e-12
        a, b = a / a.sum(), b / b.sum()
    else:
        a = np.full(s.s.shape[0], 1.0 / s.s.shape[0])
        b = np.full(s.s.shape[1], 1.0 / s.s.shape[1])
    return solve_transport(cost, a, b, reg=reg if solver == "sinkhorn" else None)


def check_solver_options(function: str, method: str, reg: float, marginals: str) -> None:
    if method == "sinkhorn" and not (isinstance(reg, (int, float)) and reg > 0):
        raise bad_argument(
            function, "reg", expected="a positive entropic regularisation for 'sinkhorn'", found=repr(reg)
        )
    if marginals not in ("uniform", "importance"):
        raise bad_argument(function, "marginals", expected="'uniform' or 'importance'", found=repr(marginals))
