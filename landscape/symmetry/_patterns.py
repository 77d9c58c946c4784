"""Look-ahead analyses of a captured graph, done before the rules run.

Most rules look at one operation at a time. Four things need to see further:

- *slot axes*: a packed projection reshaped to ``(..., 3, heads, head_dim)`` and then only
  ever indexed along the 3 holds three independent tensors (queries, keys, values), not one
  tensor three times; the reshape must know that to give each its own groups;
- *rotary embeddings*: ``x * cos + rotate_half(x) * sin`` mixes the two halves of the head
  coordinates by position-dependent rotations, which only maps that commute with the
  rotations survive; its slices, negation and concatenation must be read as one operation;
- *module regions*: an ``RMSNorm`` written out in elementwise operations is one normalisation;
- *foldable norms*: a LayerNorm/RMSNorm whose output only feeds linear layers can have its gain
  and bias folded into them, after which the residual stream admits orthogonal maps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch import Tensor, nn

from landscape.symmetry._ops import DROPOUT_MODULES, canonical, module_stack

__all__ = ["Fold", "Region", "RotaryPattern", "find_folds", "find_regions", "find_rotary", "index_only", "node_name"]

_METHOD_ALIASES = {
    "swapaxes": "transpose",
    "swapdims": "transpose",
    "moveaxis": "movedim",
    "add_": "add",
    "sub_": "sub",
    "mul_": "mul",
    "div_": "div",
    "truediv": "div",
    "__add__": "add",
    "__mul__": "mul",
    "bmm": "matmul",
    "mm": "matmul",
    "concat": "cat",
    "subtract": "sub",
    "multiply": "mul",
    "true_divide": "div",
    "masked_fill_": "masked_fill",
    "clamp_": "clamp",
    "__getitem__": "getitem",
}
# Operations that leave values and axes alone.
_SAME = {"contiguous", "clone", "detach", "float", "double", "half", "bfloat16", "to", "type", "type_as", "identity",
         "alias", "cpu", "cuda", "requires_grad_"}  # fmt: skip


def node_name(node: fx.Node) -> str:
    """The canonical operation name of a node, tensor-method aliases resolved."""
    name = canonical(node)
    if node.op == "call_method":
        name = _METHOD_ALIASES.get(name, name)
    return name


def _norm(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


def _arg(node: fx.Node, i: int, key: str, default: object = None) -> object:
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(key, default)


def index_only(node: fx.Node, axis: int, ndim: int, depth: int = 0) -> bool:
    """Whether every use of ``node``'s value indexes axis ``axis`` with integers (possibly after
    moving axes around): then its slots are independent tensors."""
    if depth > 12 or not node.users:
        return False
    for user in node.users:
        if user.op == "output" or not user.args or user.args[0] is not node:
            return False
        name = node_name(user)
        if name in _SAME:
            if not index_only(user, axis, ndim, depth + 1):
                return False
        elif name in ("permute", "transpose", "t", "movedim"):
            order = _order(user, name, ndim)
            if order is None or not index_only(user, order.index(axis), ndim, depth + 1):
                return False
        elif name == "unsqueeze":
            d = _arg(user, 1, "dim")
            if not isinstance(d, int):
                return False
            d = _norm(d, ndim + 1)
            if not index_only(user, axis + (1 if d <= axis else 0), ndim + 1, depth + 1):
                return False
        elif name == "squeeze":
            d = _arg(user, 1, "dim")
            if not isinstance(d, int):
                return False
            d = _norm(d, ndim)
            if d == axis or not index_only(user, axis - (1 if d < axis else 0), ndim - 1, depth + 1):
                return False
        elif name == "select":
            d = _arg(user, 1, "dim")
            if not isinstance(d, int):
                return False
            d = _norm(d, ndim)
            if d != axis and not index_only(user, axis - (1 if d < axis else 0), ndim - 1, depth + 1):
                return False
        elif name == "unbind":
            if _norm(int(_arg(user, 1, "dim", 0)), ndim) != axis:
                return False
        elif name == "getitem":
            index = user.args[1]
            items = list(index) if isinstance(index, tuple) else [index]
            if any(it is Ellipsis for it in items):
                k = items.index(Ellipsis)
                consumed = sum(1 for it in items if it is not None and it is not Ellipsis)
                items = items[:k] + [slice(None)] * (ndim - consumed) + items[k + 1 :]
            d = 0
            hit = False
            for it in items:
                if it is None:
                    continue
                if d == axis:
                    if not isinstance(it, int):
                        return False
                    hit = True
                elif not (isinstance(it, int) or (isinstance(it, slice) and it == slice(None))):
                    return False
                d += 1
            if not hit:
                return False
        else:
            return False
    return True


def _order(node: fx.Node, name: str, ndim: int) -> list[int] | None:
    if name == "permute":
        dims = node.args[1:] if not (len(node.args) == 2 and isinstance(node.args[1], (list, tuple))) else node.args[1]
        dims = node.kwargs.get("dims", dims)
        if not all(isinstance(d, int) for d in dims):
            return None
        return [_norm(int(d), ndim) for d in dims]
    if name == "t":
        return [1, 0] if ndim == 2 else list(range(ndim))
    if name == "transpose":
        d0, d1 = _arg(node, 1, "dim0"), _arg(node, 2, "dim1")
        if not isinstance(d0, int) or not isinstance(d1, int):
            return None
        order = list(range(ndim))
        d0, d1 = _norm(d0, ndim), _norm(d1, ndim)
        order[d0], order[d1] = order[d1], order[d0]
        return order
    src, dst = _arg(node, 1, "source"), _arg(node, 2, "destination")
    src = [src] if isinstance(src, int) else list(src)
    dst = [dst] if isinstance(dst, int) else list(dst)
    src, dst = [_norm(s, ndim) for s in src], [_norm(d, ndim) for d in dst]
    order: list[int | None] = [None] * ndim
    for s, d in zip(src, dst):
        order[d] = s
    rest = iter(k for k in range(ndim) if k not in src)
    return [o if o is not None else next(rest) for o in order]


# ---------------------------------------------------------------------------------------
# Rotary position embeddings
# ---------------------------------------------------------------------------------------


@dataclass
class RotaryPattern:
    """``out = x * cos + rotate_half(x) * sin`` (rotate_half: ``cat(-x[..., h:], x[..., :h])``)."""

    out: fx.Node
    x: fx.Node
    cos: object
    sin: object
    inner: list[fx.Node]


def _mul_parts(node: object) -> tuple[object, object] | None:
    if isinstance(node, fx.Node) and node_name(node) == "mul" and len(node.args) == 2:
        return node.args[0], node.args[1]
    return None


def _half_slice(node: object, x: fx.Node) -> str | None:
    """``"low"``/``"high"`` when ``node`` takes the first/second part of ``x``'s last axis (the
    split point is checked on values later)."""
    if not isinstance(node, fx.Node) or not node.args or node.args[0] is not x:
        return None
    name = node_name(node)
    if name == "slice":
        dim, start = _arg(node, 1, "dim", 0), _arg(node, 2, "start", None)
        if dim != -1 and not isinstance(dim, int):
            return None
        return "low" if start in (None, 0) else "high"
    if name == "getitem":
        index = node.args[1]
        items = list(index) if isinstance(index, tuple) else [index]
        if len(items) != 2 or items[0] is not Ellipsis or not isinstance(items[1], slice):
            return None
        return "low" if items[1].start in (None, 0) else "high"
    if name == "narrow":
        return "low" if _arg(node, 2, "start", 0) == 0 else "high"
    return None


def _rotate_half(node: object) -> tuple[fx.Node, list[fx.Node]] | None:
    """``(x, nodes)`` when ``node`` is ``cat([-x_high, x_low], -1)``."""
    if not isinstance(node, fx.Node) or node_name(node) not in ("cat",):
        return None
    parts = node.args[0] if node.args else node.kwargs.get("tensors")
    dim = _arg(node, 1, "dim", 0)
    if not isinstance(parts, (list, tuple)) or len(parts) != 2 or dim != -1:
        return None
    neg, low = parts
    if not isinstance(neg, fx.Node) or node_name(neg) != "neg" or not isinstance(low, fx.Node):
        return None
    high = neg.args[0]
    if not isinstance(high, fx.Node) or not low.args or not isinstance(low.args[0], fx.Node):
        return None
    x = low.args[0]
    if _half_slice(low, x) != "low" or _half_slice(high, x) != "high":
        return None
    return x, [high, neg, low, node]


def find_rotary(graph: fx.Graph) -> dict[str, RotaryPattern]:
    """Candidate rotary embeddings, by the name of the node that adds the two halves."""
    found: dict[str, RotaryPattern] = {}
    for node in graph.nodes:
        if node_name(node) != "add" or len(node.args) != 2:
            continue
        first, second = _mul_parts(node.args[0]), _mul_parts(node.args[1])
        if first is None or second is None:
            continue
        for direct, rotated in ((first, second), (second, first)):
            match = None
            for xi, ci in ((0, 1), (1, 0)):
                for ri, si in ((0, 1), (1, 0)):
                    rot = _rotate_half(rotated[ri])
                    if rot is not None and rot[0] is direct[xi] and isinstance(direct[xi], fx.Node):
                        match = (direct[xi], direct[ci], rotated[si], rot[1])
            if match is None:
                continue
            x, cos, sin, nodes = match
            muls = [a for a in node.args if isinstance(a, fx.Node)]
            inner = [*nodes, *muls]
            # Every inner node feeds only the pattern (x itself may have other uses).
            members = set(inner) | {node}
            if all(set(m.users) <= members for m in inner):
                found[node.name] = RotaryPattern(node, x, cos, sin, inner)
            break
    return found


# ---------------------------------------------------------------------------------------
# Module regions (norms written out in elementwise operations)
# ---------------------------------------------------------------------------------------


@dataclass
class Region:
    """The nodes of one call of a module whose operations are read as one (an RMSNorm)."""

    path: str
    module: nn.Module
    kind: str
    nodes: list[fx.Node]
    output: fx.Node
    inputs: list[fx.Node] = field(default_factory=list)


def _is_rms_norm(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return (
        type(module).__name__.endswith("RMSNorm")
        and isinstance(weight, Tensor)
        and weight.dim() == 1
        and getattr(module, "bias", None) is None
    )


def find_regions(gm: fx.GraphModule, model: nn.Module) -> dict[str, Region]:
    """Regions of RMSNorm-like modules that were traced into elementwise operations, by the
    name of the region's output node."""
    modules = dict(model.named_modules())
    members: dict[str, list[fx.Node]] = {}
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "output", "get_attr", "call_module"):
            continue
        for path in module_stack(node):
            m = modules.get(path)
            if m is not None and _is_rms_norm(m):
                members.setdefault(path, []).append(node)
                break
    regions: dict[str, Region] = {}
    for path, nodes in members.items():
        # Casts of the input at the start (``x.to(float32)``) belong to the input: the residual
        # stream may read them too.
        changed = True
        while changed:
            changed = False
            for m in list(nodes):
                if (node_name(m) in _SAME or node_name(m) == "assert_metadata") and not (
                    set(m.all_input_nodes) & set(nodes)
                ):
                    nodes.remove(m)
                    changed = True
        inside = set(nodes)
        outputs = [n for n in nodes if any(u not in inside for u in n.users)]
        inputs = []
        for n in nodes:
            for a in n.all_input_nodes:
                if a not in inside and a.op != "get_attr" and a not in inputs:
                    inputs.append(a)
        if len(outputs) != 1 or len(inputs) != 1:
            continue  # called twice, or an unusual shape: read operation by operation
        regions[outputs[0].name] = Region(path, modules[path], "rms", nodes, outputs[0], inputs)
    return regions


