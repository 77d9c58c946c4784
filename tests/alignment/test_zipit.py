"""ZipIt! merging against hand-made matchings, merges of identical networks (fully and up to a
layer) that must give the network back, duplicated units merged within one network, and
BatchNorm statistics recomputed as a plain loop does."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import landscape as ls
from landscape.alignment import ZippedModel, fuse, match_features, zipit
from landscape.core import recompute_bn
from landscape.core.errors import LandscapeError
from tests.conftest import reference_metrics
from tests.fusion_models import SmallResNet18Layout, randomize_batchnorm, torchvision_resnet18


def _run(model: nn.Module, state, x: torch.Tensor, device: str = "cpu") -> torch.Tensor:
    m = copy.deepcopy(model)
    m.load_state_dict(state)
    m.to(device).eval()
    with torch.no_grad():
        return m(x.to(device)).cpu()


def test_match_features_by_hand() -> None:
    corr = torch.tensor(
        [
            [1.0, 0.1, 0.9, 0.0],
            [0.1, 1.0, 0.0, 0.8],
            [0.9, 0.0, 1.0, 0.2],
            [0.0, 0.8, 0.2, 1.0],
        ]
    )
    owners = torch.tensor([0, 0, 1, 1])
    assert match_features(corr, owners, 2).tolist() == [0, 1, 0, 1]
    # two units of network 0 that are more alike than anything across networks
    corr[0, 1] = corr[1, 0] = 0.95
    assert match_features(corr, owners, 3, beta=2.0).tolist() == [0, 0, 1, 2]  # budget floor(2 * 1 / 2) = 1
    # beta = 0: no merge within a network, so the best merge is across
    assert match_features(corr, owners, 3, beta=0.0).tolist() == [0, 1, 0, 2]
    # a and b merge first (0.9); the pair's similarity to c is min(0.8, 0.8) times alpha:
    # with alpha = 1 it beats c-d (0.5) and absorbs c, with alpha = 0.3 (0.24) c and d merge
    four = torch.full((4, 4), 0.8)
    four[0, 1] = four[1, 0] = 0.9
    four[2, 3] = four[3, 2] = 0.5
    owners = torch.arange(4)
    assert match_features(four, owners, 2, alpha=1.0).tolist() == [0, 0, 0, 1]
    assert match_features(four, owners, 2, alpha=0.3).tolist() == [0, 0, 1, 1]


def _model(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    if name == "resnet18-layout":
        return randomize_batchnorm(SmallResNet18Layout(width=4)), (1, 8, 8)
    if name == "resnet":
        return randomize_batchnorm(ls.models.create("resnet", base_width=4, norm="batch", seed=0)), (1, 8, 8)
    if name == "cnn2d":
        return ls.models.create("cnn2d", width=4, seed=0), (1, 8, 8)
    return ls.models.create("mlp", width=8, depth=2, seed=0), (40,)


@pytest.mark.parametrize(
    ("name", "up_to"),
    [
        ("mlp", None),
        ("mlp", "features.act1"),
        ("cnn2d", "features.act2"),
        ("resnet", None),
        ("resnet", "features.stage2_block1.act1"),
        ("resnet18-layout", "layer1"),
    ],
)
def test_identical_parents_give_the_network_back(name: str, up_to: str | None, device: str) -> None:
    model, shape = _model(name)
    x = torch.randn(64, *shape, generator=torch.Generator().manual_seed(0))
    state = ls.state_of(model)
    zipped = zipit(model, [state, state], x, up_to=up_to, reset_bn=False, device=device, progress=False)
    assert isinstance(zipped.model, ZippedModel) == (up_to is not None)
    base = _run(model, state, x)
    # twins correlate perfectly and are merged first (dead units, constant on the data, may
    # merge with other dead units, which is exact too); averaging twins is exact up to float32
    assert torch.allclose(_run(zipped.model, zipped.state, x, device), base, atol=1e-4 * float(base.abs().max()))


def test_duplicated_units_merge_within_one_network(device: str) -> None:
    # units 4..7 repeat units 0..3; the next layer's columns are split between the copies
    model = ls.models.create("mlp", width=8, depth=1, seed=0)
    state = ls.state_of(model)
    state["features.fc1.weight"][4:] = state["features.fc1.weight"][:4]
    state["features.fc1.bias"][4:] = state["features.fc1.bias"][:4]
    x = torch.randn(128, 40, generator=torch.Generator().manual_seed(1))
    zipped = zipit(model, [state], x, width=0.5, beta=1.0, device=device, progress=False)
    assert zipped.model.features.fc1.out_features == 4
    labels = zipped.merges["features.fc1"]
    assert torch.equal(labels[:4], labels[4:])
    assert torch.allclose(_run(zipped.model, zipped.state, x, device), _run(model, state, x), atol=1e-5)


def test_batchnorm_statistics_are_recomputed_like_a_plain_loop() -> None:
    model, shape = _model("resnet")
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(96, *shape, generator=gen), torch.randint(0, 10, (96,), generator=gen)
    state = ls.state_of(model)
    recomputed = recompute_bn(model, state, x, batch_size=40, device="cpu")
    loss, accuracy = reference_metrics(model, state, x, y, bn_x=x, bn_batch=40)
    result = ls.evaluate(model, recomputed, (x, y), progress=False)
    # both are float32 passes over the same batches: statistics agree to ~1e-6
    assert float(result.loss.squeeze()) == pytest.approx(loss, rel=1e-5)
    assert float(result.accuracy.squeeze()) == pytest.approx(accuracy)
    # zipit resets them by default: merging twins and resetting equals resetting the network
    mlp = ls.models.create("mlp", width=8, depth=2, norm="batch", seed=0)
    mlp_state = ls.state_of(mlp)
    x = torch.randn(96, 40, generator=gen)
    zipped = zipit(mlp, [mlp_state, mlp_state], x, batch_size=40, progress=False)
    expected = recompute_bn(mlp, mlp_state, x, batch_size=40, device="cpu")
    assert torch.allclose(_run(zipped.model, zipped.state, x), _run(mlp, expected, x), atol=1e-4)


def test_partial_zip_evaluates_and_fuse_dispatches(mnist1d_small) -> None:
    model = ls.models.create("mlp", width=16, depth=2, seed=0)
    parents = [ls.models.create("mlp", width=16, depth=2, seed=s) for s in (1, 2)]
    partial = zipit(model, parents, mnist1d_small, up_to="features.act1", progress=False)
    heads = partial.model.head_outputs(mnist1d_small.test[0][:5])
    assert heads.shape == (2, 5, 10)
    assert torch.allclose(partial.model(mnist1d_small.test[0][:5]), heads.mean(0))
    result = ls.evaluate(partial.model, partial.state, mnist1d_small, progress=False)
    assert set(result.split.values) == {"train", "test"}
    full = fuse(model, parents, method="zipit", data=mnist1d_small, progress=False)
    direct = zipit(model, parents, mnist1d_small, progress=False).state
    assert all(torch.equal(full[k], direct[k]) for k in direct)
    with pytest.raises(LandscapeError, match="up_to"):
        zipit(model, parents, mnist1d_small, up_to="features.nothing", progress=False)
    with pytest.raises(LandscapeError, match="width"):
        zipit(model, parents[:1], mnist1d_small, progress=False)


def test_torchvision_resnet18_when_it_imports() -> None:
    model = randomize_batchnorm(torchvision_resnet18())
    x = torch.randn(8, 3, 32, 32)
    zipped = zipit(model, [model, model], x, up_to="layer2", reset_bn=False, progress=False)
    assert torch.allclose(_run(zipped.model, zipped.state, x), _run(model, ls.state_of(model), x), atol=1e-4)


@settings(max_examples=30, deadline=None)
@given(
    networks=st.integers(1, 3),
    units=st.integers(2, 6),
    seed=st.integers(0, 10_000),
    alpha=st.sampled_from([0.0, 0.3, 1.0]),
    beta=st.sampled_from([0.0, 0.125, 1.0]),
)
def test_match_features_always_returns_the_asked_number_of_merged_features(
    networks: int, units: int, seed: int, alpha: float, beta: float
) -> None:
    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(50, networks * units, generator=gen, dtype=torch.float64)
    corr = torch.corrcoef(feats.T)
    owners = torch.arange(networks).repeat_interleave(units)
    clusters = max(1, (networks * units) // 2)
    labels = match_features(corr, owners, clusters, alpha=alpha, beta=beta)
    assert sorted(set(labels.tolist())) == list(range(clusters))
    # merged features are numbered in the order of their first member
    firsts = [labels.tolist().index(k) for k in range(clusters)]
    assert firsts == sorted(firsts)
