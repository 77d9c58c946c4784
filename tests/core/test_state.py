from __future__ import annotations

import math

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

import landscape as ls
from landscape.core import state as S
from landscape.core.errors import LandscapeError, StateMismatchError


def _state(seed: int = 0, scale: float = 1.0) -> S.State:
    g = torch.Generator().manual_seed(seed)
    return S.State(
        {
            "conv.weight": torch.randn(4, 3, 5, generator=g) * scale,
            "conv.bias": torch.randn(4, generator=g),
            "bn.weight": torch.rand(4, generator=g) + 0.5,
            "bn.bias": torch.randn(4, generator=g),
            "bn.running_mean": torch.randn(4, generator=g),
            "bn.running_var": torch.rand(4, generator=g) + 0.5,
            "bn.num_batches_tracked": torch.tensor(7 + seed),
            "fc.weight": torch.randn(2, 4, generator=g).double(),
        }
    )


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000), dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16])
)
def test_flatten_unflatten_round_trip_is_exact(seed: int, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(seed)
    state = S.State(
        {"b": torch.randn(3, 2, generator=g).to(dtype), "a": torch.randn(5, generator=g), "n": torch.tensor(3)}
    )
    back = S.unflatten(S.flatten(state), state)
    assert list(back) == list(state)
    for k in state:
        assert back[k].dtype == state[k].dtype
        assert torch.equal(back[k], state[k])


def test_flatten_uses_sorted_keys_and_skips_integers() -> None:
    state = {"b": torch.tensor([3.0]), "a": torch.tensor([1.0, 2.0]), "n": torch.tensor(5)}
    assert S.flatten(state).tolist() == [1.0, 2.0, 3.0]


@settings(max_examples=25, deadline=None)
@given(t=st.floats(-2, 3, allow_nan=False), seed=st.integers(0, 1000))
def test_lerp_matches_formula_and_endpoints(t: float, seed: int) -> None:
    a, b = _state(seed), _state(seed + 1)
    out = S.lerp(a, b, t)
    for k in a:
        if a[k].is_floating_point():
            expected = a[k].double() + t * (b[k].double() - a[k].double())
            assert torch.allclose(out[k].double(), expected, rtol=1e-5, atol=1e-6)
    assert all(torch.equal(S.lerp(a, b, 0.0)[k], a[k]) for k in a)
    assert all(torch.equal(S.lerp(a, b, 1.0)[k], b[k]) for k in a)


def test_integer_entries_come_from_the_nearer_endpoint() -> None:
    a, b = _state(0), _state(1)
    assert int(S.lerp(a, b, 0.2)["bn.num_batches_tracked"]) == 7
    assert int(S.lerp(a, b, 0.8)["bn.num_batches_tracked"]) == 8


def test_arithmetic_against_a_loop() -> None:
    a, b = _state(0), _state(1)
    total_dot = sum(float((a[k].double() * b[k].double()).sum()) for k in a if a[k].is_floating_point())
    assert S.dot(a, b) == pytest.approx(total_dot, rel=1e-12)
    assert S.norm(a) == pytest.approx(math.sqrt(S.dot(a, a)), rel=1e-12)
    assert S.distance(a, b) == pytest.approx(S.norm(S.sub(a, b)), rel=1e-12)
    assert torch.equal(S.add(a, b)["conv.weight"], a["conv.weight"] + b["conv.weight"])
    assert torch.equal(S.scale(a, 3.0)["fc.weight"], a["fc.weight"] * 3.0)
    assert S.sub(a, b)["bn.num_batches_tracked"] == a["bn.num_batches_tracked"]


def test_pure_functions_do_not_modify_inputs() -> None:
    a, b = _state(0), _state(1)
    before = {k: v.clone() for k, v in a.items()}
    S.lerp(a, b, 0.3), S.add(a, b), S.scale(a, 2.0), S.random_direction(a), S.flatten(a)
    assert all(torch.equal(before[k], a[k]) for k in a)


def test_stack_unstack_round_trip() -> None:
    states = [_state(i) for i in range(3)]
    stacked = S.stack(states)
    assert stacked["conv.weight"].shape == (3, 4, 3, 5)
    for original, back in zip(states, S.unstack(stacked)):
        assert all(torch.equal(original[k], back[k]) for k in original)


def test_mismatched_states_name_keys_and_shapes() -> None:
    a = _state(0)
    b = dict(a)
    b.pop("fc.weight")
    b["extra"] = torch.zeros(1)
    with pytest.raises(StateMismatchError, match=r"'fc.weight'.*'extra'"):
        S.lerp(a, b, 0.5)
    c = dict(a)
    c["conv.weight"] = torch.zeros(5, 3, 5)
    with pytest.raises(StateMismatchError, match=r"'conv.weight' has shape \(4, 3, 5\) in a and \(5, 3, 5\) in b"):
        S.add(a, c)


def test_filter_normalisation_matches_filter_norms() -> None:
    a = _state(0, scale=3.0)
    d = S.random_direction(a, normalization="filter", seed=4)
    for key in ("conv.weight", "fc.weight"):
        w, v = a[key].double(), d[key].double()
        assert torch.allclose(v.reshape(v.shape[0], -1).norm(dim=1), w.reshape(w.shape[0], -1).norm(dim=1), rtol=1e-5)
    for key in ("conv.bias", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"):
        assert not d[key].any(), key


def test_layer_model_and_raw_normalisation() -> None:
    a = _state(0, scale=2.0)
    layer = S.random_direction(a, normalization="layer", seed=1)
    assert layer["conv.weight"].norm().item() == pytest.approx(a["conv.weight"].norm().item(), rel=1e-5)
    model = S.random_direction(a, normalization="model", seed=1)
    active = ["conv.weight", "fc.weight"]
    d_norm = math.sqrt(sum(float(model[k].double().pow(2).sum()) for k in active))
    w_norm = math.sqrt(sum(float(a[k].double().pow(2).sum()) for k in active))
    assert d_norm == pytest.approx(w_norm, rel=1e-5)
    raw = S.random_direction(a, normalization=None, seed=1, ignore=())
    assert raw["conv.bias"].any()  # not ignored
    assert not raw["bn.running_mean"].any()  # running statistics are never moved


def test_not_ignoring_one_dimensional_entries_copies_the_weights_as_li_et_al() -> None:
    a = _state(0)
    d = S.random_direction(a, normalization="filter", ignore=(), seed=0)
    assert torch.equal(d["conv.bias"], a["conv.bias"])


def test_random_direction_is_reproducible_and_seeded() -> None:
    a = _state(0)
    assert torch.equal(S.flatten(S.random_direction(a, seed=3)), S.flatten(S.random_direction(a, seed=3)))
    assert not torch.equal(S.flatten(S.random_direction(a, seed=3)), S.flatten(S.random_direction(a, seed=4)))


def test_random_direction_rejects_unknown_options() -> None:
    with pytest.raises(LandscapeError, match=r"random_direction\(normalization=...\)"):
        S.random_direction(_state(0), normalization="unit")
    with pytest.raises(LandscapeError, match=r"random_direction\(ignore=...\)"):
        S.random_direction(_state(0), ignore=("weights",))


def test_state_of_is_a_detached_copy() -> None:
    model = torch.nn.Linear(3, 2)
    state = ls.state_of(model)
    with torch.no_grad():
        model.weight.add_(1.0)
    assert not torch.equal(state["weight"], model.weight)
    assert not state["weight"].requires_grad
    assert state.provenance["format"] == "module"


def test_content_hash_depends_on_numbers_only() -> None:
    a = _state(0)
    assert S.content_hash(a) == S.content_hash(dict(reversed(list(a.items()))))
    b = a.copy()
    b["conv.bias"] = b["conv.bias"] + 1e-3
    assert S.content_hash(a) != S.content_hash(b)


def test_as_state_error_names_function_and_fix() -> None:
    with pytest.raises(LandscapeError, match=r"lerp\(a=...\): expected a State.*found 3 \(int\)"):
        S.lerp(3, _state(0), 0.5)


def test_content_hashes_follow_every_kind_of_write() -> None:
    state = S.state_of(torch.nn.Linear(3, 2))
    seen = {S.record_hash(state)}
    state["weight"].data[0, 0] = 5.0  # a write through .data
    seen.add(S.record_hash(state))
    state["weight"].data.mul_(2)  # an in-place op on .data
    seen.add(S.record_hash(state))
    state["bias"].numpy()[0] = -3.0  # a write through a numpy view
    seen.add(ls.core.io.checkpoint_record(state)["sha256"])
    assert len(seen) == 4
    assert state.provenance["sha256"] == S.content_hash(state)