# ---------------------------------------------------------------------------------------
# Norms whose gain and bias fold into the next linear layers
# ---------------------------------------------------------------------------------------


@dataclass
class Fold:
    """A normalisation ``g * normalize(x) + b`` whose every reader is a linear map of its
    output: ``W (g * n + b) = (W diag(g)) (n + b / g)``, so the gain ``g`` can move into the
    readers' input columns. The bias stays: a vector added to the stream transforms with it.

    ``consumers``: ``(weight key, axis of the weight that reads the norm)``.
    """

    node: str
    kind: str
    weight: str
    bias: str | None
    consumers: list[tuple[str, int]]


def _param_key(node: object, gm: fx.GraphModule) -> str | None:
    if isinstance(node, fx.Node) and node.op == "get_attr":
        return str(node.target)
    return None


def _consumers(
    node: fx.Node,
    gm: fx.GraphModule,
    modules: Mapping[str, nn.Module],
    shapes: Mapping[str, tuple[int, ...]],
    depth: int = 0,
) -> list[tuple[str, int, str | None]] | None:
    """The linear maps that read ``node``'s last axis (None when some reader is anything else)."""
    if depth > 12:
        return None
    found: list[tuple[str, int, str | None]] = []
    last = shapes.get(node.name, (None,))[-1] if shapes.get(node.name) else None
    for user in node.users:
        if user.op == "output":
            return None
        if user.op == "call_module":
            m = modules.get(str(user.target))
            if isinstance(m, DROPOUT_MODULES) or isinstance(m, nn.Identity):
                more = _consumers(user, gm, modules, shapes, depth + 1)
                if more is None:
                    return None
                found += more
                continue
            if isinstance(m, nn.Linear) and user.args and user.args[0] is node and len(user.args) == 1:
                found.append((f"{user.target}.weight", 1, f"{user.target}.bias" if m.bias is not None else None))
                continue
            if isinstance(m, nn.MultiheadAttention) and _self_attention(user, node) and m._qkv_same_embed_dim:
                found.append(
                    (
                        f"{user.target}.in_proj_weight",
                        1,
                        f"{user.target}.in_proj_bias" if m.in_proj_bias is not None else None,
                    )
                )
                continue
            return None
        name = node_name(user)
        if name in ("size", "dim", "numel", "sym_size") or (
            name == "getattr" and len(user.args) > 1 and user.args[1] in ("shape", "dtype", "device", "ndim")
        ):
            continue  # reads the shape, not the values
        if name in _SAME or name in ("dropout", "assert_metadata"):
            if name == "assert_metadata":
                continue
            more = _consumers(user, gm, modules, shapes, depth + 1)
            if more is None:
                return None
            found += more
            continue
        if name in ("reshape", "flatten", "getitem", "select", "slice", "transpose", "permute", "unsqueeze", "squeeze"):
            # Shape operations that keep the normalised axis last, whole and unmixed.
            out_shape = shapes.get(user.name)
            if not out_shape or out_shape[-1] != last or not _keeps_last(user, name, shapes.get(node.name, ())):
                return None
            more = _consumers(user, gm, modules, shapes, depth + 1)
            if more is None:
                return None
            found += more
            continue
        if name == "linear" and user.args[0] is node:
            weight = _param_key(_arg(user, 1, "weight"), gm)
            bias_node = _arg(user, 2, "bias")
            bias = _param_key(bias_node, gm)
            if weight is None or (bias_node is not None and bias is None):
                return None
            found.append((weight, 1, bias))
            continue
        if name == "addmm" and len(user.args) >= 3 and user.args[1] is node:
            weight, bias = _param_key(user.args[2], gm), _param_key(user.args[0], gm)
            if weight is None or bias is None or user.kwargs.get("beta", 1) != 1 or user.kwargs.get("alpha", 1) != 1:
                return None
            found.append((weight, 0, bias))
            continue
        if name == "matmul" and len(user.args) == 2 and user.args[0] is node:
            weight = _param_key(user.args[1], gm)
            w_shape = shapes.get(user.args[1].name) if isinstance(user.args[1], fx.Node) else None
            if weight is None or not w_shape or len(w_shape) != 2:
                return None
            found.append((weight, 0, None))
            continue
        return None
    return found


