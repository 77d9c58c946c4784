"""Hidden representations of a language model at chosen layers and sites."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn

from landscape.concepts.examples import as_examples, encode, use_chat
from landscape.concepts.models import find_layers, model_name, resolve_layers, site_module
from landscape.core.errors import bad_argument
from landscape.core.io import provenance_attrs
from landscape.core.progress import progress_bar

__all__ = ["READS", "hidden_states"]

READS = ("last", "mean", "tokens")


class _Stop(Exception):
    """Raised by the hook of the deepest requested layer: nothing after it is needed."""


def output_tensor(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def runner(lm: nn.Module, blocks: nn.ModuleList) -> nn.Module:
    """The module to call: the decoder without the language-model head when the blocks live
    inside it (the head's vocabulary projection is a large share of a small model's cost)."""
    base = getattr(lm, "base_model", None)
    if isinstance(base, nn.Module) and base is not lm and any(m is blocks for m in base.modules()):
        return base
    return lm


def pad_id(tokenizer: Any) -> int:
    for candidate in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if isinstance(candidate, int):
            return candidate
    return 0


def right_padded(batch: Sequence[list[int]], pad: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), length), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), length), dtype=torch.long)
    for row, ids in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[row, : len(ids)] = 1
    return input_ids.to(device), mask.to(device)


def model_device(lm: nn.Module) -> torch.device:
    try:
        return next(lm.parameters()).device
    except StopIteration:  # pragma: no cover - a model without parameters
        return torch.device("cpu")


def hidden_states(
    lm: nn.Module,
    tokenizer: Any,
    examples: Any,
    *,
    layers: str | int | Sequence[int] = "all",
    site: str = "residual",
    read: str = "last",
    n_tokens: int | None = 16,
    batch_size: int = 16,
    chat: bool | None = None,
    layer_path: str | None = None,
    progress: bool = True,
) -> xr.DataArray:
    """Representations of examples at the chosen layers of a causal language model.

    Parameters
    ----------
    lm, tokenizer
        A Hugging Face causal LM and its tokenizer (see :func:`load_lm`). The model is not
        moved; inputs go to its device. A tokenizer without a pad token is fine.
    examples
        Prompt/completion pairs: :class:`ConceptExamples`, dicts with ``prompt``,
        ``completion`` (and ``label``, ``group``), ``(prompt, completion[, label])`` tuples,
        a ``.jsonl`` path, or plain strings (raw texts, read whole).
    layers
        ``"all"``, a layer index or a list (negative indices count from the end).
    site
        ``"residual"`` (output of the decoder block), ``"pre_attn"`` (output of the block's
        input norm, what attention reads), ``"attn_out"`` (attention output before it is
        added to the residual stream) or ``"mlp_out"``.
    read
        ``"last"``: the completion's last token; ``"mean"``: the mean over its first
        ``n_tokens`` tokens (all when ``n_tokens`` is None); ``"tokens"``: each of its first
        ``n_tokens`` tokens (NaN where a completion is shorter).
    n_tokens
        How many completion tokens ``"mean"`` and ``"tokens"`` read.
    batch_size
        Examples per forward pass. Examples are sorted by length and right-padded; padding
        is masked, so batched and unbatched extraction agree (to float rounding).
    chat
        Render pairs with the tokenizer's chat template (default: when it has one).
    layer_path
        Dotted path to the decoder blocks for models that are not Llama- or GPT-2-like.
    progress
        Show a progress bar.

    Returns
    -------
    xarray.DataArray
        Dims ``(sample, layer, hidden)``, or ``(sample, layer, token, hidden)`` for
        ``read="tokens"``; float32. Coordinates: ``layer`` (indices), ``label`` and
        ``group`` on ``sample`` when the examples carry them, ``n_read`` (completion tokens
        read per sample) and ``mean_norm`` on ``layer``: the mean L2 norm of the activations
        over the completion tokens (what relative guidance strengths are measured in).

    Examples
    --------
    >>> from landscape.concepts import load_lm, hidden_states
    >>> lm, tok = load_lm("tiny")
    >>> reps = hidden_states(lm, tok, [("Hi", "Great!", 1), ("Hi", "Awful.", 0)], progress=False)
    >>> reps.dims, reps.sizes["layer"]
    (('sample', 'layer', 'hidden'), 2)
    """
    function = "hidden_states"
    ex = as_examples(examples, function=function)
    if read not in READS:
        raise bad_argument(function, "read", expected=f"one of {READS}", found=repr(read))
    if n_tokens is not None and (not isinstance(n_tokens, int) or isinstance(n_tokens, bool) or n_tokens < 1):
        raise bad_argument(function, "n_tokens", expected="a positive integer or None", found=repr(n_tokens))
    if read == "tokens" and n_tokens is None:
        raise bad_argument(function, "n_tokens", expected="a number of tokens for read='tokens'", found="None")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise bad_argument(function, "batch_size", expected="a positive integer", found=repr(batch_size))
    blocks = find_layers(lm, layer_path, function=function)
    chosen = resolve_layers(layers, len(blocks), function=function)
    modules = [site_module(blocks[i], site, function=function) for i in chosen]
    chat = use_chat(tokenizer, chat, function=function)
    encoded = encode(tokenizer, ex, chat=chat, max_completion=n_tokens if read != "last" else None)
    empty = [i for i, e in enumerate(encoded) if e.stop <= e.start]
    if empty:
        raise bad_argument(
            function,
            "examples",
            expected="examples that tokenize to at least one token",
            found=f"empty example {empty[0]}",
        )

    device = model_device(lm)
    call = runner(lm, blocks)
    width = None
    n = len(encoded)
    n_layers = len(chosen)
    # Each hook reads its spans at once, so that only (batch, hidden) per layer is kept.
    store: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    spans: dict[str, torch.Tensor] = {}
    deepest = max(range(n_layers), key=lambda j: chosen[j])

    def make_hook(j: int):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            store[j] = _read(output_tensor(output).float(), spans["start"], spans["stop"], read, n_tokens)
            if j == deepest:
                raise _Stop

        return hook

    handles = [module.register_forward_hook(make_hook(j)) for j, module in enumerate(modules)]
    out: np.ndarray | None = None
    norm_sum = torch.zeros(n_layers, dtype=torch.float64)
    n_read = np.array([e.stop - e.start for e in encoded], dtype=np.int64)
    order = sorted(range(n), key=lambda i: (-len(encoded[i].ids), i))
    was_training = lm.training
    lm.eval()
    try:
        with (
            torch.inference_mode(),
            progress_bar(total=n, desc="hidden states", unit="ex", disable=not progress) as bar,
        ):
            for begin in range(0, n, batch_size):
                rows = order[begin : begin + batch_size]
                batch = [encoded[i] for i in rows]
                input_ids, mask = right_padded([e.ids for e in batch], pad_id(tokenizer), device)
                spans["start"] = torch.tensor([e.start for e in batch], device=device)
                spans["stop"] = torch.tensor([e.stop for e in batch], device=device)
                store.clear()
                try:
                    call(input_ids=input_ids, attention_mask=mask, use_cache=False)
                except _Stop:
                    pass
                if len(store) != n_layers:  # pragma: no cover - a module was never called
                    raise bad_argument(
                        function, "site", expected="modules that run in the forward pass", found=f"site {site!r}"
                    )
                values = torch.stack([store[j][0] for j in range(n_layers)], dim=1)  # (B, layer[, token], H)
                norm_sum += torch.stack([store[j][1] for j in range(n_layers)]).double().cpu()
                width = values.shape[-1]
                if out is None:
                    out = np.full((n, n_layers, *values.shape[2:]), np.nan, dtype=np.float32)
                out[rows] = values.cpu().numpy()
                bar.update(len(rows))
    finally:
        for handle in handles:
            handle.remove()
        store.clear()
        lm.train(was_training)
    assert out is not None
    mean_norm = (norm_sum / max(int(n_read.sum()), 1)).numpy().astype(np.float32)
    dims = ("sample", "layer", "token", "hidden") if read == "tokens" else ("sample", "layer", "hidden")
    coords: dict[str, Any] = {
        "sample": np.arange(n),
        "layer": np.array(chosen, dtype=np.int64),
        "mean_norm": ("layer", mean_norm),
        "n_read": ("sample", n_read),
        "group": ("sample", np.array(ex.groups, dtype=object).astype(str)),
    }
    if read == "tokens":
        coords["token"] = np.arange(int(n_tokens))  # type: ignore[arg-type]
    if ex.labels is not None:
        coords["label"] = ("sample", np.asarray(ex.labels))
    return xr.DataArray(
        out,
        dims=dims,
        coords=coords,
        name="hidden",
        attrs=provenance_attrs(
            function=function,
            model=model_name(lm),
            site=site,
            read=read,
            n_tokens=n_tokens if read != "last" else None,
            chat=chat,
            n_model_layers=len(blocks),
            hidden_size=width,
            layer_path=layer_path,
            examples=ex.name,
        ),
    )


def _read(
    x: torch.Tensor, start: torch.Tensor, stop: torch.Tensor, read: str, n_tokens: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read the spans ``[start, stop)`` of one layer's output ``x`` (B, L, H): the values
    (B[, token], H) and the sum of token norms over every span."""
    b, length, _ = x.shape
    device = x.device
    positions = torch.arange(length, device=device)
    span = (positions[None, :] >= start[:, None]) & (positions[None, :] < stop[:, None])  # (B, L)
    norms = (x.norm(dim=-1) * span).sum()
    rows = torch.arange(b, device=device)
    if read == "last":
        return x[rows, stop - 1], norms
    if read == "mean":
        return (x * span[:, :, None]).sum(dim=1) / (stop - start).to(x.dtype)[:, None], norms
    assert n_tokens is not None
    index = start[:, None] + torch.arange(n_tokens, device=device)[None, :]  # (B, T)
    gathered = x[rows[:, None], index.clamp(max=length - 1)]  # (B, T, H)
    return gathered.masked_fill(~(index < stop[:, None])[:, :, None], float("nan")), norms
