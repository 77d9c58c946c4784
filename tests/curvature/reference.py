"""Plain, obviously correct curvature: dense matrices by torch.autograd.functional on a copy of
the module with the state loaded, and BatchNorm statistics recomputed by hand."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn


def loaded(model: nn.Module, state) -> nn.Module:
    module = copy.deepcopy(model)
    if state is not None:
        module.load_state_dict(state)
    return module.eval()


def trainable_keys(model: nn.Module) -> list[str]:
    return [k for k, p in model.named_parameters() if p.requires_grad]


def _as_function(module: nn.Module, keys: list[str], x: torch.Tensor):
    """theta -> logits, with the parameters ``keys`` taken from the flat vector theta."""
    named = dict(module.named_parameters())
    shapes = [named[k].shape for k in keys]
    sizes = [named[k].numel() for k in keys]
    theta = torch.cat([named[k].detach().reshape(-1) for k in keys])
    rest = {k: v for k, v in {**dict(module.named_parameters()), **dict(module.named_buffers())}.items()}

    def logits(th: torch.Tensor) -> torch.Tensor:
        values = dict(rest)
        values.update({k: t.view(s) for k, t, s in zip(keys, th.split(sizes), shapes)})
        return torch.func.functional_call(module, values, (x,))

    return logits, theta


def exact_hessian(model, state, x, y, *, keys=None, loss=None) -> np.ndarray:
    """The Hessian of the mean cross-entropy (or ``loss(logits, y)``, a scalar) in the
    trainable parameters, as a dense float64 matrix."""
    module = loaded(model, state)
    keys = keys or trainable_keys(module)
    logits, theta = _as_function(module, keys, x)

    def f(th):
        z = logits(th)
        if loss is not None:
            return loss(z, y)
        return nn.functional.cross_entropy(z.reshape(-1, z.shape[-1]), y.reshape(-1))

    return torch.autograd.functional.hessian(f, theta, vectorize=True).double().numpy()


def exact_ggn(model, state, x, y) -> np.ndarray:
    """J^T H_z J built by hand: J the Jacobian of the logits (n*C x P), H_z block diagonal with
    (diag(p) - p p^T) / n per example (the Hessian of the mean cross-entropy in the logits)."""
    module = loaded(model, state)
    logits, theta = _as_function(module, trainable_keys(module), x)
    z = logits(theta).detach()
    n, c = z.shape
    jac = torch.autograd.functional.jacobian(logits, theta, vectorize=True).reshape(n * c, -1).double()
    p = torch.softmax(z.double(), dim=-1)
    h = torch.block_diag(*[(torch.diag(pi) - torch.outer(pi, pi)) / n for pi in p])
    return (jac.T @ h @ jac).numpy()


def hand_bn_state(model, state, x, batch):
    """The state with every BatchNorm layer's running mean and variance replaced by the
    example-weighted averages of its batch means and unbiased batch variances (model in train
    mode on batches of ``batch`` examples)."""
    module = copy.deepcopy(model)
    module.load_state_dict(state)
    layers = {name: m for name, m in module.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    sums = {name: [0.0, 0.0, 0] for name in layers}

    def recorder(name):
        def record(m, args):
            inp = args[0].double()
            dims = [0, *range(2, inp.dim())]
            entry = sums[name]
            entry[0] = entry[0] + inp.mean(dim=dims) * inp.shape[0]
            entry[1] = entry[1] + inp.var(dim=dims, unbiased=True) * inp.shape[0]
            entry[2] += inp.shape[0]

        return record

    hooks = [m.register_forward_pre_hook(recorder(name)) for name, m in layers.items()]
    module.train()
    with torch.no_grad():
        for start in range(0, x.shape[0], batch):
            module(x[start : start + batch])
    for h in hooks:
        h.remove()
    out = {k: v.clone() for k, v in state.items()}
    for name in layers:
        mean, var, count = sums[name]
        out[f"{name}.running_mean"] = (mean / count).to(out[f"{name}.running_mean"].dtype)
        out[f"{name}.running_var"] = (var / count).to(out[f"{name}.running_var"].dtype)
    return out


def block_offsets(model: nn.Module, keys: list[str]) -> dict[str, slice]:
    named = dict(model.named_parameters())
    out, start = {}, 0
    for k in trainable_keys(model):
        out[k] = slice(start, start + named[k].numel())
        start += named[k].numel()
    return {k: out[k] for k in keys}
