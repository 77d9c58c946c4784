"""A small residual network (ResNet-8 shaped by default) for 1-D or 2-D inputs."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from landscape.core.errors import bad_argument
from landscape.models.layers import Classifier, as_shape, channel_norm, check_norm, positive
from landscape.models.registry import register


def _conv(dim: int, c_in: int, c_out: int, kernel: int, stride: int) -> nn.Module:
    conv = nn.Conv1d if dim == 1 else nn.Conv2d
    return conv(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False)


class BasicBlock(nn.Module):
    """conv-norm-relu-conv-norm plus a shortcut (identity, or 1x1 conv + norm when the
    shape changes), then ReLU."""

    def __init__(self, dim: int, c_in: int, c_out: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = _conv(dim, c_in, c_out, 3, stride)
        self.norm1 = channel_norm(norm, c_out, dim)
        self.act1 = nn.ReLU()
        self.conv2 = _conv(dim, c_out, c_out, 3, 1)
        self.norm2 = channel_norm(norm, c_out, dim)
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                OrderedDict(conv=_conv(dim, c_in, c_out, 1, stride), norm=channel_norm(norm, c_out, dim))
            )
        else:
            self.shortcut = nn.Identity()
        self.act2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.norm2(self.conv2(self.act1(self.norm1(self.conv1(x)))))
        return self.act2(out + self.shortcut(x))


@register("resnet")
def resnet(
    input_shape: int | tuple[int, ...] = (1, 8, 8),
    num_classes: int = 10,
    width_multiplier: int = 1,
    base_width: int = 16,
    blocks: tuple[int, ...] = (1, 1, 1),
    norm: str | None = "batch",
) -> nn.Module:
    """A small ResNet: a 3x3 stem, stages of :class:`BasicBlock` (channels
    ``base_width * width_multiplier * 2**stage``, stride 2 from the second stage on), global
    average pooling and a linear classifier. Inputs ``(length,)`` or ``(channels, length)``
    give a 1-D network, ``(channels, height, width)`` a 2-D one. ``norm`` is ``"batch"``,
    ``"layer"``, ``"group"`` or ``"none"``."""
    shape = as_shape(input_shape, function="resnet")
    positive("resnet", num_classes=num_classes, width_multiplier=width_multiplier, base_width=base_width)
    norm = check_norm(norm, function="resnet")
    blocks = tuple(int(b) for b in blocks)
    if not blocks or any(b < 1 for b in blocks):
        raise bad_argument("resnet", "blocks", expected="positive block counts per stage", found=repr(blocks))
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    if len(shape) == 1:
        layers["unflatten"] = nn.Unflatten(1, (1, shape[0]))
        shape = (1, shape[0])
    if len(shape) not in (2, 3):
        raise bad_argument("resnet", "input_shape", expected="(length,), (C, L) or (C, H, W)", found=repr(shape))
    dim = len(shape) - 1
    width = base_width * width_multiplier
    layers["stem"] = _conv(dim, shape[0], width, 3, 1)
    layers["stem_norm"] = channel_norm(norm, width, dim)
    layers["stem_act"] = nn.ReLU()
    c_in = width
    for stage, count in enumerate(blocks):
        c_out = width * 2**stage
        for b in range(count):
            stride = 2 if stage > 0 and b == 0 else 1
            layers[f"stage{stage + 1}_block{b + 1}"] = BasicBlock(dim, c_in, c_out, stride, norm)
            c_in = c_out
    layers["pool"] = nn.AdaptiveAvgPool1d(1) if dim == 1 else nn.AdaptiveAvgPool2d(1)
    layers["flatten"] = nn.Flatten()
    return Classifier(nn.Sequential(layers), nn.Linear(c_in, num_classes))
