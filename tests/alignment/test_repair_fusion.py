"""REPAIR and fusion, checked against plain computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import landscape as ls
from landscape.alignment import align, fuse, repair
from landscape.connectivity import interpolate
from landscape.core.errors import LandscapeError
from landscape.symmetry import symmetry_graph


@pytest.fixture(scope="module")
def pair(mnist1d_small):
    model = ls.models.create("mlp", width=16, depth=2, seed=0)
    a, b = (
        ls.train(model, mnist1d_small, epochs=3, init_seed=s, data_seed=s, batch_size=50, progress=False).state
        for s in (0, 1)
    )
    return model, a, align(model, a, b, progress=False).apply(b)


def preactivation_stats(model, state, x, module_name):
    """Mean and std of a module's outputs, by a forward hook on a loaded copy (the plain way)."""
    import copy

    m = copy.deepcopy(model)
    m.load_state_dict(state)
    seen = []
    m.get_submodule(module_name).register_forward_hook(lambda _m, _i, out: seen.append(out.detach().double()))
    with torch.no_grad():
        m(x)
    h = seen[0]
    return h.mean(0), h.std(0, unbiased=False)


def test_repair_gives_the_interpolated_network_the_mixed_statistics(pair, mnist1d_small, device) -> None:
    model, a, b = pair
    fix = repair(model, a, b, mnist1d_small, device=device)
    assert [s.module for s in fix.sites] == ["features.fc1", "features.fc2", "classifier"]
    x = mnist1d_small.train[0]
    mid = ls.lerp(a, b, 0.5)
    corrected = fix(model, mid, 0.5)
    for name in ("features.fc1", "features.fc2", "classifier"):
        mean_a, std_a = preactivation_stats(model, a, x, name)
        mean_b, std_b = preactivation_stats(model, b, x, name)
        mean, std = preactivation_stats(model, corrected, x, name)
        assert torch.allclose(mean, (mean_a + mean_b) / 2, atol=1e-4)
        assert torch.allclose(std, (std_a + std_b) / 2, atol=1e-4)
    # the endpoints are left as they are; corrected states come back on the CPU
    same = fix(model, a, 0.0)
    assert all(torch.allclose(same[k], a[k], atol=1e-6) for k in a)
    assert all(t.device.type == "cpu" for t in corrected.values())
    # without the output layer, only the hidden sites' weights and biases change
    hidden = repair(model, a, b, mnist1d_small, include_output=False)
    assert [s.module for s in hidden.sites] == ["features.fc1", "features.fc2"]
    assert torch.equal(hidden(model, mid, 0.5)["classifier.weight"], mid["classifier.weight"])


def test_repair_is_an_interpolate_correction_and_has_a_one_call_form(pair, mnist1d_small) -> None:
    model, a, b = pair
    fix = repair(model, a, b, mnist1d_small, n_examples=200)
    curve = interpolate(model, a, b, mnist1d_small, alphas=3, correct=fix, progress=False)
    assert curve.attrs["correction"] == "repair" and curve.accuracy.dims == ("alpha", "split")
    again = fix.curve(mnist1d_small, alphas=3, progress=False)
    assert np.allclose(again.loss.values, curve.loss.values)
    plain = interpolate(model, a, b, mnist1d_small, alphas=3, progress=False)
    assert np.allclose(curve.loss.isel(alpha=0).values, plain.loss.isel(alpha=0).values, atol=1e-5)


def test_repair_works_on_batchnorm_and_convolutional_networks() -> None:
    x = torch.randn(64, 40, generator=torch.Generator().manual_seed(0))
    for name, kw in [
        ("cnn1d", {"width": 4, "depth": 2, "norm": "batch"}),
        ("resnet", {"base_width": 4, "input_shape": (40,)}),
    ]:
        model = ls.models.create(name, seed=0, **kw)
        b = ls.state_of(ls.models.create(name, seed=1, **kw))
        fix = repair(model, ls.state_of(model), b, x)
        assert fix.sites
        out = fix(model, ls.lerp(ls.state_of(model), b, 0.5), 0.5)
        assert set(out) == set(b)


def test_repair_bad_input() -> None:
    model = ls.models.create("resnet", base_width=4, norm="none", input_shape=(40,), seed=0)
    x = torch.randn(8, 40)
    with pytest.raises(LandscapeError, match="bn='reset'"):
        repair(model, model, model, x, include_output=False)  # bias-free convolutions, no norms
    assert [s.module for s in repair(model, model, model, x).sites] == ["classifier"]
    mlp = ls.models.create("mlp", width=4, depth=1, seed=0)
    with pytest.raises(LandscapeError, match=r"repair\(data=...\)"):
        repair(mlp, mlp, mlp, None)


def test_fusing_permuted_copies_gives_the_original_back() -> None:
    model = ls.models.create("mlp", width=8, depth=2, seed=0)
    a = ls.state_of(model)
    graph = symmetry_graph(model)
    copies = [graph.apply(a, graph.random_transforms(seed=s)) for s in (1, 2)]
    for method in ("ot", "weights"):
        fused = fuse(model, [a, *copies], method=method, progress=False)
        assert all(torch.allclose(fused[k], a[k], atol=1e-6) for k in a)
    assert fused.provenance["format"] == "fused"


