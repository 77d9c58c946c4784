"""Concept guidance: add a probe's direction to a model's activations while it runs."""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from landscape.concepts.examples import prompt_ids, use_chat
from landscape.concepts.hidden import model_device, output_tensor, pad_id, runner
from landscape.concepts.models import SITES, find_layers, hidden_size, site_module
from landscape.concepts.probes import ConceptProbe, check_probe_for
from landscape.core.errors import bad_argument
from landscape.core.progress import progress_bar

__all__ = ["POSITIONS", "Guidance", "default_layers", "generate", "guide"]

POSITIONS = ("all", "new")


@dataclass
class Guidance:
    """What an active :func:`guide` context does: the steered layers, the absolute strength
    added at each (``alpha`` times the layer's mean activation norm when relative), the site
    and the positions."""

    layers: list[int]
    strengths: dict[int, float]
    site: str
    positions: str
    preserve_norm: bool
    alpha: float
    relative: bool
    _mask: torch.Tensor | None = field(default=None, repr=False)
    _previous: torch.Tensor | None = field(default=None, repr=False)
    _prompt_length: int = field(default=0, repr=False)


def _cache_length(past: Any) -> int:
    if past is None:
        return 0
    if hasattr(past, "get_seq_length"):
        return int(past.get_seq_length())
    if isinstance(past, (tuple, list)) and past and past[0] is not None:
        return int(past[0][0].shape[-2])
    return 0


def _positions_mask(state: Guidance, arguments: dict[str, Any]) -> torch.Tensor | None:
    """Which positions of this forward call to steer: (batch, length) bool, or None for all."""
    ids = arguments.get("input_ids")
    embeds = arguments.get("inputs_embeds")
    reference = ids if ids is not None else embeds
    if reference is None:
        return None
    batch, length = int(reference.shape[0]), int(reference.shape[1])
    device = reference.device
    attention = arguments.get("attention_mask")
    current = None
    if isinstance(attention, torch.Tensor) and attention.dim() == 2:
        current = attention[:, -length:].bool()
    if state.positions == "all":
        return None if current is None or bool(current.all()) else current
    cache_position = arguments.get("cache_position")
    if isinstance(cache_position, torch.Tensor) and cache_position.numel():
        past = int(cache_position.reshape(-1)[0])
    else:
        past = _cache_length(arguments.get("past_key_values"))
    if past > 0:  # decoding with a cache: every position of the call is new
        return current
    previous = state._previous
    state._previous = ids.detach().clone() if ids is not None else None
    if (
        ids is not None
        and previous is not None
        and ids.shape[0] == previous.shape[0]
        and ids.shape[1] == previous.shape[1] + 1
        and torch.equal(ids[:, :-1], previous)
    ):
        # Generation without a cache re-reads the sequence with one more token each step:
        # steer from the prompt's last token on, as with the cache.
        steer = (torch.arange(length, device=device) >= state._prompt_length - 1)[None, :].expand(batch, length)
        return steer if current is None else steer & current
    state._prompt_length = length
    # A new prompt: only its last real token, whose output is the first generated token.
    if current is None:
        last = torch.full((batch,), length - 1, device=device)
    else:
        last = length - 1 - current.flip(-1).int().argmax(dim=-1)
    return torch.arange(length, device=device)[None, :] == last[:, None]


def _steer(x: torch.Tensor, delta: torch.Tensor, preserve_norm: bool) -> torch.Tensor:
    work = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    y = work + delta.to(work.dtype)
    if preserve_norm:
        y = y * (work.norm(dim=-1, keepdim=True) / y.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(work.dtype).tiny))
    return y.to(x.dtype)


def default_layers(probe: ConceptProbe, top_k: int | None = None) -> list[int]:
    """The ``top_k`` probed layers with the best validation accuracy (default: half of them,
    as in von Rütte et al., who guide the best 16 of 32 layers)."""
    k = max(1, math.ceil(len(probe.layers_) / 2)) if top_k is None else top_k
    return probe.top_layers(k)


