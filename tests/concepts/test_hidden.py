"""hidden_states against plain forward passes; batching and padding invariance; bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import EXAMPLES, chat_prefix, make_model, make_tokenizer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from landscape.concepts import ConceptExamples, hidden_states
from landscape.concepts.examples import encode
from landscape.core.errors import LandscapeError


def _ids(tokenizer, prompt, completion):
    """The token ids of a pair, rendered by hand."""
    if tokenizer.chat_template:
        prefix = chat_prefix(tokenizer, prompt)
        tail = tokenizer(completion, add_special_tokens=False).input_ids
    else:
        prefix = tokenizer("").input_ids + tokenizer(prompt, add_special_tokens=False).input_ids
        tail = tokenizer(" " + completion, add_special_tokens=False).input_ids
    return list(prefix) + list(tail), len(prefix)


def _plain(lm, ids):
    with torch.no_grad():
        return lm(torch.tensor([ids]), output_hidden_states=True).hidden_states


@pytest.mark.parametrize("read", ["last", "mean", "tokens"])
def test_residual_matches_plain_forward(lm_pair, read):
    lm, tok = lm_pair
    reps = hidden_states(
        lm, tok, EXAMPLES, layers=[0, 1], site="residual", read=read, n_tokens=5, batch_size=3, progress=False
    )
    for i, (prompt, completion, _) in enumerate(EXAMPLES):
        ids, start = _ids(tok, prompt, completion)
        states = _plain(lm, ids)
        for j, layer in enumerate([0, 1]):
            h = states[layer + 1][0]  # hidden_states[0] is the embedding output
            if read == "last":
                expected = h[len(ids) - 1]
            elif read == "mean":
                expected = h[start : start + 5].mean(0)
            else:
                expected = torch.full((5, h.shape[-1]), float("nan"))
                span = h[start : start + 5]
                expected[: len(span)] = span
            np.testing.assert_allclose(reps.values[i, j], expected.numpy(), atol=1e-5, rtol=1e-5)


def test_pre_attn_is_the_normed_block_input(llama):
    lm, tok = llama
    reps = hidden_states(lm, tok, EXAMPLES[:2], layers=[1, 2], site="pre_attn", progress=False)
    for i, (prompt, completion, _) in enumerate(EXAMPLES[:2]):
        ids, _ = _ids(tok, prompt, completion)
        states = _plain(lm, ids)
        for j, layer in enumerate([1, 2]):
            with torch.no_grad():
                expected = lm.model.layers[layer].input_layernorm(states[layer][0])[-1]
            np.testing.assert_allclose(reps.values[i, j], expected.numpy(), atol=1e-5)


def test_mlp_and_attention_outputs_add_up_to_the_block(lm_pair):
    lm, tok = lm_pair
    kwargs = {"layers": [1], "read": "tokens", "n_tokens": 4, "progress": False}
    before = hidden_states(
        lm, tok, EXAMPLES[:3], layers=[0], site="residual", read="tokens", n_tokens=4, progress=False
    )
    attn = hidden_states(lm, tok, EXAMPLES[:3], site="attn_out", **kwargs)
    mlp = hidden_states(lm, tok, EXAMPLES[:3], site="mlp_out", **kwargs)
    after = hidden_states(lm, tok, EXAMPLES[:3], site="residual", **kwargs)
    total = before.values[:, 0] + attn.values[:, 0] + mlp.values[:, 0]
    np.testing.assert_allclose(total, after.values[:, 0], atol=1e-5)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    subset=st.lists(st.integers(0, len(EXAMPLES) - 1), min_size=1, max_size=6),
    batch_size=st.integers(1, 5),
    read=st.sampled_from(["last", "mean", "tokens"]),
    site=st.sampled_from(["residual", "pre_attn", "attn_out", "mlp_out"]),
)
def test_batched_equals_unbatched(llama, gpt2, subset, batch_size, read, site):
    for lm, tok in (llama, gpt2):
        data = [EXAMPLES[i] for i in subset]
        one = hidden_states(lm, tok, data, read=read, site=site, n_tokens=6, batch_size=1, progress=False)
        many = hidden_states(lm, tok, data, read=read, site=site, n_tokens=6, batch_size=batch_size, progress=False)
        np.testing.assert_allclose(one.values, many.values, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(one.mean_norm.values, many.mean_norm.values, rtol=1e-5)


def test_coordinates_and_attrs(llama):
    lm, tok = llama
    reps = hidden_states(lm, tok, EXAMPLES, layers=[-1, 0], site="residual", read="tokens", n_tokens=4, progress=False)
    assert reps.dims == ("sample", "layer", "token", "hidden")
    assert reps.layer.values.tolist() == [0, 2]
    assert reps.label.values.tolist() == [e[2] for e in EXAMPLES]
    assert reps.group.values.tolist() == [e[0] for e in EXAMPLES]
    assert reps.attrs["site"] == "residual" and reps.attrs["n_model_layers"] == 3 and reps.attrs["hidden_size"] == 32
    # "Dull" is four characters: exactly four tokens read, no NaN.
    assert reps.n_read.values[-1] == 4 and not np.isnan(reps.values[-1]).any()
    # mean_norm is the mean token norm over the completion tokens read.
    enc = encode(tok, ConceptExamples([EXAMPLES[0][0]], [EXAMPLES[0][1]]), chat=True, max_completion=4)[0]
    states = _plain(lm, enc.ids)
    first = hidden_states(lm, tok, EXAMPLES[:1], layers=[0], site="residual", read="tokens", n_tokens=4, progress=False)
    expected = states[1][0, enc.start : enc.stop].norm(dim=-1).mean()
    assert float(first.mean_norm[0]) == pytest.approx(float(expected), rel=1e-5)


def test_padding_token_is_not_needed(llama):
    lm, _ = llama
    with_pad = hidden_states(lm, make_tokenizer(), EXAMPLES, batch_size=4, progress=False)
    without = hidden_states(lm, make_tokenizer(pad=False), EXAMPLES, batch_size=4, progress=False)
    np.testing.assert_allclose(with_pad.values, without.values, atol=1e-6)


def test_raw_texts_are_read_whole(gpt2):
    lm, tok = gpt2
    reps = hidden_states(lm, tok, ["abc def", "xy"], site="residual", read="mean", n_tokens=None, progress=False)
    ids = tok("abc def").input_ids  # BOS + 7 characters
    states = _plain(lm, ids)
    np.testing.assert_allclose(reps.values[0, 0], states[1][0, 1:].mean(0).numpy(), atol=1e-5)
    assert "label" not in reps.coords


def test_chat_option(llama):
    lm, tok = llama
    plain = hidden_states(lm, tok, EXAMPLES[:2], chat=False, progress=False)
    chat = hidden_states(lm, tok, EXAMPLES[:2], chat=True, progress=False)
    assert not np.allclose(plain.values, chat.values)
    with pytest.raises(LandscapeError, match="chat template"):
        hidden_states(lm, make_tokenizer(chat=False), EXAMPLES[:2], chat=True, progress=False)


def test_input_forms_agree(llama, tmp_path):
    lm, tok = llama
    as_tuples = hidden_states(lm, tok, EXAMPLES, progress=False)
    dicts = [{"prompt": p, "completion": c, "label": y} for p, c, y in EXAMPLES]
    as_dicts = hidden_states(lm, tok, dicts, progress=False)
    examples = ConceptExamples([e[0] for e in EXAMPLES], [e[1] for e in EXAMPLES], labels=[e[2] for e in EXAMPLES])
    path = examples.to_jsonl(tmp_path / "data.jsonl")
    as_file = hidden_states(lm, tok, str(path), progress=False)
    np.testing.assert_array_equal(as_tuples.values, as_dicts.values)
    np.testing.assert_array_equal(as_tuples.values, as_file.values)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"examples": []}, "at least one example"),
        ({"layers": [4]}, "layer indices in"),
        ({"layers": ["last"]}, "integer layer indices"),
        ({"layers": [-4]}, "layer indices in"),
        ({"layers": []}, "at least one layer"),
        ({"site": "qkv"}, "one of"),
        ({"read": "first"}, "one of"),
        ({"n_tokens": 0}, "positive integer"),
        ({"read": "tokens", "n_tokens": None}, "number of tokens"),
        ({"batch_size": 0}, "positive integer"),
        ({"examples": [("a", "b"), "c"]}, "one kind"),
        ({"examples": [{"prompt": "a"}]}, "'prompt' and 'completion'"),
        ({"examples": [("a", "b", 1), ("a", "c")]}, "on every example"),
        ({"layer_path": "model.nothing"}, "dotted path"),
    ],
)
def test_bad_input(llama, kwargs, match):
    lm, tok = llama
    args = {"examples": EXAMPLES[:2], "progress": False, **kwargs}
    with pytest.raises(LandscapeError, match=match):
        hidden_states(lm, tok, **args)


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(LandscapeError, match="layer_path"):
        hidden_states(torch.nn.Linear(2, 2), make_tokenizer(), EXAMPLES[:2], progress=False)


def test_user_given_layer_path(gpt2):
    lm, tok = gpt2
    default = hidden_states(lm, tok, EXAMPLES[:2], progress=False)
    explicit = hidden_states(lm, tok, EXAMPLES[:2], layer_path="transformer.h", progress=False)
    np.testing.assert_array_equal(default.values, explicit.values)


def test_deep_layers_are_not_computed_when_not_asked(llama):
    lm, tok = llama
    calls = []
    handle = lm.model.layers[2].register_forward_hook(lambda *a: calls.append(1))
    try:
        hidden_states(lm, tok, EXAMPLES[:2], layers=[0, 1], progress=False)
    finally:
        handle.remove()
    assert calls == []


def test_wider_model_runs():
    lm, tok = make_model("llama", hidden=48, layers=2), make_tokenizer()
    assert hidden_states(lm, tok, EXAMPLES[:2], progress=False).sizes["hidden"] == 48
