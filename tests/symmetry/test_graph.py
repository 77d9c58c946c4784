"""The traced symmetry graph: groups of every zoo model, transforms that keep the function,
and clear errors for what it cannot reason about."""

from __future__ import annotations

import networkx as nx
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import landscape as ls
from landscape.core.errors import LandscapeError, StateMismatchError
from landscape.symmetry import (
    Atom,
    Fixed,
    LinearMap,
    Permutation,
    Prod,
    Sum,
    SymmetryCheckError,
    UnsupportedOperationError,
    apply,
    symmetry_graph,
)

ZOO = [
    ("mlp", {"width": 6, "depth": 2}),
    ("mlp", {"width": 6, "depth": 2, "norm": "batch"}),
    ("mlp", {"width": 6, "depth": 2, "norm": "layer", "activation": "gelu"}),
    ("mlp", {"width": 16, "depth": 1, "norm": "group", "activation": "tanh"}),
    ("cnn1d", {"width": 4, "depth": 2}),
    ("cnn1d", {"width": 4, "depth": 2, "norm": "batch"}),
    ("cnn2d", {"width": 4}),
    ("cnn2d", {"width": 8, "norm": "group"}),
    ("resnet", {"base_width": 4, "norm": "batch"}),
    ("resnet", {"base_width": 4, "norm": "layer"}),
    ("resnet", {"base_width": 8, "norm": "group", "blocks": (2, 1)}),
    ("resnet", {"base_width": 4, "norm": "none", "input_shape": (40,)}),
    ("vit", {"dim": 8, "depth": 1, "heads": 2}),
    ("gpt", {"dim": 8, "depth": 2, "heads": 2, "context": 8, "vocab_size": 11}),
]


def randomized(model: nn.Module, seed: int = 0) -> ls.State:
    """The model's state with random BatchNorm statistics (so that permuting them matters)."""
    g = torch.Generator().manual_seed(seed)
    state = ls.state_of(model)
    for k, t in state.items():
        if k.endswith("running_mean"):
            state[k] = torch.randn(t.shape, generator=g)
        elif k.endswith("running_var"):
            state[k] = torch.rand(t.shape, generator=g) + 0.5
        elif k.endswith("norm1.weight") or k.endswith("norm.weight"):
            state[k] = torch.randn(t.shape, generator=g)
    return state


@pytest.mark.parametrize("name,kwargs", ZOO, ids=[f"{n}-{'-'.join(map(str, k.values()))}" for n, k in ZOO])
def test_every_zoo_model_keeps_its_function_under_every_group(name: str, kwargs: dict) -> None:
    model = ls.models.create(name, seed=0, **kwargs)
    graph = symmetry_graph(model)
    assert graph.groups, "every zoo model has hidden units to permute"
    result = graph.check(model, randomized(model), kind="max", trials=2)
    assert result.attrs["passed"] == 1
    assert float(result.deviation.max()) < 1e-9  # float64: exact up to rounding
    # permutations alone as well (the widest kinds above may skip some)
    graph.check(model, randomized(model, seed=1), kind="permutation", trials=1, seed=3)


def test_mlp_groups_axes_and_fixed_ends() -> None:
    model = ls.models.create("mlp", width=6, depth=2, seed=0)
    graph = symmetry_graph(model)
    assert [(g.name, g.size, g.kind) for g in graph.groups.values()] == [
        ("features.fc1", 6, "permutation"),
        ("features.fc2", 6, "permutation"),
    ]
    lay = graph.layouts
    assert lay["features.fc1.weight"] == (Atom("features.fc1", 6), Fixed(40))  # input axis fixed
    assert lay["features.fc2.weight"] == (Atom("features.fc2", 6), Atom("features.fc1", 6))
    assert lay["classifier.weight"] == (Fixed(10), Atom("features.fc2", 6))  # output axis fixed
    assert graph.variances["features.fc2.weight"] == ("out", "in")
    axes = {str(a) for a in graph.groups["features.fc1"].axes}
    assert axes == {"features.fc1.weight:0", "features.fc1.bias:0", "features.fc2.weight:1"}
    assert "fixed" in graph.explain("features.fc1.weight:1")


