"""Weight matching, activation matching and transport, checked against plain computations."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import landscape as ls
from landscape.alignment import Alignment, align
from landscape.alignment._activations import cross_correlations
from landscape.alignment._terms import TensorTerm
from landscape.core.errors import LandscapeError, StateMismatchError
from landscape.symmetry import Permutation, SoftMap, symmetry_graph


def planted(model, state, seed):
    """``state`` with every group randomly permuted, and the permutations used."""
    graph = symmetry_graph(model)
    perms = graph.random_transforms(seed=seed)
    return graph.apply(state, perms), perms


@pytest.fixture(scope="module")
def trained(mnist1d_small):
    """Two small MLPs trained for a few seconds."""
    model = ls.models.create("mlp", width=16, depth=2, seed=0)
    states = [
        ls.train(model, mnist1d_small, epochs=4, init_seed=s, data_seed=s, batch_size=50, progress=False).state
        for s in (0, 1)
    ]
    return model, states


@pytest.mark.parametrize("method", ["weights", "activations", "ot"])
def test_a_planted_permutation_of_a_trained_model_is_recovered_exactly(trained, mnist1d_small, method) -> None:
    model, (a, _) = trained
    moved, perms = planted(model, a, seed=3)
    result = align(model, a, moved, method=method, data=mnist1d_small, progress=False)
    aligned = result.apply(moved)
    assert all(torch.equal(aligned[k], a[k]) for k in a)
    for g, p in perms.items():
        # aligned unit i is moved unit index[i]; moved unit j was original unit p[j]
        assert torch.equal(p.index[result.maps[g].index], torch.arange(p.source_size))
    assert result.distance_after == 0.0


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("cnn1d", {"width": 6, "depth": 2}),
        ("resnet", {"base_width": 4, "norm": "batch"}),
        ("resnet", {"base_width": 8, "norm": "group"}),
        ("vit", {"dim": 8, "depth": 1, "heads": 2}),
    ],
)
def test_planted_permutations_of_other_zoo_models_are_recovered(name, kwargs) -> None:
    model = ls.models.create(name, seed=0, **kwargs)
    a = ls.state_of(model)
    moved, _ = planted(model, a, seed=1)
    aligned = align(model, a, moved, method="weights", kinds="permutation", progress=False).apply(moved)
    assert all(torch.equal(aligned[k], a[k]) for k in a)
    # the widest maps find them too (Procrustes and least squares land on the permutation up
    # to float32 rounding of the products)
    aligned = align(model, a, moved, method="weights", progress=False).apply(moved)
    assert all(torch.allclose(aligned[k], a[k], atol=1e-4) for k in a)


@pytest.mark.parametrize("method", ["weights", "activations"])
def test_planted_glmc_maps_of_a_transformer_are_recovered(method, device) -> None:
    # Orthogonal maps of the residual stream (fixing the all-ones vector), a permutation of the
    # heads, an invertible map per head for queries/keys and for values, permutations of the
    # MLP units: the solvers of every kind find them back from the weights or the activations.
    model = ls.models.create("vit", dim=8, depth=2, heads=2, seed=0)
    a = ls.state_of(model)
    graph = symmetry_graph(model)
    moved = graph.apply(a, graph.random_transforms(seed=1, kind="max"))
    x = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    result = align(model, a, moved, method=method, data=x, graph=graph, device=device, progress=False)
    assert result.folded
    aligned = result.apply(moved)
    # float32 states and products: the recovered maps agree to ~1e-5 relative
    assert all(torch.allclose(aligned[k], a[k], atol=1e-3, rtol=1e-3) for k in a)
    assert result.distance_after < 1e-3 * result.distance_before
    kinds = dict(zip(result.to_dataset().group.values, result.to_dataset().solved.values))
    assert kinds["features.patch"] == "orthogonal" and kinds["features.blocks.0.attn.qk"] == "invertible"
    # permutations alone cannot undo those maps
    perm = align(model, a, moved, kinds="permutation", graph=graph, progress=False)
    assert perm.distance_after > 100 * result.distance_after


@settings(max_examples=10, deadline=None)
@given(width=st.integers(2, 9), depth=st.integers(1, 3), seed=st.integers(0, 1000))
def test_property_weight_matching_recovers_planted_permutations(width, depth, seed) -> None:
    model = ls.models.create("mlp", width=width, depth=depth, input_shape=(6,), num_classes=3, seed=seed)
    a = ls.state_of(model)
    moved, _ = planted(model, a, seed=seed + 1)
    result = align(model, a, moved, method="weights", seed=seed, progress=False)
    assert all(torch.equal(result.apply(moved)[k], a[k]) for k in a)


def objective(ref, other) -> float:
    """sum over the entries a group acts on of <ref, other> (fixed entries are constant)."""
    return sum(float((ref[k].double() * other[k].double()).sum()) for k in ref if k != "classifier.bias")


def test_single_group_matches_brute_force_over_all_permutations() -> None:
    model = ls.models.create("mlp", width=5, depth=1, input_shape=(4,), num_classes=3, seed=0)
    a = ls.state_of(model)
    b = ls.state_of(ls.models.create("mlp", width=5, depth=1, input_shape=(4,), num_classes=3, seed=1))
    graph = symmetry_graph(model)
    best = max(itertools.permutations(range(5)), key=lambda p: objective(a, graph.apply(b, {"features.fc1": list(p)})))
    result = align(model, a, b, method="weights", progress=False)
    assert result.maps["features.fc1"].index.tolist() == list(best)
    assert np.isclose(result.history.objective[-1], objective(a, result.apply(b)))


def test_two_groups_end_at_a_point_no_single_group_change_improves() -> None:
    model = ls.models.create("mlp", width=3, depth=2, input_shape=(4,), num_classes=2, seed=0)
    a = ls.state_of(model)
    b = ls.state_of(ls.models.create("mlp", width=3, depth=2, input_shape=(4,), num_classes=2, seed=5))
    graph = symmetry_graph(model)
    result = align(model, a, b, method="weights", progress=False)
    maps = {g: m.index.tolist() for g, m in result.maps.items()}
    value = objective(a, graph.apply(b, maps))
    for g in maps:
        for p in itertools.permutations(range(3)):
            assert objective(a, graph.apply(b, {**maps, g: list(p)})) <= value + 1e-9


def test_similarity_matrix_equals_a_loop_over_weights() -> None:
    model = ls.models.create("mlp", width=4, depth=2, input_shape=(3,), num_classes=2, seed=0)
    a = ls.state_of(model)
    b = ls.state_of(ls.models.create("mlp", width=4, depth=2, input_shape=(3,), num_classes=2, seed=1))
    graph = symmetry_graph(model)
    p2 = Permutation([2, 0, 3, 1])
    terms = [TensorTerm(k, a[k], b[k], graph.layouts[k], graph.variances[k], dtype=torch.float64) for k in a]
    sizes = {"features.fc1": 4, "features.fc2": 4}
    s = sum(t.stats("features.fc1", {"features.fc2": p2}, sizes, sizes).s for t in terms if "features.fc1" in t.groups)
    w1a, w1b, b1a, b1b = (
        a["features.fc1.weight"],
        b["features.fc1.weight"],
        a["features.fc1.bias"],
        b["features.fc1.bias"],
    )
    w2a, w2b = a["features.fc2.weight"], b["features.fc2.weight"]
    expected = np.zeros((4, 4))
    for i in range(4):
        for j in range(4):
            total = sum(float(w1a[i, k] * w1b[j, k]) for k in range(3)) + float(b1a[i] * b1b[j])
            total += sum(float(w2a[r, i] * w2b[p2.index[r], j]) for r in range(4))  # fc2 rows permuted
            expected[i, j] = total
    assert np.allclose(s.numpy(), expected)


def test_activation_correlations_equal_numpy_corrcoef() -> None:
    model = ls.models.create("mlp", width=4, depth=1, input_shape=(3,), num_classes=2, seed=0)
    other = ls.models.create("mlp", width=4, depth=1, input_shape=(3,), num_classes=2, seed=1)
    graph = symmetry_graph(model)
    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
    ((node, axis),) = graph.sites["features.fc1"]
    corr, _, _ = cross_correlations(graph, ls.state_of(model), ls.state_of(other), x, [(node, axis)], batch_size=7)[
        (node, axis)
    ]
    ha = model.features(x).detach().numpy()  # post-ReLU hidden units: what the classifier reads
    hb = other.features(x).detach().numpy()
    expected = np.zeros((4, 4))
    for i in range(4):
        for j in range(4):
            if ha[:, i].std() > 0 and hb[:, j].std() > 0:
                expected[i, j] = np.corrcoef(ha[:, i], hb[:, j])[0, 1]
    assert np.allclose(corr.numpy(), expected, atol=1e-10)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), depth=st.integers(2, 3))
def test_property_weight_matching_objective_never_decreases(seed, depth) -> None:
    kw = {"width": 6, "depth": depth, "input_shape": (5,), "num_classes": 3}
    model = ls.models.create("mlp", seed=seed, **kw)
    b = ls.models.create("mlp", seed=seed + 1, **kw)
    result = align(model, model, b, method="weights", seed=seed, progress=False)
    values = np.array(result.history.objective)
    assert np.all(np.diff(values) >= -1e-9)
    steps = np.array([s[2] for s in result.history.steps])
    assert np.all(np.diff(np.concatenate([[values[0]], steps])) >= -1e-9)
    assert result.history.converged


def test_exact_transport_agrees_with_weight_matching_for_equal_widths(trained) -> None:
    model, (a, b) = trained
    w = align(model, a, b, method="weights", seed=2, progress=False)
    t = align(model, a, b, method="ot", seed=2, progress=False)
    assert all(isinstance(m, Permutation) for m in t.maps.values())
    assert {g: m.index.tolist() for g, m in w.maps.items()} == {g: m.index.tolist() for g, m in t.maps.items()}


def test_sinkhorn_soft_maps_are_barycentric_projections() -> None:
    model = ls.models.create("mlp", width=4, depth=1, input_shape=(3,), num_classes=2, seed=0)
    a = ls.state_of(model)
    b = ls.state_of(ls.models.create("mlp", width=4, depth=1, input_shape=(3,), num_classes=2, seed=1))
    result = align(model, a, b, method="sinkhorn", reg=0.5, progress=False)
    m = result.maps["features.fc1"]
    assert isinstance(m, SoftMap)
    plan = m.plan
    assert np.allclose(plan.sum(1).numpy(), 0.25) and np.allclose(plan.sum(0).numpy(), 0.25, atol=1e-4)
    aligned = result.apply(b)
    out_map = plan / plan.sum(1, keepdim=True)
    in_map = plan / plan.sum(0, keepdim=True)
    assert torch.allclose(
        aligned["features.fc1.weight"].double(), out_map @ b["features.fc1.weight"].double(), atol=1e-6
    )
    assert torch.allclose(aligned["features.fc1.bias"].double(), out_map @ b["features.fc1.bias"].double(), atol=1e-6)
    assert torch.allclose(aligned["classifier.weight"].double(), b["classifier.weight"].double() @ in_map.T, atol=1e-6)
    # a small regularisation gives (nearly) the exact plan
    sharp = align(model, a, b, method="sinkhorn", reg=0.01, progress=False).maps["features.fc1"]
    exact = align(model, a, b, method="ot", progress=False).maps["features.fc1"]
    assert torch.equal(sharp.plan.argmax(1), exact.index)


def test_transport_between_different_widths() -> None:
    kw = {"depth": 2, "input_shape": (5,), "num_classes": 3}
    model = ls.models.create("mlp", width=4, seed=0, **kw)
    wide = ls.models.create("mlp", width=8, seed=1, **kw)
    result = align(model, model, wide, method="ot", progress=False)
    aligned = result.apply(wide)
    assert aligned["features.fc2.weight"].shape == (4, 4)
    assert result.maps["features.fc1"].plan.shape == (4, 8)
    with pytest.raises(StateMismatchError, match="method='ot'"):
        align(model, model, wide, method="weights", progress=False)


def test_bad_input_is_named() -> None:
    model = ls.models.create("mlp", width=4, depth=1, seed=0)
    deeper = ls.models.create("mlp", width=4, depth=2, seed=0)
    with pytest.raises(StateMismatchError, match="same architecture"):
        align(model, model, deeper, progress=False)  # different architectures
    with pytest.raises(StateMismatchError, match="model, a"):
        align(model, deeper, deeper, progress=False)  # state does not fit the model
    with pytest.raises(LandscapeError, match=r"align\(data=.*method='activations'"):
        align(model, model, model, method="activations", progress=False)
    with pytest.raises(LandscapeError, match="one of"):
        align(model, model, model, method="magic", progress=False)
    with pytest.raises(LandscapeError, match="positive entropic"):
        align(model, model, model, method="sinkhorn", reg=0, progress=False)
    with pytest.raises(LandscapeError, match=r"on=.*only for method"):
        align(model, model, model, method="weights", on="activations", progress=False)


def test_alignment_dataset_history_and_roundtrip(trained, tmp_path) -> None:
    model, (a, b) = trained
    result = align(model, a, b, method="weights", progress=False)
    assert isinstance(result, Alignment)
    ds = result.to_dataset()
    assert ds.objective.dims == ("round",) and ds["perm[features.fc1]"].dims == ("unit[features.fc1]",)
    assert ds.attrs["method"] == "weights" and ds.attrs["distance_after"] < ds.attrs["distance_before"]
    back = ls.load_result(ls.save_result(ds, tmp_path / "al.nc"))
    assert np.array_equal(back["perm[features.fc2]"].values, result.permutations["features.fc2"])
    assert "Alignment(method='weights'" in repr(result)
    # the same maps align another checkpoint of the same run (here: b itself loaded from disk)
    path = ls.save_state(b, tmp_path / "b.safetensors")
    assert all(torch.equal(result.apply(str(path))[k], result.apply(b)[k]) for k in b)


def test_incremental_similarity_equals_a_full_recompute() -> None:
    # When a few units of a neighbouring group move, only the columns that moved enter a
    # product; the result is the similarity computed from scratch.
    model = ls.models.create("mlp", width=12, depth=2, input_shape=(5,), num_classes=3, seed=0)
    a = ls.state_of(model)
    b = ls.state_of(ls.models.create("mlp", width=12, depth=2, input_shape=(5,), num_classes=3, seed=1))
    graph = symmetry_graph(model)
    term = TensorTerm(
        "w",
        a["features.fc2.weight"],
        b["features.fc2.weight"],
        graph.layouts["features.fc2.weight"],
        graph.variances["features.fc2.weight"],
    )
    sizes = {"features.fc1": 12, "features.fc2": 12}
    old = {"features.fc1": Permutation(torch.arange(12))}
    swapped = torch.arange(12)
    swapped[[2, 7]] = swapped[[7, 2]]
    new = {"features.fc1": Permutation(swapped)}
    before = term.stats("features.fc2", old, sizes, sizes)
    updated = term.updated("features.fc2", before, old, new, sizes)
    assert updated is not None
    assert torch.allclose(updated.s, term.stats("features.fc2", new, sizes, sizes).s, atol=1e-10)
