from __future__ import annotations

import numpy as np
import pytest
import torch

import landscape as ls
from landscape.core.errors import LandscapeError
from landscape.core.state import flatten
from landscape.training import init_state, lr_at


@pytest.fixture(scope="module")
def data():
    return ls.datasets.mnist1d(n_train=256, n_test=64)


def test_same_seeds_same_numbers_and_seeds_are_independent(data) -> None:
    model = ls.models.create("mlp", width=16, depth=1)
    run = lambda **kw: ls.train(model, data, epochs=2, batch_size=32, progress=False, **kw)  # noqa: E731
    a, b = run(init_seed=0, data_seed=0), run(init_seed=0, data_seed=0)
    assert torch.equal(flatten(a.state), flatten(b.state))
    other_order = run(init_seed=0, data_seed=1)
    other_init = run(init_seed=1, data_seed=0)
    assert not torch.equal(flatten(a.state), flatten(other_order.state))
    assert not torch.equal(flatten(a.state), flatten(other_init.state))


def test_checkpoints_and_history(data) -> None:
    model = ls.models.create("mlp", width=16, depth=1, seed=0)
    result = ls.train(model, data, epochs=2, batch_size=64, checkpoint_steps=[0, 3, 8], progress=False)
    assert sorted(result.checkpoints) == [0, 3, 8]
    assert torch.equal(flatten(result.checkpoints[0]), flatten(ls.state_of(model)))
    assert torch.equal(flatten(result.checkpoints[8]), flatten(result.state))
    assert result.history.sizes["step"] == 8 and list(result.history.eval_step.values) == [4, 8]
    # Starting from a checkpoint starts exactly there: zero steps of change at step 0 of the new run.
    again = ls.train(
        model, data, steps=1, batch_size=64, start=result.checkpoints[3], checkpoint_steps=[0], progress=False
    )
    assert torch.equal(flatten(again.checkpoints[0]), flatten(result.checkpoints[3]))


def test_the_callers_model_is_untouched(data) -> None:
    model = ls.models.create("mlp", width=16, depth=1, seed=0)
    before = flatten(ls.state_of(model))
    ls.train(model, data, epochs=1, progress=False)
    assert torch.equal(before, flatten(ls.state_of(model)))


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_masked_weights_stay_exactly_zero(data, optimizer: str) -> None:
    model = ls.models.create("mlp", width=16, depth=1, seed=0)
    weight = model.features.fc1.weight
    mask = {"features.fc1.weight": torch.rand(weight.shape, generator=torch.Generator().manual_seed(0)) > 0.5}
    result = ls.train(model, data, epochs=2, optimizer=optimizer, lr=0.01, weight_decay=0.1, mask=mask, progress=False)
    trained = result.state["features.fc1.weight"]
    assert torch.all(trained[~mask["features.fc1.weight"]] == 0)
    assert torch.any(trained[mask["features.fc1.weight"]] != weight[mask["features.fc1.weight"]])


def test_schedules() -> None:
    assert lr_at(0, 10, lr=1.0, schedule="cosine") == pytest.approx(1.0)
    assert lr_at(10, 10, lr=1.0, schedule="cosine") == pytest.approx(0.0)
    assert lr_at(5, 10, lr=1.0, schedule="linear") == pytest.approx(0.5)
    assert lr_at(0, 10, lr=1.0, warmup=4) == pytest.approx(0.25)


def test_init_state_matches_seeded_creation() -> None:
    model = ls.models.create("cnn1d", width=4)
    assert torch.equal(flatten(init_state(model, 7)), flatten(ls.state_of(ls.models.create("cnn1d", width=4, seed=7))))


def test_bad_training_arguments(data) -> None:
    model = ls.models.create("mlp", width=8, depth=1)
    with pytest.raises(LandscapeError, match=r"train\(checkpoint_steps=...\).*between 0 and the run's 4 steps"):
        ls.train(model, data, epochs=1, batch_size=64, checkpoint_steps=[10], progress=False)
    with pytest.raises(LandscapeError, match=r"train\(optimizer=...\)"):
        ls.train(model, data, epochs=1, optimizer="lion", progress=False)
    with pytest.raises(LandscapeError, match=r"train\(mask=...\).*unknown keys"):
        ls.train(model, data, epochs=1, mask={"nope": torch.ones(1, dtype=torch.bool)}, progress=False)


def test_resuming_at_a_step_replays_schedule_and_data_order_exactly(data) -> None:
    model = ls.models.create("mlp", width=16, depth=1, seed=0)
    # Without momentum the optimiser has no state, so a resumed run must match to the bit.
    options = dict(batch_size=48, lr=0.1, momentum=0.0, schedule="cosine", data_seed=3, progress=False)
    full = ls.train(model, data, steps=13, checkpoint_steps=[7], **options)  # 256 examples: 6 batches an epoch
    resumed = ls.train(model, data, steps=6, start=full.checkpoints[7], resume_step=7, **options)
    assert torch.equal(flatten(resumed.state), flatten(full.state))
    np.testing.assert_allclose(resumed.history.lr.values, full.history.lr.values[7:])


