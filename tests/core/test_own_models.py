"""Researchers' own models, not from the zoo: every strategy must still match a plain loop,
fall back when it cannot be sure, and never crash where the loop works."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import landscape as ls
from landscape.core.errors import LandscapeError
from landscape.core.family import AffineFamily
from tests.conftest import reference_metrics


class StdConv(nn.Conv1d):
    """Weight-standardised convolution (BiT/timm): not linear in its weight."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean(dim=(1, 2), keepdim=True)) / (w.std(dim=(1, 2), keepdim=True) + 1e-5)
        return nn.functional.conv1d(x, w, self.bias, self.stride, self.padding)


class StdConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = StdConv(1, 4, 5)
        self.head = nn.Linear(4 * 36, 10)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x[:, None])).flatten(1))


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.mix = nn.Linear(8, 8)
        self.head = nn.Linear(8, 20, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, tokens):
        return self.head(torch.tanh(self.mix(self.emb(tokens))))


class AttributeReader(nn.Module):
    """Reads the first layer's attributes in forward, as CLIP-style code does."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(40, 16)
        self.fc2 = nn.Linear(16, 10)

    def forward(self, x):
        x = x.to(self.fc1.weight.dtype).view(-1, self.fc1.in_features)
        return self.fc2(torch.relu(self.fc1(x)))


def _line_matches_loop(model_a, model_b, x, y, **kwargs):
    """The loss along a line equals a hand loop; on the CPU, so that the strategy is the CPU's."""
    a, b = ls.state_of(model_a), ls.state_of(model_b)
    family = AffineFamily.line(a, b, alphas=[0.0, 0.3, 0.5, 1.0, 1.4])
    ds = ls.evaluate(model_a, family, (x, y), progress=False, **{"device": "cpu", **kwargs})
    for k, alpha in enumerate(family.coords["alpha"]):
        loss, _ = reference_metrics(model_a, family.state(k), x, y)
        assert float(ds.loss[k]) == pytest.approx(loss, rel=1e-5), (alpha, ds.attrs["strategy"])
    return ds


def _data(n=40, shape=(40,), classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)


def test_a_subclass_of_conv_that_is_not_linear_falls_back() -> None:
    torch.manual_seed(0)
    ds = _line_matches_loop(StdConvNet(), StdConvNet(), *_data())
    assert ds.attrs["strategy"] == "loop"


def test_parameters_before_the_first_layer_that_vary_only_between_family_points() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.LayerNorm(40), nn.Linear(40, 10))
    x, y = _data()
    surface = ls.connectivity.random_plane(model, model, (x, y), resolution=3, ignore=(), progress=False)
    family_loss = surface.loss.values.reshape(-1)
    origin = ls.state_of(model)
    d1, d2 = (ls.random_direction(origin, ignore=(), seed=s) for s in (0, 1))
    grid = AffineFamily.grid(origin, (d1, d2), surface.alpha.values, surface.beta.values)
    for k in range(len(grid)):
        assert family_loss[k] == pytest.approx(reference_metrics(model, grid.state(k), x, y)[0], rel=1e-5)


@pytest.mark.parametrize("strategy", ["auto", "loop", "vmap", "affine"])
def test_tied_weights_with_both_keys_or_only_one(strategy: str) -> None:
    torch.manual_seed(0)
    a_model, b_model = Tied(), Tied()
    tokens = torch.randint(0, 20, (30, 6))
    targets = torch.randint(0, 20, (30, 6))
    a, b = ls.state_of(a_model), ls.state_of(b_model)
    assert "head.weight" in a
    b_hf = {k: v for k, v in b.items() if k != "head.weight"}  # as save_pretrained stores it
    listed = "loop" if strategy == "affine" else strategy  # a list of two states has nothing to share
    ds = ls.evaluate(a_model, {"a": a, "b": b_hf}, (tokens, targets), strategy=listed, progress=False)
    assert float(ds.loss[1]) == pytest.approx(reference_metrics(a_model, b, tokens, targets)[0], rel=1e-5)
    line = ls.evaluate(
        a_model, AffineFamily.line(a, b, [0.0, 0.5, 1.0]), (tokens, targets), strategy=strategy, progress=False
    )
    middle = {k: torch.lerp(a[k], b[k], 0.5) for k in a}
    assert float(line.loss[1]) == pytest.approx(reference_metrics(a_model, middle, tokens, targets)[0], rel=1e-5)


