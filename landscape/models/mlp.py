"""Multi-layer perceptrons."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from landscape.models.layers import Classifier, as_shape, check_norm, feature_norm, positive
from landscape.models.layers import activation as make_activation
from landscape.models.registry import register


@register("mlp")
def mlp(
    input_shape: int | tuple[int, ...] = (40,),
    num_classes: int = 10,
    width: int = 128,
    depth: int = 2,
    activation: str = "relu",
    norm: str | None = None,
) -> nn.Module:
    """An MLP with ``depth`` hidden layers of ``width`` units (784-512-512-10 is
    ``input_shape=784, width=512, depth=2``).

    Submodules are named ``features.fc1, features.act1, ...`` and ``classifier``; with a
    norm, ``features.norm1, ...`` sit between each linear layer and its activation.
    """
    shape = as_shape(input_shape, function="mlp")
    positive("mlp", num_classes=num_classes, width=width, depth=depth)
    norm = check_norm(norm, function="mlp")
    layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    fan_in = 1
    for s in shape:
        fan_in *= s
    for i in range(1, depth + 1):
        layers[f"fc{i}"] = nn.Linear(fan_in, width)
        if norm != "none":
            layers[f"norm{i}"] = feature_norm(norm, width)
        layers[f"act{i}"] = make_activation(activation, function="mlp")
        fan_in = width
    return Classifier(nn.Sequential(layers), nn.Linear(width, num_classes))
