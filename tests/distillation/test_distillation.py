"""Random-teacher distillation against hand computations: initialisation, both heads, loss, the
training loop, EMA teacher and centering, calibrated teacher, probes, transfer, the
distillation loss as an evaluate metric, bad input."""

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
    distillation_metric,
    distillation_problem,
    gaussian_inputs,
    interpolated_init,
)
from landscape.probes import features_at, probe_features

TINY = {"hidden_dims": (16, 16), "bottleneck_dim": 8, "out_dim": 32}
TRAIN = {"batch_size": 64}


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


def _plain_head(head: DINOHead, x: torch.Tensor, *, normalise: bool) -> torch.Tensor:
    h = x
    for i in range(len(head.mlp)):
        lin = head.mlp[i].lin
        h = F.gelu(h @ lin.weight.T + lin.bias)
    lin1, lin2 = head.last_layer.lin1, head.last_layer.lin2
    z = h @ lin1.weight.T + lin1.bias
    z = z / z.norm(dim=1, keepdim=True)
    w = lin2.weight / lin2.weight.norm(dim=1, keepdim=True) if normalise else lin2.weight
    return z @ w.T


def test_head_matches_a_plain_computation() -> None:
    x = torch.randn(7, 6)
    # the default: the reference code as it runs, no weight normalisation of the last layer
    head = DINOHead(6, 10, hidden_dims=(5, 4), bottleneck_dim=3, seed=0)
    torch.testing.assert_close(head(x), _plain_head(head, x, normalise=False))
    normalised = DINOHead(6, 10, hidden_dims=(5, 4), bottleneck_dim=3, seed=0, head="weight_normalized")
    assert all(torch.equal(a, b) for a, b in zip(head.state_dict().values(), normalised.state_dict().values()))
    torch.testing.assert_close(normalised(x), _plain_head(normalised, x, normalise=True))
    # the outputs differ by each output row's norm: about 0.02 sqrt(bottleneck) at initialisation
    norms = head.last_layer.lin2.weight.norm(dim=1)
    torch.testing.assert_close(head(x), normalised(x) * norms)
    lin1, lin2 = head.last_layer.lin1, head.last_layer.lin2
    assert lin2.bias is None and float(lin1.bias.detach().abs().sum()) == 0.0
    # weight normalisation: rescaling the output weights' rows changes nothing, and everything without it
    with torch.no_grad():
        scale = torch.rand(10, 1) + 0.5
        normalised.last_layer.lin2.weight.mul_(scale)
        head.last_layer.lin2.weight.mul_(scale)
    torch.testing.assert_close(normalised(x), _plain_head(normalised, x, normalise=True))
    torch.testing.assert_close(head(x), _plain_head(head, x, normalise=False))
    with pytest.raises(LandscapeError, match=r"DINOHead\(head=...\)"):
        DINOHead(6, 10, head="wn")
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


