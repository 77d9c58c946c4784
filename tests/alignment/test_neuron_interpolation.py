"""Neuron-interpolation fusion against brute force k-means, independent least squares,
hand-computed attributions, and merges of identical networks that must give the network back."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn

import landscape as ls
from landscape.alignment import fuse, neuron_attribution, neuron_interpolation, weighted_kmeans
from landscape.alignment.neuron_interpolation import _attribution_batch
from landscape.core.errors import LandscapeError
from tests.fusion_models import SmallResNet18Layout, randomize_batchnorm, torchvision_resnet18


def _run(model: nn.Module, state, x: torch.Tensor, device: str = "cpu") -> torch.Tensor:
    m = copy.deepcopy(model)
    m.load_state_dict(state)
    m.to(device).eval()
    with torch.no_grad():
        return m(x.to(device)).cpu()


def _labelled(shape: tuple[int, ...], n: int = 200, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=gen), torch.randint(0, 10, (n,), generator=gen)


def test_weighted_kmeans_finds_the_brute_force_optimum(device: str) -> None:
    gen = torch.Generator().manual_seed(1)
    points = torch.cat(
        [torch.randn(3, 4, generator=gen) + 4, torch.randn(3, 4, generator=gen) - 4, torch.randn(2, 4, generator=gen)]
    )
    w = torch.rand(8, generator=gen) + 0.1

    def cost(labels) -> float:
        total = 0.0
        for k in set(labels):
            idx = [i for i, lab in enumerate(labels) if lab == k]
            centre = (w[idx, None] * points[idx]).sum(0) / w[idx].sum()
            total += float((w[idx] * ((points[idx] - centre) ** 2).sum(1)).sum())
        return total

    best = min(cost(labels) for labels in itertools.product(range(3), repeat=8) if len(set(labels)) == 3)
    found = weighted_kmeans(points @ points.T, w, 3, restarts=8, seed=0, device=device)
    assert found.device.type == "cpu"
    assert cost(found.tolist()) == pytest.approx(best, rel=1e-9)


def test_output_attributions_by_hand(device: str) -> None:
    model = ls.models.create("mlp", width=6, depth=1, seed=0)
    x, y = _labelled((40,), n=30)
    logits = _run(model, ls.state_of(model), x).double()
    at_zero = _run(model, ls.state_of(model), torch.zeros(1, 40)).double()
    onehot = torch.nn.functional.one_hot(y, 10).double()
    gxa = neuron_attribution(model, model, (x, y), layers=["classifier"], kind="gradient_x_activation", device=device)
    assert torch.allclose(gxa["classifier"], (logits.abs() * onehot).mean(0), atol=1e-6)
    cond = neuron_attribution(model, model, (x, y), layers=["classifier"], kind="conductance", steps=3, device=device)
    # d logit_y / d logit_c is 1 for c = y: the Riemann sum telescopes to logit_y(x) - logit_y(0)
    assert torch.allclose(cond["classifier"], ((logits - at_zero).abs() * onehot).mean(0), atol=1e-6)


def test_conductance_of_a_layer_every_path_crosses_sums_to_the_logit_change() -> None:
    model = ls.models.create("mlp", width=8, depth=2, seed=0).double().eval()
    x, y = _labelled((40,), n=5)
    x = x.double()
    signed = _attribution_batch(model, x, y, ["features.fc2"], "conductance", 400)["features.fc2"]
    with torch.no_grad():
        change = (model(x) - model(torch.zeros_like(x))).gather(1, y[:, None]).squeeze(1)
    # a Riemann sum of 400 steps of a piecewise-linear path: error ~ 1/400 of the change
    assert torch.allclose(signed.sum(1), change, atol=2e-2 * float(change.abs().max()))


def test_output_layer_is_the_least_squares_fit_of_the_mean_logits(device: str) -> None:
    model = ls.models.create("mlp", width=6, depth=1, seed=0)
    a = ls.state_of(model)
    b = ls.state_of(ls.models.create("mlp", width=6, depth=1, seed=1))
    x, y = _labelled((40,), n=300)
    fused = neuron_interpolation(model, [a, b], (x, y), attribution="uniform", device=device, progress=False)
    # the first layer's targets are means of linear maps of x, so the fit is exact: every fused
    # unit's weights are the mean of one cluster of the parents' units, and the clusters
    # partition the 12 units
    rows = torch.cat([torch.cat([s["features.fc1.weight"], s["features.fc1.bias"][:, None]], 1) for s in (a, b)])
    fused_rows = torch.cat([fused["features.fc1.weight"], fused["features.fc1.bias"][:, None]], 1)
    clusters = []
    for row in fused_rows.double():
        found = [
            set(subset)
            for size in range(1, 13)
            for subset in itertools.combinations(range(12), size)
            if torch.allclose(rows[list(subset)].double().mean(0), row, atol=1e-4)
        ]
        assert len(found) == 1
        clusters.append(found[0])
    assert sorted(i for c in clusters for i in c) == list(range(12))
    pre = x.double() @ fused["features.fc1.weight"].T.double() + fused["features.fc1.bias"].double()
    # the output layer: least squares of the parents' mean logits on the fused hidden layer
    hidden = torch.relu(pre)
    design = torch.cat([hidden, torch.ones(300, 1, dtype=torch.float64)], 1)
    target = (_run(model, a, x).double() + _run(model, b, x).double()) / 2
    solution = torch.linalg.lstsq(design, target).solution.T
    assert torch.allclose(fused["classifier.weight"].double(), solution[:, :-1], atol=1e-4)
    assert torch.allclose(fused["classifier.bias"].double(), solution[:, -1], atol=1e-4)


@pytest.mark.parametrize("name", ["mlp", "cnn1d", "resnet", "resnet18-layout"])
def test_identical_parents_give_the_network_back(name: str, device: str) -> None:
    if name == "resnet18-layout":
        model, shape = randomize_batchnorm(SmallResNet18Layout(width=4)), (1, 8, 8)
    elif name == "resnet":
        model, shape = randomize_batchnorm(ls.models.create("resnet", base_width=4, norm="batch", seed=0)), (1, 8, 8)
    else:
        model = ls.models.create(name, width=8, seed=0, **({"norm": "batch"} if name == "cnn1d" else {}))
        model, shape = randomize_batchnorm(model), (40,)
    x, y = _labelled(shape, n=160)
    state = ls.state_of(model)
    for parents in ([state], [state, state]):
        fused = neuron_interpolation(model, parents, (x, y), device=device, progress=False)
        # float32 activations, float64 least squares: agreement to ~1e-4 relative
        base = _run(model, state, x)
        assert torch.allclose(_run(model, fused, x, device), base, atol=2e-3 * float(base.abs().max()))


def test_fuse_dispatches_and_torchvision_resnet18() -> None:
    model = ls.models.create("mlp", width=8, depth=1, seed=0)
    parents = [ls.models.create("mlp", width=8, depth=1, seed=s) for s in (1, 2)]
    x, y = _labelled((40,), n=64)
    via_fuse = fuse(model, parents, method="neuron_interpolation", data=(x, y), progress=False)
    direct = neuron_interpolation(model, parents, (x, y), progress=False)
    assert all(torch.equal(via_fuse[k], direct[k]) for k in direct)
    with pytest.raises(LandscapeError, match="data"):
        neuron_interpolation(model, parents, None, progress=False)
    resnet = randomize_batchnorm(torchvision_resnet18())
    x = torch.randn(8, 3, 32, 32)
    fused = neuron_interpolation(resnet, [resnet, resnet], (x, torch.zeros(8, dtype=torch.long)), progress=False)
    assert torch.isfinite(_run(resnet, fused, x)).all()


def test_structured_groups_are_refused() -> None:
    model = ls.models.create("resnet", base_width=8, norm="group", seed=0)
    with pytest.raises(LandscapeError, match="method='ot'"):
        neuron_interpolation(model, [model, model], _labelled((1, 8, 8), n=16), progress=False)
