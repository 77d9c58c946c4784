"""Which token positions of a forward pass guidance steers.

Positions are counted in each sequence's text: 0 is its first non-padding token (BOS and
chat-template tokens included), whatever the padding side, and a token keeps its position
whether the model reads it in the prompt pass or later from the KV cache. Padding is never
steered.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from landscape.core.errors import bad_argument

__all__ = ["POSITIONS", "PositionRule", "completion_starts", "position_rule"]

POSITIONS = ("all", "new")

# Set by scoring functions that read a prompt and its completion in one forward pass: where
# each row's completion starts, so that positions="new" steers what generation would steer.
_COMPLETION_STARTS: ContextVar[torch.Tensor | None] = ContextVar("completion_starts", default=None)


@contextmanager
def completion_starts(starts: torch.Tensor) -> Iterator[None]:
    """Within the block, forward passes read prompts with completions: ``starts`` (batch,)
    gives the text position of each row's first completion token."""
    token = _COMPLETION_STARTS.set(starts)
    try:
        yield
    finally:
        _COMPLETION_STARTS.reset(token)


@dataclass
class PositionRule:
    """A normalised ``positions`` argument: ``"all"``, ``"new"``, sorted non-negative indices,
    a slice of non-negative bounds, or a boolean mask (length,) or (batch, length)."""

    kind: str  # "all", "new", "indices", "slice", "mask"
    indices: torch.Tensor | None = None
    window: slice | None = None
    mask: torch.Tensor | None = None
    _previous: torch.Tensor | None = field(default=None, repr=False)
    _prompt_length: int = field(default=0, repr=False)

    def describe(self) -> str:
        if self.kind in ("all", "new"):
            return self.kind
        if self.kind == "indices":
            return f"positions {self.indices.tolist()}"  # type: ignore[union-attr]
        if self.kind == "slice":
            return f"positions {self.window}"
        return f"mask of shape {tuple(self.mask.shape)}"  # type: ignore[union-attr]

    def reset(self) -> None:
        self._previous = None
        self._prompt_length = 0


def position_rule(positions: Any, *, function: str = "guide") -> PositionRule:
    """Check and normalise a ``positions`` argument."""
    fix = "Use 'all', 'new', non-negative token indices, a slice such as slice(5, None), or a boolean mask."
    if isinstance(positions, str):
        if positions not in POSITIONS:
            raise bad_argument(function, "positions", expected=f"one of {POSITIONS}", found=repr(positions), fix=fix)
        return PositionRule(positions)
    if isinstance(positions, slice):
        bounds = (positions.start, positions.stop)
        step = 1 if positions.step is None else positions.step
        if any(b is not None and (not isinstance(b, int) or b < 0) for b in bounds) or not (
            isinstance(step, int) and step >= 1
        ):
            raise bad_argument(
                function,
                "positions",
                expected="a slice of non-negative bounds and a positive step (a position counts from the "
                "text's first token; negative ones would move while the model generates)",
                found=repr(positions),
                fix=fix,
            )
        return PositionRule("slice", window=slice(positions.start or 0, positions.stop, step))
    if isinstance(positions, (torch.Tensor, np.ndarray)) and positions.dtype in (torch.bool, np.bool_):
        mask = torch.as_tensor(positions)
        if mask.dim() not in (1, 2) or mask.shape[-1] == 0:
            raise bad_argument(
                function, "positions", expected="a boolean mask (length,) or (batch, length)", found=mask, fix=fix
            )
        return PositionRule("mask", mask=mask.clone())
    items = [positions] if isinstance(positions, int) and not isinstance(positions, bool) else positions
    if isinstance(items, (Sequence, np.ndarray, torch.Tensor)) and not isinstance(items, str):
        values = list(items.tolist() if hasattr(items, "tolist") else items)
        if values and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
            return PositionRule("indices", indices=torch.tensor(sorted(set(values)), dtype=torch.long))
    raise bad_argument(
        function,
        "positions",
        expected="'all', 'new', non-negative token indices, a slice or a boolean mask",
        found=repr(positions)[:120],
        fix=fix,
    )


