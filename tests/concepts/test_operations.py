"""Guide operations (add, ablate, ablate_then_add), several steerings in one context,
explicit positions, and steering vectors on each layer's own dtype: each against plain hooks
written out here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import EXAMPLES, hook_counts, make_model

from landscape.concepts import ControlVector, Steering, find_layers, fit_probe, generate, guide, hidden_states
from landscape.concepts.sites import register_read, site_point
from landscape.core.errors import LandscapeError


@pytest.fixture(scope="module")
def residual_probes(llama, gpt2):
    return {
        name: fit_probe(hidden_states(*pair, EXAMPLES, site="residual", progress=False), val_fraction=0)
        for name, pair in (("llama", llama), ("gpt2", gpt2))
    }


def _name(lm):
    return "llama" if type(lm).__name__.startswith("Llama") else "gpt2"


def _ids(tok, text="How was the day?"):
    return torch.tensor([tok(text).input_ids])


def _capture(point, run):
    values = []
    handle = register_read(point, lambda x: values.append(x.detach().clone()))
    try:
        run()
    finally:
        handle.remove()
    return values[0]


def _logits(lm, ids, **kwargs):
    with torch.no_grad():
        return lm(ids, **kwargs).logits


def _with_hooks(lm, edits, run):
    """``edits``: {module: function(output tensor) -> new tensor}, registered as plain hooks."""

    def make(fn):
        def hook(module, args, out):
            x = out[0] if isinstance(out, tuple) else out
            y = fn(x)
            return (y, *out[1:]) if isinstance(out, tuple) else y

        return hook

    handles = [module.register_forward_hook(make(fn)) for module, fn in edits.items()]
    try:
        return run()
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("site", ["residual", "pre_attn", "mlp_out"])
@pytest.mark.parametrize("preserve_norm", [True, False])
def test_ablation_leaves_zero_projection(lm_pair, site, preserve_norm):
    lm, tok = lm_pair
    probe = fit_probe(hidden_states(lm, tok, EXAMPLES, site=site, progress=False), val_fraction=0)
    point = site_point(find_layers(lm)[2], site)
    unit = torch.as_tensor(probe.direction(2))
    ids = _ids(tok)
    plain = _capture(point, lambda: _logits(lm, ids))
    with guide(lm, probe, operation="ablate", layers=[2], preserve_norm=preserve_norm) as state:
        ablated = _capture(point, lambda: _logits(lm, ids))
    assert state.operation == "ablate"
    # float32 rounding of a projection of activations of norm ~10-100: 1e-5 relative.
    assert (plain @ unit).abs().max() > 1e-2
    assert ((ablated @ unit).abs() <= 1e-5 * ablated.norm(dim=-1)).all()
    if preserve_norm:
        torch.testing.assert_close(ablated.norm(dim=-1), plain.norm(dim=-1), rtol=1e-5, atol=1e-5)
    else:  # exactly the component along the direction removed
        torch.testing.assert_close(ablated, plain - (plain @ unit)[..., None] * unit, rtol=1e-5, atol=1e-5)


def test_ablate_then_add_sets_the_projection_to_the_strength(lm_pair, residual_probes):
    lm, tok = lm_pair
    probe = residual_probes[_name(lm)]
    point = site_point(find_layers(lm)[1], "residual")
    unit = torch.as_tensor(probe.direction(1))
    with guide(lm, probe, alpha=0.5, layers=[1], operation="ablate_then_add", preserve_norm=False) as state:
        steered = _capture(point, lambda: _logits(lm, _ids(tok)))
    torch.testing.assert_close(steered @ unit, torch.full(steered.shape[:-1], state.strengths[1]), rtol=1e-5, atol=1e-4)


def test_ablating_overlapping_directions_removes_their_span(llama):
    lm, tok = llama
    rng = np.random.default_rng(0)
    a = rng.normal(size=32)
    b = a + 0.3 * rng.normal(size=32)  # far from orthogonal to a
    steerings = [
        Steering(ControlVector({1: a}), operation="ablate"),
        Steering(ControlVector({1: b}), operation="ablate"),
    ]
    point = site_point(find_layers(lm)[1], "residual")
    with guide(lm, steerings, preserve_norm=False):
        out = _capture(point, lambda: _logits(lm, _ids(tok)))
    for v in (a, b):
        unit = torch.as_tensor(v / np.linalg.norm(v), dtype=torch.float32)
        assert ((out @ unit).abs() <= 1e-5 * out.norm(dim=-1)).all()


def test_several_steerings_equal_plain_hooks_of_each(llama, residual_probes):
    lm, tok = llama
    probe = residual_probes["llama"]
    other = ControlVector({0: np.linspace(-1, 1, 32), 2: np.ones(32)})
    ids = _ids(tok)
    steerings = [Steering(probe, alpha=0.4, layers=[1, 2]), Steering(other, alpha=-2.0, site="residual")]
    with guide(lm, steerings, preserve_norm=False) as state:
        guided = _logits(lm, ids)
    assert state.layers == [0, 1, 2] and len(state.parts) == 2
    blocks = find_layers(lm)
    unit = {layer: torch.as_tensor(probe.direction(layer)) for layer in (1, 2)}
    strength = state.parts[0].strengths
    edits = {
        blocks[0]: lambda x: x - 2.0 * torch.as_tensor(other.vectors[0]),
        blocks[1]: lambda x: x + strength[1] * unit[1],
        blocks[2]: lambda x: x + strength[2] * unit[2] - 2.0 * torch.as_tensor(other.vectors[2]),
    }
    expected = _with_hooks(lm, edits, lambda: _logits(lm, ids))
    torch.testing.assert_close(guided, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(LandscapeError, match="strengths"):
        _ = state.strengths  # ambiguous with two steerings


def test_alpha_zero_and_exit_are_bit_identical_with_several_steerings(lm_pair, residual_probes):
    lm, tok = lm_pair
    probe = residual_probes[_name(lm)]
    ids = _ids(tok)
    plain = _logits(lm, ids)
    hooks_before = hook_counts(lm)
    zero = [Steering(probe, alpha=0.0, layers=[0]), Steering(-probe, alpha=0.0, layers=[1, 2])]
    with guide(lm, zero, positions=slice(2, None)):
        assert torch.equal(_logits(lm, ids), plain)
    with guide(lm, [Steering(probe, alpha=1.0), Steering(probe, operation="ablate", layers=[2])]):
        assert not torch.allclose(_logits(lm, ids), plain)
    assert torch.equal(_logits(lm, ids), plain)
    assert hook_counts(lm) == hooks_before


def _text_steered(lm, ids, mask, layer, delta, steer_text):
    """Plain steering at the text positions ``steer_text`` (batch, text length) of a
    left-padded batch: a hook adds ``delta`` where the text position is chosen."""
    text = (mask.cumsum(-1) - 1).clamp(min=0)
    steer = steer_text.gather(1, text.clamp(max=steer_text.shape[1] - 1)) & mask.bool()
    module = find_layers(lm)[layer]
    return _with_hooks(
        lm,
        {module: lambda x: x + delta * steer[..., None].to(x.dtype)},
        lambda: _logits(lm, ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)),
    )


def _left_padded(tok, texts, pad=3):
    rows = [tok(t).input_ids for t in texts]
    length = max(map(len, rows))
    ids = torch.full((len(rows), length), pad)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, length - len(r) :] = torch.tensor(r)
        mask[i, length - len(r) :] = 1
    return ids, mask


@pytest.mark.parametrize(
    ("positions", "chosen"),
    [
        ([0, 2, 5], lambda n: [0, 2, 5]),
        (3, lambda n: [3]),
        (slice(2, None), lambda n: list(range(2, n))),
        (slice(1, 9, 3), lambda n: [1, 4, 7]),
        (np.array([True, False, True, True]), lambda n: [0, 2, 3]),
    ],
)
def test_explicit_positions_count_text_tokens_and_never_padding(lm_pair, residual_probes, positions, chosen):
    lm, tok = lm_pair
    probe = residual_probes[_name(lm)]
    ids, mask = _left_padded(tok, ["Hi there", "How was the concert last night?"])
    with guide(lm, probe, alpha=2.0, layers=[1], preserve_norm=False, positions=positions) as state:
        guided = _logits(lm, ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0))
    steer_text = torch.zeros(2, ids.shape[1], dtype=torch.bool)
    for row in range(2):
        for p in chosen(int(mask[row].sum())):
            if p < ids.shape[1]:
                steer_text[row, p] = True
    delta = state.strengths[1] * torch.as_tensor(probe.direction(1))
    expected = _text_steered(lm, ids, mask, 1, delta, steer_text)
    real = mask.bool()
    torch.testing.assert_close(guided[real], expected[real], rtol=1e-5, atol=1e-5)


def test_slice_positions_with_and_without_the_kv_cache(llama, residual_probes):
    lm, tok = llama
    ids = _ids(tok, "Tell me")
    runs = []
    for use_cache in (True, False):
        with guide(lm, residual_probes["llama"], alpha=1.5, positions=slice(4, None)):
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


def test_batched_generation_with_a_mask_equals_one_by_one(gpt2, residual_probes):
    lm, tok = gpt2
    prompts = ["Hi", "How was the concert last night?"]
    with guide(lm, residual_probes["gpt2"], alpha=20.0, layers=[0, 1], positions=[0, 1, 2]):
        batched = generate(lm, tok, prompts, max_new_tokens=5)
        alone = [generate(lm, tok, [p], max_new_tokens=5)[0] for p in prompts]
    assert batched == alone


@pytest.mark.parametrize(
    ("positions", "match"),
    [(-1, "non-negative"), (slice(-3, None), "non-negative"), ("prompt", "one of"), (1.5, "non-negative")],
)
def test_bad_positions(llama, residual_probes, positions, match):
    with (
        pytest.raises(LandscapeError, match=match),
        guide(llama[0], residual_probes["llama"], alpha=1.0, positions=positions),
    ):
        pass


def test_bad_operations_and_mixed_options(llama, residual_probes):
    lm, _ = llama
    probe = residual_probes["llama"]
    with pytest.raises(LandscapeError, match="one of"), guide(lm, probe, alpha=1.0, operation="erase"):
        pass
    with pytest.raises(LandscapeError, match="strength"), guide(lm, probe):
        pass
    with (
        pytest.raises(LandscapeError, match="inside each Steering"),
        guide(lm, [Steering(probe, alpha=1.0)], alpha=2.0),
    ):
        pass
    with pytest.raises(LandscapeError, match="width"), guide(lm, ControlVector({1: np.ones(7)})):
        pass


def test_steering_vectors_follow_each_layers_dtype(residual_probes):
    """Layer 1 runs in float64 (its input cast up, its output cast back, as accelerate moves
    activations between devices): the steering vector is placed in each layer's dtype."""
    lm = make_model("llama")
    probe = residual_probes["llama"]
    block = find_layers(lm)[1]
    block.to(torch.float64)
    cast_in = block.register_forward_pre_hook(
        lambda m, args, kwargs: (
            tuple(a.double() if torch.is_tensor(a) and a.is_floating_point() else a for a in args),
            {k: (v.double() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in kwargs.items()},
        ),
        with_kwargs=True,
    )
    seen = []
    capture = block.register_forward_hook(
        lambda m, a, out: seen.append((out[0] if isinstance(out, tuple) else out).dtype)
    )
    cast_out = find_layers(lm)[2].register_forward_pre_hook(
        lambda m, args, kwargs: (
            tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args),
            {k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in kwargs.items()},
        ),
        with_kwargs=True,
    )
    rotary = lm.model.rotary_emb
    try:
        ids = torch.tensor([[5, 40, 41, 42, 43]])
        with guide(lm, probe, alpha=1.0, layers=[0, 1, 2], preserve_norm=False) as state:
            guided = _logits(lm, ids)
        blocks = find_layers(lm)
        units = {layer: torch.as_tensor(probe.direction(layer), dtype=torch.float64) for layer in (0, 1, 2)}
        edits = {blocks[j]: (lambda x, j=j: x + (state.strengths[j] * units[j]).to(x.dtype)) for j in (0, 1, 2)}
        expected = _with_hooks(lm, edits, lambda: _logits(lm, ids))
    finally:
        cast_in.remove(), capture.remove(), cast_out.remove()
    assert torch.float64 in seen and rotary is not None
    torch.testing.assert_close(guided, expected, rtol=1e-6, atol=1e-6)


def test_nested_guides_equal_one_guide_with_both_steerings(lm_pair, residual_probes):
    lm, tok = lm_pair
    probe = residual_probes[_name(lm)]
    ids = _ids(tok)
    with guide(lm, probe, alpha=0.5, layers=[0], preserve_norm=False):
        with guide(lm, -probe, alpha=0.3, layers=[2], preserve_norm=False, positions="new"):
            nested = _logits(lm, ids)
        outer_only = _logits(lm, ids)
    with guide(lm, [Steering(probe, alpha=0.5, layers=[0])], preserve_norm=False):
        assert torch.equal(_logits(lm, ids), outer_only)  # leaving the inner context restored the outer one
    with guide(
        lm, [Steering(probe, alpha=0.5, layers=[0]), Steering(-probe, alpha=0.3, layers=[2])], preserve_norm=False
    ):
        together = _logits(lm, ids)
    # The inner guide steers only the last position ("new"); the list form steers all of them.
    torch.testing.assert_close(nested[:, -1], together[:, -1], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(nested[:, 0], together[:, 0]) or nested.shape[1] == 1
