from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import landscape as ls
from landscape.core.errors import LandscapeError, StateMismatchError
from landscape.core.family import AffineFamily
from tests.conftest import ZOO_INPUTS, reference_metrics, zoo_data


def _zoo(name: str, seed: int):
    kwargs, _ = ZOO_INPUTS[name]
    return ls.models.create(name, seed=seed, **kwargs)


@pytest.mark.parametrize("name", sorted(ZOO_INPUTS))
@pytest.mark.parametrize("strategy", ["loop", "affine", "vmap"])
def test_every_strategy_matches_a_plain_loop_for_every_zoo_model(name: str, strategy: str, device: str) -> None:
    model, other = _zoo(name, 0), _zoo(name, 1)
    a, b = ls.state_of(model), ls.state_of(other)
    x, y = zoo_data(name)
    line = AffineFamily.line(a, b, alphas=[-0.25, 0.0, 0.4, 1.0])
    ds = ls.evaluate(model, line, (x, y), strategy=strategy, batch_size=20, device=device, progress=False)
    assert ds.attrs["strategy"] == strategy
    for k, alpha in enumerate(line.coords["alpha"]):
        loss, acc = reference_metrics(model, ls.lerp(a, b, alpha), x, y)
        assert ds.loss.values[k] == pytest.approx(loss, rel=1e-5)
        assert ds.accuracy.values[k] == pytest.approx(acc, abs=1e-12)


@pytest.mark.parametrize("strategy", ["loop", "affine", "vmap"])
@pytest.mark.parametrize("name", ["mlp", "resnet"])
def test_bn_reset_matches_update_bn_by_hand(strategy: str, name: str, device: str) -> None:
    kwargs = {"width": 12, "depth": 2, "norm": "batch"} if name == "mlp" else ZOO_INPUTS["resnet"][0]
    model, other = ls.models.create(name, seed=0, **kwargs), ls.models.create(name, seed=1, **kwargs)
    a, b = ls.state_of(model), ls.state_of(other)
    x, y = zoo_data("mlp" if name == "mlp" else "resnet", n=60)
    x_train, _ = zoo_data("mlp" if name == "mlp" else "resnet", n=50, seed=1)
    data = {"train": (x_train, torch.zeros(50, dtype=torch.long)), "test": (x, y)}
    line = AffineFamily.line(a, b, alphas=3)
    # The evaluation batch size must not matter, only the statistics pass's.
    ds = ls.evaluate(
        model,
        line,
        data,
        bn="reset",
        bn_batch_size=16,
        strategy=strategy,
        batch_size=7 if strategy == "affine" else None,
        device=device,
        progress=False,
    )
    assert ds.attrs["bn"] == "reset" and ds.attrs["bn_examples"] == 50 and ds.attrs["bn_batch_size"] == 16
    for k, alpha in enumerate(line.coords["alpha"]):
        loss, _ = reference_metrics(model, ls.lerp(a, b, alpha), x, y, bn_x=x_train, bn_batch=16)
        assert ds.loss.sel(split="test").values[k] == pytest.approx(loss, rel=1e-5)


def test_plane_is_evaluated_with_the_affine_strategy_and_matches_the_loop() -> None:
    model = _zoo("mlp", 0)
    a = ls.state_of(model)
    d1, d2 = ls.random_direction(a, seed=0), ls.random_direction(a, seed=1)
    grid = AffineFamily.grid(a, (d1, d2), np.linspace(-1, 1, 3), np.linspace(-1, 1, 4))
    x, y = zoo_data("mlp")
    fast = ls.evaluate(model, grid, {"test": (x, y)}, device="cpu", progress=False)
    slow = ls.evaluate(model, grid, {"test": (x, y)}, strategy="loop", device="cpu", progress=False)
    assert fast.attrs["strategy"] == "affine" and fast.loss.dims == ("alpha", "beta", "split")
    np.testing.assert_allclose(fast.loss.values, slow.loss.values, rtol=1e-5)


