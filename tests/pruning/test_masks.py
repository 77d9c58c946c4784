"""Masks and magnitude pruning against hand-made masks and sorting; masked training keeps zeros."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import landscape as ls
from landscape.core.errors import LandscapeError, StateMismatchError
from landscape.pruning import (
    apply_mask,
    density,
    full_mask,
    layer_density,
    magnitude_prune,
    prunable_parameters,
    random_mask,
    sparsity,
)


def _state(shapes: list[tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {f"layer{i}.weight": torch.randn(shape, generator=gen) for i, shape in enumerate(shapes)}


def test_prunable_parameters_are_conv_and_linear_weights() -> None:
    model = ls.models.create("cnn1d", width=4, norm="batch", seed=0)
    names = prunable_parameters(model, prune_output=True)
    assert names == ["features.conv1.weight", "features.conv2.weight", "features.conv3.weight", "classifier.weight"]
    mask = full_mask(model, prune_output=True)
    assert list(mask) == names and all(m.dtype == torch.bool and bool(m.all()) for m in mask.values())


def test_magnitude_prune_hand_made_example() -> None:
    w = {"a": torch.tensor([[0.5, -0.1], [2.0, 0.05]]), "b": torch.tensor([-0.3, 1.0, 0.2, -4.0])}
    mask = {k: torch.ones_like(v, dtype=torch.bool) for k, v in w.items()}
    # 8 weights, prune round(0.5 * 8) = 4 smallest: 0.05, -0.1, 0.2, -0.3
    got = magnitude_prune(w, mask, prune_rate=0.5)
    assert got["a"].tolist() == [[True, False], [True, False]]
    assert got["b"].tolist() == [False, True, False, True]
    # layer-wise: half of each entry
    got = magnitude_prune(w, mask, prune_rate=0.5, scope="layer")
    assert got["a"].tolist() == [[True, False], [True, False]]
    assert got["b"].tolist() == [False, True, False, True]
    # Already-pruned weights stay pruned even when they are large.
    mask2 = {"a": torch.tensor([[True, True], [False, True]]), "b": torch.ones(4, dtype=torch.bool)}
    got = magnitude_prune(w, mask2, prune_rate=0.3)
    assert not bool(got["a"][1, 0])


@settings(max_examples=25, deadline=None)
@given(
    shapes=st.lists(st.tuples(st.integers(1, 12), st.integers(1, 12)), min_size=1, max_size=3),
    rounds=st.integers(1, 6),
    scope=st.sampled_from(["global", "layer"]),
    seed=st.integers(0, 1000),
)
def test_point_eight_to_the_r_remain_after_r_rounds(shapes, rounds, scope, seed) -> None:
    state = _state(shapes, seed)
    mask = {k: torch.ones_like(v, dtype=torch.bool) for k, v in state.items()}
    counts = [int(m.sum()) for m in mask.values()]
    for _ in range(rounds):
        mask = magnitude_prune(state, mask, prune_rate=0.2, scope=scope)
    # Every round prunes round(0.2 * remaining): within half a weight of 0.8 * remaining per round.
    if scope == "global":
        expected = sum(counts)
        for _ in range(rounds):
            expected -= round(0.2 * expected)
        assert int(sum(int(m.sum()) for m in mask.values())) == expected
        assert abs(density(mask) - 0.8**rounds) <= rounds / sum(counts)
    else:
        for m, n in zip(mask.values(), counts):
            expected = n
            for _ in range(rounds):
                expected -= round(0.2 * expected)
            assert int(m.sum()) == expected
            assert abs(int(m.sum()) / n - 0.8**rounds) <= rounds / n


@settings(max_examples=25, deadline=None)
@given(
    shapes=st.lists(st.tuples(st.integers(1, 10), st.integers(1, 10)), min_size=1, max_size=3),
    rate=st.floats(0.05, 0.95),
    seed=st.integers(0, 1000),
)
def test_global_pruning_removes_the_smallest_alive_magnitudes(shapes, rate, seed) -> None:
    state = _state(shapes, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    mask = {k: torch.rand(v.shape, generator=gen) > 0.3 for k, v in state.items()}
    new = magnitude_prune(state, mask, prune_rate=rate)
    alive = np.concatenate([state[k].abs().reshape(-1).numpy()[mask[k].reshape(-1).numpy()] for k in state])
    kept = np.concatenate([state[k].abs().reshape(-1).numpy()[new[k].reshape(-1).numpy()] for k in state])
    expected_count = len(alive) - round(rate * len(alive))
    assert len(kept) == expected_count
    # the kept ones are exactly the largest alive magnitudes
    np.testing.assert_array_equal(np.sort(kept), np.sort(alive)[len(alive) - expected_count :])
    for k in state:  # no weight comes back
        assert not bool((new[k] & ~mask[k]).any())


def test_random_mask_keeps_per_layer_counts_and_is_seeded() -> None:
    state = _state([(6, 7), (3, 5)], 0)
    mask = magnitude_prune(state, {k: torch.ones_like(v, dtype=torch.bool) for k, v in state.items()}, prune_rate=0.6)
    a, b, c = random_mask(mask, seed=1), random_mask(mask, seed=1), random_mask(mask, seed=2)
    assert layer_density(a) == layer_density(mask)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_apply_mask_and_sparsity() -> None:
    state = {"w": torch.ones(2, 3), "b": torch.ones(3)}
    mask = {"w": torch.tensor([[True, False, True], [False, False, True]])}
    out = apply_mask(state, mask)
    assert out["w"].tolist() == [[1, 0, 1], [0, 0, 1]] and out["b"].tolist() == [1, 1, 1]
    assert sparsity(mask) == pytest.approx(0.5) and density(mask) == pytest.approx(0.5)


@pytest.mark.parametrize(
    "options",
    [
        {"optimizer": "sgd", "momentum": 0.9, "weight_decay": 5e-2},
        {"optimizer": "adamw", "lr": 1e-2, "weight_decay": 1e-1},
        {"optimizer": "adam", "lr": 1e-2, "weight_decay": 1e-2},
    ],
)
def test_masked_weights_stay_exactly_zero_through_training(options) -> None:
    data = ls.datasets.mnist1d(n_train=96, n_test=48)
    model = ls.models.create("cnn1d", width=4, seed=0)
    start = ls.state_of(model)
    mask = magnitude_prune(start, full_mask(model), prune_rate=0.5)
    # Start from weights that are NOT zero where pruned: train must zero them and keep them zero.
    result = ls.train(
        model,
        data,
        epochs=2,
        batch_size=16,
        start=start,
        mask=mask,
        checkpoint_steps=[1, 3, 8],
        progress=False,
        **options,
    )
    for state in [result.state, *result.checkpoints.values()]:
        for k, m in mask.items():
            assert torch.count_nonzero(state[k][~m]) == 0, k
            assert torch.count_nonzero(state[k][m]) > 0


def test_bad_input() -> None:
    state = _state([(3, 4)], 0)
    good = {"layer0.weight": torch.ones(3, 4, dtype=torch.bool)}
    for rate in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(LandscapeError, match=r"prune_rate"):
            magnitude_prune(state, good, prune_rate=rate)
    with pytest.raises(StateMismatchError, match=r"shape \(4, 3\)"):
        magnitude_prune(state, {"layer0.weight": torch.ones(4, 3, dtype=torch.bool)})
    with pytest.raises(StateMismatchError, match="lacks"):
        apply_mask(state, {"other.weight": torch.ones(3, 4, dtype=torch.bool)})
    with pytest.raises(LandscapeError, match="boolean"):
        apply_mask(state, {"layer0.weight": torch.ones(3, 4)})
    with pytest.raises(LandscapeError, match="scope"):
        magnitude_prune(state, good, scope="filter")
