"""Operation tables of the symmetry tracer: which modules and functions are activations,
normalisations, pools, reshapes and reductions, and the canonical name of every traced node
(torch functions, tensor methods and the ATen operators that ``torch.export`` records)."""

from __future__ import annotations

import builtins
import operator
import re

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

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


# ATen operators (``torch.export`` graphs) whose canonical name differs from their packet name
# or whose arguments differ from the torch function of the same name.
_ATEN_NAMES = {
    "view": "reshape",
    "_unsafe_view": "reshape",
    "_reshape_alias": "reshape",
    "alias": "identity",
    "lift_fresh_copy": "identity",
    "_to_copy": "to",
    "clone": "clone",
    "embedding": "aten_embedding",
    "select": "select",
    "slice": "slice",
    "addmm": "addmm",
    "mm": "matmul",
    "bmm": "matmul",
    "baddbmm": "baddbmm",
    "_softmax": "softmax",
    "_log_softmax": "log_softmax",
    "__and__": "and_",
    "__or__": "or_",
    "bitwise_and": "and_",
    "bitwise_or": "or_",
    "bitwise_not": "logical_not",
    "logical_not": "logical_not",
    "split_with_sizes": "split",
    "rsub": "rsub",
    "true_divide": "div",
    "conv1d": "conv",
    "conv2d": "conv",
    "conv3d": "conv",
    "convolution": "convolution",
    "adaptive_avg_pool1d": "avg_pool",
    "adaptive_avg_pool2d": "avg_pool",
    "avg_pool1d": "avg_pool",
    "avg_pool2d": "avg_pool",
    "max_pool1d": "max_pool",
    "max_pool2d": "max_pool",
    "adaptive_max_pool2d": "max_pool",
    "native_layer_norm": "native_layer_norm",
    "rms_norm": "rms_norm",
    "scaled_dot_product_attention": "sdpa",
    "gelu": "gelu",
    "silu": "silu",
    "new_ones": "new_constant",
    "new_zeros": "new_constant",
    "new_full": "new_constant",
    "new_empty": "new_constant",
    "_assert_tensor_metadata": "assert_metadata",
    "_assert_scalar": "assert_metadata",
    "sym_size": "size",
    "sym_numel": "numel",
}
_SDPA_FUNCTIONS = {F.scaled_dot_product_attention}
# Names of modules and ATen operators that only check their input or move it between devices.
SKIPPED = {"assert_metadata"}


def canonical(node: fx.Node) -> str:
    """The name the rules use for a node's operation (``"linear"``, ``"reshape"``, ``"sdpa"``, ...)."""
    if node.op == "call_method":
        return str(node.target)
    if node.target in _SDPA_FUNCTIONS:
        return "sdpa"
    name = _FUNCTION_NAMES.get(node.target)
    if name is not None:
        return name
    if isinstance(node.target, torch._ops.OpOverload):
        packet = node.target.overloadpacket.__name__
        if node.target.namespace != "aten":
            return "?" + packet
        return _ATEN_NAMES.get(packet, packet)
    return "?" + getattr(node.target, "__name__", str(node.target))


def module_path(node: fx.Node) -> str | None:
    """The innermost module a node belongs to (``None`` at the top level)."""
    stack = node.meta.get("nn_module_stack")
    if stack:
        key, value = list(stack.items())[-1]
        path = value[0] if isinstance(value, tuple) and isinstance(value[0], str) else key
        if isinstance(path, str):
            path = re.sub(r"^L__self___?", "", path)
            return path or None
    if node.op == "call_module":
        return str(node.target)
    return None


def module_stack(node: fx.Node) -> list[str]:
    """Every module a node belongs to, outermost first (module paths, dotted)."""
    stack = node.meta.get("nn_module_stack") or {}
    out = []
    for key, value in stack.items():
        path = value[0] if isinstance(value, tuple) and isinstance(value[0], str) else key
        if isinstance(path, str):
            path = re.sub(r"^L__self___?", "", path)
            if path:
                out.append(path)
    if node.op == "call_module":
        out.append(str(node.target))
    return out


def describe_node(node: fx.Node) -> str:
    if node.op == "call_module":
        what = f"module {node.target!r}"
    elif node.op == "call_method":
        what = f"method .{node.target}()"
    else:
        target = getattr(node.target, "__module__", None)
        name = getattr(node.target, "__name__", str(node.target))
        what = f"function {target + '.' if target else ''}{name}"
    where = module_path(node)
    inside = f" inside {where!r}" if where and node.op != "call_module" else ""
    return f"{what} (graph node {node.name!r}{inside})"