def test_first_layer_flop_share_is_the_hand_count_and_decides_the_cpu_strategy() -> None:
    from landscape.core._strategies import first_layer_flop_share

    wide = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    x = torch.randn(5, 64)
    line = AffineFamily.line(ls.state_of(wide), ls.state_of(wide), 3)
    assert first_layer_flop_share(wide, line, x) == pytest.approx(64 * 32 / (64 * 32 + 32 * 4))
    y = torch.randint(0, 4, (5,))
    assert ls.evaluate(wide, line, (x, y), device="cpu", progress=False).attrs["strategy"] == "affine"
    # A cheap first layer (8 of 8 + 8 * 256 + 256 * 4 operations per example): the loop runs.
    narrow = torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.Linear(8, 256), torch.nn.Linear(256, 4))
    line = AffineFamily.line(ls.state_of(narrow), ls.state_of(narrow), 3)
    assert first_layer_flop_share(narrow, line, x[:, :1]) == pytest.approx(8 / (8 + 8 * 256 + 256 * 4))
    assert ls.evaluate(narrow, line, (x[:, :1], y), device="cpu", progress=False).attrs["strategy"] == "loop"
    embedding = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Flatten(), torch.nn.Linear(12, 3))
    line = AffineFamily.line(ls.state_of(embedding), ls.state_of(embedding), 3)
    assert first_layer_flop_share(embedding, line, torch.randint(0, 10, (2, 3))) == 0.0


def test_image_models_run_channels_last_on_the_cpu_with_the_same_numbers() -> None:
    model, other = _zoo("cnn2d", 0), _zoo("cnn2d", 1)
    x, y = zoo_data("cnn2d")
    line = AffineFamily.line(ls.state_of(model), ls.state_of(other), 3)
    ds = ls.evaluate(model, line, (x, y), device="cpu", progress=False)
    assert ds.attrs["memory_format"] == "channels_last"
    for k, alpha in enumerate(line.coords["alpha"]):
        loss, _ = reference_metrics(model, ls.lerp(ls.state_of(model), ls.state_of(other), alpha), x, y)
        assert ds.loss.values[k] == pytest.approx(loss, rel=1e-5)
    assert model.features.conv1.weight.is_contiguous()  # the caller's model is left as it was
    mlp = _zoo("mlp", 0)
    assert ls.evaluate(mlp, [mlp], zoo_data("mlp"), progress=False).attrs["memory_format"] == "contiguous"


def test_named_points_labels_and_dims() -> None:
    model = _zoo("mlp", 0)
    x, y = zoo_data("mlp")
    ds = ls.evaluate(model, {"first": model, "second": _zoo("mlp", 1)}, (x, y), device="cpu", progress=False)
    assert ds.loss.dims == ("point",) and list(ds.point.values) == ["first", "second"]
    assert ds.attrs["strategy"] == "loop"


def test_custom_metrics_per_example_and_scalar() -> None:
    model = _zoo("mlp", 0)
    x, y = zoo_data("mlp")

    def max_logit(logits, targets):
        return logits.max(dim=-1).values

    def mean_logit(logits, targets):
        return logits.mean()

    ds = ls.evaluate(model, [model], (x, y), metrics=["loss", max_logit, mean_logit], batch_size=7, progress=False)
    with torch.no_grad():
        logits = model(x)
    assert float(ds.max_logit[0]) == pytest.approx(float(logits.max(dim=-1).values.double().mean()), rel=1e-6)
    assert float(ds.mean_logit[0]) == pytest.approx(float(logits.double().mean()), rel=1e-5)


