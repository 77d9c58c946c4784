"""Trace a model with torch.fx and work out which axes must transform together.

The model is traced symbolically, then run once on the example input by an interpreter
that knows, for every operation, how the axes of its inputs relate to the axes of its output
and to the parameters it reads. Each rule is written so that transforming every input by
the groups' transforms transforms the output the same way: joins make two axes share one
group, *restrictions* narrow what a group may do (an elementwise nonlinearity allows only
permutations; a dot product between two activations allows orthogonal maps), and anything
that depends on the position of a unit (an integer index, a partial slice, a constant
vector) fixes it. An operation without a rule is an error that names it, unless the caller
asks for such operations to be treated as fixed.
"""

from __future__ import annotations

import builtins
import copy
import math
import operator
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from landscape.core.errors import LandscapeError
from landscape.symmetry._classes import ORTHOGONAL, PERMUTATION, Classes
from landscape.symmetry.layout import Atom, Fixed, Layout, Prod, Sum, atoms, normalize

__all__ = ["TInfo", "TraceResult", "UnsupportedOperationError", "expand_info", "info_atoms", "trace_model"]


class UnsupportedOperationError(LandscapeError):
    """An operation in the model that the symmetry graph has no rule for (or that cannot be traced)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class TInfo:
    """What the tracer knows about one tensor: a layout per axis, and for tensors that come
    straight from a parameter (through shape operations only) the parameter axis behind
    each axis (``origin``)."""

    layout: tuple[Layout, ...]
    origin: tuple[tuple[str, int] | None, ...] | None = None

    @property
    def is_param(self) -> bool:
        return self.origin is not None


@dataclass
class TraceResult:
    classes: Classes
    graph_module: fx.GraphModule
    infos: dict[str, object]
    param_axes: dict[tuple[str, int], Layout]
    variances: dict[tuple[str, int], set[str]]
    contraction_sites: list[tuple[str, int]]
    affine: dict[str, tuple[str, str, str | None, int]]
    nonlinear: list[str]
    transparent: set[str]
    node_order: list[str]
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------
# Operation tables
# ---------------------------------------------------------------------------------------

ACTIVATION_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.GELU,
    nn.Tanh,
    nn.Sigmoid,
    nn.SiLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.LeakyReLU,
    nn.Softplus,
    nn.Softsign,
    nn.Mish,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.LogSigmoid,
    nn.Tanhshrink,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
)
DROPOUT_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
CONV_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
BATCHNORM_MODULES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
)
AVGPOOL_MODULES = (
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
)
MAXPOOL_MODULES = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)

# Elementwise functions that are not linear: only permutations commute with them.
NONLINEAR_UNARY = {
    "relu", "relu_", "relu6", "gelu", "tanh", "tanh_", "sigmoid", "sigmoid_", "silu", "elu", "selu", "celu",
    "leaky_relu", "softplus", "softsign", "mish", "hardtanh", "hardswish", "hardsigmoid", "logsigmoid",
    "tanhshrink", "exp", "exp_", "log", "log1p", "log2", "log10", "sqrt", "rsqrt", "abs", "sin", "cos", "erf",
    "square", "reciprocal", "sign", "clamp", "clip", "clamp_min", "clamp_max", "dropout", "alpha_dropout",
    "feature_alpha_dropout", "dropout1d", "dropout2d", "dropout3d", "floor", "ceil", "round", "trunc",
    "logical_not", "invert", "not_", "isnan", "isinf", "isfinite", "nan_to_num",
}  # fmt: skip
DROPOUTS = {"dropout", "alpha_dropout", "feature_alpha_dropout", "dropout1d", "dropout2d", "dropout3d"}
# Operations that do not touch the values (dtype/device/memory layout).
PASS_THROUGH = {"contiguous", "clone", "detach", "float", "double", "half", "bfloat16", "to", "type", "cpu", "cuda",
                "requires_grad_", "type_as", "data", "identity"}  # fmt: skip
COMPARISONS = {"eq", "ne", "lt", "le", "gt", "ge", "and_", "or_", "xor", "logical_and", "logical_or", "logical_xor",
               "maximum", "minimum", "fmax", "fmin", "where", "masked_fill", "masked_fill_", "pow", "mod",
               "remainder", "floordiv", "floor_divide", "atan2"}  # fmt: skip
RESHAPES = {"reshape", "view", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as", "ravel"}
SHAPE_QUERIES = {"size", "dim", "numel", "ndimension", "nelement", "is_contiguous", "get_device"}
REDUCE_LINEAR = {"sum", "mean", "nansum", "nanmean"}
REDUCE_NONLINEAR = {"amax", "amin", "logsumexp", "var", "std", "norm", "prod", "var_mean", "std_mean", "all", "any"}
REDUCE_WITH_INDICES = {"max", "min", "median", "mode", "kthvalue"}
ARG_REDUCE = {"argmax", "argmin"}

_FUNCTION_NAMES: dict[object, str] = {
    operator.add: "add",
    operator.iadd: "add",
    operator.sub: "sub",
    operator.isub: "sub",
    operator.mul: "mul",
    operator.imul: "mul",
    operator.truediv: "div",
    operator.itruediv: "div",
    operator.floordiv: "floordiv",
    operator.neg: "neg",
    operator.pos: "identity",
    operator.matmul: "matmul",
    operator.getitem: "getitem",
    operator.pow: "pow",
    operator.mod: "mod",
    operator.invert: "invert",
    operator.not_: "not_",
    operator.and_: "and_",
    operator.or_: "or_",
    operator.xor: "xor",
    operator.eq: "eq",
    operator.ne: "ne",
    operator.lt: "lt",
    operator.le: "le",
    operator.gt: "gt",
    operator.ge: "ge",
    builtins.getattr: "getattr",
    torch.add: "add",
    torch.sub: "sub",
    torch.subtract: "sub",
    torch.mul: "mul",
    torch.multiply: "mul",
    torch.div: "div",
    torch.true_divide: "div",
    torch.neg: "neg",
    torch.matmul: "matmul",
    torch.mm: "matmul",
    torch.bmm: "matmul",
    torch.einsum: "einsum",
    torch.cat: "cat",
    torch.concat: "cat",
    torch.concatenate: "cat",
    torch.stack: "stack",
    torch.flatten: "flatten",
    torch.reshape: "reshape",
    torch.squeeze: "squeeze",
    torch.unsqueeze: "unsqueeze",
    torch.transpose: "transpose",
    torch.swapaxes: "transpose",
    torch.swapdims: "transpose",
    torch.permute: "permute",
    torch.movedim: "movedim",
    torch.moveaxis: "movedim",
    torch.t: "t",
    torch.chunk: "chunk",
    torch.split: "split",
    torch.tensor_split: "tensor_split",
    torch.unbind: "unbind",
    torch.narrow: "narrow",
    torch.softmax: "softmax",
    torch.log_softmax: "log_softmax",
    torch.where: "where",
    torch.zeros_like: "zeros_like",
    torch.ones_like: "ones_like",
    torch.full_like: "full_like",
    torch.sum: "sum",
    torch.mean: "mean",
    torch.max: "max",
    torch.min: "min",
    torch.amax: "amax",
    torch.amin: "amin",
    torch.argmax: "argmax",
    torch.argmin: "argmin",
    torch.logsumexp: "logsumexp",
    torch.var: "var",
    torch.std: "std",
    torch.norm: "norm",
    torch.prod: "prod",
    torch.maximum: "maximum",
    torch.minimum: "minimum",
    torch.masked_fill: "masked_fill",
    torch.pow: "pow",
    torch.square: "square",
    torch.nn.functional.linear: "linear",
    torch.conv1d: "conv",
    torch.conv2d: "conv",
    torch.conv3d: "conv",
    F.conv1d: "conv",
    F.conv2d: "conv",
    F.conv3d: "conv",
    F.layer_norm: "layer_norm",
    F.group_norm: "group_norm",
    F.batch_norm: "batch_norm",
    F.embedding: "embedding",
    F.softmax: "softmax",
    F.log_softmax: "log_softmax",
    F.normalize: "normalize",
    F.pad: "pad",
    F.avg_pool1d: "avg_pool",
    F.avg_pool2d: "avg_pool",
    F.avg_pool3d: "avg_pool",
    F.adaptive_avg_pool1d: "avg_pool",
    F.adaptive_avg_pool2d: "avg_pool",
    F.adaptive_avg_pool3d: "avg_pool",
    F.max_pool1d: "max_pool",
    F.max_pool2d: "max_pool",
    F.max_pool3d: "max_pool",
    F.adaptive_max_pool1d: "max_pool",
    F.adaptive_max_pool2d: "max_pool",
    F.adaptive_max_pool3d: "max_pool",
    F.interpolate: "avg_pool",
}
for _name in NONLINEAR_UNARY:
    for _namespace in (torch, F, torch.special):
        _fn = getattr(_namespace, _name, None)
        if callable(_fn):
            _FUNCTION_NAMES.setdefault(_fn, _name)
for _name in ("relu", "gelu", "silu", "elu", "leaky_relu", "softplus", "mish", "hardtanh", "relu6", "sigmoid", "tanh"):
    _fn = getattr(F, _name, None)
    if callable(_fn):
        _FUNCTION_NAMES[_fn] = _name


def _canonical(node: fx.Node) -> str:
    if node.op == "call_method":
        return str(node.target)
    name = _FUNCTION_NAMES.get(node.target)
    if name is not None:
        return name
    return "?" + getattr(node.target, "__name__", str(node.target))


def _module_path(node: fx.Node) -> str | None:
    stack = node.meta.get("nn_module_stack")
    if stack:
        path = list(stack.keys())[-1]
        if isinstance(path, str):
            return re.sub(r"^L__self___?", "", path) or None
    if node.op == "call_module":
        return str(node.target)
    return None


def _describe_node(node: fx.Node) -> str:
    if node.op == "call_module":
        what = f"module {node.target!r}"
    elif node.op == "call_method":
        what = f"method .{node.target}()"
    else:
        target = getattr(node.target, "__module__", None)
        name = getattr(node.target, "__name__", str(node.target))
        what = f"function {target + '.' if target else ''}{name}"
    where = _module_path(node)
    inside = f" inside {where!r}" if where and node.op != "call_module" else ""
    return f"{what} (graph node {node.name!r}{inside})"


class _TraceFailure(Exception):
    def __init__(self, module: str, error: BaseException) -> None:
        super().__init__(str(error))
        self.module = module
        self.error = error


class _Tracer(fx.Tracer):
    proxy_buffer_attributes = True

    def __init__(self, opaque: set[str]) -> None:
        super().__init__()
        self.opaque = opaque

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name in self.opaque:
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Callable, args: tuple, kwargs: dict) -> object:
        try:
            return super().call_module(m, forward, args, kwargs)
        except _TraceFailure:
            raise
        except Exception as err:  # name the innermost module whose forward could not be traced
            raise _TraceFailure(self.path_of_module(m), err) from err


def _tensors_in(value: object) -> bool:
    if isinstance(value, Tensor):
        return True
    if isinstance(value, (list, tuple)):
        return any(_tensors_in(v) for v in value)
    if isinstance(value, dict):
        return any(_tensors_in(v) for v in value.values())
    return False


def _norm_dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


# ---------------------------------------------------------------------------------------
# The interpreter
# ---------------------------------------------------------------------------------------


class _Builder(fx.Interpreter):
    def __init__(
        self,
        gm: fx.GraphModule,
        state_keys: set[str],
        opaque: set[str],
        unknown: str,
    ) -> None:
        super().__init__(gm)
        self.classes = Classes()
        self.state_keys = state_keys
        self.opaque = opaque
        self.unknown = unknown
        self.infos: dict[str, object] = {}
        self.param_axes: dict[tuple[str, int], Layout] = {}
        self.variances: dict[tuple[str, int], set[str]] = {}
        self.sites: list[tuple[str, int]] = []
        self.affine: dict[str, tuple[str, str, str | None, int]] = {}
        self.nonlinear: list[str] = []
        self.transparent: set[str] = set()
        self.order: list[str] = []
        self.node: fx.Node | None = None

    # -- helpers ---------------------------------------------------------------------
    @property
    def why(self) -> str:
        assert self.node is not None
        return _describe_node(self.node)

    def fixed(self, shape: Sequence[int]) -> TInfo:
        return TInfo(tuple(Fixed(int(s)) for s in shape))

    def info(self, arg: object, value: object) -> object:
        """The info of an argument (a node's info, or all-fixed for a tensor constant)."""
        if isinstance(arg, fx.Node):
            found = self.infos.get(arg.name)
            if found is not None or not isinstance(value, Tensor):
                return found
        if isinstance(value, Tensor):
            return self.fixed(value.shape)
        if isinstance(arg, (list, tuple)) and isinstance(value, (list, tuple)):
            return [self.info(a, v) for a, v in zip(arg, value)]
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
        if isinstance(info, TInfo):
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

    # -- running ---------------------------------------------------------------------
    def run_node(self, n: fx.Node) -> object:
        value = super().run_node(n)
        self.node = n
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        if n.op == "output":
            self.fix_all(self.info(n.args[0], args[0]))
            return value
        info = self.visit(n, args, kwargs, value)
        if info is not None:
            self.infos[n.name] = info
        self.order.append(n.name)
        return value

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
        infos = [self.info(a, v) for a, v in zip(n.args, args)]
        kwinfos = {k: self.info(n.kwargs.get(k), v) for k, v in kwargs.items()}
        if n.op == "call_module":
            module = self.module.get_submodule(str(n.target))
            return self.visit_module(n, module, args, kwargs, infos, kwinfos, value)
        name = _canonical(n)
        if n.op == "call_method" and name in _METHOD_ALIASES:
            name = _METHOD_ALIASES[name]
        return self.visit_function(n, name, args, kwargs, infos, kwinfos, value)

    def _inside_opaque(self, n: fx.Node) -> str | None:
        if not self.opaque:
            return None
        stack = n.meta.get("nn_module_stack") or {}
        paths = [re.sub(r"^L__self___?", "", p) for p in stack if isinstance(p, str)]
        if n.op == "call_module":
            paths.append(str(n.target))
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
            self.fix_all(self.info(a, v))
        for k, v in kwargs.items():
            self.fix_all(self.info(n.kwargs.get(k), v))
        if n.op == "call_module":
            module = self.module.get_submodule(str(n.target))
            for pname, p in list(module.named_parameters()) + list(module.named_buffers()):
                info = self.module_param(str(n.target), pname, p)
                if info is not None:
                    self.fix(info.layout)
        self.classes.notes.append(f"{_describe_node(n)}: axes kept fixed because {reason}")
        return self.opaque_output(value)

    def unsupported(self, n: fx.Node, args: tuple, kwargs: dict, value: object, detail: str = "") -> object:
        if self.unknown == "fixed":
            return self.make_opaque(n, args, kwargs, value, "symmetry_graph has no rule for it (unknown='fixed')")
        where = _module_path(n)
        target = where or n.name
        raise UnsupportedOperationError(
            f"symmetry_graph(model=...): expected operations whose effect on the model's symmetries is known; "
            f"found {_describe_node(n)}{': ' + detail if detail else ''}, which has no rule. It never guesses: "
            f"pass fixed=[{target!r}] to keep every axis that module/node touches fixed, unknown='fixed' to do "
            "that for every such operation, or spec={group: ['param.name:axis', ...]} to describe the "
            "permutation groups by hand."
        )

    # -- modules ---------------------------------------------------------------------
    def visit_module(
        self, n: fx.Node, m: nn.Module, args: tuple, kwargs: dict, infos: list, kwinfos: dict, value: object
    ) -> object:
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
            b = self.module_param(path, "bias", m.bias)
            out = self.layer_norm(x, len(m.normalized_shape), w, b)
            if m.elementwise_affine and m.bias is not None and len(m.normalized_shape) == 1:
                self.affine[n.name] = (path, f"{path}.weight", f"{path}.bias", xv.dim() - 1)
            return out
        if isinstance(m, nn.Embedding):
            w = self.module_param(path, "weight", m.weight)
            return self.embedding(x, w)
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

    # -- layer rules -----------------------------------------------------------------
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

    def layer_norm(self, x: TInfo, k: int, w: TInfo | None, b: TInfo | None) -> TInfo:
        for p in (w, b):
            if p is not None:
                for i in range(k):
                    self.join(x.layout[len(x.layout) - k + i], p.layout[i])
                self.mark(p, "out")
        self.restrict(x.layout, PERMUTATION)
        return TInfo(x.layout)

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

    # -- shape rules -----------------------------------------------------------------
    def reshape(self, x: TInfo, in_shape: Sequence[int], out_shape: Sequence[int]) -> TInfo:
        """Row-major reshape: consecutive blocks of input and output axes with equal sizes."""
        in_shape, out_shape = [int(s) for s in in_shape], [int(s) for s in out_shape]
        out: list[Layout] = []
        origin: list[tuple[str, int] | None] = []
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
                parts = [self.fresh(out_shape[k], "reshape") for k in bj]
                self.join(merged, normalize(Prod(tuple(parts))))
                out.extend(parts)
                origin.extend([None] * len(bj))
        return TInfo(tuple(out), tuple(origin) if x.origin is not None else None)

    def permute(self, x: TInfo, order: Sequence[int]) -> TInfo:
        order = [_norm_dim(int(d), len(x.layout)) for d in order]
        origin = tuple(x.origin[d] for d in order) if x.origin is not None else None
        return TInfo(tuple(x.layout[d] for d in order), origin)

    def getitem(self, x: TInfo, xv: Tensor, index: object, value: Tensor) -> TInfo | None:
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
                self.fix([x.layout[d]])
            else:
                assert isinstance(it, slice)
                if it.indices(size) == (0, size, 1):
                    out.append(x.layout[d])
                    origin.append(x.origin[d] if x.origin is not None else None)
                else:
                    self.fix([x.layout[d]])
                    out.append(Fixed(len(range(*it.indices(size)))))
                    origin.append(None)
            d += 1
        for k in range(d, xv.dim()):
            out.append(x.layout[k])
            origin.append(x.origin[k] if x.origin is not None else None)
        return TInfo(tuple(out), tuple(origin) if x.origin is not None else None)

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
        a_param, b_param = a.is_param, b.is_param
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
            self.restrict([la[-1]], ORTHOGONAL)
            self.restrict(batch, PERMUTATION)
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
                out = self.getitem(x, xv, args[1], value)
                if out is None:
                    return self.unsupported(n, args, kwargs, value, "advanced (tensor) indexing")
                return out
            if isinstance(x, (list, tuple)):
                return x[args[1]] if isinstance(args[1], int) else list(x[args[1]])
            return None
        if not isinstance(value, Tensor) and not isinstance(value, (tuple, list)):
            return self.unsupported(n, args, kwargs, value, "it turns tensor values into a Python value")
        if name in PASS_THROUGH or name == "neg":
            if isinstance(x, TInfo):
                return x
        if name in RESHAPES:
            if isinstance(x, TInfo):
                return self.reshape(x, xv.shape, value.shape)
        if name in ("permute", "transpose", "t", "movedim"):
            if isinstance(x, TInfo):
                nd = xv.dim()
                if name == "permute":
                    order = args[1] if len(args) == 2 and isinstance(args[1], (list, tuple)) else args[1:]
                    order = kwargs.get("dims", order)
                elif name == "t":
                    order = [1, 0] if nd == 2 else list(range(nd))
                elif name == "transpose":
                    d0 = _norm_dim(int(args[1] if len(args) > 1 else kwargs["dim0"]), nd)
                    d1 = _norm_dim(int(args[2] if len(args) > 2 else kwargs["dim1"]), nd)
                    order = list(range(nd))
                    order[d0], order[d1] = order[d1], order[d0]
                else:
                    src = args[1] if len(args) > 1 else kwargs["source"]
                    dst = args[2] if len(args) > 2 else kwargs["destination"]
                    order = _movedim_order(nd, src, dst)
                return self.permute(x, order)
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
            return self.cat(tinfos, tensors, value, int(dim), stack=name == "stack")
        if name in ("chunk", "split", "tensor_split", "unbind"):
            if isinstance(x, TInfo):
                if name == "unbind":
                    dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
                elif name == "chunk" or name == "tensor_split":
                    dim = args[2] if len(args) > 2 else kwargs.get("dim", 0)
                else:
                    dim = args[2] if len(args) > 2 else kwargs.get("dim", 0)
                return self.split(x, xv, value, _norm_dim(int(dim), xv.dim()), keep=name != "unbind")
        if name == "narrow":
            if isinstance(x, TInfo):
                dim = _norm_dim(int(args[1]), xv.dim())
                if value.shape[dim] == xv.shape[dim]:
                    return x
                self.fix([x.layout[dim]])
                return TInfo(tuple(Fixed(value.shape[dim]) if k == dim else lay for k, lay in enumerate(x.layout)))
        if name in ("add", "sub"):
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
                out = self.reduce(n, name, x, xv, args, kwargs, value)
                if out is not None:
                    return out
        if name == "matmul":
            a, b = infos[0], infos[1]
            if isinstance(a, TInfo) and isinstance(b, TInfo):
                return self.contract(a, args[0], b, args[1], value, (n.args[0], n.args[1]))
        if name == "einsum":
            out = self.einsum(n, args, value)
            if out is not None:
                return out
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
                return self.linear(n, x, xv, w, b if isinstance(b, TInfo) else None, "", site_node=n.args[0])
        if name == "conv":
            w = infos[1] if len(infos) > 1 else kwinfos.get("weight")
            b = infos[2] if len(infos) > 2 else kwinfos.get("bias")
            groups = args[6] if len(args) > 6 else kwargs.get("groups", 1)
            if isinstance(x, TInfo) and isinstance(w, TInfo) and w.is_param:
                self.mark(x, "out")
                return self.conv(n, x, xv, w, b if isinstance(b, TInfo) else None, int(groups), value, "", n.args[0])
        if name == "layer_norm" and isinstance(x, TInfo):
            shape = args[1] if len(args) > 1 else kwargs["normalized_shape"]
            w = infos[2] if len(infos) > 2 else kwinfos.get("weight")
            b = infos[3] if len(infos) > 3 else kwinfos.get("bias")
            self.mark(x, "out")
            k = 1 if isinstance(shape, int) else len(shape)
            return self.layer_norm(x, k, w if isinstance(w, TInfo) else None, b if isinstance(b, TInfo) else None)
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
        if name == "embedding":
            w = infos[1] if len(infos) > 1 else kwinfos.get("weight")
            if isinstance(x, TInfo) and isinstance(w, TInfo):
                return self.embedding(x, w)
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

    def cat(self, infos: list, tensors: Sequence[Tensor], value: Tensor, dim: int, *, stack: bool) -> TInfo:
        nd = value.dim()
        dim = _norm_dim(dim, nd)
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

    def split(self, x: TInfo, xv: Tensor, value: Sequence[Tensor], dim: int, *, keep: bool) -> list[TInfo]:
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

    def reduce(self, n: fx.Node, name: str, x: TInfo, xv: Tensor, args: tuple, kwargs: dict, value: object) -> object:
        dim = args[1] if len(args) > 1 and not isinstance(args[1], bool) else kwargs.get("dim", kwargs.get("axis"))
        keepdim = kwargs.get("keepdim", args[2] if len(args) > 2 and isinstance(args[2], bool) else False)
        if name in ("norm",):
            dim = kwargs.get("dim", args[2] if len(args) > 2 else None)
        if dim is None:
            dims = list(range(xv.dim()))
        elif isinstance(dim, int):
            dims = [_norm_dim(dim, xv.dim())]
        elif isinstance(dim, (list, tuple)) and all(isinstance(d, int) for d in dim):
            dims = [_norm_dim(d, xv.dim()) for d in dim]
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


def _movedim_order(nd: int, src: int | Sequence[int], dst: int | Sequence[int]) -> list[int]:
    src = [src] if isinstance(src, int) else list(src)
    dst = [dst] if isinstance(dst, int) else list(dst)
    src = [_norm_dim(s, nd) for s in src]
    dst = [_norm_dim(d, nd) for d in dst]
    order = [None] * nd
    for s, d in zip(src, dst):
        order[d] = s
    rest = iter(k for k in range(nd) if k not in src)
    return [o if o is not None else next(rest) for o in order]


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


def trace_model(
    model: nn.Module,
    example_inputs: tuple,
    *,
    opaque: Sequence[str] = (),
    unknown: str = "error",
) -> TraceResult:
    """Trace ``model`` and run the rules on ``example_inputs`` (see :func:`symmetry_graph`)."""
    work = copy.deepcopy(model).eval()
    opaque_set = set(opaque)
    tracer = _Tracer(opaque_set)
    try:
        graph = tracer.trace(work)
    except _TraceFailure as failure:
        raise UnsupportedOperationError(
            f"symmetry_graph(model=...): expected a model that torch.fx can trace; found that the forward of "
            f"module {failure.module!r} cannot be traced ({type(failure.error).__name__}: {failure.error}). "
            f"Pass fixed=[{failure.module!r}] to treat that module as an opaque block whose axes stay fixed, "
            "or spec={group: ['param.name:axis', ...]} to describe the permutation groups by hand."
        ) from failure.error
    except Exception as err:
        raise UnsupportedOperationError(
            f"symmetry_graph(model=...): expected a model that torch.fx can trace; found that its forward "
            f"cannot be traced ({type(err).__name__}: {err}). Pass fixed=['module.name'] for the module that "
            "fails, or spec={group: ['param.name:axis', ...]} to describe the permutation groups by hand."
        ) from err
    gm = fx.GraphModule(tracer.root, graph)
    gm.eval()
    state_keys = set(work.state_dict().keys())
    builder = _Builder(gm, state_keys, opaque_set, unknown)
    try:
        with torch.no_grad():
            builder.run(*example_inputs)
    except UnsupportedOperationError as err:
        # fx's interpreter appends the failing node's trace to the message; keep ours clean
        raise UnsupportedOperationError(err.message) from None
    except LandscapeError:
        raise
    except Exception as err:
        raise UnsupportedOperationError(
            f"symmetry_graph(example_input=...): expected the model to run on the example input; found "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}. Pass example_input= a batch "
            "the model accepts."
        ) from err
    return TraceResult(
        classes=builder.classes,
        graph_module=gm,
        infos=builder.infos,
        param_axes=builder.param_axes,
        variances=builder.variances,
        contraction_sites=builder.sites,
        affine=builder.affine,
        nonlinear=builder.nonlinear,
        transparent=builder.transparent,
        node_order=builder.order,
        notes=builder.classes.notes,
    )


def expand_info(classes: Classes, info: object) -> object:
    if isinstance(info, TInfo):
        return TInfo(tuple(classes.expand(lay) for lay in info.layout), info.origin)
    if isinstance(info, (list, tuple)):
        return [expand_info(classes, i) for i in info]
    return None


def info_atoms(info: object) -> Iterable[Atom]:
    if isinstance(info, TInfo):
        for lay in info.layout:
            yield from atoms(lay)
    elif isinstance(info, (list, tuple)):
        for i in info:
            yield from info_atoms(i)
