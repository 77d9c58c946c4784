"""How well guidance works: concept effect and fluency (perplexity) over guidance strengths,
and the perplexity-normalised effect size (PNES) of von Rütte et al. (2024)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn

from landscape.concepts.examples import as_examples, encode, use_chat
from landscape.concepts.guidance import default_layers, generate, guide, left_padded
from landscape.concepts.hidden import model_device, pad_id, right_padded
from landscape.concepts.models import model_name
from landscape.concepts.probes import ConceptProbe
from landscape.concepts.scorers import accepts_prompts, resolve_scorer
from landscape.core.errors import bad_argument
from landscape.core.io import data_fingerprint, open_run, provenance_attrs, run_settings
from landscape.core.progress import progress_bar

__all__ = ["guidance_curve", "perplexity", "pnes"]


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

    The prompt is read in one forward pass and the completion in a second one that continues
    from the KV cache, exactly as in generation, so that ``guide(..., positions="new")``
    steers the same positions here as when the model writes. Raw texts are scored from their
    second token on.

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
    chat = use_chat(tokenizer, chat, function=function)
    encoded = encode(tokenizer, ex, chat=chat)
    pairs: list[tuple[list[int], list[int]]] = []
    for e, completion in zip(encoded, ex.completions):
        if not ex.raw and not completion:
            pairs.append(([], []))
            continue
        start = max(e.start, 1) if ex.raw else e.start
        pairs.append((e.ids[:start], e.ids[start : e.stop]))
    device = model_device(lm)
    pad = pad_id(tokenizer)
    values = np.full(len(pairs), np.nan)
    order = sorted(range(len(pairs)), key=lambda i: (-len(pairs[i][0]) - len(pairs[i][1]), i))
    order = [i for i in order if pairs[i][1] and pairs[i][0]]
    with torch.inference_mode(), progress_bar(total=len(order), desc="perplexity", disable=not progress) as bar:
        for begin in range(0, len(order), batch_size):
            rows = order[begin : begin + batch_size]
            prefix_ids, prefix_mask = left_padded([pairs[i][0] for i in rows], pad, device)
            tail_ids, tail_mask = right_padded([pairs[i][1] for i in rows], pad, device)
            positions = (prefix_mask.cumsum(-1) - 1).clamp(min=0)
            first = lm(input_ids=prefix_ids, attention_mask=prefix_mask, position_ids=positions, use_cache=True)
            real = prefix_mask.sum(-1, keepdim=True)
            tail_positions = real + torch.arange(tail_ids.shape[1], device=device)[None, :]
            second = lm(
                input_ids=tail_ids,
                attention_mask=torch.cat([prefix_mask, tail_mask], dim=1),
                position_ids=tail_positions,
                past_key_values=first.past_key_values,
                use_cache=True,
            )
            logits = torch.cat([first.logits[:, -1:], second.logits[:, :-1]], dim=1).float()
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), tail_ids, reduction="none")
            mean_nll = (nll * tail_mask).sum(-1) / tail_mask.sum(-1)
            values[rows] = torch.exp(mean_nll).double().cpu().numpy()
            bar.update(len(rows))
    return xr.DataArray(
        values,
        dims=("sample",),
        coords={"sample": np.arange(len(pairs))},
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
    positions: str = "all",
    chat: bool | None = None,
    batch_size: int = 8,
    do_sample: bool = False,
    seed: int = 0,
    folder: str | os.PathLike | None = None,
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
    max_new_tokens, layers, top_k, site, relative, preserve_norm, positions
        Passed to :func:`generate` and :func:`guide`.
    folder
        When given, each alpha's result is written there as it finishes and a rerun with
        the same settings resumes.

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
    options = dict(layers=guided_layers, site=site, relative=relative, preserve_norm=preserve_norm, positions=positions)
    settings = {
        "model": model_name(lm),
        "probe": _digest(probe.directions_.tolist()),
        "prompts": _digest(items),
        "reference": _digest([reference.prompts, reference.completions]),
        "alphas": values,
        "scorer": getattr(score_fn, "__name__", type(score_fn).__name__),
        "max_new_tokens": max_new_tokens,
        "do_sample": do_sample,
        "seed": seed,
        **{k: v for k, v in options.items()},
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
                **{k: v for k, v in settings.items() if k not in ("model", "probe", "prompts", "reference")},
                "chat": use_chat(tokenizer, chat, function=function),
                "tokenizer": _tokenizer_record(tokenizer),
                "probe": _probe_record(probe),
            },
        )
        if folder is not None
        else None
    )
    steps = []
    with (
        open_run(folder, fingerprint, function=function, argument="folder") as run,
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
        positions=positions,
        scorer=settings["scorer"],
        max_new_tokens=max_new_tokens,
        n_reference=len(reference),
        do_sample=do_sample,
        seed=seed,
    )
    return result


def _ppl_model(x: np.ndarray, b: float) -> np.ndarray:
    return b * np.abs(x) ** 2


def _pne_model(x: np.ndarray, a: float, c: float, b: float) -> np.ndarray:
    return (np.tanh(a * x) + c) / np.exp(b * np.abs(x) ** 2)


def pnes(
    curve: xr.Dataset,
    *,
    effect: str = "effect",
    perplexity: str = "perplexity",
    ppl_cutoff: float = 2e3,
    min_r2: float = 0.5,
) -> xr.Dataset:
    """Perplexity-normalised effect size of a guidance curve, as released with von Rütte et
    al. (2024, github.com/dvruette/concept-guidance, ``scripts/evaluate.py``).

    With the baseline at the alpha closest to 0, the normalised effect is
    ``(effect - effect_0) / (ppl / ppl_0)``. First ``log(ppl / ppl_0) ~ b * alpha**2`` is
    fit (least squares, points with perplexity below ``ppl_cutoff``); then
    ``(tanh(a * alpha) + c) / exp(b * alpha**2)`` is fit to the normalised effect with ``b``
    fixed. PNES is the range (max - min) of the fitted curve over the alpha range.

    Parameters
    ----------
    curve
        A Dataset with dim ``alpha`` and the variables named by ``effect`` and ``perplexity``
        (e.g. from :func:`guidance_curve`).
    ppl_cutoff
        Perplexities at or above this are left out of the ``b`` fit (as in the reference).
    min_r2
        Warn when the fit's r^2 is below this; a warning is also given when ``b <= 0``
        (perplexity not growing with |alpha| makes the normalisation meaningless).

    Returns
    -------
    xarray.Dataset
        Scalars ``pnes``, ``a``, ``b``, ``c``, ``r_squared``, ``x_min``, ``x_max`` (alphas of
        the fitted curve's minimum and maximum), ``y_min``, ``y_max``; over ``alpha``:
        ``normalized_effect`` and ``fitted``; over ``grid`` (200 alphas, coordinate
        ``grid_alpha``): ``fit_curve``.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> x = np.linspace(-1, 1, 9)
    >>> curve = xr.Dataset({"effect": ("alpha", np.tanh(2 * x)), "perplexity": ("alpha", 10 * np.exp(x**2))},
    ...                    coords={"alpha": x})
    >>> round(float(pnes(curve).b), 3)
    1.0
    """
    from scipy.optimize import curve_fit

    function = "pnes"
    for name in (effect, perplexity):
        if name not in curve or curve[name].dims != ("alpha",):
            raise bad_argument(
                function, "curve", expected=f"a Dataset with a variable {name!r} over dim 'alpha'", found=curve
            )
    curve = curve.sortby("alpha")
    xs = np.asarray(curve["alpha"].values, dtype=np.float64)
    effects = np.asarray(curve[effect].values, dtype=np.float64)
    ppls = np.asarray(curve[perplexity].values, dtype=np.float64)
    if len(xs) < 3 or not (np.isfinite(effects).all() and np.isfinite(ppls).all() and (ppls > 0).all()):
        raise bad_argument(
            function,
            "curve",
            expected="at least 3 alphas with finite effects and positive finite perplexities",
            found=f"{len(xs)} alphas",
        )
    base = int(np.argmin(np.abs(xs)))
    if xs[base] != 0:
        warnings.warn(f"pnes: no alpha = 0 in the curve; the baseline is alpha = {xs[base]:g}.", stacklevel=2)
    ys = (effects - effects[base]) / (ppls / ppls[base])
    keep = ppls < ppl_cutoff
    if not (keep & (xs != 0)).any():
        raise bad_argument(
            function, "curve", expected=f"a nonzero alpha with perplexity below {ppl_cutoff:g}", found="none"
        )
    # Least squares of a one-parameter linear model; the closed form is what curve_fit converges to.
    log_ratio = np.log(ppls / ppls[base])
    b = float(np.sum(xs[keep] ** 2 * log_ratio[keep]) / np.sum(xs[keep] ** 4))
    try:
        (a, c), _ = curve_fit(lambda x, a, c: _pne_model(x, a, c, b), xs, ys, p0=[0.0, 0.0], maxfev=20000)
    except (RuntimeError, ValueError) as err:
        warnings.warn(f"pnes: the effect fit did not converge ({err}); PNES is NaN.", stacklevel=2)
        a = c = float("nan")
    fitted = _pne_model(xs, a, c, b)
    ss_tot = float(np.sum((ys - ys.mean()) ** 2))
    grid = np.linspace(xs.min(), xs.max(), 200)
    curve_values = _pne_model(grid, a, c, b)
    if ss_tot > 0 and np.isfinite(a):
        r_squared = 1 - float(np.sum((ys - fitted) ** 2)) / ss_tot
        x_min, x_max = float(grid[np.argmin(curve_values)]), float(grid[np.argmax(curve_values)])
        y_min, y_max = float(curve_values.min()), float(curve_values.max())
    elif np.isfinite(a):  # a flat normalised effect: no effect at all (as in the reference)
        r_squared = x_min = x_max = float("nan")
        y_min = y_max = 0.0
    else:
        r_squared = x_min = x_max = y_min = y_max = float("nan")
    if b <= 0:
        warnings.warn(
            f"pnes: perplexity does not grow with |alpha| (b = {b:.3g} <= 0); PNES is not meaningful here.",
            stacklevel=2,
        )
    if not r_squared >= min_r2:
        warnings.warn(f"pnes: the fit explains little of the curve (r^2 = {r_squared:.3f} < {min_r2}).", stacklevel=2)
    return xr.Dataset(
        {
            "pnes": ((), y_max - y_min),
            "a": ((), float(a)),
            "b": ((), b),
            "c": ((), float(c)),
            "r_squared": ((), r_squared),
            "x_min": ((), x_min),
            "x_max": ((), x_max),
            "y_min": ((), y_min),
            "y_max": ((), y_max),
            "normalized_effect": ("alpha", ys),
            "fitted": ("alpha", fitted),
            "log_perplexity_ratio": ("alpha", log_ratio),
            "fit_curve": ("grid", curve_values),
        },
        coords={"alpha": xs, "grid_alpha": ("grid", grid)},
        attrs=provenance_attrs(
            function=function, effect=effect, perplexity=perplexity, ppl_cutoff=ppl_cutoff, source=dict(curve.attrs)
        ),
    )
