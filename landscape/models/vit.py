"""A tiny Vision Transformer for small images or 1-D signals."""

from __future__ import annotations

import torch
from torch import nn

from landscape.core.errors import bad_argument
from landscape.models.layers import Classifier, as_shape, positive
from landscape.models.registry import register
from landscape.models.transformer import Block


class ViTFeatures(nn.Module):
    """Patch embedding (a strided convolution), a class token, learned positions, blocks and
    a final LayerNorm; returns the class token's representation."""

    def __init__(
        self, shape: tuple[int, ...], patch_size: int, dim: int, depth: int, heads: int, mlp_ratio: int
    ) -> None:
        super().__init__()
        self.unflatten = nn.Unflatten(1, (1, shape[0])) if len(shape) == 1 else nn.Identity()
        shape = (1, shape[0]) if len(shape) == 1 else shape
        spatial = shape[1:]
        if any(s % patch_size for s in spatial):
            raise bad_argument(
                "vit", "patch_size", expected=f"a divisor of the input sizes {spatial}", found=repr(patch_size)
            )
        conv = nn.Conv1d if len(spatial) == 1 else nn.Conv2d
        self.patch = conv(shape[0], dim, patch_size, stride=patch_size)
        tokens = 1
        for s in spatial:
            tokens *= s // patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embedding = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.ModuleList(
            Block(dim, heads, mlp_ratio, causal=False, context=tokens + 1) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(self.unflatten(x)).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embedding
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 0]


@register("vit")
def vit(
    input_shape: int | tuple[int, ...] = (1, 8, 8),
    num_classes: int = 10,
    patch_size: int = 2,
    dim: int = 32,
    depth: int = 2,
    heads: int = 2,
    mlp_ratio: int = 2,
) -> nn.Module:
    """A tiny ViT: ``(C, H, W)`` images or ``(length,)``/``(C, length)`` signals cut into
    patches of ``patch_size``; ``depth`` pre-norm blocks of width ``dim``."""
    shape = as_shape(input_shape, function="vit")
    positive(
        "vit", num_classes=num_classes, patch_size=patch_size, dim=dim, depth=depth, heads=heads, mlp_ratio=mlp_ratio
    )
    if dim % heads:
        raise bad_argument("vit", "heads", expected=f"a divisor of dim={dim}", found=repr(heads))
    return Classifier(ViTFeatures(shape, patch_size, dim, depth, heads, mlp_ratio), nn.Linear(dim, num_classes))