def test_teacher_is_bit_identical_after_distillation(data, device) -> None:
    result = distill_random_teacher(
        "cnn1d:width=4",
        data,
        train={**TRAIN, "epochs": 2},
        probe_every=1,
        probes=["knn"],
        progress=False,
        device=device,
        **TINY,
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
    assert all(v.device.type == "cpu" for v in result.student.values())
    h = result.history
    assert h.accuracy.dims == ("epoch", "net", "probe", "scaling")
    assert list(h.epoch.values) == [0, 1, 2] and np.isfinite(h.loss.values).all()
    assert list(h.scaling.values) == ["standardized"] and list(h.net.values) == ["student", "teacher"]
    # at epoch 0 the student is an exact copy of the teacher
    np.testing.assert_array_equal(h.accuracy.sel(epoch=0, net="student"), h.accuracy.sel(epoch=0, net="teacher"))
    # every probe cell is the probe of the state's features, collected by hand
    for state, net in ((result.student, "student"), (result.teacher, "teacher")):
        train = features_at(result.model, state, data.train[0], layers="features", device="cpu")["features"]
        test = features_at(result.model, state, data.test[0], layers="features", device="cpu")["features"]
        expected = probe_features(train, data.train[1], test, data.test[1], probes=["knn"], device="cpu")
        assert float(h.accuracy.sel(epoch=2, net=net, probe="knn", scaling="standardized")) == pytest.approx(
            float(expected.accuracy.item()),
            abs=1 / 48 if device != "cpu" else 0,  # TF32 may move one neighbour
        )


def test_same_seed_same_numbers_and_saved_epochs(data) -> None:
    kwargs = {"train": {**TRAIN, "epochs": 2}, "probe_every": 2, "probes": ["knn"], "scalings": ["raw"]}
    kwargs |= {"progress": False, **TINY}
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
    one = {"train": {"epochs": 1}, "progress": False}
    with pytest.raises(LandscapeError, match="alpha_init"):
        distill_random_teacher("cnn1d", data, alpha_init=2.0, **one)
    with pytest.raises(LandscapeError, match=r"distill_random_teacher\(train.epochs=...\)"):
        distill_random_teacher("cnn1d", data, train={"epochs": 0}, progress=False)
    with pytest.raises(LandscapeError, match=r"distill_random_teacher\(train=...\).*steps"):
        distill_random_teacher("cnn1d", data, train={"steps": 5}, progress=False)
    with pytest.raises(LandscapeError, match="'train' and 'test'"):
        distill_random_teacher("cnn1d", data.train, **one)
    with pytest.raises(LandscapeError, match="features"):
        distill_random_teacher(torch.nn.Linear(40, 10), data, **one)
    with pytest.raises(LandscapeError, match="inputs"):
        distill_random_teacher("cnn1d", data, inputs=torch.randn(5, 3), **one)
    with pytest.raises(LandscapeError, match="save_epochs"):
        distill_random_teacher("cnn1d", data, save_epochs=[3], **one)
    with pytest.raises(LandscapeError, match=r"head=...\)"):
        distill_random_teacher("cnn1d", data, head="wn", **one)
    with pytest.raises(LandscapeError, match=r"teacher_bn=...\).*teacher_momentum"):
        distill_random_teacher("cnn1d", data, teacher_bn="from_student", **one)
    with pytest.raises(LandscapeError, match=r"transfer\['x'\]"):
        distill_random_teacher("cnn1d", data, transfer={"x": ls.datasets.digits()}, **one)
    with pytest.raises(LandscapeError, match="probe_options"):
        distill_random_teacher("cnn1d", data, probe_options={"neighbours": 3}, **one)


def test_linear_basins_dims_resume_and_refusal(data, tmp_path, device) -> None:
    from landscape.distillation import basin_starts, linear_basins

    model = ls.models.create("cnn1d", width=4, seed=0)
    train = {"epochs": 1, "batch_size": 32}
    starts = basin_starts(model, data, steps=[2], train=train, progress=False, device=device)
    assert list(starts) == ["init", "supervised@2"]
    assert all(torch.equal(starts["init"][k], ls.state_of(model)[k]) for k in starts["init"])
    first = linear_basins(model, starts, data, train=train, alphas=3, out=tmp_path, progress=False, device=device)
    assert first.error_barrier.dims == ("start", "split") and first.stable.dtype == bool
    assert list(first.start.values) == ["init", "supervised@2"]
    # each start's barrier is that of instability() on its own (the same children)
    single = ls.connectivity.instability(
        model, starts["init"], data, train=train, alphas=3, progress=False, device=device
    )
    np.testing.assert_allclose(first.error_barrier.sel(start="init").values, single.error_barrier.values)
    assert all(v.device.type == "cpu" for v in starts["supervised@2"].values())
    again = linear_basins(model, starts, data, train=train, alphas=3, out=tmp_path, progress=False)  # from disk
    np.testing.assert_array_equal(again.error_barrier.values, first.error_barrier.values)
    with pytest.raises(LandscapeError, match="alphas: 3 there, 5 now"):
        linear_basins(model, starts, data, train=train, alphas=5, out=tmp_path, progress=False)


def _hand_nets(data, *, alpha: float, head: str = "reference"):
    """Teacher and student built by hand: zoo encoders, DINO heads from seeded generators."""
    model = ls.models.create("mlp", width=8, depth=2, input_shape=[40], num_classes=10, seed=0)
    teacher_enc = ls.models.create("mlp", width=8, depth=2, input_shape=[40], num_classes=10, seed=0).features
    fresh_enc = ls.models.create("mlp", width=8, depth=2, input_shape=[40], num_classes=10, seed=1000).features
    t_head = DINOHead(8, 32, hidden_dims=(16, 16), bottleneck_dim=8, seed=0, head=head)
    f_head = DINOHead(8, 32, hidden_dims=(16, 16), bottleneck_dim=8, seed=1000, head=head)
    teacher = torch.nn.Sequential(teacher_enc, t_head)
    fresh = torch.nn.Sequential(fresh_enc, f_head)
    student = torch.nn.Sequential(
        ls.models.create("mlp", width=8, depth=2, input_shape=[40], num_classes=10, seed=0).features,
        DINOHead(8, 32, hidden_dims=(16, 16), bottleneck_dim=8, seed=0, head=head),
    )
    factor = 1 / math.sqrt(alpha**2 + (1 - alpha) ** 2)
    with torch.no_grad():
        for p_s, p_t, p_f in zip(student.parameters(), teacher.parameters(), fresh.parameters()):
            p_s.copy_((((1 - alpha) * p_t.double() + alpha * p_f.double()) * factor).float())
    return model, teacher, student


@pytest.mark.parametrize("head", ["reference", "weight_normalized"])
def test_training_loop_equals_a_plain_loop(data, head) -> None:
    """Two epochs of AdamW (weight decay on weights only, cosine schedule) written by hand,
    against distill_random_teacher on the same nets: the same student, loss by loss."""
    model, teacher, student = _hand_nets(data, alpha=0.4, head=head)
    teacher.eval()
    student.train()
    x = data.train[0]
    decay = [p for n, p in student.named_parameters() if p.dim() > 1]
    no_decay = [p for n, p in student.named_parameters() if p.dim() <= 1]
    opt = torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], lr=1e-2, weight_decay=0.1)
    gen = torch.Generator().manual_seed(0)
    losses, step, total = [], 0, 2 * 2
    for _ in range(2):
        order = torch.randperm(96, generator=gen)
        epoch_loss = 0.0
        for start in (0, 64):
            xb = x[order[start : start + 64]]
            for group in opt.param_groups:
                group["lr"] = 1e-2 * 0.5 * (1 + math.cos(math.pi * step / total))
            with torch.no_grad():
                p = F.softmax(teacher(xb), dim=-1)
            loss = -(p * F.log_softmax(student(xb), dim=-1)).sum(-1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            epoch_loss += float(loss.detach()) * xb.shape[0]
            step += 1
        losses.append(epoch_loss / 96)
    config = {"epochs": 2, "batch_size": 64, "lr": 1e-2, "weight_decay": 0.1, "schedule": "cosine"}
    result = distill_random_teacher(
        model,
        data,
        train=config,
        alpha_init=0.4,
        head=head,
        probe_every=0,
        probes=["knn"],
        progress=False,
        device="cpu",
        **TINY,
    )
    np.testing.assert_allclose(result.history.loss.values[1:], losses, rtol=1e-6)
    for k, v in student[0].state_dict().items():
        torch.testing.assert_close(result.student[f"features.{k}"], v, rtol=1e-5, atol=1e-6)
    for k, v in student[1].state_dict().items():
        torch.testing.assert_close(result.student_head[k], v, rtol=1e-5, atol=1e-6)


def test_default_student_is_an_exact_copy_of_the_teacher(data) -> None:
    result = distill_random_teacher(
        "cnn1d:width=4,norm=batch",
        data,
        train={**TRAIN, "epochs": 1},
        save_epochs=[0],
        probe_every=0,
        probes=["knn"],
        progress=False,
        **TINY,
    )
    start = result.students[0]
    assert all(torch.equal(start[k], result.teacher[k]) for k in result.teacher)  # buffers too
    assert result.history.attrs["alpha_init"] == "copy"


def test_ema_teacher_with_statistics_from_the_student_and_centering() -> None:
    """One step of the Distiller against the update rules computed by hand."""
    from landscape.distillation._loop import Distiller
    from landscape.training import TrainConfig

    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.BatchNorm1d(4))
    teacher = ls.distillation.DistillationNet(encoder, DINOHead(4, 6, hidden_dims=(3,), bottleneck_dim=2, seed=0))
    student = ls.distillation.DistillationNet(
        torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.BatchNorm1d(4)),
        DINOHead(4, 6, hidden_dims=(3,), bottleneck_dim=2, seed=1),
    )
    teacher.eval().requires_grad_(False)
    student.train()
    distiller = Distiller(
        teacher,
        student,
        TrainConfig(optimizer="adamw", lr=1e-3, weight_decay=0.0, batch_size=8),
        total_steps=1,
        student_temperature=1.0,
        teacher_temperature=1.0,
        center_momentum=0.9,
        teacher_momentum=0.99,
        teacher_bn="from_student",
        out_dim=6,
        device=torch.device("cpu"),
    )
    t_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    xb = torch.randn(8, 5)
    with torch.no_grad():
        projections = teacher(xb)
    distiller.train_step(xb)
    s_after = student.state_dict()
    for name, p in teacher.named_parameters():
        torch.testing.assert_close(p, 0.99 * t_before[name] + 0.01 * s_after[name])
    for name in ("encoder.1.running_mean", "encoder.1.running_var"):
        torch.testing.assert_close(teacher.state_dict()[name], 0.99 * t_before[name] + 0.01 * s_after[name])
    torch.testing.assert_close(distiller.center, 0.1 * projections.mean(dim=0))


