"""Pre-norm transformer blocks written out in plain operations (no fused kernels), so that
``torch.func.vmap`` batches them and tracing sees every projection."""

from __future__ import annotations

import math

import torch
from torch import nn


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused query/key/value projection."""

    def __init__(self, dim: int, heads: int, *, causal: bool, context: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(
                f"SelfAttention(dim=..., heads=...): expected dim divisible by heads; found {dim} and {heads}."
            )
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        mask = torch.tril(torch.ones(context, context, dtype=torch.bool)) if causal else None
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-2, -1) / math.sqrt(d // self.heads)
        if self.mask is not None:
            scores = scores.masked_fill(~self.mask[:t, :t], float("-inf"))
        out = torch.softmax(scores, dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(n, t, d))


class Block(nn.Module):
    """``x + attn(norm1(x))``, then ``x + mlp(norm2(x))`` with a GELU MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, *, causal: bool, context: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, causal=causal, context=context)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_ratio * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(mlp_ratio * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))
