"""The terms of the alignment objective and the statistics each group's solver needs.

The objective is a sum of terms, each a tensor of the first network (``a``) against the
same tensor of the second (``b``) after the groups' transforms: the parameters for weight
matching, the units' activations (as a square root of their joint second moments) for
activation matching. Given the other groups' transforms, a term contributes to one group:

- ``s``: ``S[i, j]``, the inner product of ``a``'s unit ``i`` with ``b``'s unit ``j``, what a
  linear assignment (permutations) or an orthogonal Procrustes problem maximises;
- the Gram matrices of the units, which the least-squares solution of an invertible map
  needs: ``b``'s units where the group acts like an activation (``"out"``), ``a``'s units
  where it is contracted with one (``"in"``, the map's inverse transpose acts there).

For the coordinates of attention heads every head has statistics of its own (a leading
head axis).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from landscape.symmetry import Atom, Fixed, Layout, Permutation, Prod, Sum, Transform
from landscape.symmetry.layout import apply_axis, node_size, occurrences, select
from landscape.symmetry.transforms import apply_transform

__all__ = ["ActivationTerm", "GramTerm", "Stats", "TensorTerm", "apply_maps_to", "select_pair", "sibling_pairs"]


def flip(variance: str, atom: Atom) -> str:
    """The variance with which a group acts at this atom (duals act by the inverse transpose)."""
    return ("in" if variance == "out" else "out") if atom.dual else variance


def apply_maps_to(
    tensor: Tensor,
    layouts: Sequence[Layout],
    variances: Sequence[str],
    maps: Mapping[str, Transform],
    sizes: Mapping[str, int],
    skip: Sequence[tuple[int, tuple[int, ...]]] = (),
) -> Tensor:
    """``tensor`` with every group's map applied along its axes, except at the ``skip`` places."""
    out = tensor
    for k, lay in enumerate(layouts):
        if isinstance(lay, Fixed):
            continue

        def act(t: Tensor, d: int, atom: Atom, path: tuple, siblings: Mapping[str, int], k: int = k) -> Tensor:
            if (k, path) in skip:
                return t
            m = maps.get(str(atom.group))
            return t if m is None else apply_transform(m, t, d, flip(variances[k], atom), siblings)

        out = apply_axis(out, k, lay, act, sizes)
    return out


def sibling_pairs(node: Layout, path: tuple[int, ...] = (), with_paths: bool = False):
    """``(prefix, g, h)`` (or ``(prefix, ((qa, g), (qb, h)), None)``) for every two atoms that
    are children of one product node."""
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
            yield from sibling_pairs(c, (*path, q), with_paths)


def select_pair(
    tensor: Tensor, dim: int, node: Layout, prefix: tuple[int, ...], qa: int, qb: int, sizes: Mapping[str, int] | None
) -> Tensor:
    """(units of child qa, units of child qb, everything else) of the product at ``prefix``."""
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


@dataclass
class Stats:
    """A term's statistics for one group (leading head axis for per-head groups).

    ``s``: ``a``'s units against ``b``'s; ``goo``: ``b``'s Gram matrix at the places where the
    group acts like an activation; ``grr``: ``a``'s Gram matrix where it acts by its inverse
    transpose (both only for least squares); ``ref_sq``/``other_sq``: the units' squared norms
    (transport costs, only for transport); ``linear``: the term holds the group once, so its
    value is linear in the group's permutation or orthogonal map.
    """

    s: Tensor
    goo: Tensor | None = None
    grr: Tensor | None = None
    ref_sq: Tensor | None = None
    other_sq: Tensor | None = None
    ref_imp: Tensor | None = None
    other_imp: Tensor | None = None
    linear: bool = True

    def __add__(self, other: Stats) -> Stats:
        def add(x: Tensor | None, y: Tensor | None) -> Tensor | None:
            if x is None:
                return y
            if y is None:
                return x
            return x + y

        return Stats(
            self.s + other.s,
            add(self.goo, other.goo),
            add(self.grr, other.grr),
            add(self.ref_sq, other.ref_sq),
            add(self.other_sq, other.other_sq),
            add(self.ref_imp, other.ref_imp),
            add(self.other_imp, other.other_imp),
            self.linear and other.linear,
        )