def _self_attention(user: fx.Node, node: fx.Node) -> bool:
    args = list(user.args[:3]) + [user.kwargs.get(k) for k in ("query", "key", "value") if k in user.kwargs]
    return len(args) >= 3 and all(a is node for a in args[:3])


def _keeps_last(user: fx.Node, name: str, in_shape: tuple[int, ...]) -> bool:
    ndim = len(in_shape)
    if not ndim:
        return False
    if name in ("reshape", "flatten"):
        return True  # the output's last size equals the input's: checked by the caller
    if name in ("transpose", "permute"):
        order = _order(user, name, ndim)
        return order is not None and order[-1] == ndim - 1
    if name == "getitem":
        index = user.args[1]
        items = list(index) if isinstance(index, tuple) else [index]
        if Ellipsis in items:
            return items[-1] == slice(None) or items[-1] is Ellipsis
        return len([it for it in items if it is not None]) < ndim
    if name in ("select", "slice"):
        d = _arg(user, 1, "dim", 0)
        return isinstance(d, int) and _norm(d, ndim) != ndim - 1
    if name in ("unsqueeze", "squeeze"):
        d = _arg(user, 1, "dim")
        return isinstance(d, int) and (d >= 0 or (name == "unsqueeze" and d < -1) or (name == "squeeze" and d != -1))
    return False