def test_calibrated_teacher_is_probed_with_example_weighted_statistics(data) -> None:
    """The teacher_calibrated probe is the probe of the teacher whose BatchNorm statistics are,
    by hooks, the example-weighted means of the batch means and unbiased batch variances over
    the 96 distillation inputs in batches of the run's 40 (a last batch of 16)."""
    result = distill_random_teacher(
        "cnn1d:width=4,norm=batch",
        data,
        train={"epochs": 1, "batch_size": 40},
        probe_every=0,
        probes=["knn"],
        progress=False,
        device="cpu",
        **TINY,
    )
    work = ls.models.create("cnn1d", width=4, norm="batch", input_shape=[40], num_classes=10, seed=0)
    layers = {n: m for n, m in work.named_modules() if isinstance(m, torch.nn.BatchNorm1d)}
    sums = {n: [0.0, 0.0] for n in layers}

    def record(name):
        def hook(_module, args):
            inp = args[0].double()
            sums[name][0] = sums[name][0] + inp.mean(dim=(0, 2)) * inp.shape[0]
            sums[name][1] = sums[name][1] + inp.var(dim=(0, 2)) * inp.shape[0]

        return hook

    hooks = [m.register_forward_pre_hook(record(n)) for n, m in layers.items()]
    work.train()
    with torch.no_grad():
        for start in (0, 40, 80):
            work(data.train[0][start : start + 40])
    for h in hooks:
        h.remove()
    calibrated = dict(result.teacher)
    for n in layers:
        calibrated[f"{n}.running_mean"] = (sums[n][0] / 96).float()
        calibrated[f"{n}.running_var"] = (sums[n][1] / 96).float()
    train = features_at(result.model, calibrated, data.train[0], layers="features", device="cpu")["features"]
    test = features_at(result.model, calibrated, data.test[0], layers="features", device="cpu")["features"]
    expected = probe_features(train, data.train[1], test, data.test[1], probes=["knn"], device="cpu").accuracy
    got = result.history.accuracy.sel(epoch=0, net="teacher_calibrated", probe="knn", scaling="standardized")
    assert float(got) == float(expected.squeeze())
    # and the calibration changes the teacher's read-out (the eval-mode teacher has mean 0, variance 1)
    assert not torch.equal(
        features_at(result.model, result.teacher, data.test[0], layers="features", device="cpu")["features"], test
    )


