"""Random-teacher distillation: initialisation, head, loss, frozen teacher, history, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import landscape as ls
from landscape.core.errors import LandscapeError
from landscape.distillation import (
    DINOHead,
    distill_random_teacher,
    distillation_loss,
    gaussian_inputs,
    interpolated_init,
)

TINY = {"hidden_dims": (16, 16), "bottleneck_dim": 8, "out_dim": 32, "batch_size": 64}


@pytest.fixture(scope="module")
def data():
    return ls.datasets.mnist1d(n_train=96, n_test=48)


@settings(max_examples=20, deadline=None)
@given(alpha=st.floats(0.0, 1.0), scale=st.floats(0.01, 3.0))
def test_variance_preserving_init_keeps_the_std_for_every_alpha(alpha, scale) -> None:
    gen = torch.Generator().manual_seed(0)
    teacher = {"w": torch.randn(200, 200, generator=gen) * scale}
    fresh = {"w": torch.randn(200, 200, generator=gen) * scale}
    student = interpolated_init(teacher, fresh, alpha)
    assert float(student["w"].std()) == pytest.approx(scale, rel=0.02)
    expected = ((1 - alpha) * teacher["w"].double() + alpha * fresh["w"].double()) / math.sqrt(
        alpha**2 + (1 - alpha) ** 2
    )
    torch.testing.assert_close(student["w"], expected.float())


def test_init_endpoints_and_zoo_model_std() -> None:
    a = ls.state_of(ls.models.create("cnn1d", seed=0))
    b = ls.state_of(ls.models.create("cnn1d", seed=1))
    assert all(torch.equal(interpolated_init(a, b, 0.0)[k], a[k]) for k in a)
    assert all(torch.equal(interpolated_init(a, b, 1.0)[k], b[k]) for k in a)
    mid = interpolated_init(a, b, 0.5)
    for k in (k for k in a if a[k].numel() >= 1000):  # large tensors of a real initialisation keep their spread
        assert float(mid[k].std()) == pytest.approx(float(a[k].std()), rel=0.05), k
    with pytest.raises(LandscapeError, match="alpha"):
        interpolated_init(a, b, 1.5)


def test_head_matches_a_plain_computation() -> None:
    head = DINOHead(6, 10, hidden_dims=(5, 4), bottleneck_dim=3, seed=0)
    x = torch.randn(7, 6)
    h = x
    for i in range(2):
        lin = head.mlp[i].lin
        h = F.gelu(h @ lin.weight.T + lin.bias)
    lin1, lin2 = head.last_layer.lin1, head.last_layer.lin2
    z = h @ lin1.weight.T + lin1.bias
    z = z / z.norm(dim=1, keepdim=True)
    w = lin2.weight / lin2.weight.norm(dim=1, keepdim=True)
    torch.testing.assert_close(head(x), z @ w.T)
    assert lin2.bias is None and float(lin1.bias.detach().abs().sum()) == 0.0
    # weight normalisation: rescaling the output weights' rows changes nothing
    with torch.no_grad():
        lin2.weight.mul_(torch.rand(10, 1) + 0.5)
    torch.testing.assert_close(head(x), z @ w.T)
    # trunc-normal(0.02) initialisation, seeded
    assert float(DINOHead(6, 10, hidden_dims=(500,), seed=3).mlp[0].lin.weight.detach().std()) == pytest.approx(
        0.02, rel=0.05
    )
    assert torch.equal(
        DINOHead(6, 10, seed=3, hidden_dims=(4,)).mlp[0].lin.weight,
        DINOHead(6, 10, seed=3, hidden_dims=(4,)).mlp[0].lin.weight,
    )


def test_loss_equals_a_plain_computation() -> None:
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 9, generator=gen), torch.randn(5, 9, generator=gen)
    expected = 0.0
    for i in range(5):
        p = [math.exp(v) for v in t[i].tolist()]
        q = [math.exp(v / 0.5) for v in s[i].tolist()]
        expected += -sum(pj / sum(p) * math.log(qj / sum(q)) for pj, qj in zip(p, q))
    got = distillation_loss(s, t, student_temperature=0.5)
    assert float(got) == pytest.approx(expected / 5, rel=1e-5)


def test_teacher_is_bit_identical_after_distillation(data) -> None:
    result = distill_random_teacher(
        "cnn1d:width=4", data, epochs=2, probe_every=1, probes=["knn"], progress=False, **TINY
    )
    model = ls.models.create("cnn1d", width=4, input_shape=[40], num_classes=10, seed=0)
    init = ls.state_of(model)
    for k in init:
        assert torch.equal(result.teacher[k], init[k]), k
        assert torch.equal(result.final_teacher[k], init[k]), k
    head = DINOHead(160 // 8, 32, hidden_dims=(16, 16), bottleneck_dim=8, seed=0).state_dict()
    for k, v in head.items():
        assert torch.equal(result.teacher_head[k], v), k
    # The student moved (its encoder only; the classifier is the teacher's).
    assert any(not torch.equal(result.student[k], init[k]) for k in init if k.startswith("features"))
    assert all(torch.equal(result.student[k], init[k]) for k in init if k.startswith("classifier"))
    h = result.history
    assert h.accuracy.dims == ("epoch", "net", "probe", "scaling")
    assert list(h.epoch.values) == [0, 1, 2] and np.isfinite(h.loss.values).all()
    # at epoch 0 the student is the teacher (alpha = 1e-10 vanishes in float32 for these weights)
    np.testing.assert_array_equal(h.accuracy.sel(epoch=0, net="student"), h.accuracy.sel(epoch=0, net="teacher"))


def test_same_seed_same_numbers_and_saved_epochs(data) -> None:
    kwargs = {"epochs": 2, "probe_every": 2, "probes": ["knn"], "scalings": ["raw"], "progress": False, **TINY}
    a = distill_random_teacher("cnn1d:width=4", data, save_epochs=[0, 1], alpha_init=0.3, **kwargs)
    b = distill_random_teacher("cnn1d:width=4", data, save_epochs=[0, 1], alpha_init=0.3, **kwargs)
    np.testing.assert_array_equal(a.history.loss.values, b.history.loss.values)
    assert sorted(a.students) == [0, 1]
    assert all(torch.equal(a.student[k], b.student[k]) for k in a.student)
    assert np.isnan(a.history.accuracy.sel(epoch=1)).all() and not np.isnan(a.history.accuracy.sel(epoch=2)).any()
    # alpha_init = 0.3 starts away from the teacher
    assert any(not torch.equal(a.students[0][k], a.teacher[k]) for k in a.teacher if k.startswith("features"))


def test_gaussian_inputs_match_the_moments() -> None:
    x = torch.randn(2000, 3) * torch.tensor([1.0, 2.0, 0.5]) + torch.tensor([0.0, 1.0, -1.0])
    noise = gaussian_inputs(x, seed=0)
    assert noise.shape == x.shape
    torch.testing.assert_close(noise.mean(0), x.mean(0), atol=0.1, rtol=0)
    torch.testing.assert_close(noise.std(0), x.std(0), atol=0.1, rtol=0)
    assert torch.equal(noise, gaussian_inputs(x, seed=0))


def test_bad_input(data) -> None:
    with pytest.raises(LandscapeError, match="alpha_init"):
        distill_random_teacher("cnn1d", data, epochs=1, alpha_init=2.0, progress=False)
    with pytest.raises(LandscapeError, match="epochs"):
        distill_random_teacher("cnn1d", data, epochs=0, progress=False)
    with pytest.raises(LandscapeError, match="'train' and 'test'"):
        distill_random_teacher("cnn1d", data.train, epochs=1, progress=False)
    with pytest.raises(LandscapeError, match="features"):
        distill_random_teacher(torch.nn.Linear(40, 10), data, epochs=1, progress=False)
    with pytest.raises(LandscapeError, match="inputs"):
        distill_random_teacher("cnn1d", data, epochs=1, inputs=torch.randn(5, 3), progress=False)
    with pytest.raises(LandscapeError, match="save_epochs"):
        distill_random_teacher("cnn1d", data, epochs=1, save_epochs=[3], progress=False)


def test_linear_basins_dims_resume_and_refusal(data, tmp_path) -> None:
    from landscape.distillation import basin_starts, linear_basins

    model = ls.models.create("cnn1d", width=4, seed=0)
    train = {"epochs": 1, "batch_size": 32}
    starts = basin_starts(model, data, steps=[2], train=train, progress=False)
    assert list(starts) == ["init", "supervised@2"]
    assert all(torch.equal(starts["init"][k], ls.state_of(model)[k]) for k in starts["init"])
    first = linear_basins(model, starts, data, train=train, alphas=3, out=tmp_path, progress=False)
    assert first.error_barrier.dims == ("start", "split") and first.stable.dtype == bool
    assert list(first.start.values) == ["init", "supervised@2"]
    again = linear_basins(model, starts, data, train=train, alphas=3, out=tmp_path, progress=False)  # from disk
    np.testing.assert_array_equal(again.error_barrier.values, first.error_barrier.values)
    with pytest.raises(LandscapeError, match="alphas: 3 there, 5 now"):
        linear_basins(model, starts, data, train=train, alphas=5, out=tmp_path, progress=False)
