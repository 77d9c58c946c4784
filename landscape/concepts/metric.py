"""How well guidance works: the concept effect and fluency (perplexity) over guidance
strengths, written as it goes and resumable."""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn

from landscape.concepts.examples import as_examples, encode, use_chat
from landscape.concepts.generation import generate
from landscape.concepts.guidance import default_layers, guide
from landscape.concepts.hidden import pad_id
from landscape.concepts.models import input_device, model_name
from landscape.concepts.positions import completion_starts
from landscape.concepts.probes import ConceptProbe
from landscape.concepts.scorers import accepts_prompts, resolve_scorer
from landscape.core.data import padded_batches
from landscape.core.errors import bad_argument
from landscape.core.io import data_fingerprint, open_run, provenance_attrs, run_settings
from landscape.core.progress import progress_bar

__all__ = ["guidance_curve", "perplexity"]


def perplexity(
    lm: nn.Module,
    tokenizer: Any,
    texts: Any,
    *,
    chat: bool | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> xr.DataArray:
    """Perplexity of each text's completion under ``lm`` (guided when called inside
    :func:`guide`).

    Each prompt and its completion are read in one forward pass (right-padded, so any causal
    model works, with or without a KV cache, Mamba included). Inside
    ``guide(..., positions="new")`` the steered positions are those generation steers: the
    prompt's last token and every completion token. Raw texts are scored from their second
    token on. Inputs go to the device of the model's input embeddings.

    Parameters
    ----------
    texts
        Prompt/completion pairs or raw strings (anything :func:`hidden_states` accepts).

    Returns
    -------
    xarray.DataArray
        Dim ``sample``: ``exp`` of the mean negative log-likelihood of the completion tokens
        (NaN for a text with nothing to score).

    Examples
    --------
    >>> from landscape.concepts import load_lm, perplexity
    >>> lm, tok = load_lm("tiny")
    >>> float(perplexity(lm, tok, [("Hi", "Hello there")])[0]) > 1
    True
    """
    function = "perplexity"
    ex = as_examples(texts, function=function, argument="texts")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise bad_argument(function, "batch_size", expected="a positive integer", found=repr(batch_size))
    chat = use_chat(tokenizer, chat, function=function)
    encoded = encode(tokenizer, ex, chat=chat)
    starts = np.zeros(len(encoded), dtype=np.int64)
    scored: list[int] = []
    for i, (e, completion) in enumerate(zip(encoded, ex.completions)):
        start = max(e.start, 1) if ex.raw else e.start
        if (ex.raw or completion) and 0 < start < e.stop:
            starts[i] = start
            scored.append(i)
    device = input_device(lm)
    values = np.full(len(encoded), np.nan)
    sequences = [encoded[i].ids[: encoded[i].stop] for i in scored]
    with torch.inference_mode(), progress_bar(total=len(scored), desc="perplexity", disable=not progress) as bar:
        for rows, input_ids, mask in padded_batches(sequences, batch_size, pad_id=pad_id(tokenizer), device=device):
            index = [scored[r] for r in rows]
            first = torch.as_tensor(starts[index], device=device)
            with completion_starts(first):
                logits = lm(input_ids=input_ids, attention_mask=mask, use_cache=False).logits
            # Token t is predicted by the logits at t - 1; score t from the completion's start on.
            positions = torch.arange(input_ids.shape[1], device=device)[None, :]
            target = (positions >= first[:, None]) & mask.bool()
            nll = torch.nn.functional.cross_entropy(
                logits[:, :-1].float().transpose(1, 2), input_ids[:, 1:], reduction="none"
            )
            weight = target[:, 1:].to(nll.dtype)
            mean_nll = (nll * weight).sum(-1) / weight.sum(-1)
            values[index] = torch.exp(mean_nll).double().cpu().numpy()
            bar.update(len(rows))
    return xr.DataArray(
        values,
        dims=("sample",),
        coords={"sample": np.arange(len(encoded))},
        name="perplexity",
        attrs=provenance_attrs(function=function, model=model_name(lm), chat=chat),
    )


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _tokenizer_record(tokenizer: Any) -> dict[str, object]:
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    return {
        "class": type(tokenizer).__name__,
        "name": str(getattr(tokenizer, "name_or_path", "")),
        "vocab": data_fingerprint(sorted(vocab.items())),
        "chat_template": data_fingerprint(str(getattr(tokenizer, "chat_template", None))),
    }


def _probe_record(probe: ConceptProbe) -> str:
    fields = ("kind", "directions_", "layers_", "mean_norm_", "val_accuracy_", "site_", "read_")
    return data_fingerprint(
        {k: np.asarray(getattr(probe, k, None)) if k.endswith("_") else getattr(probe, k, None) for k in fields}
    )


def guidance_curve(
    lm: nn.Module,
    tokenizer: Any,
    probe: ConceptProbe,
    prompts: Sequence[str],
    *,
    alphas: Sequence[float],
    scorer: str | Callable[..., Any] = "vader",
    reference_texts: Any = None,
    max_new_tokens: int = 48,
    layers: int | Sequence[int] | None = None,
    top_k: int | None = None,
    site: str | None = None,
    relative: bool = True,
    preserve_norm: bool = True,
    positions: Any = "all",
    operation: str = "add",
    chat: bool | None = None,
    batch_size: int = 8,
    do_sample: bool = False,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    progress: bool = True,
) -> xr.Dataset:
    """Generate under guidance at each strength, score the concept and measure fluency.

    Parameters
    ----------
    lm, tokenizer, probe
        The model, its tokenizer and a probe fit on it.
    prompts
        Prompts to complete at every alpha (greedy decoding by default).
    alphas
        Guidance strengths (see :func:`guide`; relative to the mean activation norm by
        default). Include 0: effects and perplexities are normalised by the unguided model.
    scorer
        ``"vader"`` (VADER compound score, for sentiment), ``"probe"`` (the probe's own
        probability of the concept, read from the unguided model), or a callable taking the
        list of completions (and ``prompts=`` if it accepts it) and returning one number each.
    reference_texts
        Texts neutral to the concept whose perplexity under the guided model measures the
        loss of fluency; default :func:`neutral_texts` (32 answers to everyday factual questions).
    max_new_tokens, layers, top_k, site, relative, preserve_norm, positions, operation
        Passed to :func:`generate` and :func:`guide`.
    chat, batch_size, do_sample, seed
        Passed to :func:`generate` and :func:`perplexity`.
    out
        A folder: each alpha's result is written there as it finishes, and a rerun with the
        same settings resumes (other settings are refused). The settings are the model's
        name and content hash, the probe's kind, directions and mean norms, the prompts, the
        reference texts, the alphas, the scorer's name, and every option above.

    Returns
    -------
    xarray.Dataset
        Dims ``alpha`` (sorted) and ``prompt``: ``effect`` (mean score), ``effect_sem``
        (its standard error), ``score`` (alpha, prompt), ``completion`` (alpha, prompt,
        text), ``perplexity`` (mean over the reference texts of each text's perplexity, as in
        the reference implementation) and ``median_perplexity``.

    Examples
    --------
    >>> from landscape.concepts import load_lm, hidden_states, fit_probe, guidance_curve
    >>> lm, tok = load_lm("tiny")
    >>> data = [("Hi", "Great!", 1), ("Hi", "Awful.", 0), ("Yo", "Lovely.", 1), ("Yo", "Bad.", 0)]
    >>> probe = fit_probe(hidden_states(lm, tok, data, progress=False), val_fraction=0)
    >>> curve = guidance_curve(lm, tok, probe, ["Hi"], alphas=[0, 0.5], scorer=lambda t: [len(s) for s in t],
    ...                        reference_texts=[("Hi", "Hello")], max_new_tokens=2, progress=False)
    >>> curve.effect.dims
    ('alpha',)
    """
    function = "guidance_curve"
    items = [prompts] if isinstance(prompts, str) else list(prompts)
    if not items or not all(isinstance(p, str) for p in items):
        raise bad_argument(function, "prompts", expected="a non-empty list of strings", found=prompts)
    values = [float(a) for a in alphas]
    if not values or any(not math.isfinite(a) for a in values):
        raise bad_argument(function, "alphas", expected="a non-empty list of finite numbers", found=alphas)
    if len(set(values)) != len(values):
        raise bad_argument(function, "alphas", expected="distinct strengths", found=alphas)
    values = sorted(values)
    if reference_texts is None:
        from landscape.concepts.datasets import neutral_texts

        reference_texts = neutral_texts(32)
    reference = as_examples(reference_texts, function=function, argument="reference_texts")
    guided_layers = default_layers(probe, top_k) if layers is None else layers
    score_fn = resolve_scorer(
        scorer, lm, tokenizer, probe, guided_layers if not isinstance(guided_layers, int) else [guided_layers]
    )
    options = dict(
        layers=guided_layers,
        site=site,
        relative=relative,
        preserve_norm=preserve_norm,
        positions=positions,
        operation=operation,
    )
    settings = {
        "model": model_name(lm),
        "probe": _digest([probe.kind, probe.directions_.tolist(), probe.mean_norm_.tolist()]),
        "prompts": _digest(items),
        "reference": _digest([reference.prompts, reference.completions]),
        "alphas": values,
        "scorer": getattr(score_fn, "__name__", type(score_fn).__name__),
        "max_new_tokens": max_new_tokens,
        "do_sample": do_sample,
        "seed": seed,
        "chat": use_chat(tokenizer, chat, function=function),
        "batch_size": batch_size,
        **{k: v if isinstance(v, (str, int, float, list, type(None))) else repr(v) for k, v in options.items()},
    }
    # Entering once checks every option before hours of generation, and gives the strength
    # added per unit of alpha at each layer.
    with guide(lm, probe, alpha=1.0, **options) as unit:  # type: ignore[arg-type]
        pass
    # The one run fingerprint: the model's architecture, config and weights (not only its
    # name), the tokenizer, chat rendering, probe, prompts, reference texts and options.
    fingerprint = (
        run_settings(
            function,
            model=lm,
            model_weights=True,
            data={"prompts": items, "reference": [reference.prompts, reference.completions]},
            options={
                **{k: v for k, v in settings.items() if k not in ("model_sha256", "probe", "prompts", "reference")},
                "tokenizer": _tokenizer_record(tokenizer),
                "probe": _probe_record(probe),
            },
        )
        if out is not None
        else None
    )
    steps = []
    with (
        open_run(out, fingerprint, function=function, argument="out") as run,
        progress_bar(total=len(values), desc="guidance curve", unit="alpha", disable=not progress) as bar,
    ):
        for alpha in values:
            step_name = f"alpha={alpha!r}"
            if run is not None and run.done(step_name):
                steps.append(run.load(step_name))
                bar.update(1)
                continue
            with guide(lm, probe, alpha=alpha, **options):  # type: ignore[arg-type]
                completions = generate(
                    lm,
                    tokenizer,
                    items,
                    max_new_tokens=max_new_tokens,
                    chat=chat,
                    batch_size=batch_size,
                    do_sample=do_sample,
                    seed=seed,
                )
                ppl = perplexity(lm, tokenizer, reference, chat=chat, batch_size=batch_size).values
            scores = score_fn(completions, prompts=items) if accepts_prompts(score_fn) else score_fn(completions)
            scores = np.asarray(scores, dtype=np.float64).reshape(-1)
            if scores.shape != (len(items),):
                raise bad_argument(
                    function, "scorer", expected=f"one score per completion ({len(items)})", found=scores
                )
            step = xr.Dataset(
                {
                    "score": ("prompt", scores),
                    "completion": ("prompt", np.array(completions, dtype=object)),
                    "perplexity": ((), float(np.nanmean(ppl))),
                    "median_perplexity": ((), float(np.nanmedian(ppl))),
                },
                coords={"prompt": np.arange(len(items))},
            ).expand_dims(alpha=[alpha])
            if run is not None:
                run.save(step_name, step)
            steps.append(step)
            bar.update(1)
    result = xr.concat(steps, dim="alpha")
    result["completion"] = result["completion"].astype(str)
    result["effect"] = result["score"].mean("prompt")
    result["effect_sem"] = result["score"].std("prompt", ddof=1) / np.sqrt(len(items)) if len(items) > 1 else np.nan
    result = result.assign_coords(prompt_text=("prompt", np.array(items, dtype=object).astype(str)))
    result.attrs = provenance_attrs(
        function=function,
        model=model_name(lm),
        probe_kind=probe.kind,
        probe_site=probe.site_,
        layers=unit.layers,
        strength_per_unit_alpha=unit.strengths,
        site=site or probe.site_,
        relative=relative,
        preserve_norm=preserve_norm,
        positions=unit.positions,
        operation=operation,
        scorer=settings["scorer"],
        max_new_tokens=max_new_tokens,
        n_reference=len(reference),
        do_sample=do_sample,
        seed=seed,
    )
    return result
