"""Rules for layers: linear maps, convolutions, normalisations, embeddings, pooling and
attention (``F.scaled_dot_product_attention``, ``nn.MultiheadAttention``, rotary embeddings).
"""

from __future__ import annotations

import torch
import torch.fx as fx
from torch import Tensor, nn

from landscape.symmetry._classes import ORTHOGONAL, PERMUTATION
from landscape.symmetry._patterns import Region, RotaryPattern
from landscape.symmetry._trace import TInfo
from landscape.symmetry.layout import Fixed, Prod, Sum, atoms, normalize

__all__ = ["LayerRules"]


class LayerRules:
    """Mixin of :class:`~landscape.symmetry._interpreter.Builder`: layer rules."""

    # -- linear maps ---------------------------------------------------------------------
    def linear(
        self, n: fx.Node, x: TInfo, xv: Tensor, w: TInfo | None, b: TInfo | None, path: str, site_node: object
    ) -> TInfo:
        assert w is not None
        self.join(x.layout[-1], w.layout[1])
        self.mark(w, "in", [1])
        self.mark(w, "out", [0])
        if b is not None:
            self.join(w.layout[0], b.layout[0])
            self.mark(b, "out")
            if path:
                self.affine[n.name] = (path, f"{path}.weight", f"{path}.bias", xv.dim() - 1)
        if isinstance(site_node, fx.Node) and not x.is_param:
            self.sites.append((site_node.name, xv.dim() - 1))
        return TInfo((*x.layout[:-1], w.layout[0]))

    def conv(
        self,
        n: fx.Node,
        x: TInfo,
        xv: Tensor,
        w: TInfo | None,
        b: TInfo | None,
        groups: int,
        value: Tensor,
        path: str,
        site_node: object,
    ) -> TInfo:
        assert w is not None
        self.fix(x.layout[2:])
        self.fix(w.layout[2:])
        if groups == 1:
            self.join(x.layout[1], w.layout[1])
        else:
            # Groups move as blocks (the same on input and output), and one permutation of
            # the channels within a group acts on every group: a Kronecker product.
            block = self.fresh(groups, f"{path}:groups")
            out_within = self.fresh(value.shape[1] // groups, f"{path}:out-within-group")
            self.join(x.layout[1], normalize(Prod((block, w.layout[1]))))
            self.join(w.layout[0], normalize(Prod((block, out_within))))
        self.mark(w, "in", [1])
        self.mark(w, "out", [0])
        if b is not None:
            self.join(w.layout[0], b.layout[0])
            self.mark(b, "out")
            if path:
                self.affine[n.name] = (path, f"{path}.weight", f"{path}.bias", 1)
        if isinstance(site_node, fx.Node) and not x.is_param:
            self.sites.append((site_node.name, 1))
        return TInfo((x.layout[0], w.layout[0], *(Fixed(int(s)) for s in value.shape[2:])))

    # -- normalisations --------------------------------------------------------------------
    def channel_norm(self, x: TInfo, params: list[TInfo | None]) -> TInfo:
        for p in params:
            if p is not None:
                self.join(x.layout[1], p.layout[0])
                self.mark(p, "out")
        self.restrict(x.layout, PERMUTATION)
        return TInfo(x.layout)

    def group_norm(self, x: TInfo, groups: int, w: TInfo | None, b: TInfo | None) -> TInfo:
        channels = x.layout[1].size
        # Statistics are taken within each group: groups may move as blocks and channels
        # within a group may move (the same way in every group); nothing may cross groups.
        structure = normalize(Prod((self.fresh(groups, "groups"), self.fresh(channels // groups, "within-group"))))
        self.join(x.layout[1], structure)
        for p in (w, b):
            if p is not None:
                self.join(x.layout[1], p.layout[0])
                self.mark(p, "out")
        self.restrict(x.layout, PERMUTATION)
        return TInfo(x.layout)

    def norm(self, n: fx.Node, x: TInfo, k: int, w: TInfo | None, b: TInfo | None, *, kind: str) -> TInfo:
        """LayerNorm (``kind="layer"``) or RMSNorm (``"rms"``) over the last ``k`` axes.

        A gain (and bias) multiplies each unit by its own number, so in general only
        permutations pass. Without them, the normalisation keeps lengths: an RMSNorm commutes
        with every orthogonal map, a LayerNorm (which also subtracts the mean) with those that
        fix the all-ones vector. A norm whose gain and bias fold into the linear layers that
        read it (``symmetry_graph(norms="fold")``) is treated as gain-free; its parameters
        still follow permutations, and states are folded before any other map is applied.
        """
        for p in (w, b):
            if p is not None:
                for i in range(k):
                    self.join(x.layout[len(x.layout) - k + i], p.layout[i])
                self.mark(p, "out")
        fold = self.folds.get(n.name)
        gain_free = w is None
        if k == 1 and (fold is not None or gain_free) and not x.is_param:
            self.restrict(x.layout[:-1], PERMUTATION)
            self.restrict([x.layout[-1]], ORTHOGONAL, f"{self.why} (a normalisation keeps only lengths)")
            if kind == "layer":
                self.classes.centered.append((x.layout[-1], self.why))
            if fold is not None:
                self.applied_folds[n.name] = fold
            return TInfo(x.layout)
        self.restrict(x.layout, PERMUTATION)
        return TInfo(x.layout)

    def region(self, region: Region, n: fx.Node, value: object) -> object:
        """An RMSNorm traced into elementwise operations, read as one normalisation after
        checking on the example that it computes ``x / sqrt(mean(x^2) + eps) * weight``."""
        (x_node,) = region.inputs
        xv = self.kept.get(x_node.name)
        x = self.info(x_node, xv)
        m = region.module
        if not isinstance(x, TInfo) or x.is_param or not isinstance(xv, Tensor) or not isinstance(value, Tensor):
            return NotImplemented
        eps = getattr(m, "variance_epsilon", getattr(m, "eps", None))
        if eps is None:
            eps = torch.finfo(xv.dtype).eps
        with torch.no_grad():
            x64 = xv.double()
            ref = x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + float(eps)) * m.weight.double()
            if ref.shape != value.shape or not torch.allclose(ref, value.double(), rtol=1e-4, atol=1e-5):
                return NotImplemented
        key = f"{region.path}.weight"
        w = self.param(key, m.weight.shape) if key in self.state_keys else self.fixed(m.weight.shape)
        self.mark(x, "out")
        return self.norm(n, x, 1, w, None, kind="rms")

    # -- embeddings and pooling ------------------------------------------------------------
    def embedding(self, x: TInfo, w: TInfo | None) -> TInfo:
        assert w is not None
        self.fix([w.layout[0]])
        self.mark(w, "out")
        return TInfo((*x.layout, w.layout[1]))

    def pool(self, x: TInfo, value: Tensor, *, linear: bool) -> TInfo:
        self.fix(x.layout[2:])
        if not linear:
            self.restrict(x.layout, PERMUTATION)
        return TInfo((x.layout[0], x.layout[1], *(Fixed(int(s)) for s in value.shape[2:])))

    # -- attention -------------------------------------------------------------------------
    def attention_label(self) -> str:
        """The prefix of attention groups' names: the module the attention runs in."""
        from landscape.symmetry._ops import module_path

        path = module_path(self.node) if self.node is not None else None
        return f"{path}." if path else ""

    def sdpa(self, n: fx.Node, args: tuple, kwargs: dict, value: object) -> object:
        """``softmax(q k^T * scale + mask) v`` per head (``F.scaled_dot_product_attention``).

        The heads move together (a permutation); within each head, the query/key coordinates
        may be mixed by any invertible map ``M`` (queries by ``M``, keys by ``M^-T``) and the
        value coordinates by another, each head with maps of its own.
        """
        names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")

        def get(i: int) -> tuple[object, object]:
            if len(args) > i:
                return n.args[i], args[i]
            return n.kwargs.get(names[i]), kwargs.get(names[i])

        (qn, qv), (kn, kv), (vn, vv) = get(0), get(1), get(2)
        q, k, v = self.info(qn, qv), self.info(kn, kv), self.info(vn, vv)
        if not all(isinstance(i, TInfo) and not i.is_param for i in (q, k, v)) or qv.dim() < 3:
            return self.unsupported(n, args, kwargs, value, "attention on parameters or unbatched inputs")
        for info in (q, k, v):
            self.mark(info, "out")
        gqa = bool(get(7)[1]) and qv.shape[-3] != kv.shape[-3]
        nd = max(qv.dim(), kv.dim(), vv.dim())
        qb, kb, vb = (list(i.layout[:-2]) for i in (q, k, v))
        if gqa:
            group = qv.shape[-3] // kv.shape[-3]
            self.join(qb[-1], normalize(Prod((kb[-1], self.fresh(group, "query group")))))
            self.join(kb[-1], vb[-1])
            heads_q, heads_kv = qb[-1], kb[-1]
            batch = self.broadcast(
                [(TInfo(tuple(qb[:-1])), qv.shape[:-3]), (TInfo(tuple(kb[:-1])), kv.shape[:-3])],
                value.shape[: nd - 3],
            )
            batch_out = [*batch, heads_q]
            per_head_axes = [*batch, heads_kv]
        else:
            batch_out = self.broadcast(
                [
                    (TInfo(tuple(qb)), qv.shape[:-2]),
                    (TInfo(tuple(kb)), kv.shape[:-2]),
                    (TInfo(tuple(vb)), vv.shape[:-2]),
                ],
                value.shape[: nd - 2],
            )
            per_head_axes = batch_out
        self.join(k.layout[-2], v.layout[-2])
        self.restrict([k.layout[-2]], PERMUTATION)
        self.dot(q.layout[-1], k.layout[-1])
        label = self.attention_label()
        self.heads_of(per_head_axes, [q.layout[-1], k.layout[-1], v.layout[-1], q.layout[-2]], label)
        self.name_atoms(q.layout[-1], f"{label}qk")
        self.name_atoms(v.layout[-1], f"{label}vo")
        self.restrict(batch_out, PERMUTATION)
        mask_node, mask = get(3)
        if isinstance(mask, Tensor):
            m = self.info(mask_node, mask)
            if isinstance(m, TInfo) and any(True for lay in m.layout for _ in atoms(self.classes.expand(lay))):
                scores = TInfo((*batch_out, q.layout[-2], k.layout[-2]))
                self.broadcast(
                    [(m, mask.shape), (scores, (*value.shape[:-1], kv.shape[-2]))], (*value.shape[:-1], kv.shape[-2])
                )
                self.restrict(m.layout, PERMUTATION)
        for node, val in ((qn, qv), (kn, kv), (vn, vv)):
            if isinstance(node, fx.Node):
                self.sites.append((node.name, val.dim() - 1))
        return TInfo((*batch_out, q.layout[-2], v.layout[-1]))

    def multihead_attention(
        self, n: fx.Node, m: nn.MultiheadAttention, path: str, args: tuple, kwargs: dict, value: object
    ) -> object:
        """``nn.MultiheadAttention`` with its packed in-projection: the rows of
        ``in_proj_weight`` are the query, key and value parts, each (heads x head coordinates)."""
        names = ("query", "key", "value")
        nodes = [n.args[i] if len(args) > i else n.kwargs.get(names[i]) for i in range(3)]
        values = [args[i] if len(args) > i else kwargs.get(names[i]) for i in range(3)]
        infos = [self.info(a, v) for a, v in zip(nodes, values)]
        if (
            not m._qkv_same_embed_dim
            or m.bias_k is not None
            or not all(isinstance(i, TInfo) and not i.is_param for i in infos)
            or values[0].dim() != 3
        ):
            return self.unsupported(n, args, kwargs, value, "a MultiheadAttention with separate projections or bias_k")
        q, k, v = infos
        heads, dim = m.num_heads, m.head_dim
        w_in = self.module_param(path, "in_proj_weight", m.in_proj_weight)
        b_in = self.module_param(path, "in_proj_bias", m.in_proj_bias)
        w_out = self.module_param(f"{path}.out_proj", "weight", m.out_proj.weight)
        b_out = self.module_param(f"{path}.out_proj", "bias", m.out_proj.bias)
        h = self.fresh(heads, f"{path}:heads")
        dq, dk, dv = (self.fresh(dim, f"{path}:{part}") for part in ("q", "k", "v"))
        rows = normalize(Sum((normalize(Prod((h, dq))), normalize(Prod((h, dk))), normalize(Prod((h, dv))))))
        self.classes.carried.extend([h, dq, dk, dv])
        self.join(w_in.layout[0], rows)
        for x in infos:
            self.mark(x, "out")
            self.join(x.layout[-1], w_in.layout[1])
        self.mark(w_in, "in", [1])
        self.mark(w_in, "out", [0])
        if b_in is not None:
            self.join(b_in.layout[0], w_in.layout[0])
            self.mark(b_in, "out")
        self.dot(dq, dk)
        self.heads_of([h], [dq, dk, dv], f"{path}.")
        self.name_atoms(dq, f"{path}.qk")
        self.name_atoms(dv, f"{path}.vo")
        self.restrict([h], PERMUTATION)
        self.join(w_out.layout[1], normalize(Prod((h, dv))))
        self.mark(w_out, "in", [1])
        self.mark(w_out, "out", [0])
        if b_out is not None:
            self.join(b_out.layout[0], w_out.layout[0])
            self.mark(b_out, "out")
        seq, batch = (1, 0) if m.batch_first else (0, 1)
        self.join(k.layout[seq], v.layout[seq])
        self.restrict([k.layout[seq]], PERMUTATION)
        for x in (k, v):
            self.join(q.layout[batch], x.layout[batch])
        if isinstance(nodes[0], fx.Node):
            self.sites.append((nodes[0].name, 2))
        layout = list(q.layout)
        layout[-1] = w_out.layout[0]
        out = TInfo(tuple(layout))
        if isinstance(value, (tuple, list)):
            return [out, *(self.opaque_output(v) for v in value[1:])]
        return out

    def rotary(self, pattern: RotaryPattern, n: fx.Node, value: object) -> object:
        """``x * cos + rotate_half(x) * sin``: each pair of head coordinates ``(i, i + d/2)`` is
        rotated by a position-dependent angle. Only maps that commute with every such rotation
        survive (a complex number per pair: rotation and scale), checked on the example."""
        xv = self.kept.get(pattern.x.name)
        x = self.info(pattern.x, xv)
        cos = self.kept.get(pattern.cos.name) if isinstance(pattern.cos, fx.Node) else pattern.cos
        sin = self.kept.get(pattern.sin.name) if isinstance(pattern.sin, fx.Node) else pattern.sin
        if not (isinstance(x, TInfo) and not x.is_param and all(isinstance(t, Tensor) for t in (xv, cos, sin, value))):
            return NotImplemented
        for node, t in ((pattern.cos, cos), (pattern.sin, sin)):
            info = self.info(node, t) if isinstance(node, fx.Node) else self.fixed(t.shape)
            if not isinstance(info, TInfo) or any(True for lay in info.layout for _ in atoms(self.classes.expand(lay))):
                return NotImplemented  # the angles must not depend on any group
        d = xv.shape[-1]
        half = d // 2
        if d % 2 or cos.shape[-1] not in (1, d) or sin.shape[-1] not in (1, d):
            return NotImplemented
        with torch.no_grad():
            x64, c64, s64 = xv.double(), cos.double(), sin.double()
            rotated = torch.cat([-x64[..., half:], x64[..., :half]], dim=-1)
            expected = x64 * c64 + rotated * s64
            same_angles = cos.shape[-1] == 1 or (
                torch.equal(cos[..., :half], cos[..., half:]) and torch.equal(sin[..., :half], sin[..., half:])
            )
            if (
                not same_angles
                or expected.shape != value.shape
                or not torch.allclose(expected, value.double(), rtol=1e-5, atol=1e-6)
            ):
                return NotImplemented
        self.mark(x, "out")
        nd = xv.dim()
        for t in (cos, sin):
            for k in range(nd - 1):
                j = k - (nd - t.dim())
                if j >= 0 and t.shape[j] != 1:
                    self.fix([x.layout[k]])  # the angle varies along this axis (positions)
        self.classes.rotary.append((x.layout[-1], self.why))
        return TInfo(x.layout)