def _stats(r: Tensor, o: Tensor, variance: str, *, grams: bool, norms: bool, linear: bool) -> Stats:
    """Statistics of one place: ``r``, ``o`` are (units x rest) or (heads, units, rest); the
    products run in the tensors' dtype and come back in float64 on the CPU."""

    def out(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.double().cpu()

    s = r @ o.transpose(-1, -2)
    goo = o @ o.transpose(-1, -2) if grams and variance == "out" else None
    grr = r @ r.transpose(-1, -2) if grams and variance == "in" else None
    rsq = (r * r).sum(-1) if norms else None
    osq = (o * o).sum(-1) if norms else None
    return Stats(out(s), out(goo), out(grr), out(rsq), out(osq), out(rsq), out(osq), linear)


class TensorTerm:
    """``a``'s tensor against ``b``'s after the transforms (a parameter).

    Products run in float64 for tensors up to ``2**20`` numbers and in float32 above (the
    dense layers of VGG-sized networks): there the assignments are those of float64 except
    between candidates whose scores differ by less than float32 resolution (the benchmark
    reports the objective reached both ways), at half the memory traffic and twice the speed.
    """

    FLOAT64_UP_TO = 2**20

    def __init__(
        self,
        name: str,
        ref: Tensor,
        other: Tensor,
        layouts: Sequence[Layout],
        variances: Sequence[str],
        *,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.name = name
        if dtype is None:
            dtype = torch.float64 if ref.numel() <= self.FLOAT64_UP_TO else torch.float32
        self.ref = ref.detach().to(dtype)
        self.other = other.detach().to(dtype)
        self.layouts = tuple(layouts)
        self.variances = tuple(variances)
        self.places = [
            (k, path, str(a.group), flip(self.variances[k], a))
            for k, lay in enumerate(self.layouts)
            for path, a in occurrences(lay)
        ]
        self.groups = {g for _, _, g, _ in self.places}
        self.counts = {g: sum(1 for p in self.places if p[2] == g) for g in self.groups}
        self._rr = float((self.ref * self.ref).sum(dtype=torch.float64))

    # -- values --------------------------------------------------------------------------
    def moved(self, maps: Mapping[str, Transform], other_sizes: Mapping[str, int]) -> Tensor:
        return apply_maps_to(self.other, self.layouts, self.variances, maps, other_sizes)

    def value(self, maps: Mapping[str, Transform], other_sizes: Mapping[str, int]) -> tuple[float, float]:
        """``(<a, T(b)>, ||a - T(b)||^2)``, in float64."""
        moved = self.moved(maps, other_sizes).to(self.ref.dtype)
        if moved.shape != self.ref.shape:
            return float("nan"), float("nan")
        inner = float((self.ref * moved).sum(dtype=torch.float64))
        return inner, self._rr - 2 * inner + float((moved * moved).sum(dtype=torch.float64))

    # -- statistics for one group -------------------------------------------------------------
    def stats(
        self,
        group: str,
        maps: Mapping[str, Transform],
        ref_sizes: Mapping[str, int],
        other_sizes: Mapping[str, int],
        *,
        per: str | None = None,
        grams: bool = False,
        norms: bool = False,
        only: set[str] | None = None,
        without: set[str] = frozenset(),
    ) -> Stats | None:
        """The group's statistics (everything else transformed); None when the term cannot be
        compared yet (a group of different width has no transform, or, with ``only``, a group
        outside ``only``). With ``per``, one block of statistics per head of that group;
        places in a product with one of the ``without`` groups are left out."""
        total: Stats | None = None
        for k, path, g, variance in self.places:
            if g != group:
                continue
            if without and self._with(k, path, without):
                continue
            others = {h for _, _, h, _ in self.places if h != group}
            if any(h not in maps and ref_sizes[h] != other_sizes[h] for h in others):
                continue
            if only is not None and not others <= only:
                continue
            mixed = {h: (maps[h].target_size if h in maps else other_sizes[h]) for h in self.groups}
            mixed[group] = other_sizes[group]
            if sum(1 for axis, _, h, _ in self.places if h == group and axis == k) > 1 and (
                ref_sizes[group] != other_sizes[group]
            ):
                continue  # the same group twice on one axis, at different widths: not comparable
            moved = apply_maps_to(self.other, self.layouts, self.variances, maps, other_sizes, skip=[(k, path)])
            if per is not None:
                pair = self._head_pair(k, path, per)
                if pair is None:
                    continue
                prefix, qh, qg = pair
                r = select_pair(self.ref, k, self.layouts[k], prefix, qh, qg, ref_sizes)
                o = select_pair(moved, k, self.layouts[k], prefix, qh, qg, mixed)
            else:
                r = select(self.ref, k, self.layouts[k], path, ref_sizes)
                o = select(moved, k, self.layouts[k], path, mixed)
            if r.shape[-1] != o.shape[-1]:
                continue
            if grams:  # least squares: Gram matrices in float64
                r, o = r.double(), o.double()
            part = _stats(r, o, variance, grams=grams, norms=norms, linear=self.counts[group] == 1)
            total = part if total is None else total + part
        return total

    def updated(
        self,
        group: str,
        previous: Stats,
        old_maps: Mapping[str, Transform],
        maps: Mapping[str, Transform],
        sizes: Mapping[str, int],
    ) -> Stats | None:
        """The similarity after the other groups' permutations changed, from the previous one:
        only the columns that moved enter a product, so a few swapped units cost a thin product
        instead of the whole one. None when the update does not apply (the group held twice,
        maps other than permutations, widths that differ, or most columns moved)."""
        places = [(k, path) for k, path, g, _ in self.places if g == group]
        changed = [h for h in self.groups if h != group and old_maps.get(h) is not maps.get(h)]
        if (
            len(places) != 1
            or previous.goo is not None
            or previous.ref_sq is not None
            or previous.s.dim() != 2
            or any(
                not isinstance(maps.get(h), Permutation) or not isinstance(old_maps.get(h), Permutation)
                for h in changed
            )
        ):
            return None
        ((k, path),) = places
        before = apply_maps_to(self.other, self.layouts, self.variances, old_maps, sizes, skip=[(k, path)])
        after = apply_maps_to(self.other, self.layouts, self.variances, maps, sizes, skip=[(k, path)])
        o_old = select(before, k, self.layouts[k], path, sizes)
        o_new = select(after, k, self.layouts[k], path, sizes)
        if o_old.shape != o_new.shape:
            return None
        moved = (o_old != o_new).any(dim=0).nonzero().flatten()
        if moved.numel() > o_new.shape[1] // 4:
            return None
        r = select(self.ref, k, self.layouts[k], path, sizes)
        delta = r[:, moved] @ (o_new[:, moved] - o_old[:, moved]).T
        return Stats(previous.s + delta.double().cpu(), linear=previous.linear)

    def _parent(self, k: int, path: tuple[int, ...]) -> Layout:
        """The layout node that holds the place at ``path`` of tensor ``k``."""
        node = self.layouts[k]
        for q in path[:-1]:
            node = node.children[q]
        return node

    def _with(self, k: int, path: tuple[int, ...], groups: set[str]) -> bool:
        node = self._parent(k, path)
        return isinstance(node, Prod) and any(isinstance(c, Atom) and str(c.group) in groups for c in node.children)

    def _head_pair(self, k: int, path: tuple[int, ...], per: str) -> tuple[tuple[int, ...], int, int] | None:
        """Where the heads group sits next to the place at ``path`` (same product)."""
        node = self._parent(k, path)
        if not isinstance(node, Prod):
            return None
        for q, c in enumerate(node.children):
            if isinstance(c, Atom) and str(c.group) == per:
                return path[:-1], q, path[-1]
        return None

    def head_blocks(
        self,
        heads: str,
        child: str,
        maps: Mapping[str, Transform],
        ref_sizes: Mapping[str, int],
        other_sizes: Mapping[str, int],
        *,
        grams: bool,
    ) -> Stats | None:
        """Statistics of ``child`` for every pair (head of ``a``, head of ``b``): ``s[a, b]`` is
        (units x units), everything but the heads and the child transformed."""
        total: Stats | None = None
        for k, path, g, variance in self.places:
            if g != child:
                continue
            pair = self._head_pair(k, path, heads)
            if pair is None:
                continue
            prefix, qh, qg = pair
            skip = [(k, path), (k, (*prefix, qh))]
            moved = apply_maps_to(self.other, self.layouts, self.variances, maps, other_sizes, skip=skip)
            r = select_pair(self.ref, k, self.layouts[k], prefix, qh, qg, ref_sizes).double()
            o = select_pair(moved, k, self.layouts[k], prefix, qh, qg, other_sizes).double()
            s = torch.einsum("anr,bmr->abnm", r, o)
            goo = grr = None
            if grams and variance == "out":
                goo = torch.einsum("bnr,bmr->bnm", o, o)[None].expand(r.shape[0], -1, -1, -1)
            if grams and variance == "in":
                grr = torch.einsum("anr,amr->anm", r, r)[:, None].expand(-1, o.shape[0], -1, -1)
            part = Stats(s, goo, grr)
            total = part if total is None else total + part
        return total

    # -- product axes (GroupNorm groups, grouped convolutions) ----------------------------------
    def siblings(self) -> set[tuple[str, str]]:
        """Pairs of groups that are factors of one product axis."""
        return {(g, h) for lay in self.layouts for _, g, h in sibling_pairs(lay)}

    def pair_block(
        self,
        group: str,
        partner: str,
        maps: Mapping[str, Transform],
        ref_sizes: Mapping[str, int],
        other_sizes: Mapping[str, int],
    ) -> Tensor | None:
        """``B[a, b, a', b']``: the similarity of ``a``'s unit ``(a, b)`` with ``b``'s unit
        ``(a', b')`` of a product axis ``group x partner`` (everything else transformed)."""
        total = None
        for k, lay in enumerate(self.layouts):
            for prefix, pair, _ in sibling_pairs(lay, with_paths=True):
                (qa, ga), (qb, gb) = pair
                if {ga, gb} != {group, partner}:
                    continue
                if ga != group:
                    (qa, ga), (qb, gb) = (qb, gb), (qa, ga)
                mixed = {h: (maps[h].target_size if h in maps else other_sizes[h]) for h in self.groups}
                mixed[group], mixed[partner] = other_sizes[group], other_sizes[partner]
                skip = [(k, (*prefix, qa)), (k, (*prefix, qb))]
                moved = apply_maps_to(self.other, self.layouts, self.variances, maps, other_sizes, skip=skip)
                r = select_pair(self.ref, k, lay, prefix, qa, qb, ref_sizes).double()
                o = select_pair(moved, k, lay, prefix, qa, qb, mixed).double()
                if r.shape[2] != o.shape[2]:
                    continue
                part = torch.einsum("abr,cdr->abcd", r, o)
                total = part if total is None else total + part
        return total


class ActivationTerm(TensorTerm):
    """Activations of the units at one place a layer reads them, for least-squares and
    Procrustes solvers: ``a``'s and ``b``'s activations enter through a square root ``L`` of
    their joint (uncentred) second moments, ``[A; B] [A; B]^T / N = L L^T``, so that every
    inner product between units is the one over the data, at the cost of ``2n`` columns."""

    def __init__(self, name: str, moments: Tensor, layout: Layout, n_ref: int) -> None:
        values, vectors = torch.linalg.eigh(moments.double())
        root = vectors * values.clamp_min(0).sqrt()[None, :]
        super().__init__(
            name, root[:n_ref], root[n_ref:], (layout, Fixed(root.shape[1])), ("out", "out"), dtype=torch.float64
        )


class GramTerm(TensorTerm):
    """``sum_ij S[i, j] M[i, j]`` for a cross-correlation matrix ``S`` between the units of an
    activation axis of the two networks (``M`` is the axis's transform, as a matrix): activation
    matching by correlations (Ainsworth et al. 2023; Jordan et al. 2023), for permutations and
    transport plans."""

    def __init__(self, name: str, corr: Tensor, layout: Layout, ref_rms: Tensor, other_rms: Tensor) -> None:
        n_other = corr.shape[1]
        super().__init__(
            name,
            corr,
            torch.eye(n_other, dtype=torch.float64),
            (layout, Fixed(n_other)),
            ("out", "out"),
            dtype=torch.float64,
        )
        self.bare = isinstance(layout, Atom)
        self.ref_rms = ref_rms.double()
        self.other_rms = other_rms.double()

    def value(self, maps: Mapping[str, Transform], other_sizes: Mapping[str, int]) -> tuple[float, float]:
        inner, _ = super().value(maps, other_sizes)
        # Standardised units: for permutations the distance is a constant minus twice this.
        return inner, -2.0 * inner

    def stats(
        self, group, maps, ref_sizes, other_sizes, *, per=None, grams=False, norms=False, only=None, without=frozenset()
    ):
        # Correlations of standardised units: every unit has norm 1, so the transport cost is
        # 2 - 2 corr; importance weights are the units' root-mean-square activations.
        if self.bare and per is None:
            s = self.ref
            ref_imp, other_imp = self.ref_rms**2, self.other_rms**2
        else:
            found = super().stats(group, maps, ref_sizes, other_sizes, per=per, only=only, without=without)
            if found is None:
                return None
            s = found.s
            ref_imp = torch.ones(s.shape[:-1], dtype=torch.float64)
            other_imp = torch.ones((*s.shape[:-2], s.shape[-1]), dtype=torch.float64)
        ones_r = torch.ones(s.shape[:-1], dtype=torch.float64)
        ones_o = torch.ones((*s.shape[:-2], s.shape[-1]), dtype=torch.float64)
        return Stats(s.double(), None, None, ones_r, ones_o, ref_imp.double(), other_imp.double())
