"""Small convolutional networks for mnist1d (1-D) and the 8x8 digits (2-D)."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from landscape.core.errors import bad_argument
from landscape.models.layers import Classifier, as_shape, channel_norm, check_norm, output_size, positive
from landscape.models.registry import register


@register("cnn1d")
def cnn1d(
    input_shape: int | tuple[int, ...] = (40,),
    num_classes: int = 10,
    width: int = 32,
    depth: int = 3,
    norm: str | None = None,
) -> nn.Module:
    """A 1-D CNN in the shape of mnist1d's reference ConvBase: a kernel-5 stride-2
    convolution, then ``depth - 1`` kernel-3 stride-2 convolutions, ReLUs, and a linear
    classifier on the flattened channels. ``input_shape`` is ``(length,)`` or
    ``(channels, length)``."""
    shape = as_shape(input_shape, function="cnn1d")
    positive("cnn1d", num_classes=num_classes, width=width, depth=depth)
    norm = check_norm(norm, function="cnn1d")
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    if len(shape) == 1:
        layers["unflatten"] = nn.Unflatten(1, (1, shape[0]))
    in_channels = 1 if len(shape) == 1 else shape[0]
    for i in range(1, depth + 1):
        kernel = 5 if i == 1 else 3
        layers[f"conv{i}"] = nn.Conv1d(in_channels, width, kernel, stride=2, padding=1)
        if norm != "none":
            layers[f"norm{i}"] = channel_norm(norm, width, 1)
        layers[f"act{i}"] = nn.ReLU()
        in_channels = width
    layers["flatten"] = nn.Flatten()
    features = nn.Sequential(layers)
    return Classifier(features, nn.Linear(output_size(features, shape), num_classes))


@register("cnn2d")
def cnn2d(
    input_shape: tuple[int, ...] = (1, 8, 8),
    num_classes: int = 10,
    width: int = 32,
    norm: str | None = None,
) -> nn.Module:
    """A 2-D CNN for small images: 3x3 convolution (``width``), 3x3 stride-2 convolution
    (``2 * width``), 3x3 convolution (``2 * width``), ReLUs, then a linear classifier on the
    flattened channels."""
    shape = as_shape(input_shape, function="cnn2d")
    positive("cnn2d", num_classes=num_classes, width=width)
    norm = check_norm(norm, function="cnn2d")
    if len(shape) != 3:
        raise bad_argument("cnn2d", "input_shape", expected="(channels, height, width)", found=repr(shape))
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    plan = [(shape[0], width, 1), (width, 2 * width, 2), (2 * width, 2 * width, 1)]
    for i, (c_in, c_out, stride) in enumerate(plan, start=1):
        layers[f"conv{i}"] = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)
        if norm != "none":
            layers[f"norm{i}"] = channel_norm(norm, c_out, 2)
        layers[f"act{i}"] = nn.ReLU()
    layers["flatten"] = nn.Flatten()
    features = nn.Sequential(layers)
    return Classifier(features, nn.Linear(output_size(features, shape), num_classes))