@contextmanager
def guide(
    lm: nn.Module,
    probe: ConceptProbe,
    *,
    alpha: float,
    layers: int | Sequence[int] | None = None,
    top_k: int | None = None,
    site: str | None = None,
    relative: bool = True,
    preserve_norm: bool = True,
    positions: str = "all",
    layer_path: str | None = None,
) -> Iterator[Guidance]:
    """Add ``alpha`` times the probe's unit direction to the activations at chosen layers.

    Inside the context every forward pass of ``lm`` is guided (``lm(...)``,
    ``lm.generate(...)``, the scoring functions of this package); leaving it removes the
    hooks, restoring the model bit for bit.

    Parameters
    ----------
    lm
        The model the probe was fit on (a probe of another hidden size is refused).
    probe
        A fitted :class:`ConceptProbe`; ``-probe`` guides towards the opposite concept.
    alpha
        Strength; with ``relative=True`` (default) in units of the mean activation norm of
        each layer (``probe.mean_norm_``), else absolute. Negative values suppress the concept.
    layers, top_k
        Layers to steer; default: the ``top_k`` layers by validation accuracy (half of the
        probed layers when ``top_k`` is None).
    site
        Where to add the direction (default: the site the probe was fit at).
    preserve_norm
        Rescale each steered activation to its original norm (as von Rütte et al. do). Without
        it the change is exactly ``alpha * direction`` and linear in ``alpha``.
    positions
        ``"all"``: every (non-padding) position, prompt included; ``"new"``: only the
        positions the model generates from: the last real prompt token (so the first
        generated token is steered too) and every generated token, with or without the
        KV cache. Padding is never steered.
    layer_path
        Dotted path to the decoder blocks for unusual models.

    Yields
    ------
    Guidance
        The steered layers and absolute strengths.

    Examples
    --------
    >>> from landscape.concepts import load_lm, hidden_states, fit_probe, guide
    >>> lm, tok = load_lm("tiny")
    >>> data = [("Hi", "Great!", 1), ("Hi", "Awful.", 0), ("Yo", "Lovely.", 1), ("Yo", "Bad.", 0)]
    >>> probe = fit_probe(hidden_states(lm, tok, data, progress=False), val_fraction=0)
    >>> with guide(lm, probe, alpha=0.1) as g:
    ...     _ = lm(**tok("Hello", return_tensors="pt"))
    >>> g.layers
    [1]
    """
    function = "guide"
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise bad_argument(function, "alpha", expected="a finite number", found=repr(alpha))
    if positions not in POSITIONS:
        raise bad_argument(function, "positions", expected=f"one of {POSITIONS}", found=repr(positions))
    if not isinstance(probe, ConceptProbe):
        raise bad_argument(function, "probe", expected="a fitted ConceptProbe", found=probe)
    probe._check_fitted(function)
    blocks = find_layers(lm, layer_path or probe.layer_path_, function=function)
    check_probe_for(probe, hidden_size(lm), len(blocks), function)
    site = site or probe.site_
    if site is None:
        raise bad_argument(
            function, "site", expected=f"one of {SITES} (the probe does not record its site)", found="None"
        )
    if site not in SITES:
        raise bad_argument(function, "site", expected=f"one of {SITES}", found=repr(site))
    if relative and probe.site_ is not None and site != probe.site_:
        raise bad_argument(
            function,
            "site",
            expected=f"the probe's site {probe.site_!r} for a relative alpha (its norms were measured there)",
            found=repr(site),
            fix="Pass relative=False for an absolute alpha, or fit the probe at that site.",
        )
    if layers is None:
        chosen = default_layers(probe, top_k)
    else:
        chosen = sorted({int(layer) for layer in ([layers] if isinstance(layers, int) else layers)})
        unknown = [layer for layer in chosen if layer not in probe.layers_.tolist()]
        if not chosen or unknown:
            raise bad_argument(
                function,
                "layers",
                expected=f"layers the probe was fit on ({probe.layers_.tolist()})",
                found=f"{unknown or 'none'}",
            )
    device = model_device(lm)
    strengths: dict[int, float] = {}
    deltas: dict[int, torch.Tensor] = {}
    for layer in chosen:
        j = int((probe.layers_ == layer).nonzero()[0][0])
        direction = torch.as_tensor(probe.directions_[j], dtype=torch.float64)
        unit = direction / direction.norm()
        strength = float(alpha) * (float(probe.mean_norm_[j]) if relative else 1.0)
        strengths[layer] = strength
        deltas[layer] = (strength * unit).to(device=device, dtype=torch.float32)
    state = Guidance(chosen, strengths, site, positions, preserve_norm, float(alpha), relative)

    call = runner(lm, blocks)
    signature = inspect.signature(call.forward)

    def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        try:
            arguments = signature.bind_partial(*args, **kwargs).arguments
        except TypeError:
            arguments = dict(kwargs)
        state._mask = _positions_mask(state, arguments)

    def make_hook(delta: torch.Tensor):
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            x = output_tensor(output)
            y = _steer(x, delta, preserve_norm)
            mask = state._mask
            if mask is not None:
                y = torch.where(mask[..., None], y, x)
            return (y, *output[1:]) if isinstance(output, tuple) else y

        return hook

    handles = [call.register_forward_pre_hook(pre_hook, with_kwargs=True)]
    try:
        for layer in chosen:
            module = site_module(blocks[layer], site, function=function)
            handles.append(module.register_forward_hook(make_hook(deltas[layer])))
        yield state
    finally:
        for handle in handles:
            handle.remove()
        state._mask = None
        state._previous = None


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
    device = model_device(lm)
    pad = pad_id(tokenizer)
    eos = getattr(getattr(lm, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    outputs: list[str] = [""] * len(items)
    with torch.inference_mode(), progress_bar(total=len(items), desc="generate", disable=not progress) as bar:
        for begin in range(0, len(items), batch_size):
            batch = encoded[begin : begin + batch_size]
            input_ids, mask = left_padded(batch, pad, device)
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
            for row, sequence in enumerate(generated[:, input_ids.shape[1] :].tolist()):
                end = next((i for i, token in enumerate(sequence) if token in stops), len(sequence))
                outputs[begin + row] = tokenizer.decode(sequence[:end], skip_special_tokens=True).strip()
            bar.update(len(batch))
    return outputs


def left_padded(batch: Sequence[list[int]], pad: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), length), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), length), dtype=torch.long)
    for row, ids in enumerate(batch):
        input_ids[row, length - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        mask[row, length - len(ids) :] = 1
    return input_ids.to(device), mask.to(device)
