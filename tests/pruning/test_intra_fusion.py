"""Intra-Fusion and discard pruning against hand computations, an independent LP solver for the
transport plan, and brute-force gradients."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import landscape as ls
from landscape.core.errors import LandscapeError
from landscape.pruning import intra_fusion, plain_groups, unit_importance
from landscape.symmetry import symmetry_graph
from tests.fusion_models import SmallResNet18Layout, randomize_batchnorm, torchvision_resnet18


def _run(model: nn.Module, state, x: torch.Tensor, device: str = "cpu") -> torch.Tensor:
    m = copy.deepcopy(model)
    m.load_state_dict(state)
    m.to(device).eval()
    with torch.no_grad():
        return m(x.to(device)).cpu()


def _tiny_mlp(weights: torch.Tensor, bias: torch.Tensor, head: torch.Tensor) -> tuple[nn.Module, ls.State]:
    model = ls.models.create(
        "mlp", input_shape=weights.shape[1], width=weights.shape[0], depth=1, num_classes=head.shape[0], seed=0
    )
    state = ls.state_of(model)
    state["features.fc1.weight"], state["features.fc1.bias"] = weights, bias
    state["classifier.weight"], state["classifier.bias"] = head, torch.zeros(head.shape[0])
    return model, state


def test_two_units_pruned_to_one_by_hand(device: str) -> None:
    w = torch.tensor([[2.0, 0.0], [0.5, 0.5]])
    b = torch.tensor([0.1, 0.2])
    head = torch.tensor([[1.0, -1.0], [0.5, 2.0]])
    model, state = _tiny_mlp(w, b, head)
    scores = unit_importance(model, state, kind="l1")["features.fc1"]
    assert torch.allclose(scores, torch.tensor([2 + 0.1 + 1 + 0.5, 1 + 0.2 + 1 + 2], dtype=torch.float64))
    x = torch.randn(32, 2)
    fused = intra_fusion(model, state, sparsity=0.5, method="fuse", device=device, progress=False)
    # one target: the plan is the source marginal; every unit's column divided by its mass is 1
    total = float(scores.sum())
    assert np.allclose(fused.plans["features.fc1"], [[3.6 / total, 4.2 / total]])
    assert list(fused.kept["features.fc1"]) == [1]
    by_hand = torch.relu(x @ (w[0] + w[1])[:, None] + (b[0] + b[1])) @ (head[:, 0] + head[:, 1])[None, :]
    assert torch.allclose(_run(fused.model, fused.state, x, device), by_hand, atol=1e-5)
    discarded = intra_fusion(model, state, sparsity=0.5, method="discard", device=device, progress=False)
    by_hand = torch.relu(x @ w[1][:, None] + b[1]) @ head[:, 1][None, :]
    assert torch.allclose(_run(discarded.model, discarded.state, x, device), by_hand, atol=1e-5)


def test_uniform_plan_sends_each_removed_unit_to_its_nearest_kept_unit(device: str) -> None:
    # units 0 and 1 are large; 2 points like 0 and 3 like 1 (small, so they are removed)
    w = torch.tensor([[3.0, 0.0], [0.0, 3.0], [0.3, 0.05], [0.02, 0.3]])
    b = torch.tensor([0.2, -0.1, 0.01, 0.02])
    head = torch.tensor([[1.0, 0.5, 0.1, 0.05], [-1.0, 2.0, 0.1, 0.2]])
    model, state = _tiny_mlp(w, b, head)
    pruned = intra_fusion(model, state, sparsity=0.5, marginals="uniform", device=device, progress=False)
    assert list(pruned.kept["features.fc1"]) == [0, 1]
    assert np.allclose(pruned.plans["features.fc1"], [[0.25, 0, 0.25, 0], [0, 0.25, 0, 0.25]])
    m = torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 1]])
    x = torch.randn(32, 2)
    by_hand = torch.relu(x @ (m @ w).T + m @ b) @ (head @ m.T).T
    assert torch.allclose(_run(pruned.model, pruned.state, x, device), by_hand, atol=1e-5)


def test_importance_plan_equals_an_independent_linear_program() -> None:
    from scipy.optimize import linprog

    gen = torch.Generator().manual_seed(3)
    w, b, head = torch.randn(6, 5, generator=gen), torch.randn(6, generator=gen), torch.randn(3, 6, generator=gen)
    model, state = _tiny_mlp(w, b, head)
    pruned = intra_fusion(model, state, sparsity=0.5, progress=False)
    keep = pruned.kept["features.fc1"]
    units = torch.cat([w, b[:, None], head.T], 1).double()
    importance = units.abs().sum(1).numpy()
    assert np.allclose(pruned.importance["features.fc1"], importance)
    assert sorted(keep) == sorted(np.argsort(-importance)[:3])
    direction = units / units.norm(dim=1, keepdim=True)
    cost = torch.cdist(direction, direction[keep], p=1).numpy()  # (6, 3)
    source = importance / importance.sum()
    target = importance[keep] / importance[keep].sum()
    n, k = cost.shape
    equalities = np.zeros((n + k, n * k))
    for i in range(n):
        equalities[i, i * k : (i + 1) * k] = 1
    for j in range(k):
        equalities[n + j, j::k] = 1
    lp = linprog(cost.reshape(-1), A_eq=equalities, b_eq=np.concatenate([source, target]), bounds=(0, None))
    plan = pruned.plans["features.fc1"]  # (kept, all)
    assert np.isclose((plan.T * cost).sum(), lp.fun, atol=1e-9)
    assert np.allclose(plan.sum(1), target) and np.allclose(plan.sum(0), source)


@pytest.mark.parametrize("method", ["fuse", "discard"])
def test_sparsity_zero_returns_the_model(method: str, device: str) -> None:
    model = ls.models.create("mlp", width=12, depth=2, seed=0)
    state = ls.state_of(model)
    pruned = intra_fusion(model, state, sparsity=0.0, method=method, device=device, progress=False)
    assert all(torch.equal(pruned.state[k], state[k]) for k in state)
    cnn = randomize_batchnorm(ls.models.create("cnn1d", width=6, norm="batch", seed=1))
    x = torch.randn(16, 40)
    pruned = intra_fusion(
        cnn, None, (x, torch.zeros(16, dtype=torch.long)), sparsity=0.0, method=method, progress=False
    )
    assert torch.allclose(_run(pruned.model, pruned.state, x), _run(cnn, ls.state_of(cnn), x), atol=1e-4)


def test_discard_selects_the_most_important_rows_and_columns() -> None:
    model = ls.models.create("mlp", width=10, depth=2, seed=0)
    state = ls.state_of(model)
    pruned = intra_fusion(model, state, sparsity=0.3, method="discard", importance="l2", progress=False)
    k1, k2 = (torch.as_tensor(pruned.kept[g]) for g in ("features.fc1", "features.fc2"))
    assert len(k1) == len(k2) == 7
    scores = unit_importance(model, state, kind="l2")
    assert set(k1.tolist()) == set(torch.argsort(scores["features.fc1"], descending=True)[:7].tolist())
    assert torch.equal(pruned.state["features.fc1.weight"], state["features.fc1.weight"][k1])
    assert torch.equal(pruned.state["features.fc2.weight"], state["features.fc2.weight"][k2][:, k1])
    assert torch.equal(pruned.state["classifier.weight"], state["classifier.weight"][:, k2])


def test_taylor_importance_equals_brute_force_gradients(device: str) -> None:
    model = ls.models.create("mlp", width=6, depth=1, seed=0)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 40, generator=gen), torch.randint(0, 10, (20,), generator=gen)
    scores = unit_importance(model, model, (x, y), kind="taylor", batch_size=7, device=device)["features.fc1"]
    m = copy.deepcopy(model)
    loss = nn.functional.cross_entropy(m(x), y)
    loss.backward()
    w, b, head = m.features.fc1.weight, m.features.fc1.bias, m.classifier.weight
    by_hand = (w * w.grad).abs().sum(1) + (b * b.grad).abs() + (head * head.grad).abs().sum(0)
    assert torch.allclose(scores.float(), by_hand.detach(), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name", ["cnn2d", "resnet", "resnet18-layout"])
def test_prunes_zoo_and_resnet18_layout_models(name: str, device: str) -> None:
    if name == "resnet18-layout":
        model = randomize_batchnorm(SmallResNet18Layout(width=4))
    else:
        model = randomize_batchnorm(
            ls.models.create(name, base_width=4, norm="batch", seed=0)
            if name == "resnet"
            else ls.models.create(name, width=4, seed=0)
        )
    gen = torch.Generator().manual_seed(0)
    data = {"train": (torch.randn(40, 1, 8, 8, generator=gen), torch.randint(0, 10, (40,), generator=gen))}
    graph = symmetry_graph(model, data["train"][0][:2])
    before = _run(model, ls.state_of(model), data["train"][0], device)
    for method in ("fuse", "discard"):
        pruned = intra_fusion(model, None, data, sparsity=0.5, method=method, device=device, progress=False)
        for g in plain_groups(graph):
            assert len(pruned.kept[g]) == graph.groups[g].size - round(0.5 * graph.groups[g].size)
        out = _run(pruned.model, pruned.state, data["train"][0], device)
        assert out.shape == before.shape and torch.isfinite(out).all()
        assert pruned.attrs["fraction_of_parameters"] < 0.6
    repaired = intra_fusion(model, None, data, sparsity=0.5, repair=True, device=device, progress=False)
    assert torch.isfinite(_run(repaired.model, repaired.state, data["train"][0], device)).all()


def test_torchvision_resnet18_when_it_imports() -> None:
    model = randomize_batchnorm(torchvision_resnet18())
    x = torch.randn(2, 3, 32, 32)
    pruned = intra_fusion(model, None, (x, torch.zeros(2, dtype=torch.long)), sparsity=0.5, progress=False)
    assert pruned.model.fc.in_features == 256
    assert torch.isfinite(_run(pruned.model, pruned.state, x)).all()


def test_finetune_and_dataset(mnist1d_small) -> None:
    model = ls.models.create("mlp", width=16, depth=1, seed=0)
    pruned = intra_fusion(
        model,
        None,
        mnist1d_small,
        sparsity=0.5,
        finetune={"epochs": 1, "batch_size": 100, "lr": 0.01},
        progress=False,
    )
    assert pruned.history is not None and int(pruned.history.sizes["step"]) == 4
    ds = pruned.to_dataset()
    assert ds.kept_units.sel(group="features.fc1").item() == 8 and ds.attrs["method"] == "fuse"


def test_bad_arguments_name_the_fix() -> None:
    model = ls.models.create("mlp", width=8, depth=1, seed=0)
    with pytest.raises(LandscapeError, match="sparsity"):
        intra_fusion(model, None, sparsity=1.0, progress=False)
    with pytest.raises(LandscapeError, match="method"):
        intra_fusion(model, None, sparsity=0.5, method="drop", progress=False)
    with pytest.raises(LandscapeError, match="data"):
        intra_fusion(model, None, sparsity=0.5, importance="taylor", progress=False)
    with pytest.raises(LandscapeError, match="groups"):
        intra_fusion(model, None, sparsity=0.5, groups=["classifier"], progress=False)
