"""BatchNorm statistics: find the BN layers that track running statistics, and recompute
those statistics at a parameter point as a size-weighted average over batches."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

BN_TYPES = (nn.modules.batchnorm._BatchNorm,)

__all__ = ["bn_buffer_keys", "fresh_bn_buffers", "has_batchnorm", "recompute_mode"]


def _tracking(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for name, module in model.named_modules():
        if isinstance(module, BN_TYPES) and module.track_running_stats:
            yield name, module


def has_batchnorm(model: nn.Module) -> bool:
    """Whether any BatchNorm layer of ``model`` tracks running statistics."""
    return any(True for _ in _tracking(model))


def bn_buffer_keys(model: nn.Module) -> list[str]:
    """State keys of the running statistics of every tracking BatchNorm layer (empty when the
    model has none)."""
    keys = []
    for name, _ in _tracking(model):
        prefix = f"{name}." if name else ""
        keys += [prefix + "running_mean", prefix + "running_var", prefix + "num_batches_tracked"]
    return keys


def fresh_bn_buffers(state: dict[str, Tensor], keys: list[str]) -> dict[str, Tensor]:
    """New buffers as ``reset_running_stats`` leaves them: zero means, unit variances, count 0."""
    return {k: torch.ones_like(state[k]) if k.endswith("running_var") else torch.zeros_like(state[k]) for k in keys}


@contextlib.contextmanager
def recompute_mode(model: nn.Module) -> Iterator[Callable[[int], None]]:
    """Inside the context, tracking BN layers use batch statistics and accumulate running
    statistics; every other layer stays in eval mode.

    Without further calls, momentum is None: torch's cumulative average, which weighs every
    batch equally. Better, call the yielded ``before_batch(n)`` before each forward pass with
    its batch size: it sets the momentum to ``n / (examples seen + n)``, which makes the running
    statistics the example-weighted average of the batch statistics, so a smaller last batch
    counts for what it holds.
    """
    saved = [(module, module.training, module.momentum) for _, module in _tracking(model)]
    seen = 0

    def before_batch(n: int) -> None:
        nonlocal seen
        for module, _, _ in saved:
            module.momentum = n / (seen + n)
        seen += n

    for module, _, _ in saved:
        module.train()
        module.momentum = None
    try:
        yield before_batch
    finally:
        for module, training, momentum in saved:
            module.train(training)
            module.momentum = momentum