def test_resnet_residual_stream_is_one_group_per_stage() -> None:
    model = ls.models.create("resnet", base_width=4, norm="batch", blocks=(2, 1), seed=0)
    graph = symmetry_graph(model)
    stem = graph.layouts["features.stem.weight"][0]
    # the residual stream of stage 1 runs through the stem, both blocks and the stage-2 shortcut
    assert graph.layouts["features.stage1_block1.conv2.weight"][0] == stem
    assert graph.layouts["features.stage1_block2.conv2.weight"][0] == stem
    assert graph.layouts["features.stage1_block2.conv1.weight"][1] == stem
    assert graph.layouts["features.stage2_block1.shortcut.conv.weight"][1] == stem
    assert graph.layouts["features.stage1_block1.norm2.running_var"][0] == stem
    # the inner units of each block are their own group
    inner = graph.layouts["features.stage1_block1.conv1.weight"][0]
    assert isinstance(inner, Atom) and inner != stem
    # the classifier reads the pooled last stage
    assert graph.layouts["classifier.weight"][1] == graph.layouts["features.stage2_block1.conv2.weight"][0]
    assert len(graph.groups) == 5  # stem stream, 2 + 1 inner, stage-2 stream


def test_groupnorm_channels_may_only_move_within_and_between_groups_as_blocks() -> None:
    model = ls.models.create("mlp", width=16, depth=1, norm="group", seed=0)  # GroupNorm(8, 16)
    graph = symmetry_graph(model)
    lay = graph.layouts["features.fc1.weight"][0]
    assert isinstance(lay, Prod) and [c.size for c in lay.children] == [8, 2]
    state = randomized(model)
    state["features.norm1.weight"] = torch.randn(16)
    graph.check(model, state, trials=2)
    # A plain permutation that swaps two channels of different groups changes the function:
    # the structure the graph found is needed, not a convenience.
    perm = torch.arange(16)
    perm[[0, 2]] = perm[[2, 0]]
    moved = dict(state)
    moved["features.fc1.weight"] = state["features.fc1.weight"][perm]
    moved["features.fc1.bias"] = state["features.fc1.bias"][perm]
    moved["features.norm1.weight"] = state["features.norm1.weight"][perm]
    moved["features.norm1.bias"] = state["features.norm1.bias"][perm]
    moved["classifier.weight"] = state["classifier.weight"][:, perm]
    x = torch.randn(5, 40)
    ref = torch.func.functional_call(model, state, (x,))
    out = torch.func.functional_call(model, moved, (x,))
    assert (ref - out).abs().max() > 1e-3


