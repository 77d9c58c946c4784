"""The interpreter that works out which axes must transform together.

The captured graph is run once on the example input. For every operation a rule says how
the axes of its inputs relate to the axes of its output and to the parameters it reads.
Each rule is written so that transforming every input by the groups' transforms transforms
the output the same way: joins make two axes share one group, *restrictions* narrow what a
group may do (an elementwise nonlinearity allows only permutations), dot products between
two activations tie one group to the inverse transpose of another, attention lets each head
use maps of its own, and anything that depends on the position of a unit (an integer index,
a constant vector) fixes it. An operation without a rule is an error that names it, unless
the caller asks for such operations to be treated as fixed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch.fx as fx
from torch import Tensor, nn

from landscape.symmetry._classes import PERMUTATION, Classes
from landscape.symmetry._ops import (
    ACTIVATION_MODULES,
    ARG_REDUCE,
    AVGPOOL_MODULES,
    BATCHNORM_MODULES,
    COMPARISONS,
    CONV_MODULES,
    DROPOUT_MODULES,
    DROPOUTS,
    MAXPOOL_MODULES,
    NONLINEAR_UNARY,
    PASS_THROUGH,
    REDUCE_LINEAR,
    REDUCE_NONLINEAR,
    REDUCE_WITH_INDICES,
    RESHAPES,
    SHAPE_QUERIES,
    SKIPPED,
    describe_node,
    module_path,
    module_stack,
)
from landscape.symmetry._patterns import Fold, find_folds, find_regions, find_rotary, node_name, shapes_of
from landscape.symmetry._rules_layers import LayerRules
from landscape.symmetry._rules_shape import ShapeRules, norm_dim
from landscape.symmetry._trace import Slotted, TInfo, UnsupportedOperationError
from landscape.symmetry.layout import Fixed, Layout, atoms

__all__ = ["Builder"]


def _tensors_in(value: object) -> bool:
    if isinstance(value, Tensor):
        return True
    if isinstance(value, (list, tuple)):
        return any(_tensors_in(v) for v in value)
    if isinstance(value, dict):
        return any(_tensors_in(v) for v in value.values())
    return False


class Builder(ShapeRules, LayerRules, fx.Interpreter):
    def __init__(
        self,
        gm: fx.GraphModule,
        model: nn.Module,
        state_keys: set[str],
        opaque: set[str],
        unknown: str,
        *,
        norms: str = "fold",
        frontend: str = "fx",
    ) -> None:
        super().__init__(gm)
        self.model = model
        self.classes = Classes()
        self.state_keys = state_keys
        self.opaque = opaque
        self.unknown = unknown
        self.norms = norms
        self.frontend = frontend
        self.infos: dict[str, object] = {}
        self.param_axes: dict[tuple[str, int], Layout] = {}
        self.variances: dict[tuple[str, int], set[str]] = {}
        self.sites: list[tuple[str, int]] = []
        self.affine: dict[str, tuple[str, str, str | None, int]] = {}
        self.nonlinear: list[str] = []
        self.transparent: set[str] = set()
        self.order: list[str] = []
        self.node: fx.Node | None = None
        self.names: dict[int, str] = {}  # preferred group names, by atom (attention heads and coordinates)
        self.folds: dict[str, Fold] = {}
        self.applied_folds: dict[str, Fold] = {}
        self.regions = find_regions(gm, model)
        self.region_of = {m.name: r for r in self.regions.values() for m in r.nodes if m is not r.output}
        self.rotaries = find_rotary(gm.graph)
        self.rotary_of = {m.name: p for p in self.rotaries.values() for m in p.inner}
        self.deferred: dict[str, tuple[fx.Node, tuple, dict, object]] = {}
        # Values the patterns read after fx's interpreter has let them go.
        self.keep = {a.name for p in self.rotaries.values() for a in (p.x, p.cos, p.sin) if isinstance(a, fx.Node)}
        self.keep |= {a.name for r in self.regions.values() for a in r.inputs}
        self.kept: dict[str, object] = {}

    # -- setup -------------------------------------------------------------------------
    def run(self, *args: object, **kwargs: object) -> object:
        if self.norms == "fold":
            shapes = shapes_of(self.module, args)
            tied = _tied_keys(self.model)
            self.folds = find_folds(self.module, self.model, self._norm_nodes(), shapes, tied)
        return super().run(*args, **kwargs)

    def _norm_nodes(self) -> dict[str, tuple[str, str | None, str | None]]:
        """Every LayerNorm/RMSNorm over one axis, with its gain and bias keys."""
        found: dict[str, tuple[str, str | None, str | None]] = {}
        for n in self.module.graph.nodes:
            if n.op == "call_module":
                m = self.module.get_submodule(str(n.target))
                path = str(n.target)
                if isinstance(m, nn.LayerNorm) and len(m.normalized_shape) == 1:
                    w = f"{path}.weight" if m.weight is not None else None
                    b = f"{path}.bias" if getattr(m, "bias", None) is not None else None
                    found[n.name] = ("layer", w, b)
                elif isinstance(m, getattr(nn, "RMSNorm", ())) and len(m.normalized_shape) == 1:
                    found[n.name] = ("rms", f"{path}.weight" if m.weight is not None else None, None)
                continue
            name = node_name(n)
            if name in ("layer_norm", "rms_norm") and n.op == "call_function":
                shape = n.args[1] if len(n.args) > 1 else n.kwargs.get("normalized_shape")
                if not (isinstance(shape, int) or (isinstance(shape, (list, tuple)) and len(shape) == 1)):
                    continue
                w = n.args[2] if len(n.args) > 2 else n.kwargs.get("weight")
                b = n.args[3] if len(n.args) > 3 and name == "layer_norm" else n.kwargs.get("bias")
                keys = [str(p.target) if isinstance(p, fx.Node) and p.op == "get_attr" else None for p in (w, b)]
                if (w is not None and keys[0] is None) or (b is not None and keys[1] is None):
                    continue
                found[n.name] = ("layer" if name == "layer_norm" else "rms", keys[0], keys[1])
        for out, region in self.regions.items():
            found[out] = ("rms", f"{region.path}.weight", None)
        return found

    # -- helpers ---------------------------------------------------------------------
    @property
    def why(self) -> str:
        assert self.node is not None
        return describe_node(self.node)

    def fixed(self, shape: Sequence[int]) -> TInfo:
        return TInfo(tuple(Fixed(int(s)) for s in shape))

    def info(self, arg: object, value: object, *, raw: bool = False) -> object:
        """The info of an argument (a node's info, or all-fixed for a tensor constant); a
        slotted tensor is collapsed unless ``raw``."""
        if isinstance(arg, fx.Node):
            found = self.infos.get(arg.name)
            if isinstance(found, Slotted) and not raw:
                found = self.collapse(found)
                self.infos[arg.name] = found
            if found is not None or not isinstance(value, Tensor):
                return found
        if isinstance(value, Tensor):
            return self.fixed(value.shape)
        if isinstance(arg, (list, tuple)) and isinstance(value, (list, tuple)):
            return [self.info(a, v, raw=raw) for a, v in zip(arg, value)]
        return None

    def param(self, key: str, shape: Sequence[int]) -> TInfo:
        layout = []
        for axis, size in enumerate(shape):
            if (key, axis) not in self.param_axes:
                self.param_axes[(key, axis)] = self.classes.new(int(size), f"{key}:{axis}")
            layout.append(self.param_axes[(key, axis)])
        return TInfo(tuple(layout), tuple((key, a) for a in range(len(shape))))

    def module_param(self, module: str, name: str, tensor: Tensor | None) -> TInfo | None:
        if tensor is None:
            return None
        key = f"{module}.{name}" if module else name
        if key not in self.state_keys:
            return self.fixed(tensor.shape)
        return self.param(key, tensor.shape)

    def mark(self, info: object, variance: str, axes: Iterable[int] | None = None) -> None:
        """Record how a parameter-derived tensor is used: ``"out"`` (like an activation) or
        ``"in"`` (contracted with one). Axes without a simple origin allow permutations only."""
        if not isinstance(info, TInfo) or info.origin is None:
            return
        chosen = range(len(info.layout)) if axes is None else axes
        for k in chosen:
            origin = info.origin[k]
            if origin is None:
                self.classes.restrict(info.layout[k], PERMUTATION, self.why + " (parameter used in two roles)")
            else:
                self.variances.setdefault(origin, set()).add(variance)

    def join(self, a: Layout, b: Layout) -> None:
        self.classes.join(a, b, self.why)

    def restrict(self, layouts: Iterable[Layout], kind: int, reason: str | None = None) -> None:
        for layout in layouts:
            self.classes.restrict(layout, kind, reason or self.why)

    def fix(self, layouts: Iterable[Layout]) -> None:
        for layout in layouts:
            self.classes.fix(layout, self.why)

    def fix_all(self, info: object) -> None:
        if isinstance(info, Slotted):
            for s in info.slots:
                self.fix_all(s)
        elif isinstance(info, TInfo):
            self.fix(info.layout)
        elif isinstance(info, (list, tuple)):
            for i in info:
                self.fix_all(i)
        elif isinstance(info, dict):
            for i in info.values():
                self.fix_all(i)

    def opaque_output(self, value: object) -> object:
        if isinstance(value, Tensor):
            return self.fixed(value.shape)
        if isinstance(value, (list, tuple)):
            return [self.opaque_output(v) for v in value]
        return None

    def fresh(self, size: int, label: str = "") -> Layout:
        return self.classes.new(int(size), label or f"{self.node.name if self.node else '?'}")

    def has_atoms(self, info: object) -> bool:
        if isinstance(info, Slotted):
            return True
        if isinstance(info, TInfo):
            return any(True for lay in info.layout for _ in atoms(self.classes.expand(lay)))
        if isinstance(info, (list, tuple)):
            return any(self.has_atoms(i) for i in info)
        if isinstance(info, dict):
            return any(self.has_atoms(i) for i in info.values())
        return False

    # -- running ---------------------------------------------------------------------
    def run_node(self, n: fx.Node) -> object:
        value = super().run_node(n)
        if n.name in self.keep:
            self.kept[n.name] = value
        self.node = n
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        if n.op == "output":
            self.fix_all(self.info(n.args[0], args[0], raw=True))
            return value
        if n.name in self.region_of or n.name in self.rotary_of:
            # Read as part of a larger operation at its last node (or one by one, if that fails).
            self.deferred[n.name] = (n, args, kwargs, value)
            self.order.append(n.name)
            return value
        info = None
        pattern = self.rotaries.get(n.name)
        region = self.regions.get(n.name)
        if pattern is not None or region is not None:
            found = self.rotary(pattern, n, value) if pattern is not None else self.region(region, n, value)
            if found is NotImplemented:
                self.replay(pattern.inner if pattern is not None else region.nodes)
                self.node = n
            else:
                info = found
                if region is not None:
                    self.transparent.add(n.name)
        if info is None:
            info = self.visit(n, args, kwargs, value)
        if info is not None:
            self.infos[n.name] = info
        self.order.append(n.name)
        return value

    def replay(self, nodes: Sequence[fx.Node]) -> None:
        """Apply the ordinary rules to deferred nodes, in the order they ran."""
        for m in sorted(nodes, key=lambda m: self.order.index(m.name) if m.name in self.order else 1 << 30):
            entry = self.deferred.pop(m.name, None)
            if entry is None:
                continue
            node, args, kwargs, value = entry
            self.node = node
            info = self.visit(node, args, kwargs, value)
            if info is not None:
                self.infos[node.name] = info

    def visit(self, n: fx.Node, args: tuple, kwargs: dict, value: object) -> object:
        if n.op == "placeholder":
            return self.opaque_output(value)
        if n.op == "get_attr":
            if isinstance(value, Tensor):
                if n.target in self.state_keys:
                    return self.param(str(n.target), value.shape)
                return self.fixed(value.shape)
            return None
        inside_opaque = self._inside_opaque(n)
        if inside_opaque:
            return self.make_opaque(n, args, kwargs, value, f"it is inside {inside_opaque!r}, listed in fixed=")
        if n.op == "call_module":
            if str(n.target).startswith("_guards"):
                return None  # torch.export's input checks
            module = self.module.get_submodule(str(n.target))
            if isinstance(module, nn.MultiheadAttention):
                return self.multihead_attention(n, module, str(n.target), args, kwargs, value)
            infos = [self.info(a, v) for a, v in zip(n.args, args)]
            return self.visit_module(n, module, args, kwargs, infos, value)
        name = node_name(n)
        if name in SKIPPED:
            return None
        raw = [self.info(a, v, raw=True) for a, v in zip(n.args, args)]
        slotted = raw[0] if raw and isinstance(raw[0], Slotted) else None
        if slotted is not None:
            out = self.slot_op(n, name, args, kwargs, slotted, value)
            if out is not NotImplemented:
                return out
        infos = [self.info(a, v) for a, v in zip(n.args, args)]
        kwinfos = {k: self.info(n.kwargs.get(k), v) for k, v in kwargs.items()}
        if (
            n.op == "call_function"
            and _tensors_in(value)
            and not self.has_atoms(infos)
            and not self.has_atoms(kwinfos)
            and name not in ("getitem",)
        ):
            # No input carries a group (masks, positions, constants): neither does the output.
            return self.opaque_output(value)
        return self.visit_function(n, name, args, kwargs, infos, kwinfos, value)

    def _inside_opaque(self, n: fx.Node) -> str | None:
        if not self.opaque:
            return None
        paths = module_stack(n)
        for p in paths:
            for o in self.opaque:
                if p == o or p.startswith(o + "."):
                    return o
        if n.name in self.opaque:
            return n.name
        return None

    def make_opaque(self, n: fx.Node, args: tuple, kwargs: dict, value: object, reason: str) -> object:
        """Fix every axis the operation touches (the identity is always a symmetry)."""
        for a, v in zip(n.args, args):
            self.fix_all(self.info(a, v, raw=True))
        for k, v in kwargs.items():
            self.fix_all(self.info(n.kwargs.get(k), v, raw=True))
        if n.op == "call_module":
            module = self.module.get_submodule(str(n.target))
            for pname, p in list(module.named_parameters()) + list(module.named_buffers()):
                info = self.module_param(str(n.target), pname, p)
                if info is not None:
                    self.fix(info.layout)
        self.classes.notes.append(f"{describe_node(n)}: axes kept fixed because {reason}")
        return self.opaque_output(value)

    def unsupported(self, n: fx.Node, args: tuple, kwargs: dict, value: object, detail: str = "") -> object:
        if self.unknown == "fixed":
            return self.make_opaque(n, args, kwargs, value, "symmetry_graph has no rule for it (unknown='fixed')")
        where = module_path(n)
        target = where or n.name
        raise UnsupportedOperationError(
            f"symmetry_graph(model=...): expected operations whose effect on the model's symmetries is known; "
            f"found {describe_node(n)}{': ' + detail if detail else ''}, which has no rule. It never guesses: "
            f"pass fixed=[{target!r}] to keep every axis that module/node touches fixed, unknown='fixed' to do "
            "that for every such operation, or spec={group: ['param.name:axis', ...]} to describe the "
            "permutation groups by hand."
        )

    # -- modules ---------------------------------------------------------------------
    def visit_module(self, n: fx.Node, m: nn.Module, args: tuple, kwargs: dict, infos: list, value: object) -> object:
        path = str(n.target)
        x = infos[0] if infos else None
        if not isinstance(x, TInfo) or not isinstance(args[0], Tensor) or kwargs:
            return self.unsupported(n, args, kwargs, value, "expected one tensor input")
        xv = args[0]
        if isinstance(m, nn.Identity):
            self.transparent.add(n.name)
            return x
        self.mark(x, "out")
        if isinstance(m, nn.Linear):
            w = self.module_param(path, "weight", m.weight)
            b = self.module_param(path, "bias", m.bias)
            return self.linear(n, x, xv, w, b, path, site_node=n.args[0])
        if isinstance(m, CONV_MODULES):
            w = self.module_param(path, "weight", m.weight)
            b = self.module_param(path, "bias", m.bias)
            return self.conv(n, x, xv, w, b, m.groups, value, path, site_node=n.args[0])
        if isinstance(m, BATCHNORM_MODULES):
            params = [self.module_param(path, k, getattr(m, k, None)) for k in ("weight", "bias")]
            params += [self.module_param(path, k, getattr(m, k, None)) for k in ("running_mean", "running_var")]
            out = self.channel_norm(x, params)
            if m.affine:
                self.affine[n.name] = (path, f"{path}.weight", f"{path}.bias", 1)
            return out
        if isinstance(m, nn.GroupNorm):
            w = self.module_param(path, "weight", m.weight)
            b = self.module_param(path, "bias", m.bias)
            out = self.group_norm(x, m.num_groups, w, b)
            if m.affine:
                self.affine[n.name] = (path, f"{path}.weight", f"{path}.bias", 1)
            return out
        if isinstance(m, nn.LayerNorm):
            w = self.module_param(path, "weight", m.weight)
            b = self.module_param(path, "bias", getattr(m, "bias", None))
            out = self.norm(n, x, len(m.normalized_shape), w, b, kind="layer")
            if m.elementwise_affine and getattr(m, "bias", None) is not None and len(m.normalized_shape) == 1:
                self.affine[n.name] = (path, f"{path}.weight", f"{path}.bias", xv.dim() - 1)
            return out
        if isinstance(m, getattr(nn, "RMSNorm", ())):
            w = self.module_param(path, "weight", m.weight)
            return self.norm(n, x, len(m.normalized_shape), w, None, kind="rms")
        if isinstance(m, nn.Embedding):
            w = self.module_param(path, "weight", m.weight)
            return self.embedding(x, w)
        if isinstance(m, DROPOUT_MODULES) and not m.training:
            self.transparent.add(n.name)
            return x  # dropout in evaluation is the identity
        if isinstance(m, ACTIVATION_MODULES):
            self.restrict(x.layout, PERMUTATION)
            if isinstance(m, DROPOUT_MODULES):
                self.transparent.add(n.name)
            else:
                self.nonlinear.append(n.name)
            return TInfo(x.layout)
        if isinstance(m, (nn.Softmax, nn.LogSoftmax, nn.Softmin)):
            self.restrict(x.layout, PERMUTATION)
            return TInfo(x.layout)
        if isinstance(m, (nn.Flatten, nn.Unflatten)):
            return self.reshape(x, xv.shape, value.shape)
        if isinstance(m, AVGPOOL_MODULES):
            return self.pool(x, value, linear=True)
        if isinstance(m, MAXPOOL_MODULES):
            return self.pool(x, value, linear=False)
        return self.unsupported(n, args, kwargs, value, f"a {type(m).__name__} layer")

    # -- functions and methods -------------------------------------------------------
    def visit_function(
        self, n: fx.Node, name: str, args: tuple, kwargs: dict, infos: list, kwinfos: dict, value: object
    ) -> object:
        has_tensor_input = _tensors_in(args) or _tensors_in(kwargs)
        if not has_tensor_input:
            if isinstance(value, Tensor):
                return self.fixed(value.shape)  # a constant: the same in every network
            if name in ("getattr",) or not _tensors_in(value):
                return None
        x = infos[0] if infos else None
        xv = args[0] if args else None

        if name == "getattr":
            attr = args[1]
            if isinstance(xv, Tensor):
                if attr in ("shape", "dtype", "device", "ndim", "is_cuda", "layout", "requires_grad"):
                    return None
                if attr == "data":
                    return x
                if attr in ("T", "mT") and isinstance(x, TInfo):
                    order = (
                        list(range(xv.dim()))[::-1]
                        if attr == "T"
                        else [*range(xv.dim() - 2), xv.dim() - 1, xv.dim() - 2]
                    )
                    return self.permute(x, order)
            if not isinstance(value, Tensor) and not _tensors_in(value):
                return self.info(n.args[0], xv) if isinstance(xv, (tuple, list)) else None
            return self.unsupported(n, args, kwargs, value, f"attribute {attr!r}")
        if name in SHAPE_QUERIES:
            return None
        if name == "getitem":
            if isinstance(xv, Tensor) and isinstance(x, TInfo):
                out = self.getitem(x, xv, args[1])
                if out is None:
                    return self.unsupported(n, args, kwargs, value, "advanced (tensor) indexing")
                return out
            if isinstance(x, (list, tuple)):
                return x[args[1]] if isinstance(args[1], int) else list(x[args[1]])
            if isinstance(xv, (list, tuple)) and not _tensors_in(value):
                return None
            if isinstance(xv, (list, tuple)) and isinstance(value, Tensor):
                return self.fixed(value.shape)  # an element of a list that carries no group
            return None
        if not isinstance(value, Tensor) and not isinstance(value, (tuple, list)):
            return self.unsupported(n, args, kwargs, value, "it turns tensor values into a Python value")
        if name in PASS_THROUGH or name in ("neg", "identity", "alias", "lift_fresh_copy"):
            if isinstance(x, TInfo):
                return x
        if name == "unsqueeze" and isinstance(x, TInfo):
            return self.unsqueeze(x, int(args[1] if len(args) > 1 else kwargs["dim"]))
        if name == "squeeze" and isinstance(x, TInfo):
            return self.squeeze(x, xv, args[1] if len(args) > 1 else kwargs.get("dim"))
        if name in RESHAPES:
            if isinstance(x, TInfo):
                return self.reshape(x, xv.shape, value.shape)
        if name in ("permute", "transpose", "t", "movedim"):
            if isinstance(x, TInfo):
                return self.permute(x, self.order_of(name, args, kwargs, xv.dim()))
        if name in ("expand", "expand_as"):
            if isinstance(x, TInfo):
                return self.expand(x, xv.shape, value.shape)
        if name == "repeat":
            if isinstance(x, TInfo):
                return self.repeat(x, xv.shape, value.shape)
        if name in ("cat", "stack"):
            tensors = args[0] if args else kwargs["tensors"]
            tinfos = [self.info(a, v) for a, v in zip(n.args[0] if args else n.kwargs["tensors"], tensors)]
            dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
            return self.cat(tinfos, value, int(dim), stack=name == "stack")
        if name in ("chunk", "split", "tensor_split", "unbind"):
            if isinstance(x, TInfo):
                if name == "unbind":
                    dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
                else:
                    dim = args[2] if len(args) > 2 else kwargs.get("dim", 0)
                return self.split(x, value, norm_dim(int(dim), xv.dim()), keep=name != "unbind")
        if name == "select" and isinstance(x, TInfo):
            return self.select(
                x, xv, args[1] if len(args) > 1 else kwargs["dim"], args[2] if len(args) > 2 else kwargs["index"]
            )
        if name == "slice" and isinstance(x, TInfo):
            get = lambda i, k, d: args[i] if len(args) > i else kwargs.get(k, d)  # noqa: E731
            return self.slice_axis(
                x, xv, get(1, "dim", 0), get(2, "start", None), get(3, "end", None), get(4, "step", 1)
            )
        if name == "narrow" and isinstance(x, TInfo):
            dim = int(args[1] if len(args) > 1 else kwargs["dim"])
            start = int(args[2] if len(args) > 2 else kwargs["start"])
            length = int(args[3] if len(args) > 3 else kwargs["length"])
            return self.slice_axis(x, xv, dim, start, start + length, 1)
        if name in DROPOUTS and isinstance(x, TInfo):
            training = args[2] if len(args) > 2 else kwargs.get("training", kwargs.get("train", True))
            if training is False:
                self.transparent.add(n.name)
                return x  # dropout in evaluation is the identity
        if name in ("add", "sub", "rsub"):
            return self.add(n, args, kwargs, infos, value)
        if name in ("mul", "div"):
            return self.mul(n, name, args, kwargs, infos, value)
        if name in NONLINEAR_UNARY or name in COMPARISONS:
            return self.elementwise_nonlinear(n, name, args, kwargs, value)
        if name in ("softmax", "log_softmax", "normalize"):
            if isinstance(x, TInfo):
                self.mark(x, "out")
                self.restrict(x.layout, PERMUTATION)
                return TInfo(x.layout)
        if name == "zeros_like" and isinstance(x, TInfo):
            return TInfo(x.layout)
        if name in ("ones_like", "full_like") and isinstance(x, TInfo):
            self.restrict(x.layout, PERMUTATION)
            return TInfo(x.layout)
        if name in REDUCE_LINEAR | REDUCE_NONLINEAR | REDUCE_WITH_INDICES | ARG_REDUCE:
            if isinstance(x, TInfo):
                out = self.reduce(name, x, xv, args, kwargs, value)
                if out is not None:
                    return out
        if name == "matmul":
            a, b = infos[0], infos[1]
            if isinstance(a, TInfo) and isinstance(b, TInfo):
                return self.contract(a, args[0], b, args[1], value, (n.args[0], n.args[1]))
        if name == "addmm" and len(infos) >= 3:
            bias, a, b = infos[0], infos[1], infos[2]
            if (
                all(isinstance(i, TInfo) for i in (bias, a, b))
                and kwargs.get("beta", 1) == 1
                and kwargs.get("alpha", 1) == 1
            ):
                out = self.contract(a, args[1], b, args[2], value, (n.args[1], n.args[2]))
                self.mark(bias, "out")
                return TInfo(tuple(self.broadcast([(out, value.shape), (bias, args[0].shape)], value.shape)))
        if name == "einsum":
            out = self.einsum(n, args, value)
            if out is not None:
                return out
        if name == "sdpa":
            return self.sdpa(n, args, kwargs, value)
        if name == "linear":
            w = infos[1] if len(infos) > 1 else kwinfos.get("weight")
            b = infos[2] if len(infos) > 2 else kwinfos.get("bias")
            if isinstance(x, TInfo) and isinstance(w, TInfo):
                if not w.is_param:
                    wt = self.permute(w, [1, 0])
                    out = self.contract(x, xv, wt, args[1].T, value, (n.args[0], None))
                    if isinstance(b, TInfo):
                        self.join(out.layout[-1], b.layout[0])
                    return out
                self.mark(x, "out")
                path = _module_of(w, b)
                return self.linear(n, x, xv, w, b if isinstance(b, TInfo) else None, path, site_node=n.args[0])
        if name == "conv":
            w = infos[1] if len(infos) > 1 else kwinfos.get("weight")
            b = infos[2] if len(infos) > 2 else kwinfos.get("bias")
            groups = args[6] if len(args) > 6 else kwargs.get("groups", 1)
            if isinstance(x, TInfo) and isinstance(w, TInfo) and w.is_param:
                self.mark(x, "out")
                path = _module_of(w, b)
                return self.conv(n, x, xv, w, b if isinstance(b, TInfo) else None, int(groups), value, path, n.args[0])
        if name in ("layer_norm", "rms_norm") and isinstance(x, TInfo):
            shape = args[1] if len(args) > 1 else kwargs["normalized_shape"]
            w = infos[2] if len(infos) > 2 else kwinfos.get("weight")
            b = (infos[3] if len(infos) > 3 else kwinfos.get("bias")) if name == "layer_norm" else None
            self.mark(x, "out")
            k = 1 if isinstance(shape, int) else len(shape)
            w, b = (w if isinstance(w, TInfo) else None), (b if isinstance(b, TInfo) else None)
            return self.norm(n, x, k, w, b, kind="layer" if name == "layer_norm" else "rms")
        if name == "group_norm" and isinstance(x, TInfo):
            groups = args[1] if len(args) > 1 else kwargs["num_groups"]
            w = infos[2] if len(infos) > 2 else kwinfos.get("weight")
            b = infos[3] if len(infos) > 3 else kwinfos.get("bias")
            self.mark(x, "out")
            return self.group_norm(
                x, int(groups), w if isinstance(w, TInfo) else None, b if isinstance(b, TInfo) else None
            )
        if name == "batch_norm" and isinstance(x, TInfo):
            names = ["running_mean", "running_var", "weight", "bias"]
            params = []
            for i, key in enumerate(names, start=1):
                p = infos[i] if len(infos) > i else kwinfos.get(key)
                params.append(p if isinstance(p, TInfo) else None)
            self.mark(x, "out")
            return self.channel_norm(x, params)
        if name in ("embedding", "aten_embedding"):
            if name == "embedding":
                w = infos[1] if len(infos) > 1 else kwinfos.get("weight")
                idx = x
            else:
                w, idx = x, (infos[1] if len(infos) > 1 else kwinfos.get("indices"))
            if isinstance(idx, TInfo) and isinstance(w, TInfo):
                return self.embedding(idx, w)
        if name in ("avg_pool", "max_pool") and isinstance(x, TInfo) and isinstance(value, Tensor):
            self.mark(x, "out")
            return self.pool(x, value, linear=name == "avg_pool")
        if name == "pad" and isinstance(x, TInfo):
            pad = args[1] if len(args) > 1 else kwargs["pad"]
            out = list(x.layout)
            for k in range(len(pad) // 2):
                d = xv.dim() - 1 - k
                if pad[2 * k] or pad[2 * k + 1]:
                    self.fix([x.layout[d]])
                    out[d] = Fixed(value.shape[d])
            self.mark(x, "out")
            return TInfo(tuple(out))
        return self.unsupported(n, args, kwargs, value)

    def elementwise_nonlinear(self, n: fx.Node, name: str, args: tuple, kwargs: dict, value: object) -> object:
        if not isinstance(value, Tensor):
            return self.unsupported(n, args, kwargs, value)
        operands = []
        for a, v in list(zip(n.args, args)) + [(n.kwargs.get(k), v) for k, v in kwargs.items()]:
            if isinstance(v, Tensor):
                info = self.info(a, v)
                self.mark(info, "out")
                operands.append((info, v.shape))
        layout = self.broadcast(operands, value.shape)
        for info, _ in operands:
            self.restrict(info.layout, PERMUTATION)
        if name not in COMPARISONS:
            (self.transparent.add(n.name) if name in DROPOUTS else self.nonlinear.append(n.name))
        return TInfo(tuple(layout))

    def add(self, n: fx.Node, args: tuple, kwargs: dict, infos: list, value: object) -> object:
        if not isinstance(value, Tensor):
            return self.unsupported(n, args, kwargs, value)
        operands = []
        scalar = False
        for a, v in zip(n.args, args):
            if isinstance(v, Tensor):
                info = self.info(a, v)
                self.mark(info, "out")
                operands.append((info, v.shape))
            elif isinstance(v, (int, float)) and v != 0:
                scalar = True
        alpha = kwargs.get("alpha", 1)
        layout = self.broadcast(operands, value.shape)
        # A constant added to every unit commutes with permutations but not with other maps.
        uniform = set(self._broadcast_axes) if not scalar else set(range(len(layout)))
        self.restrict([layout[k] for k in uniform], PERMUTATION)
        if alpha != 1 and not isinstance(alpha, (int, float)):
            return self.unsupported(n, args, kwargs, value)
        if len(operands) == 2 and not scalar:
            self.transparent.add(n.name)
        return TInfo(tuple(layout))

    def mul(self, n: fx.Node, name: str, args: tuple, kwargs: dict, infos: list, value: object) -> object:
        if not isinstance(value, Tensor):
            return self.unsupported(n, args, kwargs, value)
        tensors = [(a, v) for a, v in zip(n.args, args) if isinstance(v, Tensor)]
        scales = [(a, v) for a, v in tensors if v.numel() == 1]
        big = [(a, v) for a, v in tensors if v.numel() != 1]
        # x * c and x / c with a constant or parameter scalar c are linear in x.
        linear_scalar = all(
            not (
                isinstance(self.info(a, v), TInfo) and any(not isinstance(lay, Fixed) for lay in self.info(a, v).layout)
            )
            or self.info(a, v).is_param
            for a, v in scales
        )
        denominator_ok = not (name == "div" and len(args) > 1 and isinstance(args[1], Tensor) and args[1].numel() != 1)
        if len(big) == 1 and linear_scalar and denominator_ok and (name == "mul" or args[0] is big[0][1]):
            a, v = big[0]
            info = self.info(a, v)
            if isinstance(info, TInfo) and tuple(v.shape) == tuple(value.shape):
                for s_arg, s_val in scales:
                    self.mark(self.info(s_arg, s_val), "out")
                if not scales:
                    return info  # multiplied by a Python number: origin kept
                self.mark(info, "out")
                return TInfo(info.layout)
        return self.elementwise_nonlinear(n, name, args, kwargs, value)


def _module_of(w: TInfo, b: object) -> str:
    """The module a functional layer's weight belongs to (``""`` when it is not one state
    entry named ``<module>.weight`` with a matching ``<module>.bias``)."""
    if w.origin is None or w.origin[0] is None:
        return ""
    key = w.origin[0][0]
    if not key.endswith(".weight"):
        return ""
    path = key[: -len(".weight")]
    if isinstance(b, TInfo) and b.origin is not None and b.origin[0] is not None and b.origin[0][0] != f"{path}.bias":
        return ""
    return path if isinstance(b, TInfo) else ""


def _tied_keys(model: nn.Module) -> set[str]:
    from landscape.core.tied import tied_groups

    return {k for group in tied_groups(model) for k in group}