def test_fusing_into_fewer_units_merges_duplicates_without_changing_the_function() -> None:
    # A width-8 network whose units come in identical pairs computes the same function as a
    # width-4 network; fusing (two differently permuted copies of) it into 4 units recovers it.
    kw = {"depth": 1, "input_shape": (5,), "num_classes": 3}
    small = ls.models.create("mlp", width=4, seed=0, **kw)
    wide = ls.models.create("mlp", width=8, seed=0, **kw)
    s = ls.state_of(small)
    twin = {
        "features.fc1.weight": s["features.fc1.weight"].repeat_interleave(2, 0),
        "features.fc1.bias": s["features.fc1.bias"].repeat_interleave(2, 0),
        "classifier.weight": s["classifier.weight"].repeat_interleave(2, 1) / 2,
        "classifier.bias": s["classifier.bias"],
    }
    x = torch.randn(20, 5)
    assert torch.allclose(torch.func.functional_call(wide, twin, (x,)), small(x), atol=1e-5)
    graph = symmetry_graph(wide)
    parents = [twin, graph.apply(twin, graph.random_transforms(seed=4))]
    fused = fuse(wide, parents, target_widths=4, progress=False)
    assert fused["features.fc1.weight"].shape == (4, 5)
    assert torch.allclose(torch.func.functional_call(small, fused, (x,)), small(x), atol=1e-4)
    fused = fuse(wide, parents, target_model=small, progress=False)
    assert torch.allclose(torch.func.functional_call(small, fused, (x,)), small(x), atol=1e-4)


def test_fuse_with_repair_and_bad_input(pair, mnist1d_small, device) -> None:
    model, a, b = pair
    fused = fuse(model, [a, b], data=mnist1d_small, repair=True, device=device, progress=False)
    assert all(t.device.type == "cpu" for t in fused.values())
    x = mnist1d_small.train[0]
    mean, std = preactivation_stats(model, fused, x, "features.fc1")
    mean_a, std_a = preactivation_stats(model, a, x, "features.fc1")
    mean_b, std_b = preactivation_stats(model, b, x, "features.fc1")  # b is already aligned to a
    assert torch.allclose(mean, (mean_a + mean_b) / 2, atol=1e-4)
    assert torch.allclose(std, (std_a + std_b) / 2, atol=1e-4)
    with pytest.raises(LandscapeError, match="at least two"):
        fuse(model, [a], progress=False)
    with pytest.raises(LandscapeError, match="widths between 1"):
        fuse(model, [a, b], target_widths=99, progress=False)
    with pytest.raises(LandscapeError, match="'ot' or 'sinkhorn'"):
        fuse(model, [a, b], method="weights", target_widths=8, progress=False)
    with pytest.raises(LandscapeError, match="data for repair"):
        fuse(model, [a, b], repair=True, progress=False)


def test_fuse_then_finetune(pair, mnist1d_small) -> None:
    model, a, b = pair
    fused = fuse(model, [a, b], progress=False)
    tuned = fuse(model, [a, b], data=mnist1d_small, finetune=1, finetune_lr=1e-3, progress=False)
    # one epoch of training, started from the fused network, as ls.train would do it
    expected = ls.train(
        model, mnist1d_small, start=fused, epochs=1, optimizer="adamw", lr=1e-3, schedule="cosine", progress=False
    ).state
    assert all(torch.allclose(tuned[k], expected[k], atol=1e-6) for k in tuned)
    with pytest.raises(LandscapeError, match="finetune"):
        fuse(model, [a, b], finetune=1, progress=False)


def test_transformer_fusion_heads_aware_and_into_narrower_mlps() -> None:
    # Two copies of a ViT that differ by a permutation of its heads, stream and MLP units (and of
    # the coordinates inside the heads) fuse back into the original, by transport and by matching.
    model = ls.models.create("vit", dim=8, depth=1, heads=2, seed=0)
    a = ls.state_of(model)
    graph = symmetry_graph(model)
    moved = graph.apply(a, graph.random_transforms(seed=2))
    for method in ("ot", "weights"):
        fused = fuse(model, [a, moved], method=method, graph=graph, progress=False)
        assert all(torch.allclose(fused[k], a[k], atol=1e-5) for k in a), method
    # into half the MLP width: the fused state runs in the narrower architecture
    narrow = ls.models.create("vit", dim=8, depth=1, heads=2, mlp_ratio=1, seed=0)
    other = ls.state_of(ls.models.create("vit", dim=8, depth=1, heads=2, seed=1))
    fused = fuse(model, [a, other], method="ot", target_model=narrow, graph=graph, progress=False)
    assert fused["features.blocks.0.fc1.weight"].shape == (8, 8)
    out = torch.func.functional_call(narrow, dict(fused), (torch.randn(3, 1, 8, 8),))
    assert out.shape == (3, 10) and torch.isfinite(out).all()
