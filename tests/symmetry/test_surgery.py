"""BatchNorm folding and unfolding, units of a group inside a tensor, and resized modules,
against plain computations."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import landscape as ls
from landscape.core.errors import LandscapeError
from landscape.symmetry import (
    Atom,
    Fixed,
    Prod,
    Sum,
    fold_batchnorm,
    map_units,
    resize_model,
    symmetry_graph,
    unfold_batchnorm,
    unit_rows,
)
from tests.fusion_models import SmallResNet18Layout, randomize_batchnorm


def _outputs(model: nn.Module, state, x: torch.Tensor, device: str) -> torch.Tensor:
    m = copy.deepcopy(model)
    m.load_state_dict(state)
    m.to(device).eval()
    with torch.no_grad():
        return m(x.to(device)).cpu()


def test_fold_hand_computed_linear_batchnorm() -> None:
    model = ls.models.create("mlp", input_shape=2, width=2, depth=1, norm="batch", num_classes=1, seed=0)
    state = ls.state_of(model)
    state["features.fc1.weight"] = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    state["features.fc1.bias"] = torch.tensor([0.5, -1.0])
    state["features.norm1.running_mean"] = torch.tensor([1.0, 2.0])
    state["features.norm1.running_var"] = torch.tensor([4.0, 0.25])
    state["features.norm1.weight"] = torch.tensor([2.0, 3.0])
    state["features.norm1.bias"] = torch.tensor([0.1, 0.2])
    folded, folds = fold_batchnorm(symmetry_graph(model), state)
    eps = 1e-5
    scale = torch.tensor([2.0 / (4.0 + eps) ** 0.5, 3.0 / (0.25 + eps) ** 0.5])
    assert torch.allclose(folded["features.fc1.weight"], state["features.fc1.weight"] * scale[:, None], atol=1e-6)
    expected_bias = (torch.tensor([0.5, -1.0]) - torch.tensor([1.0, 2.0])) * scale + torch.tensor([0.1, 0.2])
    assert torch.allclose(folded["features.fc1.bias"], expected_bias, atol=1e-6)
    assert torch.equal(folded["features.norm1.running_mean"], torch.zeros(2))
    assert torch.allclose(folded["features.norm1.running_var"], torch.full((2,), 1 - eps))
    assert [(f.norm, f.layer, f.bias) for f in folds] == [("features.norm1", "features.fc1", "features.fc1.bias")]


@pytest.mark.parametrize("name", ["mlp", "cnn1d", "resnet", "resnet18-layout"])
def test_fold_and_unfold_keep_the_function(name: str, device: str) -> None:
    if name == "resnet18-layout":
        model, x = SmallResNet18Layout(width=4), torch.randn(16, 1, 8, 8)
    else:
        shape = (1, 8, 8) if name == "resnet" else (40,)
        model = ls.models.create(name, input_shape=shape, norm="batch", seed=0)
        x = torch.randn(16, *shape)
    randomize_batchnorm(model)
    graph = symmetry_graph(model, x[:2])
    state = ls.state_of(model)
    folded, folds = fold_batchnorm(graph, state)
    assert folds, "every BatchNorm of these models follows a Linear/Conv layer"
    base = _outputs(model, state, x, device)
    # float32 weights, products of a few terms: agreement to ~1e-5 relative
    assert torch.allclose(_outputs(model, folded, x, device), base, atol=1e-4, rtol=1e-4)
    back = unfold_batchnorm(model, folded, folds, x, batch_size=7, device=device)
    assert torch.allclose(_outputs(model, back, x, device), base, atol=1e-4, rtol=1e-4)
    # the statistics are those of the folded layer's output, measured by a plain hook
    first = folds[0]
    m = copy.deepcopy(model)
    m.load_state_dict(folded)
    seen = []
    m.get_submodule(first.layer).register_forward_hook(lambda _m, _i, out: seen.append(out.detach().double()))
    m.eval()
    with torch.no_grad():
        m(x)
    channels = seen[0].movedim(1, -1).reshape(-1, seen[0].shape[1])
    assert torch.allclose(back[f"{first.norm}.running_mean"].double(), channels.mean(0), atol=1e-5)
    assert torch.allclose(back[f"{first.norm}.running_var"].double(), channels.var(0, unbiased=False), atol=1e-5)


def test_fold_needs_a_traced_graph() -> None:
    model = ls.models.create("mlp", width=4, depth=1, seed=0)
    graph = symmetry_graph(model, spec={"h": ["features.fc1.weight:0", "features.fc1.bias:0", "classifier.weight:1"]})
    with pytest.raises(LandscapeError, match="traced"):
        fold_batchnorm(graph, model)


def test_unit_rows_and_map_units_match_reshapes() -> None:
    x = torch.arange(2 * 12, dtype=torch.float64).reshape(2, 12)  # axis 1: [3 channels x 2] + fixed 6
    layout = Sum((Prod((Atom("g", 3), Fixed(2))), Fixed(6)))
    rows = unit_rows(x, 1, layout, (0, 0))
    expected = x[:, :6].reshape(2, 3, 2).permute(1, 0, 2).reshape(3, 4)
    assert torch.equal(rows, expected)
    flipped = map_units(x, 1, layout, lambda t, d, g: t.flip(d))
    assert torch.equal(flipped[:, :6].reshape(2, 3, 2), x[:, :6].reshape(2, 3, 2).flip(1))
    assert torch.equal(flipped[:, 6:], x[:, 6:])
    shrunk = map_units(x, 1, layout, lambda t, d, g: t.narrow(d, 0, 2))
    assert shrunk.shape == (2, 4 + 6)


def test_resize_model_builds_narrower_layers() -> None:
    model = ls.models.create("cnn1d", width=6, norm="batch", seed=0)
    graph = symmetry_graph(model)
    keep = torch.tensor([0, 2, 5])

    class Keep(ls.symmetry.Transform):
        @property
        def source_size(self) -> int:
            return 6

        @property
        def target_size(self) -> int:
            return 3

        def apply(self, tensor: torch.Tensor, dim: int, variance: str = "out") -> torch.Tensor:
            return tensor.index_select(dim, keep)

    small = graph.apply(ls.state_of(model), {g: Keep() for g in graph.groups}, validate=False)
    resized = resize_model(model, small)
    assert resized.features.conv2.in_channels == 3 and resized.features.conv2.out_channels == 3
    assert resized.features.norm1.num_features == 3
    assert ls.models.spec_of(resized) is None and ls.models.spec_of(model) is not None
    out = resized(torch.randn(4, 40))
    assert out.shape == (4, 10)
    # the original is untouched
    assert model.features.conv2.out_channels == 6
