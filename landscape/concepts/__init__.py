"""Concept probes and guidance in language models (von Rütte, Anagnostidis, Bachmann &
Hofmann, 2024, "A Language Model's Guide Through Latent Space").

Probe a causal LM's hidden representations for a concept, measure how well each layer
detects it, steer the model along the concept direction while it generates (add it,
project it out, or both; several concepts at once; chosen positions), export it as a
llama.cpp control vector, and score guidance by the concept's elicitation against the loss
of fluency (PNES).

>>> from landscape import concepts as cg
>>> lm, tok = cg.load_lm("tiny")                       # SmolLM2-135M-Instruct: cg.load_lm()
>>> reps = cg.hidden_states(lm, tok, cg.sentiment(16), progress=False)
>>> probe = cg.fit_probe(reps, kind="mean_diff")
>>> with cg.guide(lm, probe, alpha=0.1):
...     text = cg.generate(lm, tok, ["How was your day?"], max_new_tokens=4)
"""

from __future__ import annotations

from landscape.concepts.control_vectors import ControlVector, export_control_vector, load_control_vector
from landscape.concepts.datasets import CONCEPTS, concept_examples, humor, neutral_texts, sentiment
from landscape.concepts.examples import ConceptExamples, as_examples, load_jsonl
from landscape.concepts.generation import generate
from landscape.concepts.guidance import OPERATIONS, Guidance, GuidancePart, Steering, default_layers, guide
from landscape.concepts.hidden import READS, hidden_states
from landscape.concepts.metric import guidance_curve, perplexity
from landscape.concepts.models import DEFAULT_MODEL, default_model_path, load_lm, tiny_lm
from landscape.concepts.pnes import pnes
from landscape.concepts.positions import POSITIONS
from landscape.concepts.probes import KINDS, ConceptProbe, fit_probe, load_probe
from landscape.concepts.scorers import ProbeScorer, probe_scorer, vader_scorer
from landscape.concepts.sites import FINAL, SITES, available_sites, find_layers

__all__ = [
    "CONCEPTS",
    "DEFAULT_MODEL",
    "FINAL",
    "KINDS",
    "OPERATIONS",
    "POSITIONS",
    "READS",
    "SITES",
    "ConceptExamples",
    "ConceptProbe",
    "ControlVector",
    "Guidance",
    "GuidancePart",
    "ProbeScorer",
    "Steering",
    "as_examples",
    "available_sites",
    "concept_examples",
    "default_layers",
    "default_model_path",
    "export_control_vector",
    "find_layers",
    "fit_probe",
    "generate",
    "guidance_curve",
    "guide",
    "hidden_states",
    "humor",
    "load_control_vector",
    "load_jsonl",
    "load_lm",
    "load_probe",
    "neutral_texts",
    "perplexity",
    "pnes",
    "probe_scorer",
    "sentiment",
    "tiny_lm",
    "vader_scorer",
]
