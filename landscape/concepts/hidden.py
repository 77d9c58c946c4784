"""Hidden representations of a language model at chosen layers and sites."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn

from landscape.concepts.examples import Encoded, as_examples, encode, use_chat
from landscape.concepts.models import input_device, model_fingerprint, model_name
from landscape.concepts.sites import find_layers, layer_point, register_read, resolve_layers
from landscape.core.data import padded_batches
from landscape.core.errors import bad_argument
from landscape.core.io import provenance_attrs
from landscape.core.progress import progress_bar

__all__ = ["READS", "hidden_states"]

READS = ("last", "mean", "tokens")


class _Stop(Exception):
    """Raised by the hook of the deepest requested layer: nothing after it is needed."""


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


def hidden_states(
    lm: nn.Module,
    tokenizer: Any,
    examples: Any,
    *,
    layers: str | int | Sequence[int | str] = "all",
    site: str = "pre_attn",
    read: str = "last",
    n_tokens: int | None = 16,
    batch_size: int = 16,
    chat: bool | None = None,
    layer_path: str | None = None,
    cache: str | os.PathLike | None = None,
    progress: bool = True,
) -> xr.DataArray:
    """Representations of examples at the chosen layers of a causal language model.

    Parameters
    ----------
    lm, tokenizer
        A Hugging Face causal LM and its tokenizer (see :func:`load_lm`). The model is not
        moved: inputs go to the device of its input embeddings (a model spread over devices
        by ``device_map`` works as it is). A tokenizer without a pad token is fine.
    examples
        Prompt/completion pairs: :class:`ConceptExamples`, dicts with ``prompt``,
        ``completion`` (and ``label``, ``group``), ``(prompt, completion[, label])`` tuples,
        a ``.jsonl`` path, or plain strings (raw texts, read whole).
    layers
        ``"all"`` (every decoder block), a layer index, ``"final"`` or a list of them
        (negative indices count back from the last block). Layer ``i`` is block ``i``
        (0-based, as llama.cpp and repeng number them); with ``site="residual"`` it is the
        block's output, which is transformers' ``output_hidden_states[i + 1]`` for every
        block but the last (there transformers gives the output after the final norm; Mamba
        leaves out the embeddings, so its index is ``i``). ``"final"``, numbered
        ``len(blocks)``, is that final norm's output, ``output_hidden_states[-1]``.
    site
        ``"pre_attn"`` (default, as in von Rütte et al.'s released code): what the block's
        attention reads, i.e. the output of its input norm (the raw residual stream in
        blocks without a pre-norm, such as OLMo-2; the mixer's input in Mamba).
        ``"residual"``: the block's output (the residual stream, what repeng, steering-vectors
        and llama.cpp control vectors use). ``"attn_out"``: the attention module's output
        before it is added to the residual stream. ``"mlp_out"``: the MLP's output (``fc2``
        in OPT). A block without the site is an error that lists the sites it has.
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
    cache
        A folder: the result is stored there under a key made of the model's content hash
        (every weight), the token ids of the examples, their labels and groups, and every
        option above; a later call with the same key reads the file instead of running the
        model. Hashing costs about a second per 500 MB of weights.
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
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise bad_argument(function, "batch_size", expected="a positive integer", found=repr(batch_size))
    blocks = find_layers(lm, layer_path, function=function)
    chosen = resolve_layers(layers, len(blocks), function=function)
    points = [layer_point(lm, blocks, i, site, function=function) for i in chosen]
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
    attrs = provenance_attrs(
        function=function,
        model=model_name(lm),
        model_type=str(getattr(getattr(lm, "config", None), "model_type", "") or ""),
        site=site,
        read=read,
        n_tokens=n_tokens if read != "last" else None,
        chat=chat,
        n_model_layers=len(blocks),
        layer_path=layer_path,
        examples=ex.name,
    )
    cached = None
    if cache is not None:
        cached = _cache_file(
            cache, lm, encoded, ex, chosen=chosen, site=site, read=read, n_tokens=n_tokens, layer_path=layer_path
        )
        if cached.exists():
            from landscape.core.io import load_result

            return load_result(cached)["hidden"]
    values, mean_norm = _extract(
        lm, tokenizer, blocks, points, chosen, encoded, read=read, n_tokens=n_tokens, batch_size=batch_size,
        site=site, progress=progress,
    )  # fmt: skip
    n = len(encoded)
    dims = ("sample", "layer", "token", "hidden") if read == "tokens" else ("sample", "layer", "hidden")
    coords: dict[str, Any] = {
        "sample": np.arange(n),
        "layer": np.array(chosen, dtype=np.int64),
        "mean_norm": ("layer", mean_norm),
        "n_read": ("sample", np.array([e.stop - e.start for e in encoded], dtype=np.int64)),
        "group": ("sample", np.array(ex.groups, dtype=object).astype(str)),
    }
    if read == "tokens":
        coords["token"] = np.arange(int(n_tokens))  # type: ignore[arg-type]
    if ex.labels is not None:
        coords["label"] = ("sample", np.asarray(ex.labels))
    attrs["hidden_size"] = int(values.shape[-1])
    result = xr.DataArray(values, dims=dims, coords=coords, name="hidden", attrs=attrs)
    if cached is not None:
        from landscape.core.io import save_result

        save_result(result, cached)
    return result


