"""Guidance identities, KV cache and first token, padding, restoration, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import EXAMPLES, hook_counts, make_model, make_tokenizer

from landscape.concepts import find_layers, fit_probe, generate, guide, hidden_states
from landscape.concepts.sites import register_read, site_point
from landscape.core.errors import LandscapeError

SITES = ("residual", "pre_attn", "attn_out", "mlp_out")


def _probe(lm, tok, site="residual"):
    # Guidance takes its site from the probe; these tests steer the residual stream by default.
    return fit_probe(hidden_states(lm, tok, EXAMPLES, site=site, progress=False), val_fraction=0)


@pytest.fixture(scope="module")
def probes(llama, gpt2):
    return {
        (name, site): _probe(*pair, site=site) for name, pair in (("llama", llama), ("gpt2", gpt2)) for site in SITES
    }


def _pair_name(lm):
    return "llama" if type(lm).__name__.startswith("Llama") else "gpt2"


def _ids(tok, text="How was the day?"):
    return torch.tensor([tok(text).input_ids])


def _logits(lm, ids, **kwargs):
    with torch.no_grad():
        return lm(ids, **kwargs).logits


class _Capture:
    """Records the output of a module, or the tensor at a site point (registered after guide's
    hook, it sees the steered one)."""

    def __init__(self, module):
        self.values = []
        point = module if hasattr(module, "kind") else site_point(module, "residual")
        self.handle = register_read(point, lambda x: self.values.append(x.detach().clone()))

    def remove(self):
        self.handle.remove()


def _manual_logits(lm, ids, module, delta, steer_mask, attention_mask=None, position_ids=None):
    """Plain steering: add ``delta`` at the positions of ``steer_mask`` (batch, length)."""

    def hook(m, a, out):
        x = out[0] if isinstance(out, tuple) else out
        y = x + delta * steer_mask[..., None].to(x.dtype)
        return (y, *out[1:]) if isinstance(out, tuple) else y

    handle = module.register_forward_hook(hook)
    try:
        return _logits(lm, ids, attention_mask=attention_mask, position_ids=position_ids)
    finally:
        handle.remove()


@pytest.mark.parametrize("preserve_norm", [True, False])
@pytest.mark.parametrize("positions", ["all", "new"])
def test_alpha_zero_is_bit_identical(lm_pair, probes, preserve_norm, positions):
    lm, tok = lm_pair
    ids = _ids(tok)
    plain = _logits(lm, ids)
    with guide(lm, probes[_pair_name(lm), "residual"], alpha=0.0, preserve_norm=preserve_norm, positions=positions):
        guided = _logits(lm, ids)
    assert torch.equal(plain, guided)


def test_leaving_the_context_restores_the_model_bit_for_bit(lm_pair, probes):
    lm, tok = lm_pair
    hooks_before = hook_counts(lm)
    ids = _ids(tok)
    before = _logits(lm, ids)
    blocks = find_layers(lm)
    for site in SITES:
        with guide(lm, probes[_pair_name(lm), site], alpha=3.0, layers=[0, 1, 2]):
            during = _logits(lm, ids)
        assert not torch.allclose(before, during)
        assert torch.equal(before, _logits(lm, ids))
    with pytest.raises(RuntimeError, match="inside"), guide(lm, probes[_pair_name(lm), "residual"], alpha=3.0):
        raise RuntimeError("inside")
    assert torch.equal(before, _logits(lm, ids))
    assert hook_counts(lm) == hooks_before
    assert len(blocks) == 3


@pytest.mark.parametrize("site", SITES)
def test_change_is_linear_in_alpha_without_norm_preservation(lm_pair, probes, site):
    lm, tok = lm_pair
    probe = probes[_pair_name(lm), site]
    module = site_point(find_layers(lm)[1], site)
    ids = _ids(tok)
    outputs = {}
    for alpha in (0.0, 1.0, 2.5, -1.0):
        with guide(lm, probe, alpha=alpha, layers=[1], preserve_norm=False) as state:
            capture = _Capture(module)
            _logits(lm, ids)
            capture.remove()
        outputs[alpha] = capture.values[0]
        if alpha == 1.0:
            strength = state.strengths[1]
    base = outputs[0.0]
    unit = torch.as_tensor(probe.direction(1), dtype=torch.float32)
    assert strength == pytest.approx(probe.mean_norm_[1])
    for k in (2.5, -1.0):
        torch.testing.assert_close(outputs[k] - base, k * (outputs[1.0] - base), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(outputs[1.0] - base, (strength * unit).expand_as(base), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("preserve_norm", [True, False])
def test_negated_probe_equals_negative_alpha(lm_pair, probes, preserve_norm):
    lm, tok = lm_pair
    probe = probes[_pair_name(lm), "residual"]
    ids = _ids(tok)
    with guide(lm, -probe, alpha=0.7, preserve_norm=preserve_norm):
        negated = _logits(lm, ids)
    with guide(lm, probe, alpha=-0.7, preserve_norm=preserve_norm):
        negative = _logits(lm, ids)
    assert torch.equal(negated, negative)


def test_norm_preservation_keeps_each_activation_norm(lm_pair, probes):
    lm, tok = lm_pair
    module = find_layers(lm)[2]
    ids = _ids(tok)
    before = _Capture(module)
    _logits(lm, ids)
    before.remove()
    with guide(lm, probes[_pair_name(lm), "residual"], alpha=2.0, layers=[2]):
        during = _Capture(module)
        _logits(lm, ids)
    during.remove()
    plain, steered = before.values[0], during.values[0]
    assert not torch.allclose(plain, steered)
    torch.testing.assert_close(steered.norm(dim=-1), plain.norm(dim=-1), rtol=1e-5, atol=1e-6)


def test_absolute_and_relative_strengths(llama, probes):
    lm, _ = llama
    probe = probes["llama", "residual"]
    with guide(lm, probe, alpha=0.5, layers=[0, 2]) as relative:
        pass
    with guide(lm, probe, alpha=0.5, layers=[0, 2], relative=False) as absolute:
        pass
    assert relative.strengths == pytest.approx({0: 0.5 * probe.mean_norm_[0], 2: 0.5 * probe.mean_norm_[2]})
    assert absolute.strengths == {0: 0.5, 2: 0.5}


@pytest.mark.parametrize("positions", ["all", "new"])
def test_first_generated_token_is_steered_with_the_kv_cache(lm_pair, probes, positions):
    lm, tok = lm_pair
    probe = probes[_pair_name(lm), "residual"]
    module = find_layers(lm)[1]
    ids = _ids(tok)
    length = ids.shape[1]
    with guide(lm, probe, alpha=2.0, layers=[1], preserve_norm=False, positions=positions) as state:
        out = lm.generate(
            ids,
            max_new_tokens=4,
            do_sample=False,
            use_cache=True,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=3,
        )
    delta = state.strengths[1] * torch.as_tensor(probe.direction(1))
    steer = torch.ones(1, length, dtype=torch.bool)
    if positions == "new":
        steer = torch.arange(length)[None] == length - 1
    first = _manual_logits(lm, ids, module, delta, steer)[:, -1]
    torch.testing.assert_close(out.logits[0], first, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out.logits[0], _logits(lm, ids)[:, -1], atol=1e-3)
    # Later tokens: a full forward pass over the sequence, steered at the same positions.
    sequence = out.sequences[:, :-1]
    steer = torch.ones(sequence.shape, dtype=torch.bool)
    if positions == "new":
        steer = torch.arange(sequence.shape[1])[None] >= length - 1
    full = _manual_logits(lm, sequence, module, delta, steer)
    for step in range(1, 4):
        torch.testing.assert_close(out.logits[step], full[:, length - 1 + step], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("positions", ["all", "new"])
def test_generation_with_and_without_cache_agree(lm_pair, probes, positions):
    lm, tok = lm_pair
    ids = _ids(tok, "Tell me")
    runs = []
    for use_cache in (True, False):
        with guide(lm, probes[_pair_name(lm), "pre_attn"], alpha=1.5, positions=positions):
            runs.append(
                lm.generate(
                    ids,
                    max_new_tokens=5,
                    do_sample=False,
                    use_cache=use_cache,
                    output_logits=True,
                    return_dict_in_generate=True,
                    pad_token_id=3,
                )
            )
    assert torch.equal(runs[0].sequences, runs[1].sequences)
    for a, b in zip(runs[0].logits, runs[1].logits):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def _left_padded_batch(tok, texts, pad=3):
    rows = [tok(t).input_ids for t in texts]
    length = max(map(len, rows))
    ids = torch.full((len(rows), length), pad)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, length - len(r) :] = torch.tensor(r)
        mask[i, length - len(r) :] = 1
    return ids, mask


@pytest.mark.parametrize("positions", ["all", "new"])
def test_left_padding_is_not_steered_and_does_not_change_results(lm_pair, probes, positions):
    lm, tok = lm_pair
    probe = probes[_pair_name(lm), "residual"]
    short, long = "Hi", "How was the concert last night?"
    ids, mask = _left_padded_batch(tok, [short, long])
    options = {"max_new_tokens": 4, "do_sample": False, "output_logits": True, "return_dict_in_generate": True}
    module = find_layers(lm)[1]
    before = _Capture(module)
    lm.generate(ids, attention_mask=mask, pad_token_id=3, max_new_tokens=1)
    before.remove()
    with guide(lm, probe, alpha=2.0, layers=[1], positions=positions):
        during = _Capture(module)
        batched = lm.generate(ids, attention_mask=mask, pad_token_id=3, **options)
        during.remove()
        alone = lm.generate(_ids(tok, short), pad_token_id=3, **options)
    plain_prefill, steered_prefill = before.values[0], during.values[0]
    pads = mask[0] == 0
    assert pads.any()
    assert torch.equal(steered_prefill[0, pads], plain_prefill[0, pads])  # padding is not steered
    assert not torch.allclose(steered_prefill[0, ~pads], plain_prefill[0, ~pads])  # the prompt's last token is
    for step in range(4):
        torch.testing.assert_close(batched.logits[step][0], alone.logits[step][0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("positions", ["all", "new"])
def test_right_padding_in_a_forward_pass(lm_pair, probes, positions):
    lm, tok = lm_pair
    probe = probes[_pair_name(lm), "residual"]
    short, long = tok("Hi there").input_ids, tok("A much longer text here").input_ids
    ids = torch.full((2, len(long)), 3)
    mask = torch.zeros((2, len(long)), dtype=torch.long)
    ids[0, : len(short)], mask[0, : len(short)] = torch.tensor(short), 1
    ids[1], mask[1] = torch.tensor(long), 1
    with guide(lm, probe, alpha=2.0, positions=positions):
        batched = _logits(lm, ids, attention_mask=mask)
        alone = _logits(lm, torch.tensor([short]))
    torch.testing.assert_close(batched[0, : len(short)], alone[0], atol=1e-5, rtol=1e-5)


def test_generate_helper_inside_guide(gpt2, probes):
    lm, tok = gpt2  # no pad token
    prompts = ["Hi", "How was the concert last night?"]
    plain = generate(lm, tok, prompts, max_new_tokens=6)
    with guide(lm, probes["gpt2", "residual"], alpha=20.0, layers=[0, 1, 2]):
        steered = generate(lm, tok, prompts, max_new_tokens=6)
        one_by_one = [generate(lm, tok, [p], max_new_tokens=6)[0] for p in prompts]
    assert steered == one_by_one
    assert steered != plain
    assert tok.pad_token is None


def test_default_layers_are_the_best_by_validation_accuracy(llama):
    lm, tok = llama
    probe = _probe(lm, tok)
    probe.val_accuracy_ = np.array([0.6, 0.9, 0.8])
    with guide(lm, probe, alpha=0.1) as state:
        assert state.layers == [1, 2]
    with guide(lm, probe, alpha=0.1, top_k=1) as state:
        assert state.layers == [1]


def test_probe_of_another_model_is_refused(probes):
    wide = make_model("llama", hidden=48)
    with pytest.raises(LandscapeError, match="hidden size 48"), guide(wide, probes["llama", "residual"], alpha=1.0):
        pass
    shallow = make_model("llama", layers=2)
    with pytest.raises(LandscapeError, match="layers up to 2"), guide(shallow, probes["llama", "residual"], alpha=1.0):
        pass


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": float("nan")}, "finite number"),
        ({"alpha": 1.0, "positions": "prompt"}, "one of"),
        ({"alpha": 1.0, "layers": [5]}, "layers the probe was fit on"),
        ({"alpha": 1.0, "site": "mlp_out"}, "relative alpha"),
        ({"alpha": 1.0, "site": "nowhere", "relative": False}, "one of"),
    ],
)
def test_bad_input(llama, probes, kwargs, match):
    lm, _ = llama
    with pytest.raises(LandscapeError, match=match), guide(lm, probes["llama", "residual"], **kwargs):
        pass


def test_generate_bad_input(llama):
    lm, tok = llama
    with pytest.raises(LandscapeError, match="non-empty list"):
        generate(lm, tok, [])
    with pytest.raises(LandscapeError, match="positive integer"):
        generate(lm, tok, ["Hi"], max_new_tokens=0)
    assert generate(lm, make_tokenizer(pad=False), ["Hi"], max_new_tokens=2)


def test_new_positions_treat_a_longer_prompt_as_a_new_prompt(llama, probes):
    lm, tok = llama
    module = find_layers(lm)[1]
    first, second = _ids(tok, "Hi"), _ids(tok, "Hi there, how was the trip?")
    before = _Capture(module)
    _logits(lm, second)
    before.remove()
    with guide(lm, probes["llama", "residual"], alpha=2.0, layers=[1], positions="new"):
        _logits(lm, first)
        during = _Capture(module)
        _logits(lm, second)  # a next turn, not one more generated token: only its last token is steered
        during.remove()
    plain, steered = before.values[0][0], during.values[0][0]
    assert torch.equal(plain[:-1], steered[:-1])
    assert not torch.allclose(plain[-1], steered[-1])