def find_folds(
    gm: fx.GraphModule,
    model: nn.Module,
    norms: Mapping[str, tuple[str, str | None, str | None]],
    shapes: Mapping[str, tuple[int, ...]],
    tied: set[str],
) -> dict[str, Fold]:
    """The norms (node name -> (kind, gain key, bias key)) whose gain and bias fold into their readers."""
    modules = dict(model.named_modules())
    nodes = {n.name: n for n in gm.graph.nodes}
    folds: dict[str, Fold] = {}
    used: dict[str, int] = {}
    for name, (kind, weight, bias) in norms.items():
        if weight is None or weight in tied:
            continue
        consumers = _consumers(nodes[name], gm, modules, shapes)
        if not consumers or any(c[0] in tied for c in consumers):
            continue
        folds[name] = Fold(name, kind, weight, bias, [(key, axis) for key, axis, _ in consumers])
        for key, _, _ in consumers:
            used[key] = used.get(key, 0) + 1
    # A reader shared by two norms (or used twice) cannot take both gains.
    uses = _param_uses(gm)
    return {
        n: f
        for n, f in folds.items()
        if all(used[k] == 1 and uses.get(k, 0) == 1 for k, _ in f.consumers) and uses.get(f.weight, 0) <= 1
    }


def _param_uses(gm: fx.GraphModule) -> dict[str, int]:
    uses: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            uses[str(node.target)] = uses.get(str(node.target), 0) + len(node.users)
        elif node.op == "call_module":
            m = gm.get_submodule(str(node.target))
            for pname, _ in m.named_parameters(recurse=False):
                key = f"{node.target}.{pname}"
                uses[key] = uses.get(key, 0) + 1
    return uses


def shapes_of(gm: fx.GraphModule, inputs: tuple) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor-valued node on the example input."""
    shapes: dict[str, tuple[int, ...]] = {}

    class _Shapes(fx.Interpreter):
        def run_node(self, n: fx.Node) -> object:
            value = super().run_node(n)
            if isinstance(value, Tensor):
                shapes[n.name] = tuple(int(s) for s in value.shape)
            return value

    with torch.no_grad():
        _Shapes(gm).run(*inputs)
    return shapes