def _cache_length(past: Any) -> int:
    if past is None:
        return 0
    if hasattr(past, "get_seq_length"):
        return int(past.get_seq_length())
    if isinstance(past, (tuple, list)) and past and past[0] is not None:
        return int(past[0][0].shape[-2])
    return 0


def _past_length(arguments: dict[str, Any]) -> int:
    cache_position = arguments.get("cache_position")
    if isinstance(cache_position, torch.Tensor) and cache_position.numel():
        return int(cache_position.reshape(-1)[0])
    for name in ("cache", "past_key_values", "cache_params"):  # transformers 5.2x names it cache
        if arguments.get(name) is not None:
            return _cache_length(arguments[name])
    return 0


def steer_mask(rule: PositionRule, arguments: dict[str, Any]) -> torch.Tensor | None:
    """Which positions of this forward call to steer: (batch, length) bool, or None for all."""
    ids = arguments.get("input_ids")
    embeds = arguments.get("inputs_embeds")
    reference = ids if ids is not None else embeds
    if reference is None:
        return None
    batch, length = int(reference.shape[0]), int(reference.shape[1])
    device = reference.device
    attention = arguments.get("attention_mask")
    full = attention.bool() if isinstance(attention, torch.Tensor) and attention.dim() == 2 else None
    current = full[:, -length:] if full is not None else None
    if rule.kind == "all":
        return None if current is None or bool(current.all()) else current
    past = _past_length(arguments)
    if full is not None:
        text = (full.long().cumsum(-1) - 1)[:, -length:]  # each token's position in its text
    else:
        text = (past + torch.arange(length, device=device))[None, :].expand(batch, length)
    if rule.kind == "new":
        steer = _new_positions(rule, ids, text, current, past, batch, length, device)
    elif rule.kind == "indices":
        steer = torch.isin(text, rule.indices.to(device))  # type: ignore[union-attr]
    elif rule.kind == "slice":
        window = rule.window
        assert window is not None
        steer = (text >= window.start) & ((text - window.start) % window.step == 0)
        if window.stop is not None:
            steer &= text < window.stop
    else:
        mask = rule.mask.to(device)  # type: ignore[union-attr]
        if mask.dim() == 2 and mask.shape[0] != batch:
            raise bad_argument(
                "guide",
                "positions",
                expected=f"a mask with one row per sequence of the batch ({batch})",
                found=f"a mask of shape {tuple(mask.shape)}",
                fix="Pass a 1-D mask to steer the same positions of every sequence.",
            )
        rows = mask if mask.dim() == 2 else mask[None, :].expand(batch, -1)
        # Positions past the mask's end are not steered.
        steer = (text < rows.shape[1]) & rows.gather(1, text.clamp(0, rows.shape[1] - 1))
    return steer if current is None else steer & current


def _new_positions(
    rule: PositionRule,
    ids: torch.Tensor | None,
    text: torch.Tensor,
    current: torch.Tensor | None,
    past: int,
    batch: int,
    length: int,
    device: torch.device,
) -> torch.Tensor:
    """The last prompt token and every generated token, with or without the KV cache."""
    if past > 0:  # decoding with a cache: every position of the call is new
        return torch.ones(batch, length, dtype=torch.bool, device=device)
    starts = _COMPLETION_STARTS.get()
    if starts is not None and starts.shape[0] == batch:
        return text >= (starts.to(device)[:, None] - 1)
    previous = rule._previous
    rule._previous = ids.detach().clone() if ids is not None else None
    if (
        ids is not None
        and previous is not None
        and ids.shape[0] == previous.shape[0]
        and ids.shape[1] == previous.shape[1] + 1
        and torch.equal(ids[:, :-1], previous)
    ):
        # Generation without a cache re-reads the sequence with one more token each step:
        # steer from the prompt's last token on, as with the cache.
        return (torch.arange(length, device=device) >= rule._prompt_length - 1)[None, :].expand(batch, length)
    rule._prompt_length = length
    # A new prompt: only its last real token, whose output is the first generated token.
    if current is None:
        last = torch.full((batch,), length - 1, device=device)
    else:
        last = length - 1 - current.flip(-1).int().argmax(dim=-1)
    return torch.arange(length, device=device)[None, :] == last[:, None]
