"""Scorers of a concept in generated text: VADER sentiment, or the probe's own read-out."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from torch import nn

from landscape.concepts.probes import ConceptProbe
from landscape.core.errors import bad_argument

__all__ = ["ProbeScorer", "accepts_prompts", "probe_scorer", "resolve_scorer", "vader_scorer"]


def vader_scorer() -> Callable[[Sequence[str]], np.ndarray]:
    """VADER's compound sentiment score (-1 very negative .. +1 very positive) of each text.

    Examples
    --------
    >>> score = vader_scorer()
    >>> [round(float(v), 2) for v in score(["What a wonderful day!", "This is awful."])]
    [0.61, -0.46]
    """
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError as err:
        raise bad_argument(
            "vader_scorer",
            "scorer",
            expected="the vaderSentiment package (lm extra)",
            found="not installed",
            fix="pip install 'landscape[lm]'.",
        ) from err
    analyzer = SentimentIntensityAnalyzer()

    def score(texts: Sequence[str]) -> np.ndarray:
        return np.array([analyzer.polarity_scores(t)["compound"] for t in texts], dtype=np.float64)

    score.__name__ = "vader"
    return score


class ProbeScorer:
    """The probe's probability of the concept in (prompt, completion) pairs, read from the
    unguided model and averaged over ``layers`` (and over tokens for token-level probes)."""

    __name__ = "probe"

    def __init__(
        self,
        lm: nn.Module,
        tokenizer: Any,
        probe: ConceptProbe,
        *,
        layers: Sequence[int] | None = None,
        batch_size: int = 16,
    ) -> None:
        probe._check_fitted("probe_scorer")
        self.lm, self.tokenizer, self.probe = lm, tokenizer, probe
        self.layers = sorted(layers) if layers is not None else probe.layers_.tolist()
        self.batch_size = batch_size

    def __call__(self, texts: Sequence[str], prompts: Sequence[str] | None = None) -> np.ndarray:
        from landscape.concepts.hidden import hidden_states

        if prompts is None:
            examples: Any = list(texts)
        else:
            examples = [(p, t) for p, t in zip(prompts, texts)]
        probe = self.probe
        reps = hidden_states(
            self.lm,
            self.tokenizer,
            examples,
            layers=self.layers,
            site=probe.site_ or "residual",
            read=probe.read_ or "last",
            n_tokens=probe.n_tokens_ if probe.n_tokens_ else 16,
            chat=probe.chat_,
            layer_path=probe.layer_path_,
            batch_size=self.batch_size,
            progress=False,
        )
        sub = _restrict(probe, self.layers)
        proba = sub.predict_proba(reps)
        dims = [d for d in proba.dims if d != "sample"]
        return np.asarray(proba.mean(dims, skipna=True).values, dtype=np.float64)


def _restrict(probe: ConceptProbe, layers: Sequence[int]) -> ConceptProbe:
    keep = np.isin(probe.layers_, list(layers))
    sub = ConceptProbe(probe.kind, val_fraction=probe.val_fraction, seed=probe.seed, C=probe.C)
    sub.__dict__.update(probe.__dict__)
    for name in ("directions_", "layers_", "coef_", "intercept_", "train_accuracy_", "val_accuracy_", "mean_norm_"):
        setattr(sub, name, getattr(probe, name)[keep])
    return sub


def probe_scorer(
    lm: nn.Module, tokenizer: Any, probe: ConceptProbe, *, layers: Sequence[int] | None = None, batch_size: int = 16
) -> ProbeScorer:
    """A scorer that reads the concept with the probe itself (call it outside any guide)."""
    return ProbeScorer(lm, tokenizer, probe, layers=layers, batch_size=batch_size)


def accepts_prompts(scorer: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(scorer).parameters
    except (TypeError, ValueError):
        return False
    return "prompts" in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def resolve_scorer(
    scorer: str | Callable[..., Any], lm: nn.Module, tokenizer: Any, probe: ConceptProbe, layers: Sequence[int]
) -> Callable[..., Any]:
    if callable(scorer):
        return scorer
    if scorer == "vader":
        return vader_scorer()
    if scorer == "probe":
        return probe_scorer(lm, tokenizer, probe, layers=layers)
    raise bad_argument(
        "guidance_curve",
        "scorer",
        expected="'vader', 'probe' or a callable taking a list of texts (and optionally prompts=)",
        found=repr(scorer),
    )
