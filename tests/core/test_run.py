"""The engine primitive: run_points returns what a hand-written loop with hooks computes, on
every strategy and device; recompute_bn is the one exact BatchNorm-statistics path."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import landscape as ls
from landscape.core import AffineFamily, LandscapeError, recompute_bn, run_points
from tests.conftest import ZOO_INPUTS, zoo_data


def _zoo(name: str, seed: int) -> nn.Module:
    kwargs, _ = ZOO_INPUTS[name]
    return ls.models.create(name, seed=seed, **kwargs)


def _by_hand(model: nn.Module, state, x: torch.Tensor, layers: list[str]):
    """Load the state into a copy, hook the layers, run one forward pass."""
    module = copy.deepcopy(model)
    module.load_state_dict(state)
    module.eval()
    seen = {}
    modules = dict(module.named_modules())
    hooks = [
        modules[n].register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o.detach().clone())) for n in layers
    ]
    with torch.no_grad():
        logits = module(x)
    for h in hooks:
        h.remove()
    return logits, seen


@pytest.mark.parametrize("strategy", ["loop", "affine", "vmap"])
@pytest.mark.parametrize("name", ["mlp", "cnn2d", "resnet"])
def test_outputs_and_features_match_a_hooked_loop(name: str, strategy: str, device: str) -> None:
    model, other = _zoo(name, 0), _zoo(name, 1)
    a, b = ls.state_of(model), ls.state_of(other)
    x, _ = zoo_data(name, n=30)
    layers = ["features", *[n for n, _ in model.named_modules() if n.endswith("act1")][:1]]
    line = AffineFamily.line(a, b, alphas=[0.0, 0.3, 1.0])
    run = run_points(model, line, x, features=layers, strategy=strategy, batch_size=11, device=device)
    assert run.strategy == strategy and run.single
    got: dict[int, dict[str, list[torch.Tensor]]] = {k: {"logits": [], **{n: [] for n in layers}} for k in range(3)}
    for out in run:
        assert out.targets is None and out.split == "data"
        for j, k in enumerate(out.points):
            got[k]["logits"].append(out.logits[j].cpu())
            for n in layers:
                got[k][n].append(out.features[n][j].cpu())
    for k, alpha in enumerate(line.coords["alpha"]):
        logits, seen = _by_hand(model, ls.lerp(a, b, alpha), x, layers)
        # float32 sums in another order (vmap, channels-last, the affine mix): relative 1e-5.
        torch.testing.assert_close(torch.cat(got[k]["logits"]), logits, rtol=1e-5, atol=1e-5)
        for n in layers:
            torch.testing.assert_close(torch.cat(got[k][n]).contiguous(), seen[n].contiguous(), rtol=1e-5, atol=1e-5)


def test_raw_outputs_keep_their_structure_and_gain_a_point_axis(device: str) -> None:
    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x):
            y = self.lin(x)
            return {"logits": y, "hidden": (y * 2, x.sum(-1))}

    model = Pair()
    states = [ls.state_of(model), ls.state_of(Pair())]
    x = torch.randn(6, 4)
    for strategy in ("loop", "vmap"):
        outs = list(run_points(model, states, x, strategy=strategy, device=device))
        assert [o.points for o in outs] == ([[0], [1]] if strategy == "loop" else [[0, 1]])
        out = outs[0]
        assert out.output["hidden"][0].shape[1:] == (6, 3) and out.output["hidden"][1].shape[1:] == (6,)
        torch.testing.assert_close(out.logits[0].cpu(), torch.func.functional_call(model, states[0], (x,))["logits"])


def test_iteration_does_not_leave_autograd_off() -> None:
    model = _zoo("mlp", 0)
    run = run_points(model, [model, model], zoo_data("mlp")[0])
    for _ in run:
        assert torch.is_grad_enabled()
    assert torch.is_grad_enabled()


def test_a_reused_module_cannot_be_captured_and_unknown_names_are_named() -> None:
    act = nn.ReLU()
    model = nn.Sequential(nn.Linear(4, 4), act, nn.Linear(4, 4), act, nn.Linear(4, 2))
    with pytest.raises(LandscapeError, match=r"run_points\(features=...\).*ran 2 times"):
        list(run_points(model, [model], torch.randn(3, 4), features=["1"]))
    with pytest.raises(LandscapeError, match=r"run_points\(features=...\).*'nope'"):
        run_points(model, [model], torch.randn(3, 4), features=["nope"])


def test_captured_values_are_not_changed_by_a_later_in_place_activation() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(inplace=True), nn.Linear(8, 2)).eval()
    x = torch.randn(20, 4)
    (out,) = list(run_points(model, [model], x, features=["1"]))
    with torch.no_grad():
        expected = model[1](model[0](x))
    assert (expected < 0).any()
    torch.testing.assert_close(out.features["1"][0], expected)


@pytest.mark.parametrize("strategy", ["loop", "affine", "vmap"])
def test_a_basis_point_is_exact_whatever_the_other_state_holds(strategy: str, device: str) -> None:
    model = _zoo("mlp", 0)
    a = ls.state_of(model)
    bad = a.copy()
    bad["classifier.weight"] = torch.full_like(a["classifier.weight"], float("nan"))
    bad["features.fc1.weight"] = torch.full_like(a["features.fc1.weight"], float("inf"))
    x, y = zoo_data("mlp")
    ds = ls.evaluate(model, AffineFamily.line(a, bad, 3), (x, y), strategy=strategy, device=device, progress=False)
    clean = ls.evaluate(model, [a], (x, y), device=device, progress=False)
    assert float(ds.loss[0]) == pytest.approx(float(clean.loss[0]), rel=1e-6)
    assert np.isnan(ds.loss.values[1:]).all()


def test_precision_options_are_recorded_and_bfloat16_stays_close() -> None:
    model, other = _zoo("mlp", 0), _zoo("mlp", 1)
    line = AffineFamily.line(ls.state_of(model), ls.state_of(other), 3)
    data = zoo_data("mlp")
    full = ls.evaluate(model, line, data, device="cpu", progress=False)
    half = ls.evaluate(model, line, data, device="cpu", precision="bfloat16", progress=False)
    assert half.attrs["precision"] == "bfloat16" and full.attrs["precision"] == "float32"
    # bfloat16 keeps 8 bits of mantissa: losses agree to about 1e-2 relative on this model.
    np.testing.assert_allclose(half.loss.values, full.loss.values, rtol=3e-2)
    with pytest.warns(UserWarning, match="tf32 has no effect on cpu"):
        tf32 = ls.evaluate(model, line, data, device="cpu", precision="tf32", progress=False)
    np.testing.assert_array_equal(tf32.loss.values, full.loss.values)
    with pytest.raises(LandscapeError, match=r"evaluate\(precision=...\)"):
        ls.evaluate(model, line, data, precision="fp8", progress=False)


def _hand_bn(model: nn.Module, state, x: torch.Tensor, batch: int) -> dict[str, torch.Tensor]:
    """Running statistics as the example-weighted average of each batch's mean and unbiased
    variance, from hooks on a copy of the model in train mode."""
    module = copy.deepcopy(model)
    module.load_state_dict(state)
    layers = {n: m for n, m in module.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    sums = {n: [0.0, 0.0, 0] for n in layers}

    def record(name):
        def hook(m, args):
            inp = args[0].double()
            dims = [0, *range(2, inp.dim())]
            sums[name][0] = sums[name][0] + inp.mean(dim=dims) * inp.shape[0]
            sums[name][1] = sums[name][1] + inp.var(dim=dims, unbiased=True) * inp.shape[0]
            sums[name][2] += inp.shape[0]

        return hook

    hooks = [m.register_forward_pre_hook(record(n)) for n, m in layers.items()]
    module.train()
    with torch.no_grad():
        for s in ls.core.batch_slices(x.shape[0], batch):
            module(x[s])
    for h in hooks:
        h.remove()
    out = {}
    for n, (mean, var, count) in sums.items():
        out[f"{n}.running_mean"] = (mean / count).float()
        out[f"{n}.running_var"] = (var / count).float()
    return out


@pytest.mark.parametrize("batch", [7, 50])
def test_recompute_bn_is_the_example_weighted_average_and_one_batch_is_one_pass(batch: int, device: str) -> None:
    model = ls.models.create("resnet", seed=0, **ZOO_INPUTS["resnet"][0])
    state = ls.state_of(_zoo("resnet", 1))
    x, _ = zoo_data("resnet", n=50)
    fresh = recompute_bn(model, state, x, batch_size=batch, device=device)
    expected = _hand_bn(model, state, x, batch)
    for key, value in expected.items():
        torch.testing.assert_close(fresh[key], value, rtol=1e-4, atol=1e-5)
    # The first BatchNorm's input does not depend on any BatchNorm: its running mean is the
    # mean over all inputs whatever the batches (50 = 7 * 7 + 1: equal batch weights would not
    # give it), and with one batch its running variance is the plain unbiased variance.
    module = copy.deepcopy(model)
    module.load_state_dict(state)
    module.eval()
    seen = []
    norm = module.features.stem_norm
    handle = norm.register_forward_pre_hook(lambda m, args: seen.append(args[0].double()))
    with torch.no_grad():
        module(x)
    handle.remove()
    inp = seen[0].transpose(0, 1).reshape(norm.num_features, -1)
    torch.testing.assert_close(fresh["features.stem_norm.running_mean"].double(), inp.mean(1), rtol=1e-5, atol=1e-6)
    if batch >= 50:
        torch.testing.assert_close(fresh["features.stem_norm.running_var"].double(), inp.var(1), rtol=1e-5, atol=1e-6)
    for key in state:
        if "running" not in key and "num_batches" not in key:
            assert torch.equal(fresh[key], state[key])
    assert state is not fresh and not torch.equal(
        fresh["features.stem_norm.running_var"], state["features.stem_norm.running_var"]
    )


def test_evaluate_refuses_labels_beyond_the_classes_and_unlabelled_data() -> None:
    model = _zoo("mlp", 0)
    x, y = zoo_data("mlp")
    y = y.clone()
    y[-1] = 10
    with pytest.raises(LandscapeError, match=r"evaluate\(data=...\).*below the model's 10 outputs; found a label 10"):
        ls.evaluate(model, [model], (x, y), progress=False)
    with pytest.raises(LandscapeError, match=r"evaluate\(data=...\).*labelled data"):
        ls.evaluate(model, [model], x, progress=False)


@pytest.mark.parametrize("name", ["mlp", "resnet", "vit", "gpt"])
def test_the_graph_strategy_replays_each_point_with_the_loops_numbers(name: str, device: str) -> None:
    model, other = _zoo(name, 0), _zoo(name, 1)
    x, y = zoo_data(name, n=50)
    line = AffineFamily.line(ls.state_of(model), ls.state_of(other), [0.0, 0.3, 1.0])
    features = ["features"]
    # 50 examples in batches of 20: two recorded shapes (20 and the last 10)
    graph = list(run_points(model, line, (x, y), strategy="graph", batch_size=20, features=features, device=device))
    loop = list(run_points(model, line, (x, y), strategy="loop", batch_size=20, features=features, device=device))
    assert [(g.points, g.size) for g in graph] == [(lp.points, lp.size) for lp in loop]
    for g, lp in zip(graph, loop):
        torch.testing.assert_close(g.logits, lp.logits, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(g.features["features"], lp.features["features"], rtol=1e-5, atol=1e-6)
    # outputs handed out are copies: the next replay does not change them
    assert not torch.equal(graph[0].logits, graph[2].logits)


def test_graph_strategy_with_bn_reset_matches_the_loop(device: str) -> None:
    model, other = _zoo("resnet", 0), _zoo("resnet", 1)
    x, y = zoo_data("resnet", n=40)
    data = {"train": (x, y), "test": (x[:30], y[:30])}
    line = AffineFamily.line(ls.state_of(model), ls.state_of(other), 3)
    graph = ls.evaluate(model, line, data, bn="reset", strategy="graph", device=device, progress=False)
    loop = ls.evaluate(model, line, data, bn="reset", strategy="loop", device=device, progress=False)
    np.testing.assert_allclose(graph.loss.values, loop.loss.values, rtol=1e-5)


def test_graph_strategy_refuses_points_it_cannot_write_in_place() -> None:
    model = _zoo("mlp", 0)
    half = {k: v.double() for k, v in ls.state_of(model).items()}
    with pytest.raises(LandscapeError, match=r"run_points\(strategy=...\).*'graph', but the points' dtypes"):
        run_points(model.double().float(), [half], zoo_data("mlp")[0], strategy="graph")


def test_a_measured_choice_times_every_candidate_once_and_is_cached() -> None:
    from landscape.core._choice import _CHOICES, clear_choices, measured_choice

    clear_choices()
    model, other = _zoo("mlp", 0), _zoo("mlp", 1)
    line = AffineFamily.line(ls.state_of(model), ls.state_of(other), 40)
    run = run_points(model, line, zoo_data("mlp", n=64)[0], batch_size=4, device="cpu")
    chosen, reason = measured_choice(run._job, 8)
    assert chosen in ("loop", "vmap", "graph") and reason.startswith("timed: loop")
    assert "vmap" in reason and "graph" in reason and len(_CHOICES) == 1
    again, why = measured_choice(run._job, 8)
    assert again == chosen and why.endswith("(cached)")
    small = run_points(model, AffineFamily.line(ls.state_of(model), ls.state_of(other), 3), zoo_data("mlp")[0])
    assert measured_choice(small._job, 8)[1].startswith("rule:")
    clear_choices()
