"""Text generation (greedy by default) from prompts, batched with left padding; guided when
called inside :func:`guide`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from landscape.concepts.examples import prompt_ids, use_chat
from landscape.concepts.hidden import pad_id
from landscape.concepts.models import input_device
from landscape.core.data import padded_batches
from landscape.core.errors import bad_argument
from landscape.core.progress import progress_bar

__all__ = ["generate"]


def generate(
    lm: nn.Module,
    tokenizer: Any,
    prompts: str | Sequence[str],
    *,
    max_new_tokens: int = 48,
    chat: bool | None = None,
    batch_size: int = 8,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
    progress: bool = False,
) -> list[str]:
    """Complete prompts (greedy by default), left-padding batches; works inside :func:`guide`.

    Prompts are rendered as a user turn with the chat template when the tokenizer has one.
    Inputs go to the device of the model's input embeddings (the model is not moved).
    A tokenizer without a pad token is fine. With ``do_sample=True``, torch's global seed is
    set to ``seed`` before each batch.

    Returns
    -------
    list of str
        The generated text of each prompt, special tokens removed.

    Examples
    --------
    >>> from landscape.concepts import load_lm, generate
    >>> lm, tok = load_lm("tiny")
    >>> len(generate(lm, tok, ["Hi"], max_new_tokens=3)) == 1
    True
    """
    function = "generate"
    items = [prompts] if isinstance(prompts, str) else list(prompts)
    if not items or not all(isinstance(p, str) for p in items):
        raise bad_argument(function, "prompts", expected="a non-empty list of strings", found=prompts)
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise bad_argument(function, "max_new_tokens", expected="a positive integer", found=repr(max_new_tokens))
    chat = use_chat(tokenizer, chat, function=function)
    encoded = [prompt_ids(tokenizer, p, chat=chat) for p in items]
    if any(not ids for ids in encoded):
        raise bad_argument(function, "prompts", expected="prompts that tokenize to at least one token", found="''")
    device = input_device(lm)
    pad = pad_id(tokenizer)
    eos = getattr(getattr(lm, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    outputs: list[str] = [""] * len(items)
    with torch.inference_mode(), progress_bar(total=len(items), desc="generate", disable=not progress) as bar:
        for rows, input_ids, mask in padded_batches(
            encoded, batch_size, pad_id=pad, side="left", longest_first=False, device=device
        ):
            if do_sample:
                torch.manual_seed(seed)
            options: dict[str, Any] = {"do_sample": do_sample}
            if do_sample:
                options["temperature"] = temperature
            else:
                options.update(temperature=None, top_p=None, top_k=None)
            generated = lm.generate(
                input_ids=input_ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad,
                eos_token_id=eos,
                **options,
            )
            stops = set(eos) if isinstance(eos, (list, tuple)) else {eos}
            for row, sequence in zip(rows, generated[:, input_ids.shape[1] :].tolist()):
                end = next((i for i, token in enumerate(sequence) if token in stops), len(sequence))
                outputs[row] = tokenizer.decode(sequence[:end], skip_special_tokens=True).strip()
            bar.update(len(rows))
    return outputs
