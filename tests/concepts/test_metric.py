"""Perplexity against a plain computation, PNES against the reference procedure, curves."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import xarray as xr
from conftest import EXAMPLES, chat_prefix

from landscape.concepts import (
    find_layers,
    fit_probe,
    guidance_curve,
    guide,
    hidden_states,
    perplexity,
    pnes,
    vader_scorer,
)
from landscape.core.errors import LandscapeError

TEXTS = [("What does it do?", "It returns a list."), ("Why?", "Because the value is cached."), ("Hm", "x")]


def _plain_perplexity(lm, tok, prompt, completion, hook=None):
    """One forward pass over the whole pair, cross-entropy of the completion tokens."""
    if tok.chat_template:
        prefix = chat_prefix(tok, prompt)
        tail = tok(completion, add_special_tokens=False).input_ids
    else:
        prefix = tok("").input_ids + tok(prompt, add_special_tokens=False).input_ids
        tail = tok(" " + completion, add_special_tokens=False).input_ids
    ids = torch.tensor([list(prefix) + list(tail)])
    with torch.no_grad():
        logits = lm(ids).logits[0]
    targets = ids[0, len(prefix) :]
    nll = torch.nn.functional.cross_entropy(logits[len(prefix) - 1 : -1], targets)
    return float(torch.exp(nll)), len(prefix), ids.shape[1]


def test_perplexity_matches_one_plain_forward_pass(lm_pair):
    lm, tok = lm_pair
    values = perplexity(lm, tok, TEXTS, batch_size=2)
    assert values.dims == ("sample",)
    for i, (prompt, completion) in enumerate(TEXTS):
        expected, _, _ = _plain_perplexity(lm, tok, prompt, completion)
        assert float(values[i]) == pytest.approx(expected, rel=1e-5)
    np.testing.assert_allclose(values.values, perplexity(lm, tok, TEXTS, batch_size=1).values, rtol=1e-5)


def test_raw_texts_are_scored_from_the_second_token(gpt2):
    lm, tok = gpt2
    ids = torch.tensor([tok("abc def").input_ids])
    with torch.no_grad():
        logits = lm(ids).logits[0]
    expected = float(torch.exp(torch.nn.functional.cross_entropy(logits[:-1], ids[0, 1:])))
    assert float(perplexity(lm, tok, ["abc def"])[0]) == pytest.approx(expected, rel=1e-5)


def test_perplexity_under_new_position_guidance_steers_the_completion(llama):
    lm, tok = llama
    probe = fit_probe(hidden_states(lm, tok, EXAMPLES, site="residual", progress=False), val_fraction=0)
    prompt, completion = TEXTS[1]
    with guide(lm, probe, alpha=3.0, layers=[1], positions="new", preserve_norm=False) as state:
        guided = float(perplexity(lm, tok, [(prompt, completion)])[0])
    delta = state.strengths[1] * torch.as_tensor(probe.direction(1))
    _, start, length = _plain_perplexity(lm, tok, prompt, completion)
    steer = (torch.arange(length) >= start - 1).float()

    def hook(module, args, out):
        if isinstance(out, tuple):  # transformers 4.x blocks return tuples
            return (out[0] + delta * steer[None, :, None], *out[1:])
        return out + delta * steer[None, :, None]

    handle = find_layers(lm)[1].register_forward_hook(hook)
    try:
        expected, _, _ = _plain_perplexity(lm, tok, prompt, completion)
    finally:
        handle.remove()
    assert guided == pytest.approx(expected, rel=1e-5)
    assert guided != pytest.approx(_plain_perplexity(lm, tok, prompt, completion)[0], rel=1e-3)


def _reference_pnes(xs, effects, ppls, cutoff=2e3):
    """The procedure of the released code, written out with scipy's curve_fit for both fits."""
    from scipy.optimize import curve_fit

    base = np.argmin(np.abs(xs))
    ys = (effects - effects[base]) / (ppls / ppls[base])
    keep = ppls < cutoff
    (b,), _ = curve_fit(lambda x, b: b * np.abs(x) ** 2, xs[keep], np.log(ppls[keep] / ppls[base]), p0=[0.05])

    def model(x, a, c):
        return (np.tanh(a * x) + c) / np.exp(b * np.abs(x) ** 2)

    (a, c), _ = curve_fit(model, xs, ys, p0=[0, 0], maxfev=20000)
    r2 = 1 - np.sum((ys - model(xs, a, c)) ** 2) / np.sum((ys - ys.mean()) ** 2)
    grid = model(np.linspace(xs.min(), xs.max(), 200), a, c)
    return grid.max() - grid.min(), a, b, c, r2


