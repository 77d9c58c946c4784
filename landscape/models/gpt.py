"""A tiny character-level GPT."""

from __future__ import annotations

import torch
from torch import nn

from landscape.core.errors import bad_argument
from landscape.models.layers import Classifier, positive
from landscape.models.registry import register
from landscape.models.transformer import Block


class GPTFeatures(nn.Module):
    """Token and position embeddings, causal pre-norm blocks and a final LayerNorm;
    returns one representation per position, shape (N, T, dim)."""

    def __init__(self, vocab_size: int, context: int, dim: int, depth: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.context = context
        self.token_embedding = nn.Embedding(vocab_size, dim)
        self.pos_embedding = nn.Parameter(torch.randn(1, context, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, causal=True, context=context) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(tokens) + self.pos_embedding[:, : tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


@register("gpt")
def gpt(
    vocab_size: int = 96,
    context: int = 32,
    dim: int = 32,
    depth: int = 2,
    heads: int = 2,
    mlp_ratio: int = 4,
) -> nn.Module:
    """A tiny GPT over ``vocab_size`` tokens (96 printable characters by default, matching
    :func:`landscape.datasets.docstrings`); logits have shape (N, T, vocab_size)."""
    positive("gpt", vocab_size=vocab_size, context=context, dim=dim, depth=depth, heads=heads, mlp_ratio=mlp_ratio)
    if dim % heads:
        raise bad_argument("gpt", "heads", expected=f"a divisor of dim={dim}", found=repr(heads))
    return Classifier(GPTFeatures(vocab_size, context, dim, depth, heads, mlp_ratio), nn.Linear(dim, vocab_size))