def test_code_that_reads_the_first_layers_attributes() -> None:
    torch.manual_seed(0)
    ds = _line_matches_loop(AttributeReader(), AttributeReader(), *_data())
    assert ds.attrs["strategy"] == "affine"


def test_parametrised_first_layer_falls_back() -> None:
    torch.manual_seed(0)

    def make():
        layer = nn.utils.parametrizations.weight_norm(nn.Linear(40, 16))
        return nn.Sequential(layer, nn.ReLU(), nn.Linear(16, 10))

    ds = _line_matches_loop(make(), make(), *_data())
    assert ds.attrs["strategy"] == "loop"


def test_batchnorm_without_running_statistics() -> None:
    torch.manual_seed(0)

    def make():
        return nn.Sequential(
            nn.Linear(40, 16), nn.BatchNorm1d(16, track_running_stats=False), nn.ReLU(), nn.Linear(16, 10)
        )

    _line_matches_loop(make(), make(), *_data())


def test_float64_models_are_evaluated_in_float64() -> None:
    torch.manual_seed(0)
    model = ls.models.create("mlp", width=8, depth=1, seed=0).double()
    x, y = _data()
    x = x.double()
    ds = ls.evaluate(model, [model], (x, y), progress=False)
    with torch.no_grad():
        exact = nn.functional.cross_entropy(model(x), y).item()
    assert float(ds.loss[0]) == pytest.approx(exact, rel=1e-13)
    trained = ls.train(model, {"train": (x, y)}, epochs=1, batch_size=20, progress=False)
    assert trained.state["classifier.weight"].dtype == torch.float64


def test_negative_labels_are_refused() -> None:
    model = ls.models.create("mlp", width=8, depth=1)
    x, y = _data()
    y[0] = -100
    with pytest.raises(LandscapeError, match=r"class indices >= 0.*-100"):
        ls.evaluate(model, [model], (x, y), progress=False)


def test_data_that_does_not_fit_the_model_is_named() -> None:
    model = ls.models.create("mlp", width=8, depth=1)
    with pytest.raises(LandscapeError, match=r"evaluate\(data=...\).*shape \(64,\)"):
        ls.evaluate(model, [model], _data(shape=(64,)), progress=False)


def test_integer_buffers_follow_lerp_at_the_midpoint() -> None:
    a = {"w": torch.zeros(2), "n": torch.tensor(1)}
    b = {"w": torch.ones(2), "n": torch.tensor(2)}
    line = AffineFamily.line(a, b, [0.0, 0.5, 1.0])
    assert int(line.state(1)["n"]) == int(ls.lerp(a, b, 0.5)["n"]) == 2
    assert int(line.stacked([1])["n"][0]) == 2


def test_provenance_hash_follows_in_place_edits(tmp_path) -> None:
    model = ls.models.create("mlp", width=8, depth=1, seed=0)
    state = ls.load_state(ls.save_state(model, tmp_path / "m.safetensors"))
    before = state.provenance["sha256"]
    edited = state.copy()
    edited["classifier.bias"].add_(1.0)  # shares storage with state: both changed
    ds = ls.evaluate(model, [edited], _data(), progress=False)
    import json

    recorded = json.loads(ds.attrs["checkpoints"])[0]["sha256"]
    assert recorded != before and recorded == ls.core.state.content_hash(edited)


def test_init_state_refuses_models_it_cannot_reinitialise() -> None:
    class WithBareParameter(nn.Module):
        def __init__(self):
            super().__init__()
            self.pos = nn.Parameter(torch.randn(4))
            self.attention = nn.MultiheadAttention(4, 1)

    from landscape.training import init_state

    with pytest.raises(LandscapeError, match=r"init_state\(model=...\).*\['pos'\]"):
        init_state(WithBareParameter(), 0)

    class AttentionOnly(nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = nn.MultiheadAttention(4, 1)

    first, second = init_state(AttentionOnly(), 0), init_state(AttentionOnly(), 1)
    assert not torch.equal(first["attention.in_proj_weight"], second["attention.in_proj_weight"])
    assert np.isclose(float(first["attention.in_proj_bias"].abs().sum()), 0.0)  # reset to zeros by torch