def _curve(xs, effects, ppls):
    return xr.Dataset({"effect": ("alpha", effects), "perplexity": ("alpha", ppls)}, coords={"alpha": xs})


def test_pnes_equals_the_reference_procedure():
    rng = np.random.default_rng(0)
    xs = np.array([-0.2, -0.1, -0.05, 0.0, 0.05, 0.1, 0.2])
    ppls = 60 * np.exp(30 * xs**2) * (1 + 0.05 * rng.random(len(xs)))
    effects = 0.4 + 0.5 * np.tanh(12 * xs) + 0.02 * rng.normal(size=len(xs))
    result = pnes(_curve(xs, effects, ppls))
    value, a, b, c, r2 = _reference_pnes(xs, effects, ppls)
    assert float(result.b) == pytest.approx(b, rel=1e-6)
    assert float(result.a) == pytest.approx(a, rel=1e-4)
    assert float(result.c) == pytest.approx(c, rel=1e-4, abs=1e-8)
    assert float(result.r_squared) == pytest.approx(r2, rel=1e-5)
    assert float(result.pnes) == pytest.approx(value, rel=1e-5)


def test_pnes_recovers_known_parameters():
    xs = np.linspace(-1, 1, 11)
    a, b, c = 3.0, 0.8, 0.0
    ppls = 20 * np.exp(b * xs**2)
    effects = np.tanh(a * xs)  # effect_0 = 0 and ppl ratio exp(b x^2): normalised = the model exactly
    result = pnes(_curve(xs, effects, ppls))
    assert (float(result.a), float(result.b), float(result.c)) == pytest.approx((a, b, c), abs=1e-5)
    assert float(result.r_squared) == pytest.approx(1.0)
    grid = np.linspace(-1, 1, 200)
    model = np.tanh(a * grid) / np.exp(b * grid**2)
    assert float(result.pnes) == pytest.approx(model.max() - model.min())


def test_pnes_leaves_high_perplexities_out_of_the_b_fit():
    xs = np.linspace(-1, 1, 9)
    ppls = 20 * np.exp(xs**2)
    ppls[0] = 5000.0  # broken fluency at one end
    result = pnes(_curve(xs, np.tanh(xs), ppls))
    keep = ppls < 2000
    log_ratio = np.log(ppls / 20)
    assert float(result.b) == pytest.approx(np.sum(xs[keep] ** 2 * log_ratio[keep]) / np.sum(xs[keep] ** 4))


