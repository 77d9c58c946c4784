"""Inputs for the random-input control."""

from __future__ import annotations

import torch
from torch import Tensor

from landscape.core.errors import bad_argument

__all__ = ["gaussian_inputs"]


def gaussian_inputs(x: Tensor, *, seed: int = 0, n: int | None = None) -> Tensor:
    """Gaussian noise shaped like ``x`` with its per-position mean and standard deviation.

    The control of the paper's data-dependence experiment: distilling on such inputs keeps the
    input statistics' first two moments but none of the data's structure.

    Examples
    --------
    >>> import torch
    >>> gaussian_inputs(torch.randn(100, 40), seed=0).shape
    torch.Size([100, 40])
    """
    if not isinstance(x, Tensor) or x.dim() < 2:
        raise bad_argument("gaussian_inputs", "x", expected="a tensor of inputs (examples, ...)", found=x)
    n = int(x.shape[0] if n is None else n)
    mean = x.double().mean(dim=0)
    std = x.double().std(dim=0) if x.shape[0] > 1 else torch.ones_like(mean)
    gen = torch.Generator().manual_seed(int(seed))
    noise = torch.randn((n, *x.shape[1:]), generator=gen, dtype=torch.float64)
    return (mean + std * noise).to(x.dtype if x.is_floating_point() else torch.float32)