def _cache_file(cache: str | os.PathLike, lm: nn.Module, encoded: list[Encoded], ex: Any, **options: Any) -> Path:
    import hashlib
    import json

    from landscape.core.io import library_version

    key = {
        "version": library_version(),
        "model": model_fingerprint(lm),
        "tokens": hashlib.sha256(json.dumps([(e.ids, e.start, e.stop) for e in encoded]).encode()).hexdigest(),
        "labels": None if ex.labels is None else [str(v) for v in ex.labels],
        "groups": list(ex.groups),
        "name": ex.name,
        **options,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:32]
    folder = Path(cache)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"hidden-{digest}.nc"


def _extract(
    lm: nn.Module,
    tokenizer: Any,
    blocks: nn.ModuleList,
    points: list,
    chosen: list[int],
    encoded: list[Encoded],
    *,
    read: str,
    n_tokens: int | None,
    batch_size: int,
    site: str,
    progress: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Run the model over the examples: values (sample, layer[, token], hidden) and the mean
    token norm per layer."""
    device = input_device(lm)
    call = runner(lm, blocks)
    n = len(encoded)
    n_layers = len(chosen)
    # Each hook reads its spans at once, so that only (batch, hidden) per layer is kept.
    store: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    spans: dict[str, torch.Tensor] = {}
    deepest = max(range(n_layers), key=lambda j: chosen[j])

    def make_read(j: int):
        def read_tensor(x: torch.Tensor) -> None:
            start, stop = spans["start"].to(x.device), spans["stop"].to(x.device)
            if x.dim() == 2:  # OPT's MLP runs on (batch * length, hidden)
                x = x.reshape(start.shape[0], -1, x.shape[-1])
            store[j] = _read(x.float(), start, stop, read, n_tokens)
            if j == deepest:
                raise _Stop

        return read_tensor

    handles = [register_read(point, make_read(j)) for j, point in enumerate(points)]
    out: np.ndarray | None = None
    norm_sum = torch.zeros(n_layers, dtype=torch.float64)
    n_read = sum(e.stop - e.start for e in encoded)
    was_training = lm.training
    lm.eval()
    try:
        with (
            torch.inference_mode(),
            progress_bar(total=n, desc="hidden states", unit="ex", disable=not progress) as bar,
        ):
            batches = padded_batches([e.ids for e in encoded], batch_size, pad_id=pad_id(tokenizer), device=device)
            for rows, input_ids, mask in batches:
                spans["start"] = torch.tensor([encoded[i].start for i in rows], device=device)
                spans["stop"] = torch.tensor([encoded[i].stop for i in rows], device=device)
                store.clear()
                try:
                    call(input_ids=input_ids, attention_mask=mask, use_cache=False)
                except _Stop:
                    pass
                if len(store) != n_layers:  # pragma: no cover - a module was never called
                    raise bad_argument(
                        "hidden_states", "site", expected="modules that run in the forward pass", found=repr(site)
                    )
                values = torch.stack([store[j][0].cpu() for j in range(n_layers)], dim=1)  # (B, layer[, token], H)
                norm_sum += torch.stack([store[j][1].cpu() for j in range(n_layers)]).double()
                if out is None:
                    out = np.full((n, n_layers, *values.shape[2:]), np.nan, dtype=np.float32)
                out[rows] = values.numpy()
                bar.update(len(rows))
    finally:
        for handle in handles:
            handle.remove()
        store.clear()
        lm.train(was_training)
    assert out is not None
    return out, (norm_sum / max(n_read, 1)).numpy().astype(np.float32)


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