def test_pnes_warns_on_b_not_positive_and_low_r2():
    xs = np.linspace(-1, 1, 7)
    with pytest.warns(UserWarning, match="b = "):
        pnes(_curve(xs, np.tanh(xs), 20 * np.exp(-0.5 * xs**2)))
    rng = np.random.default_rng(1)
    with pytest.warns(UserWarning, match="r\\^2"):
        pnes(_curve(xs, rng.normal(size=7), 20 * np.exp(xs**2)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pnes(_curve(xs, np.tanh(2 * xs), 20 * np.exp(xs**2)))


def test_pnes_bad_input():
    xs = np.array([0.0, 1.0])
    with pytest.raises(LandscapeError, match="at least 3 alphas"):
        pnes(_curve(xs, xs, 20 * np.exp(xs)))
    with pytest.raises(LandscapeError, match="variable 'effect'"):
        pnes(xr.Dataset({"perplexity": ("alpha", [1.0, 2.0, 3.0])}, coords={"alpha": [0, 1, 2]}))
    with pytest.raises(LandscapeError, match="below"):
        pnes(_curve(np.array([-1.0, 0, 1]), np.zeros(3), np.array([5e3, 10, 5e3])))


def test_guidance_curve(llama, tmp_path):
    lm, tok = llama
    probe = fit_probe(hidden_states(lm, tok, EXAMPLES, progress=False), val_fraction=0)
    prompts = ["How was it?", "Tell me"]
    seen = []

    def scorer(texts, prompts=None):
        seen.append(list(prompts))
        return [len(t) for t in texts]

    options = {
        "alphas": [0.5, 0.0, -0.5],
        "scorer": scorer,
        "reference_texts": TEXTS,
        "max_new_tokens": 4,
        "progress": False,
    }
    curve = guidance_curve(lm, tok, probe, prompts, out=tmp_path / "run", **options)
    assert curve.alpha.values.tolist() == [-0.5, 0.0, 0.5]
    assert curve.score.dims == ("alpha", "prompt") and curve.completion.dims == ("alpha", "prompt")
    np.testing.assert_allclose(curve.effect.values, curve.score.mean("prompt").values)
    np.testing.assert_array_equal(curve.score.values, np.vectorize(len)(curve.completion.values))
    unguided = perplexity(lm, tok, TEXTS).values
    assert float(curve.perplexity.sel(alpha=0.0)) == pytest.approx(float(np.mean(unguided)))
    assert seen[0] == prompts
    # A second run with the same settings resumes from the files: the scorer is not called.
    seen.clear()
    again = guidance_curve(lm, tok, probe, prompts, out=tmp_path / "run", **options)
    assert seen == []
    xr.testing.assert_equal(again.drop_attrs(), curve.drop_attrs())
    with pytest.raises(LandscapeError, match="settings differ"):
        guidance_curve(lm, tok, probe, prompts, out=tmp_path / "run", **{**options, "max_new_tokens": 5})
    with pytest.raises(LandscapeError, match="chat"):
        guidance_curve(lm, tok, probe, prompts, out=tmp_path / "run", chat=False, **options)
    settings = __import__("json").loads((tmp_path / "run" / "settings.json").read_text())
    # One run fingerprint: the model's weights, the prompts and reference texts, and the options.
    assert settings["analysis"] == "guidance_curve" and "sha256" in settings["model"] and settings["data"]
    assert {"chat", "batch_size", "positions", "operation", "probe", "tokenizer"} <= set(settings["options"])


def test_guidance_curve_with_the_probe_scorer(llama):
    lm, tok = llama
    probe = fit_probe(hidden_states(lm, tok, EXAMPLES, progress=False), val_fraction=0)
    curve = guidance_curve(
        lm,
        tok,
        probe,
        ["How was it?"],
        alphas=[0, 1],
        scorer="probe",
        reference_texts=TEXTS,
        max_new_tokens=3,
        progress=False,
    )
    assert ((curve.score >= 0) & (curve.score <= 1)).all()
    with pytest.raises(LandscapeError, match="scorer"):
        guidance_curve(lm, tok, probe, ["Hi"], alphas=[0, 1], scorer="bleu", reference_texts=TEXTS, progress=False)
    with pytest.raises(LandscapeError, match="distinct"):
        guidance_curve(lm, tok, probe, ["Hi"], alphas=[0, 0], reference_texts=TEXTS, progress=False)


def test_vader_scorer_signs():
    score = vader_scorer()
    values = score(["What a wonderful, delightful day.", "A horrible, miserable failure.", "The list has items."])
    assert values[0] > 0.5 and values[1] < -0.5 and values[2] == 0
