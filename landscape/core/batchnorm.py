"""BatchNorm statistics: find BN layers, and put them in the mode that recomputes running
statistics as an exact average over batches (momentum None)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

BN_TYPES = (nn.modules.batchnorm._BatchNorm,)

__all__ = ["bn_buffer_keys", "fresh_bn_buffers", "has_batchnorm", "recompute_mode"]


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, BN_TYPES) and m.track_running_stats for m in model.modules())


def bn_buffer_keys(model: nn.Module) -> list[str]:
    """State keys of the running statistics of every tracking BatchNorm layer."""
    keys = []
    for name, module in model.named_modules():
        if isinstance(module, BN_TYPES) and module.track_running_stats:
            prefix = f"{name}." if name else ""
            keys += [prefix + "running_mean", prefix + "running_var", prefix + "num_batches_tracked"]
    return keys


def fresh_bn_buffers(state: dict[str, Tensor], keys: list[str]) -> dict[str, Tensor]:
    """New buffers as ``reset_running_stats`` leaves them: zero means, unit variances, count 0."""
    fresh = {}
    for k in keys:
        ref = state[k]
        if k.endswith("running_var"):
            fresh[k] = torch.ones_like(ref)
        else:
            fresh[k] = torch.zeros_like(ref)
    return fresh


@contextlib.contextmanager
def recompute_mode(model: nn.Module) -> Iterator[None]:
    """Inside the context, BN layers use batch statistics and accumulate running statistics
    as a cumulative average (``momentum=None``); every other layer stays in eval mode."""
    saved = []
    for module in model.modules():
        if isinstance(module, BN_TYPES) and module.track_running_stats:
            saved.append((module, module.training, module.momentum))
            module.train()
            module.momentum = None
    try:
        yield
    finally:
        for module, training, momentum in saved:
            module.train(training)
            module.momentum = momentum
