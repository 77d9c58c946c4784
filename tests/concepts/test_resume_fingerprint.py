"""guidance_curve resumes only with the same model weights, tokenizer, chat rendering and
probe (issue 12: its folder was keyed by the model's name and left ``chat`` out)."""

from __future__ import annotations

import pytest
import torch
from conftest import EXAMPLES

from landscape.concepts import fit_probe, guidance_curve, hidden_states
from landscape.core.errors import RunFolderError


def test_guidance_curve_folder_is_keyed_by_weights_and_chat(llama, tmp_path) -> None:
    lm, tok = llama
    probe = fit_probe(hidden_states(lm, tok, EXAMPLES, progress=False), val_fraction=0)
    options = {
        "alphas": [0.0, 0.5],
        "scorer": lambda texts: [len(t) for t in texts],
        "reference_texts": [("Hi", "Hello there.")],
        "max_new_tokens": 2,
        "progress": False,
        "out": tmp_path,
    }
    guidance_curve(lm, tok, probe, ["How was it?"], **options)
    guidance_curve(lm, tok, probe, ["How was it?"], **options)  # same settings: resumes
    with pytest.raises(RunFolderError, match=r"options.chat: True there, False now"):
        guidance_curve(lm, tok, probe, ["How was it?"], chat=False, **options)
    weight = lm.get_input_embeddings().weight
    before = weight.detach().clone()
    try:
        weight.data[0, 0] += 1.0  # same name and config, other weights
        with pytest.raises(RunFolderError, match=r"model.sha256: "):
            guidance_curve(lm, tok, probe, ["How was it?"], **options)
    finally:
        with torch.no_grad():
            weight.copy_(before)