def _plain_loop(model, data, *, steps, batch_size, lr, momentum, data_seed):
    """What a researcher writes: SGD with momentum over a fixed data order, dropout seeded as
    landscape seeds it (data_seed + 1); per-step losses, and test loss/accuracy per epoch."""
    import copy

    work = copy.deepcopy(model).train()
    opt = torch.optim.SGD(work.parameters(), lr=lr, momentum=momentum)
    (x, y), (xt, yt) = data.train, data.test
    n, order_gen, losses, tests = x.shape[0], torch.Generator().manual_seed(data_seed), [], []
    torch.manual_seed(data_seed + 1)
    while len(losses) < steps:
        order = torch.randperm(n, generator=order_gen)
        for start in range(0, n, batch_size):
            if len(losses) == steps:
                break
            idx = order[start : start + batch_size]
            loss = torch.nn.functional.cross_entropy(work(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        work.eval()
        with torch.no_grad():
            logits = work(xt)
            tests.append(
                (torch.nn.functional.cross_entropy(logits, yt).item(), (logits.argmax(1) == yt).float().mean().item())
            )
        work.train()
    return work, np.array(losses), np.array(tests)


def test_train_equals_a_plain_pytorch_loop(data) -> None:
    model = ls.models.create("mlp", width=16, depth=1, seed=0)
    result = ls.train(model, data, epochs=2, batch_size=32, lr=0.05, momentum=0.9, data_seed=3, progress=False)
    work, losses, tests = _plain_loop(model, data, steps=16, batch_size=32, lr=0.05, momentum=0.9, data_seed=3)
    np.testing.assert_allclose(flatten(result.state).numpy(), flatten(ls.state_of(work)).numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(result.history.loss.values, losses, rtol=1e-6)
    np.testing.assert_allclose(result.history.test_loss.values, tests[:, 0], rtol=1e-5)
    np.testing.assert_allclose(result.history.test_accuracy.values, tests[:, 1], rtol=0, atol=1e-12)
    assert result.history.attrs["precision"] == "float32"


def test_no_host_synchronisation_per_step(data, monkeypatch) -> None:
    """Reading a device value per step (``.item()``, ``float(t)``) stalls a GPU's queue: the
    count of reads must not grow with the number of steps (evaluations are per epoch)."""
    model = ls.models.create("mlp", width=16, depth=1, seed=0)
    counts = []
    for epochs in (1, 3):
        reads = [0]
        original_item, original_float = torch.Tensor.item, torch.Tensor.__float__

        def item(self, _original=original_item, reads=reads):
            reads[0] += 1
            return _original(self)

        def as_float(self, _original=original_float, reads=reads):
            reads[0] += 1
            return _original(self)

        monkeypatch.setattr(torch.Tensor, "item", item)
        monkeypatch.setattr(torch.Tensor, "__float__", as_float)
        ls.train(model, data.train, epochs=epochs, batch_size=16, progress=False)  # 16 steps per epoch, no test split
        monkeypatch.undo()
        counts.append(reads[0])
    assert counts[1] == counts[0], counts


def test_bfloat16_training_follows_float32_and_is_recorded(data) -> None:
    model = ls.models.create("mlp", width=32, depth=1, seed=0)
    full = ls.train(model, data, epochs=3, batch_size=32, progress=False)
    half = ls.train(model, data, epochs=3, batch_size=32, precision="bfloat16", progress=False)
    assert half.history.attrs["precision"] == "bfloat16"
    assert all(t.dtype == torch.float32 for t in half.state.values() if t.is_floating_point())  # weights stay fp32
    # bfloat16 keeps 8 bits of mantissa: the losses follow float32's to a few percent, not to the bit.
    np.testing.assert_allclose(half.history.loss.values, full.history.loss.values, rtol=0.05)
    assert not np.array_equal(half.history.loss.values, full.history.loss.values)
    with pytest.raises(LandscapeError, match=r"precision.*one of \('float32', 'tf32', 'bfloat16'\)"):
        ls.TrainConfig(precision="float16")


def test_set_num_threads_limits_torch_and_blas() -> None:
    import threadpoolctl

    before_torch, before_pools = torch.get_num_threads(), threadpoolctl.threadpool_info()
    try:
        ls.set_num_threads(1)
        assert torch.get_num_threads() == 1
        assert all(pool["num_threads"] == 1 for pool in threadpoolctl.threadpool_info())
        with pytest.raises(LandscapeError, match="set_num_threads"):
            ls.set_num_threads(0)
    finally:
        torch.set_num_threads(before_torch)
        for pool in before_pools:
            threadpoolctl.threadpool_limits(limits=pool["num_threads"], user_api=pool["user_api"])