def test_the_callers_model_is_not_modified_and_provenance_is_recorded(tmp_path) -> None:
    model = _zoo("resnet", 0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    path = ls.save_state(_zoo("resnet", 1), tmp_path / "b.safetensors")
    b = ls.load_state(path)
    x, y = zoo_data("resnet")
    ds = ls.evaluate(
        model,
        AffineFamily.line(ls.state_of(model), b, 3),
        {"train": (x, y), "test": (x, y)},
        bn="reset",
        progress=False,
    )
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training is False
    records = json.loads(ds.attrs["checkpoints"])
    assert b.provenance["sha256"] in [r["sha256"] for r in records]
    assert json.loads(ds.attrs["model"])["name"] == "resnet"
    assert ds.attrs["bn"] == "reset"


def test_nonfinite_weights_give_nan_loss_not_a_crash() -> None:
    model = _zoo("mlp", 0)
    bad = ls.state_of(model).copy()
    bad["classifier.bias"] = torch.full_like(bad["classifier.bias"], float("nan"))
    x, y = zoo_data("mlp")
    ds = ls.evaluate(model, AffineFamily.line(ls.state_of(model), bad, 3), (x, y), progress=False)
    assert np.isfinite(ds.loss.values[0]) and np.isnan(ds.loss.values[1:]).all()


def test_errors_name_the_argument() -> None:
    model = _zoo("mlp", 0)
    x, y = zoo_data("mlp")
    with pytest.raises(LandscapeError, match=r"evaluate\(strategy=...\)"):
        ls.evaluate(model, [model], (x, y), strategy="fast", progress=False)
    with pytest.raises(LandscapeError, match=r"evaluate\(bn=...\)"):
        ls.evaluate(model, [model], (x, y), bn="recompute", progress=False)
    with pytest.raises(LandscapeError, match=r"evaluate\(metrics=...\)"):
        ls.evaluate(model, [model], (x, y), metrics=["bleu"], progress=False)
    with pytest.raises(LandscapeError, match=r"evaluate\(metrics=...\).*holds no token sequences"):
        ls.evaluate(model, [model], (x, y), metrics=["perplexity"], progress=False)
    with pytest.raises(LandscapeError, match=r"evaluate\(batch_size=...\)"):
        ls.evaluate(model, [model], (x, y), batch_size=0, progress=False)
    with pytest.raises(StateMismatchError, match=r"in model but not in points"):
        ls.evaluate(_zoo("mlp", 0), [ls.models.create("mlp", width=12, depth=1)], (x, y), progress=False)
    with pytest.raises(LandscapeError, match=r"evaluate\(data=...\).*same number of examples"):
        ls.evaluate(model, [model], (x, y[:3]), progress=False)
    with pytest.raises(LandscapeError, match=r"bn_data.*'train' split"):
        bn_model = ls.models.create("mlp", width=8, depth=1, norm="batch")
        ls.evaluate(bn_model, [bn_model], {"test": (x, y)}, bn="reset", progress=False)
    normed = torch.nn.Sequential(torch.nn.LayerNorm(40), torch.nn.Linear(40, 10))
    with pytest.raises(
        LandscapeError, match=r"strategy='affine'.*input of the first layer '1' depends on the parameters"
    ):
        other = ls.state_of(torch.nn.Sequential(torch.nn.LayerNorm(40), torch.nn.Linear(40, 10)))
        other["0.weight"] = other["0.weight"] * 2
        ls.evaluate(normed, AffineFamily.line(ls.state_of(normed), other, 3), (x, y), strategy="affine", progress=False)


def test_cuda_request_without_cuda_is_an_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    model = _zoo("mlp", 0)
    with pytest.raises(LandscapeError, match=r"evaluate\(device=...\).*No CUDA"):
        ls.evaluate(model, [model], zoo_data("mlp"), device="cuda", progress=False)


def test_bn_reset_without_batchnorm_is_a_noted_no_op() -> None:
    model = _zoo("mlp", 0)
    x, y = zoo_data("mlp")
    with pytest.warns(UserWarning, match="no BatchNorm"):
        ds = ls.evaluate(model, [model], {"train": (x, y)}, bn="reset", progress=False)
    assert "no BatchNorm" in ds.attrs["bn_note"]
    keep = ls.evaluate(model, [model], {"train": (x, y)}, progress=False)
    assert float(ds.loss[0, 0]) == float(keep.loss[0, 0])


def test_results_round_trip_through_netcdf(tmp_path) -> None:
    model = _zoo("mlp", 0)
    ds = ls.evaluate(model, {"a": model}, {"train": zoo_data("mlp"), "test": zoo_data("mlp", seed=3)}, progress=False)
    back = ls.load_result(ls.save_result(ds, tmp_path / "r.nc"))
    np.testing.assert_array_equal(back.loss.values, ds.loss.values)
    assert back.attrs["strategy"] == ds.attrs["strategy"]


def test_auto_picks_vmap_on_cuda_and_matches_the_cpu(device: str) -> None:
    model = _zoo("resnet", 0)
    line = AffineFamily.line(ls.state_of(model), ls.state_of(_zoo("resnet", 1)), 5)
    data = zoo_data("resnet")
    here = ls.evaluate(model, line, data, device=device, progress=False)
    cpu = ls.evaluate(model, line, data, device="cpu", strategy="loop", progress=False)
    assert here.attrs["strategy"] == ("vmap" if device.startswith("cuda") else "loop")
    np.testing.assert_allclose(here.loss.values, cpu.loss.values, rtol=1e-5)
