"""Building blocks shared by the zoo models."""

from __future__ import annotations

import math

import torch
from torch import nn

from landscape.core.errors import bad_argument

NORMS = ("batch", "layer", "group", "none")
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


def activation(name: str, *, function: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise bad_argument(function, "activation", expected=f"one of {sorted(ACTIVATIONS)}", found=repr(name))
    return ACTIVATIONS[name]()


def check_norm(norm: str | None, *, function: str) -> str:
    norm = "none" if norm is None else norm
    if norm not in NORMS:
        raise bad_argument(function, "norm", expected=f"one of {NORMS}", found=repr(norm))
    return norm


def channel_norm(norm: str, channels: int, dim: int) -> nn.Module:
    """A normalisation over the channels of a (N, C, ...) activation.

    ``"layer"`` is GroupNorm with one group (LayerNorm over channels and positions, the usual
    LayerNorm of convolutional networks); ``"group"`` uses up to 8 groups dividing ``channels``.
    """
    if norm == "batch":
        return nn.BatchNorm1d(channels) if dim == 1 else nn.BatchNorm2d(channels)
    if norm == "layer":
        return nn.GroupNorm(1, channels)
    if norm == "group":
        return nn.GroupNorm(math.gcd(8, channels), channels)
    return nn.Identity()


def feature_norm(norm: str, features: int) -> nn.Module:
    """A normalisation of (N, F) activations for MLPs."""
    if norm == "batch":
        return nn.BatchNorm1d(features)
    if norm == "layer":
        return nn.LayerNorm(features)
    if norm == "group":
        return nn.GroupNorm(math.gcd(8, features), features)
    return nn.Identity()


def as_shape(input_shape: int | tuple[int, ...] | list[int], *, function: str) -> tuple[int, ...]:
    shape = (int(input_shape),) if isinstance(input_shape, int) else tuple(int(s) for s in input_shape)
    if not shape or any(s < 1 for s in shape):
        raise bad_argument(function, "input_shape", expected="positive sizes", found=repr(input_shape))
    return shape


def positive(function: str, **values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise bad_argument(function, name, expected="a positive integer", found=repr(value))


@torch.no_grad()
def output_size(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Number of features ``module`` produces per example (probed with one zero input)."""
    was_training = module.training
    module.eval()
    out = module(torch.zeros(1, *input_shape))
    module.train(was_training)
    return int(out[0].numel())


class Classifier(nn.Module):
    """``classifier(features(x))``: the shape every zoo model has."""

    def __init__(self, features: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.features = features
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