def test_transfer_probes_the_same_encoders_on_another_data_set(data) -> None:
    other = ls.datasets.mnist1d(seed=5, n_train=80, n_test=40)
    result = distill_random_teacher(
        "cnn1d:width=4",
        data,
        train={**TRAIN, "epochs": 1},
        probe_every=0,
        probes=["knn"],
        progress=False,
        transfer={"mnist1d-seed5": other},
        device="cpu",
        **TINY,
    )
    t = result.history.transfer_accuracy
    assert t.dims == ("transfer", "epoch", "net", "probe", "scaling")
    assert list(t.transfer.values) == ["mnist1d-seed5"]
    train = features_at(result.model, result.student, other.train[0], layers="features", device="cpu")["features"]
    test = features_at(result.model, result.student, other.test[0], layers="features", device="cpu")["features"]
    expected = probe_features(train, other.train[1], test, other.test[1], probes=["knn"], device="cpu").accuracy
    assert float(t.sel(epoch=1, net="student").squeeze()) == float(expected.squeeze())
    assert 0.0 <= float(t.min()) and float(t.max()) <= 1.0


def test_distillation_loss_as_an_evaluate_metric(data, device) -> None:
    """evaluate at the student's point gives the loss computed by hand from the two nets in
    eval mode; a random line through it has the student at alpha 0."""
    result = distill_random_teacher(
        "cnn1d:width=4,norm=batch",
        data,
        train={**TRAIN, "epochs": 1},
        probe_every=0,
        probes=["knn"],
        alpha_init=0.3,
        progress=False,
        device=device,
        **TINY,
    )
    problem = distillation_problem(result, data, device=device)
    got = ls.evaluate(
        problem.model, problem.student, problem.data, metrics=problem.metrics, device=device, progress=False
    )
    student = problem.model
    teacher = type(student)(
        torch.nn.Sequential(*[m for m in ls.models.create("cnn1d", width=4, norm="batch", seed=0).features]),
        DINOHead(20, 32, hidden_dims=(16, 16), bottleneck_dim=8, seed=0),
    ).eval()
    student.eval()
    for split in ("train", "test"):
        x = data[split][0]
        with torch.no_grad():
            expected = distillation_loss(student(x), teacher(x))
        # float32 forward passes in batches vs at once; TF32 on CUDA
        tol = 1e-5 if device == "cpu" else 2e-3
        assert float(got.distillation_loss.sel(split=split).item()) == pytest.approx(float(expected), rel=tol)
    line = ls.connectivity.random_line(
        problem.model,
        problem.student,
        problem.data,
        metrics=problem.metrics,
        resolution=3,
        device=device,
        progress=False,
    )
    assert line.distillation_loss.dims == ("alpha", "split")
    np.testing.assert_allclose(
        line.distillation_loss.sel(alpha=0).values, got.distillation_loss.squeeze().values, rtol=1e-5
    )
    assert set(problem.data) == {"train", "test"} and problem.data["test"][1].shape == (48, 32)
    metric = distillation_metric(student_temperature=0.5)
    s, t = torch.randn(3, 4), torch.randn(3, 4)
    torch.testing.assert_close(metric(s, t), -(F.softmax(t, -1) * F.log_softmax(s / 0.5, -1)).sum(-1))
    with pytest.raises(LandscapeError, match="teacher's outputs"):
        metric(s, torch.tensor([0, 1, 2]))
