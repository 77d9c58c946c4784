"""Offline concept datasets and example handling."""

from __future__ import annotations

import json

import numpy as np
import pytest

from landscape.concepts import (
    ConceptExamples,
    as_examples,
    concept_examples,
    humor,
    load_jsonl,
    neutral_texts,
    sentiment,
    vader_scorer,
)
from landscape.concepts.datasets import _HUMOR_MODULES, _docstring_sentences
from landscape.core.errors import LandscapeError


def test_sentiment_pairs_differ_in_valence_only():
    ex = sentiment(64, seed=3)
    assert len(ex) == 64 and ex.labels == [1, 0] * 32
    assert ex.prompts[0::2] == ex.prompts[1::2]
    scores = vader_scorer()(ex.completions)
    labels = np.array(ex.labels)
    assert (scores[labels == 1] > 0).all() and (scores[labels == 0] < 0).all()
    assert len(set(ex.groups)) == 20
    assert sentiment(64, seed=3).completions == ex.completions
    assert sentiment(64, seed=4).completions != ex.completions


def test_humor_jokes_against_docstrings():
    import pyjokes

    ex = humor(40, seed=1)
    jokes = set(pyjokes.get_jokes(language="en", category="all"))
    sentences = {s for _, s in _docstring_sentences(_HUMOR_MODULES)}
    for completion, label in zip(ex.completions, ex.labels):
        assert (completion in jokes) if label == 1 else (completion in sentences)
    assert len(set(ex.completions)) == 40


def test_neutral_texts_are_neutral_and_disjoint_from_the_humor_docstrings():
    facts = neutral_texts(48)
    assert len(set(facts.prompts)) == 48 and facts.labels is None
    assert np.abs(vader_scorer()(facts.completions)).max() < 0.2
    docstrings = set(neutral_texts(32, source="docstrings").completions)
    assert not docstrings & {s for _, s in _docstring_sentences(_HUMOR_MODULES)}
    with pytest.raises(LandscapeError, match="facts"):
        neutral_texts(4, source="wiki")
    with pytest.raises(LandscapeError, match="integer in"):
        neutral_texts(49)


@pytest.mark.parametrize(("call", "match"), [(lambda: sentiment(3), "even"), (lambda: humor(100_000), "at most")])
def test_sizes_are_checked(call, match):
    with pytest.raises(LandscapeError, match=match):
        call()


def test_jsonl_round_trip_and_named_concepts(tmp_path):
    ex = sentiment(6)
    path = ex.to_jsonl(tmp_path / "s.jsonl")
    first = json.loads(path.read_text().splitlines()[0])
    assert set(first) == {"prompt", "completion", "label", "group"}
    loaded = concept_examples(str(path))
    assert (loaded.prompts, loaded.completions, loaded.labels) == (ex.prompts, ex.completions, ex.labels)
    assert concept_examples("humor", n=4).name == "humor"
    with pytest.raises(LandscapeError, match="one of"):
        concept_examples("irony")


def test_bad_jsonl(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\nnot json\n')
    with pytest.raises(LandscapeError, match="line 2"):
        load_jsonl(path)
    with pytest.raises(LandscapeError, match="existing"):
        load_jsonl(tmp_path / "missing.jsonl")


def test_as_examples_forms():
    assert as_examples(["a", "b"]).raw
    ex = as_examples([("p", "c", 1), ("p", "d", 0)])
    assert ex.labels == [1, 0] and ex.groups == ["p", "p"]
    with pytest.raises(LandscapeError, match="one completion per prompt"):
        ConceptExamples(["a"], [])
    with pytest.raises(LandscapeError, match="a list of"):
        as_examples("just a string")