def test_apply_matches_a_hand_built_permutation() -> None:
    model = ls.models.create("mlp", width=5, depth=2, seed=0)
    graph = symmetry_graph(model)
    state = ls.state_of(model)
    p1, p2 = torch.tensor([3, 0, 4, 1, 2]), torch.tensor([1, 2, 0, 4, 3])
    out = graph.apply(state, {"features.fc1": p1, "features.fc2": p2.numpy()})
    assert torch.equal(out["features.fc1.weight"], state["features.fc1.weight"][p1])
    assert torch.equal(out["features.fc1.bias"], state["features.fc1.bias"][p1])
    assert torch.equal(out["features.fc2.weight"], state["features.fc2.weight"][p2][:, p1])
    assert torch.equal(out["features.fc2.bias"], state["features.fc2.bias"][p2])
    assert torch.equal(out["classifier.weight"], state["classifier.weight"][:, p2])
    assert torch.equal(out["classifier.bias"], state["classifier.bias"])
    back = apply(graph, out, {"features.fc1": Permutation(p1).inverse(), "features.fc2": Permutation(p2).inverse()})
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_flatten_of_conv_channels_is_a_kronecker_product() -> None:
    model = ls.models.create("cnn1d", width=3, depth=1, seed=0)  # conv -> relu -> flatten -> linear
    graph = symmetry_graph(model)
    (g,) = graph.groups
    lay = graph.layouts["classifier.weight"][1]
    assert lay == Prod((Atom(g, 3), Fixed(lay.size // 3)))
    state = ls.state_of(model)
    p = torch.tensor([2, 0, 1])
    out = graph.apply(state, {g: p})
    length = lay.size // 3
    w = state["classifier.weight"].reshape(10, 3, length)[:, p].reshape(10, -1)
    assert torch.equal(out["classifier.weight"], w)


def test_orthogonal_and_invertible_maps_where_the_graph_allows_them() -> None:
    torch.manual_seed(0)
    linear = nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 3))
    graph = symmetry_graph(linear, torch.randn(2, 6))
    assert [g.kind for g in graph.groups.values()] == ["invertible"]
    graph.check(linear, kind="invertible", trials=3)
    m = torch.randn(5, 5, dtype=torch.float64) + 3 * torch.eye(5, dtype=torch.float64)
    moved = graph.apply(ls.state_of(linear), {"0": m})
    x = torch.randn(4, 6)
    assert torch.allclose(torch.func.functional_call(linear, moved, (x,)), linear(x), atol=1e-5)
    # attention: heads permute, the per-head query/key and value coordinates allow invertible
    # maps, the residual stream orthogonal maps that keep the all-ones vector (LayerNorm)
    vit = ls.models.create("vit", dim=8, depth=1, heads=2, seed=0)
    groups = symmetry_graph(vit).groups
    kinds = {g.name: g.kind for g in groups.values()}
    assert kinds["features.blocks.0.attn.heads"] == "permutation"
    assert kinds["features.blocks.0.attn.qk"] == "invertible"
    assert kinds["features.blocks.0.attn.vo"] == "invertible"
    assert groups["features.blocks.0.attn.qk"].per == "features.blocks.0.attn.heads"
    assert kinds["features.patch"] == "orthogonal" and groups["features.patch"].centered
    assert kinds["features.blocks.0.fc1"] == "permutation"


def test_a_transform_the_group_does_not_allow_is_refused_or_caught_naming_the_group() -> None:
    model = ls.models.create("mlp", width=6, depth=1, seed=0)
    graph = symmetry_graph(model)
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    with pytest.raises(LandscapeError, match=r"features\.fc1.*permutation"):
        graph.apply(ls.state_of(model), {"features.fc1": q})
    with pytest.raises(SymmetryCheckError, match=r"group 'features\.fc1'"):
        graph.check(model, transforms={"features.fc1": LinearMap(q, "orthogonal")})
    with pytest.raises(LandscapeError, match=r"permutation of 0\.\.5"):
        graph.apply(ls.state_of(model), {"features.fc1": [0, 0, 1, 2, 3, 4]})
    with pytest.raises(LandscapeError, match="unknown group"):
        graph.apply(ls.state_of(model), {"nope": [0]})
    with pytest.raises(StateMismatchError):
        graph.apply(ls.state_of(ls.models.create("mlp", width=6, depth=2)), {})


class Branches(nn.Module):
    """Concatenation of two branches, grouped convolution, chunked attention, functional ops."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv1d(1, 4, 3)
        self.b = nn.Conv1d(1, 2, 3)
        self.c = nn.Conv1d(6, 6, 1)
        self.grouped = nn.Conv1d(6, 6, 3, groups=2)
        self.qkv = nn.Linear(6, 12)
        self.w = nn.Parameter(torch.randn(5, 6))
        self.scale = nn.Parameter(torch.randn(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(torch.cat([self.a(x), self.b(x)], dim=1))
        h = F.gelu(self.grouped(torch.tanh(self.c(h)))).transpose(1, 2)  # (N, T, 6)
        q, v = self.qkv(h).chunk(2, dim=-1)
        att = torch.softmax(q @ q.transpose(1, 2) / 2.0, dim=-1) @ v
        return (F.linear(att.mean(1), self.w) * self.scale).sum(-1, keepdim=True)


def test_concatenation_grouped_conv_chunk_and_functional_ops() -> None:
    torch.manual_seed(0)
    model = Branches()
    graph = symmetry_graph(model, torch.randn(2, 1, 12))
    graph.check(model, kind="max", trials=3)
    # the concatenated channel axis is the sum of the two branches' groups
    assert graph.layouts["c.weight"][1] == Sum((Atom("a", 4), Atom("b", 2)))
    # a grouped convolution: groups move as blocks, one permutation within every group
    assert isinstance(graph.layouts["grouped.weight"][0], Prod) and graph.layouts["grouped.weight"][0].size == 6
    # chunk: the query half (compared with itself) allows orthogonal maps, the value half any
    kinds = {g.name: g.kind for g in graph.groups.values()}
    assert (kinds["qk"], kinds["vo"]) == ("orthogonal", "invertible")
    assert len(graph.groups) == 8


def test_weight_tying_allows_orthogonal_maps_only() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(11, 6)
            self.fc = nn.Linear(6, 6)

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            h = self.emb(t)
            return (h + self.fc(h)) @ self.emb.weight.t()

    model = Tied()
    graph = symmetry_graph(model, torch.randint(0, 11, (2, 4)))
    assert [g.kind for g in graph.groups.values()] == ["orthogonal"]
    graph.check(model, kind="max", trials=3)


def test_unknown_operation_is_named_and_can_be_fixed() -> None:
    class Cumsum(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(torch.cumsum(self.a(x), dim=-1))

    model = Cumsum()
    with pytest.raises(UnsupportedOperationError) as err:
        symmetry_graph(model, torch.randn(2, 4))
    message = str(err.value)
    assert "torch.cumsum" in message and "'cumsum'" in message
    assert "fixed=" in message and "unknown='fixed'" in message and "spec=" in message
    assert "While executing" not in message
    graph = symmetry_graph(model, torch.randn(2, 4), unknown="fixed")
    assert not graph.groups and graph.notes
    graph = symmetry_graph(model, torch.randn(2, 4), fixed=["cumsum"])
    assert not graph.groups


def test_untraceable_module_is_named_and_can_be_made_opaque() -> None:
    class Inner(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.b = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(x) if x.sum() > 0 else -self.b(x)

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.c, self.inner = nn.Linear(3, 4), nn.Linear(4, 4), Inner()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(self.c(torch.relu(self.a(x))))

    model = Outer()
    with pytest.raises(UnsupportedOperationError, match=r"module 'inner' cannot be traced.*fixed=\['inner'\]"):
        symmetry_graph(model, torch.randn(2, 3))
    graph = symmetry_graph(model, torch.randn(2, 3), fixed=["inner"])
    assert list(graph.groups) == ["a"]  # a's units stay free; c feeds the opaque block
    graph.check(model)
    with pytest.raises(LandscapeError, match="module names"):
        symmetry_graph(model, torch.randn(2, 3), fixed=["no.such.module"])


def test_attention_blocks_can_be_kept_fixed_while_mlp_units_align() -> None:
    model = ls.models.create("gpt", dim=8, depth=1, heads=2, context=8, vocab_size=11, seed=0)
    graph = symmetry_graph(model, fixed=["features.blocks.0.attn"])
    kinds = {g.name: g.kind for g in graph.groups.values()}
    assert "features.blocks.0.fc1" in kinds
    assert not any("attn" in name for name in kinds)
    graph.check(model)


def test_manual_spec_and_a_wrong_spec_fails_the_check_naming_the_group() -> None:
    model = ls.models.create("mlp", width=6, depth=1, seed=0)
    good = {"hidden": ["features.fc1.weight:0", "features.fc1.bias:0", "classifier.weight:1"]}
    graph = symmetry_graph(model, spec=good)
    assert graph.groups["hidden"].size == 6
    graph.check(model)
    wrong = {"hidden": ["features.fc1.weight:0", "classifier.weight:1"]}  # forgot the bias
    with pytest.raises(SymmetryCheckError, match="group 'hidden'"):
        symmetry_graph(model, spec=wrong).check(model)
    with pytest.raises(LandscapeError, match="one length"):
        symmetry_graph(model, spec={"g": ["features.fc1.weight:0", "features.fc1.weight:1"]})
    with pytest.raises(LandscapeError, match=r"param\.name:axis"):
        symmetry_graph(model, spec={"g": ["nope:0"]})


def test_fixing_a_parameter_axis_fixes_its_whole_group() -> None:
    model = ls.models.create("mlp", width=6, depth=2, seed=0)
    graph = symmetry_graph(model, fixed=["features.fc2.bias:0"])
    assert list(graph.groups) == ["features.fc1"]
    assert "fixed=" in graph.explain("features.fc2.weight:0")


def test_networkx_components_are_the_groups() -> None:
    model = ls.models.create("resnet", base_width=4, norm="batch", seed=0)
    graph = symmetry_graph(model)
    components = [c for c in nx.connected_components(graph.nx) if len(c) > 1]
    found = sorted({graph.nx.nodes[n]["group"] for n in c} for c in components)
    assert all(len(s) == 1 for s in found)
    assert sorted(next(iter(s)) for s in found) == sorted(graph.groups)
    assert graph.nx.nodes["features.stem.weight:1"]["group"] is None  # the input channels


def test_to_dataset_and_summary() -> None:
    graph = symmetry_graph(ls.models.create("mlp", width=4, depth=2, seed=0))
    ds = graph.to_dataset()
    assert ds.size.dims == ("group",) and list(ds.group.values) == ["features.fc1", "features.fc2"]
    assert "features.fc1" in graph.summary() and "SymmetryGraph(2 groups" in repr(graph)


@settings(max_examples=12, deadline=None)
@given(
    width=st.integers(2, 7),
    depth=st.integers(1, 3),
    norm=st.sampled_from(["none", "batch", "layer"]),
    seed=st.integers(0, 10_000),
)
def test_property_permuting_hidden_units_preserves_outputs(width: int, depth: int, norm: str, seed: int) -> None:
    model = ls.models.create("mlp", width=width, depth=depth, norm=norm, input_shape=(5,), num_classes=3, seed=seed)
    graph = symmetry_graph(model)
    state = randomized(model, seed)
    transforms = graph.random_transforms(seed=seed)
    moved = graph.apply(state, transforms)
    x = torch.randn(7, 5, generator=torch.Generator().manual_seed(seed))
    out = torch.func.functional_call(model.double(), {k: v.double() for k, v in moved.items()}, (x.double(),))
    ref = torch.func.functional_call(model.double(), {k: v.double() for k, v in state.items()}, (x.double(),))
    assert torch.allclose(out, ref, atol=1e-10)
    inverse = {g: t.inverse() for g, t in transforms.items()}
    back = graph.apply(moved, inverse)
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_layout_normalisation_and_sizes_of_other_widths() -> None:
    from landscape.symmetry.layout import normalize

    assert normalize(Prod((Fixed(2), Fixed(3)))) == Fixed(6)
    assert normalize(Prod((Atom("g", 4), Fixed(1)))) == Atom("g", 4)
    assert normalize(Sum((Fixed(2), Fixed(3)))) == Fixed(5)
    s = normalize(Prod((Sum((Atom("a", 2), Atom("b", 3))), Fixed(4))))
    assert s == Sum((Prod((Atom("a", 2), Fixed(4))), Prod((Atom("b", 3), Fixed(4)))))
    graph = symmetry_graph(ls.models.create("mlp", width=6, depth=2, seed=0))
    narrow = ls.state_of(ls.models.create("mlp", width=4, depth=2, seed=0))
    assert graph.sizes_of(narrow) == {"features.fc1": 4, "features.fc2": 4}
