"""Rules for operations that move, split, join, broadcast and contract axes.

Each rule is written so that transforming every input by the groups' transforms transforms
the output the same way (see :mod:`landscape.symmetry._interpreter`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.fx as fx
from torch import Tensor

from landscape.symmetry._classes import ORTHOGONAL, PERMUTATION
from landscape.symmetry._patterns import index_only
from landscape.symmetry._trace import Slotted, TInfo
from landscape.symmetry.layout import Fixed, Layout, Prod, Sum, atoms, normalize


def norm_dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


def movedim_order(nd: int, src: int | Sequence[int], dst: int | Sequence[int]) -> list[int]:
    src = [src] if isinstance(src, int) else list(src)
    dst = [dst] if isinstance(dst, int) else list(dst)
    src = [norm_dim(s, nd) for s in src]
    dst = [norm_dim(d, nd) for d in dst]
    order: list[int | None] = [None] * nd
    for s, d in zip(src, dst):
        order[d] = s
    rest = iter(k for k in range(nd) if k not in src)
    return [o if o is not None else next(rest) for o in order]


class _Marker:
    """Stands in for the slot axis while a slotted tensor's axes are moved around."""


class ShapeRules:
    """Mixin of :class:`~landscape.symmetry._interpreter.Builder`: shape and contraction rules."""

    # -- reshapes ----------------------------------------------------------------------
    def reshape(self, x: TInfo, in_shape: Sequence[int], out_shape: Sequence[int]) -> TInfo | Slotted:
        """Row-major reshape: consecutive blocks of input and output axes with equal sizes.

        A block that splits one axis into factors joins the axis with the product of fresh
        groups, except that a leading factor whose slots are only ever indexed (``q, k, v =
        qkv.reshape(n, t, 3, h, d).unbind(2)``) gives every slot groups of its own: the axis is
        the concatenation of the slots (a block-diagonal transform), not a product.
        """
        in_shape, out_shape = [int(s) for s in in_shape], [int(s) for s in out_shape]
        out: list[Layout] = []
        origin: list[tuple[str, int] | None] = []
        slot: tuple[int, list[list[Layout]]] | None = None
        i = j = 0
        while i < len(in_shape) or j < len(out_shape):
            bi, bj = [], []
            if i < len(in_shape):
                bi.append(i)
                i += 1
            if j < len(out_shape):
                bj.append(j)
                j += 1
            pi = math.prod(in_shape[k] for k in bi)
            pj = math.prod(out_shape[k] for k in bj)
            while pi != pj or (i < len(in_shape) and in_shape[i] == 1 and j >= len(out_shape)):
                if pi < pj or (pi == pj and i < len(in_shape)):
                    if i >= len(in_shape):
                        break
                    bi.append(i)
                    pi *= in_shape[i]
                    i += 1
                else:
                    if j >= len(out_shape):
                        break
                    bj.append(j)
                    pj *= out_shape[j]
                    j += 1
            merged = normalize(Prod(tuple(x.layout[k] for k in bi))) if bi else Fixed(1)
            if len(bj) == 1:
                out.append(merged)
                origin.append(x.origin[bi[0]] if x.origin is not None and len(bi) == 1 else None)
            elif bj:
                k = out_shape[bj[0]]
                if (
                    slot is None
                    and x.origin is None
                    and k > 1
                    and len(bj) > 1
                    and not isinstance(self.classes.expand(merged), Fixed)
                    and self.node is not None
                    and index_only(self.node, bj[0], len(out_shape))
                ):
                    per_slot = [[self.fresh(out_shape[q], "slot") for q in bj[1:]] for _ in range(k)]
                    self.join(merged, normalize(Sum(tuple(normalize(Prod(tuple(p))) for p in per_slot))))
                    slot = (len(out), per_slot)
                    out.append(Fixed(k))
                    out.extend(per_slot[0])  # placeholders: replaced per slot below
                    origin.extend([None] * len(bj))
                    continue
                parts = [self.fresh(out_shape[q], "reshape") for q in bj]
                self.join(merged, normalize(Prod(tuple(parts))))
                out.extend(parts)
                origin.extend([None] * len(bj))
        if slot is not None:
            dim, per_slot = slot
            width = len(per_slot[0])
            slots = []
            for parts in per_slot:
                layout = [*out[:dim], *parts, *out[dim + 1 + width :]]
                slots.append(TInfo(tuple(layout)))
            return Slotted(dim, slots)
        return TInfo(tuple(out), tuple(origin) if x.origin is not None else None)

    def unsqueeze(self, x: TInfo, dim: int) -> TInfo:
        d = norm_dim(int(dim), len(x.layout) + 1)
        layout = list(x.layout)
        layout.insert(d, Fixed(1))
        origin = None
        if x.origin is not None:
            origin = list(x.origin)
            origin.insert(d, None)
            origin = tuple(origin)
        return TInfo(tuple(layout), origin)

    def squeeze(self, x: TInfo, xv: Tensor, dim: object) -> TInfo:
        nd = xv.dim()
        if dim is None:
            drop = [k for k in range(nd) if xv.shape[k] == 1]
        else:
            dims = [dim] if isinstance(dim, int) else list(dim)
            drop = [norm_dim(int(d), nd) for d in dims if xv.shape[norm_dim(int(d), nd)] == 1]
        keep = [k for k in range(nd) if k not in drop]
        origin = tuple(x.origin[k] for k in keep) if x.origin is not None else None
        return TInfo(tuple(x.layout[k] for k in keep), origin)

    def permute(self, x: TInfo, order: Sequence[int]) -> TInfo:
        order = [norm_dim(int(d), len(x.layout)) for d in order]
        origin = tuple(x.origin[d] for d in order) if x.origin is not None else None
        return TInfo(tuple(x.layout[d] for d in order), origin)

    # -- indexing ----------------------------------------------------------------------
    def take(self, layout: Layout, size: int, start: int, stop: int, step: int = 1) -> Layout:
        """The layout of ``[start:stop:step]`` of an axis: a contiguous range is one part of
        the axis (the axis becomes the concatenation of the range and what lies around it);
        a strided range is fixed."""
        if (start, stop, step) == (0, size, 1):
            return layout
        length = len(range(start, stop, step))
        if step != 1 or length == 0 or isinstance(self.classes.expand(layout), Fixed):
            self.fix([layout])
            return Fixed(length)
        parts = [self.fresh(start, "slice") if start else None, self.fresh(length, "slice")]
        parts.append(self.fresh(size - stop, "slice") if stop < size else None)
        self.join(layout, normalize(Sum(tuple(p for p in parts if p is not None))))
        return parts[1]

    def getitem(self, x: TInfo, xv: Tensor, index: object) -> TInfo | None:
        items = list(index) if isinstance(index, tuple) else [index]
        if any(
            isinstance(it, (Tensor, list)) or (it is not None and not isinstance(it, (int, slice, type(...))))
            for it in items
        ):
            return None
        if any(it is ... for it in items):
            k = items.index(...)
            consumed = sum(1 for it in items if it is not None and it is not ...)
            items = items[:k] + [slice(None)] * (xv.dim() - consumed) + items[k + 1 :]
        out: list[Layout] = []
        origin: list[tuple[str, int] | None] = []
        d = 0
        for it in items:
            if it is None:
                out.append(Fixed(1))
                origin.append(None)
                continue
            size = xv.shape[d]
            if isinstance(it, int):
                i = norm_dim(it, size)
                self.take(x.layout[d], size, i, i + 1)
            else:
                assert isinstance(it, slice)
                start, stop, step = it.indices(size)
                lay = self.take(x.layout[d], size, start, stop, step)
                out.append(lay)
                same = (start, stop, step) == (0, size, 1)
                origin.append(x.origin[d] if x.origin is not None and same else None)
            d += 1
        for k in range(d, xv.dim()):
            out.append(x.layout[k])
            origin.append(x.origin[k] if x.origin is not None else None)
        return TInfo(tuple(out), tuple(origin) if x.origin is not None else None)

    def select(self, x: TInfo, xv: Tensor, dim: int, index: int) -> TInfo:
        d = norm_dim(int(dim), xv.dim())
        i = norm_dim(int(index), xv.shape[d])
        self.take(x.layout[d], xv.shape[d], i, i + 1)
        layout = [lay for k, lay in enumerate(x.layout) if k != d]
        origin = tuple(o for k, o in enumerate(x.origin) if k != d) if x.origin is not None else None
        return TInfo(tuple(layout), origin)

    def slice_axis(self, x: TInfo, xv: Tensor, dim: int, start: object, stop: object, step: object = 1) -> TInfo:
        d = norm_dim(int(dim), xv.dim())
        size = xv.shape[d]
        a, b, c = slice(start, stop, step).indices(size)
        lay = self.take(x.layout[d], size, a, b, c)
        layout = list(x.layout)
        layout[d] = lay
        origin = None
        if x.origin is not None:
            origin = list(x.origin)
            origin[d] = x.origin[d] if (a, b, c) == (0, size, 1) else None
            origin = tuple(origin)
        return TInfo(tuple(layout), origin)

    # -- slotted tensors -----------------------------------------------------------------
    def collapse(self, s: Slotted) -> TInfo:
        """A slotted tensor used as a whole: every slot must transform alike (sound, narrower)."""
        first = s.slots[0]
        for other in s.slots[1:]:
            for a, b in zip(first.layout, other.layout):
                self.join(a, b)
        layout = list(first.layout)
        layout.insert(s.dim, Fixed(len(s.slots)))
        return TInfo(tuple(layout))

    def slot_op(self, n: fx.Node, name: str, args: tuple, kwargs: dict, s: Slotted, value: object) -> object:
        """Operations a slotted tensor passes through; NotImplemented for the others."""
        nd = len(s.slots[0].layout) + 1
        xv = args[0]
        if name in ("contiguous", "clone", "detach", "to", "type_as", "identity", "alias", "float", "double", "neg"):
            return s
        if name in ("permute", "transpose", "t", "movedim", "unsqueeze", "squeeze"):

            def moved(slot: TInfo) -> tuple[int, TInfo]:
                full = list(slot.layout)
                marker = _Marker()
                full.insert(s.dim, marker)  # type: ignore[arg-type]
                info = TInfo(tuple(full))
                if name == "unsqueeze":
                    result = self.unsqueeze(info, int(args[1] if len(args) > 1 else kwargs["dim"]))
                elif name == "squeeze":
                    dim = args[1] if len(args) > 1 else kwargs.get("dim")
                    result = self.squeeze(info, xv, dim)
                else:
                    result = self.permute(info, self.order_of(name, args, kwargs, nd))
                where = [k for k, lay in enumerate(result.layout) if lay is marker]
                if len(where) != 1:
                    raise ValueError("slot axis lost")
                layout = [lay for lay in result.layout if lay is not marker]
                return where[0], TInfo(tuple(layout))

            try:
                results = [moved(slot) for slot in s.slots]
            except (ValueError, IndexError, KeyError):
                return NotImplemented
            return Slotted(results[0][0], [r[1] for r in results])
        if name == "select":
            dim = norm_dim(int(args[1] if len(args) > 1 else kwargs["dim"]), nd)
            if dim == s.dim:
                return s.slots[norm_dim(int(args[2] if len(args) > 2 else kwargs["index"]), len(s.slots))]
            return NotImplemented
        if name == "unbind":
            dim = norm_dim(int(args[1] if len(args) > 1 else kwargs.get("dim", 0)), nd)
            return list(s.slots) if dim == s.dim else NotImplemented
        if name == "getitem":
            index = args[1]
            items = list(index) if isinstance(index, tuple) else [index]
            if any(it is ... for it in items):
                k = items.index(...)
                consumed = sum(1 for it in items if it is not None and it is not ...)
                items = items[:k] + [slice(None)] * (nd - consumed) + items[k + 1 :]
            if any(it is None for it in items) or len(items) > nd:
                return NotImplemented
            items = items + [slice(None)] * (nd - len(items))
            if not isinstance(items[s.dim], int):
                return NotImplemented
            if any(k != s.dim and it != slice(None) for k, it in enumerate(items)):
                return NotImplemented
            return s.slots[norm_dim(items[s.dim], len(s.slots))]
        return NotImplemented

    def order_of(self, name: str, args: tuple, kwargs: dict, nd: int) -> list[int]:
        if name == "permute":
            order = args[1] if len(args) == 2 and isinstance(args[1], (list, tuple)) else args[1:]
            return [norm_dim(int(d), nd) for d in kwargs.get("dims", order)]
        if name == "t":
            return [1, 0] if nd == 2 else list(range(nd))
        if name == "transpose":
            d0 = norm_dim(int(args[1] if len(args) > 1 else kwargs["dim0"]), nd)
            d1 = norm_dim(int(args[2] if len(args) > 2 else kwargs["dim1"]), nd)
            order = list(range(nd))
            order[d0], order[d1] = order[d1], order[d0]
            return order
        src = args[1] if len(args) > 1 else kwargs["source"]
        dst = args[2] if len(args) > 2 else kwargs["destination"]
        return movedim_order(nd, src, dst)

    # -- broadcasting, concatenation, splitting ----------------------------------------
    def broadcast(self, operands: list[tuple[TInfo, Sequence[int]]], out_shape: Sequence[int]) -> list[Layout]:
        """Join the axes that elementwise broadcasting lines up; axes that some operand
        broadcasts along are returned in ``self._broadcast_axes``."""
        nd = len(out_shape)
        out: list[Layout] = []
        self._broadcast_axes: list[int] = []
        for k in range(nd):
            found: list[Layout] = []
            broadcast = False
            for info, shape in operands:
                j = k - (nd - len(shape))
                if j < 0 or (shape[j] == 1 and out_shape[k] != 1):
                    broadcast = True
                    continue
                found.append(info.layout[j])
            if not found:
                out.append(Fixed(int(out_shape[k])))
                continue
            for other in found[1:]:
                self.join(found[0], other)
            out.append(found[0])
            if broadcast:
                self._broadcast_axes.append(k)
        return out

    def expand(self, x: TInfo, in_shape: Sequence[int], out_shape: Sequence[int]) -> TInfo:
        nd = len(out_shape)
        out: list[Layout] = []
        origin: list[tuple[str, int] | None] = []
        for k in range(nd):
            j = k - (nd - len(in_shape))
            if j >= 0 and in_shape[j] == out_shape[k]:
                out.append(x.layout[j])
                origin.append(x.origin[j] if x.origin is not None else None)
            else:
                out.append(Fixed(int(out_shape[k])))
                origin.append(None)
        return TInfo(tuple(out), tuple(origin) if x.origin is not None else None)

    def repeat(self, x: TInfo, in_shape: Sequence[int], out_shape: Sequence[int]) -> TInfo:
        nd = len(out_shape)
        out: list[Layout] = []
        for k in range(nd):
            j = k - (nd - len(in_shape))
            if j < 0:
                out.append(Fixed(int(out_shape[k])))
            elif in_shape[j] == out_shape[k]:
                out.append(x.layout[j])
            else:
                out.append(normalize(Prod((Fixed(out_shape[k] // in_shape[j]), x.layout[j]))))
        self.mark(x, "out")
        return TInfo(tuple(out))

    def cat(self, infos: list, value: Tensor, dim: int, *, stack: bool) -> TInfo:
        nd = value.dim()
        dim = norm_dim(dim, nd)
        for info in infos:
            self.mark(info, "out")
        if stack:
            first = infos[0]
            for other in infos[1:]:
                for a, b in zip(first.layout, other.layout):
                    self.join(a, b)
            layout = list(first.layout)
            layout.insert(dim, Fixed(len(infos)))
            return TInfo(tuple(layout))
        first = infos[0]
        for other in infos[1:]:
            for k in range(nd):
                if k != dim:
                    self.join(first.layout[k], other.layout[k])
        layout = list(first.layout)
        layout[dim] = normalize(Sum(tuple(info.layout[dim] for info in infos)))
        return TInfo(tuple(layout))

    def split(self, x: TInfo, value: Sequence[Tensor], dim: int, *, keep: bool) -> list[TInfo]:
        sizes = [int(v.shape[dim]) if keep else 1 for v in value]
        parts = [self.fresh(s, "split") for s in sizes]
        self.join(x.layout[dim], normalize(Sum(tuple(parts))))
        self.mark(x, "out")
        out = []
        for part in parts:
            layout = list(x.layout)
            if keep:
                layout[dim] = part
            else:
                del layout[dim]
            out.append(TInfo(tuple(layout)))
        return out

    # -- reductions ----------------------------------------------------------------------
    def reduce(self, name: str, x: TInfo, xv: Tensor, args: tuple, kwargs: dict, value: object) -> object:
        from landscape.symmetry._ops import ARG_REDUCE, REDUCE_LINEAR, REDUCE_WITH_INDICES

        dim = args[1] if len(args) > 1 and not isinstance(args[1], bool) else kwargs.get("dim", kwargs.get("axis"))
        keepdim = kwargs.get("keepdim", args[2] if len(args) > 2 and isinstance(args[2], bool) else False)
        if name in ("norm",):
            dim = kwargs.get("dim", args[2] if len(args) > 2 else None)
        if dim is None:
            dims = list(range(xv.dim()))
        elif isinstance(dim, int):
            dims = [norm_dim(dim, xv.dim())]
        elif isinstance(dim, (list, tuple)) and all(isinstance(d, int) for d in dim):
            dims = [norm_dim(d, xv.dim()) for d in dim]
        else:
            return None
        self.mark(x, "out")
        reduced = [x.layout[d] for d in dims]
        kept = [x.layout[d] if d not in dims else Fixed(1) for d in range(xv.dim()) if keepdim or d not in dims]
        if name in REDUCE_LINEAR:
            self.restrict(reduced, PERMUTATION)
        else:
            self.restrict(x.layout, PERMUTATION)
        if name in ARG_REDUCE or (name in REDUCE_WITH_INDICES and dim is not None):
            self.fix(reduced)  # indices name positions along the reduced axes
        if isinstance(value, Tensor):
            if tuple(value.shape) != tuple(lay.size for lay in kept):
                return None
            return TInfo(tuple(kept))
        if isinstance(value, (tuple, list)):
            return [TInfo(tuple(kept)) if isinstance(v, Tensor) else None for v in value]
        return None

    # -- contractions ----------------------------------------------------------------------
    def heads_of(self, batch: Sequence[Layout], inners: Sequence[Layout], label: str) -> None:
        """Record that the ``inners`` (coordinates of an attention head) may be mixed by a map of
        their own for every index of the ``batch`` axes (the heads); checked when the graph is
        finalised. ``label`` (the attention module's path and a dot) prefixes the groups' names."""
        for lay in batch:
            if any(True for _ in atoms(self.classes.expand(lay))):
                for inner in inners:
                    self.classes.per_head.append((inner, lay, self.why))
                self.name_atoms(lay, f"{label}heads")

    def name_atoms(self, layout: Layout, name: str) -> None:
        for a in atoms(self.classes.expand(layout)):
            self.names.setdefault(int(a.group), name)

    def dot(self, first: Layout, second: Layout) -> None:
        """A dot product of two activations over these axes: the second transforms by the
        inverse transpose of the first (queries and keys)."""
        self.classes.duals.append((first, second, self.why))

    def contract(
        self, a: TInfo, av: Tensor, b: TInfo, bv: Tensor, value: Tensor, nodes: tuple[object, object]
    ) -> TInfo:
        """``a @ b`` with torch.matmul's broadcasting."""
        la, lb = list(a.layout), list(b.layout)
        oa = list(a.origin) if a.origin is not None else None
        ob = list(b.origin) if b.origin is not None else None
        a_vec, b_vec = av.dim() == 1, bv.dim() == 1
        if a_vec:
            la, oa = [Fixed(1), *la], ([None, *oa] if oa is not None else None)
        if b_vec:
            lb, ob = [*lb, Fixed(1)], ([*ob, None] if ob is not None else None)
        a_param, b_param = a.is_param, b.is_param
        if a_param or b_param:
            self.join(la[-1], lb[-2])
        batch_a, batch_b = la[:-2], lb[:-2]
        nd = max(len(batch_a), len(batch_b))
        shape_a = av.shape[:-2] if not a_vec else ()
        shape_b = bv.shape[:-2] if not b_vec else ()
        batch = (
            self.broadcast([(TInfo(tuple(batch_a)), shape_a), (TInfo(tuple(batch_b)), shape_b)], value.shape[:nd])
            if nd
            else []
        )
        ia, ib = len(la) - 1, len(lb) - 2
        if a_param and not b_param:
            self.mark(TInfo(tuple(la), tuple(oa)), "in", [ia])
            self.mark(TInfo(tuple(la), tuple(oa)), "out", [k for k in range(len(la)) if k != ia])
            if isinstance(nodes[1], fx.Node) and not b_vec:
                self.sites.append((nodes[1].name, bv.dim() - 2))
        elif b_param and not a_param:
            self.mark(TInfo(tuple(lb), tuple(ob)), "in", [ib])
            self.mark(TInfo(tuple(lb), tuple(ob)), "out", [k for k in range(len(lb)) if k != ib])
            if isinstance(nodes[0], fx.Node):
                self.sites.append((nodes[0].name, av.dim() - 1))
        elif not a_param and not b_param:
            # Two activations: sum_e a_ie b_ej is unchanged when b's e-axis transforms by the
            # inverse transpose of a's; every index of the batch axes (attention heads) may
            # use maps of its own, and the free axes follow their operands.
            self.dot(la[-1], lb[-2])
            label = self.attention_label()
            if batch:
                self.heads_of(batch, [la[-1], lb[-2], la[-2], lb[-1]], label)
                self.name_atoms(la[-1], f"{label}qk")
                self.name_atoms(lb[-1], f"{label}vo")
            self.restrict(batch, PERMUTATION)
            for node, axis in ((nodes[0], av.dim() - 1), (nodes[1], bv.dim() - 2)):
                if isinstance(node, fx.Node):
                    self.sites.append((node.name, axis))
        else:
            self.mark(a, "out")
            self.mark(b, "out")
            self.restrict(la + lb, PERMUTATION)
        out = [*batch, la[-2], lb[-1]]
        if b_vec:
            out = out[:-1]
        if a_vec:
            out = out[:-2] + out[-1:] if not b_vec else out[:-1]
        return TInfo(tuple(out))

    def einsum(self, n: fx.Node, args: tuple, value: Tensor) -> TInfo | None:
        equation = str(args[0]).replace(" ", "")
        operands = list(args[1]) if len(args) == 2 and isinstance(args[1], (list, tuple)) else list(args[1:])
        nodes = list(n.args[1]) if len(n.args) == 2 and isinstance(n.args[1], (list, tuple)) else list(n.args[1:])
        if "." in equation:
            return None
        lhs, _, rhs = equation.partition("->")
        terms = lhs.split(",")
        if not _:
            counts = {c: lhs.count(c) for c in set(lhs) - {","}}
            rhs = "".join(sorted(c for c, k in counts.items() if k == 1))
        if len(terms) != len(operands):
            return None
        infos = [self.info(a, v) for a, v in zip(nodes, operands)]
        if not all(isinstance(i, TInfo) for i in infos):
            return None
        where: dict[str, list[tuple[int, int]]] = {}
        for i, term in enumerate(terms):
            for k, c in enumerate(term):
                where.setdefault(c, []).append((i, k))
        layouts: dict[str, Layout] = {}
        for c, places in where.items():
            found = [infos[i].layout[k] for i, k in places if operands[i].shape[k] != 1 or len(places) == 1]
            for other in found[1:]:
                self.join(found[0], other)
            layouts[c] = found[0] if found else Fixed(1)
        params = [i for i, info in enumerate(infos) if info.is_param]
        for c, places in where.items():
            ops = {i for i, _ in places}
            if c in rhs:
                if len(ops) > 1:
                    self.restrict([layouts[c]], PERMUTATION)
                for i, k in places:
                    self.mark(infos[i], "out", [k])
                continue
            if len(ops) == 2 and len([i for i in ops if i in params]) == 1:
                for i, k in places:
                    self.mark(infos[i], "in" if i in params else "out", [k])
                    if i not in params and isinstance(nodes[i], fx.Node):
                        self.sites.append((nodes[i].name, k))
            elif len(ops) == 2 and not (ops & set(params)):
                self.restrict([layouts[c]], ORTHOGONAL)
            else:
                for i, k in places:
                    self.mark(infos[i], "out", [k])
                self.restrict([layouts[c]], PERMUTATION)
        return TInfo(tuple(layouts[c] for c in rhs))


__all__ = ["ShapeRules", "movedim_order", "norm_dim"]
