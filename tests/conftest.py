"""Shared fixtures: tiny data and the plain reference computation every engine path must match."""

from __future__ import annotations

import copy
import os

import pytest
import torch

# Keep tests independent of a user's cache.
os.environ.setdefault("LANDSCAPE_CACHE_DIR", os.path.join(os.path.dirname(__file__), ".cache"))


def _test_devices() -> list[str]:
    """The CPU always; CUDA too when it is present or ``LANDSCAPE_TEST_DEVICE=cuda`` asks for it
    (then a machine without CUDA fails the CUDA cases instead of skipping them silently)."""
    devices = ["cpu"]
    if torch.cuda.is_available() or os.environ.get("LANDSCAPE_TEST_DEVICE", "").startswith("cuda"):
        devices.append(os.environ.get("LANDSCAPE_TEST_DEVICE") or "cuda")
    return devices


@pytest.fixture(params=_test_devices())
def device(request) -> str:
    """Every engine-path test takes this fixture, so the suite checks each available device."""
    return request.param


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread per test, restored after tests that set their own: the test models are
    tiny, and on a busy 2-core machine two OpenMP threads per op wait on each other (measured:
    a tiny backward pass 60 ms instead of under 1 ms)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


ZOO_INPUTS = {
    "mlp": ({"width": 12, "depth": 2}, (40,)),
    "cnn1d": ({"width": 6}, (40,)),
    "cnn2d": ({"width": 4}, (1, 8, 8)),
    "resnet": ({"base_width": 4, "norm": "batch"}, (1, 8, 8)),
    "vit": ({"dim": 16, "depth": 1}, (1, 8, 8)),
    "gpt": ({"dim": 16, "depth": 1, "context": 8}, None),
}


def zoo_data(name: str, n: int = 48, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random inputs and labels shaped for a zoo model."""
    g = torch.Generator().manual_seed(seed)
    if name == "gpt":
        x = torch.randint(0, 96, (n, 8), generator=g)
        return x, torch.randint(0, 96, (n, 8), generator=g)
    shape = ZOO_INPUTS[name][1]
    return torch.randn(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g)


def reference_metrics(model: torch.nn.Module, state, x: torch.Tensor, y: torch.Tensor, *, bn_x=None, bn_batch=None):
    """The obviously correct computation: load the state into a copy of the module, forward.

    With ``bn_x``, BatchNorm statistics are first recomputed by hand: the model runs in train
    mode on batches of ``bn_batch`` examples, a hook records each BN layer's input, and its
    running mean and variance become the example-weighted averages of the batch means and
    unbiased batch variances.
    """
    module = copy.deepcopy(model)
    module.load_state_dict(state)
    if bn_x is not None:
        layers = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        sums = {id(m): [0.0, 0.0, 0] for m in layers}

        def record(m, args):
            inp = args[0].double()
            dims = [0, *range(2, inp.dim())]
            entry = sums[id(m)]
            entry[0] = entry[0] + inp.mean(dim=dims) * args[0].shape[0]
            entry[1] = entry[1] + inp.var(dim=dims, unbiased=True) * args[0].shape[0]
            entry[2] += args[0].shape[0]

        hooks = [m.register_forward_pre_hook(record) for m in layers]
        module.train()
        with torch.no_grad():
            for start in range(0, bn_x.shape[0], bn_batch):
                module(bn_x[start : start + bn_batch])
        for h in hooks:
            h.remove()
        for m in layers:
            total_mean, total_var, count = sums[id(m)]
            m.running_mean.copy_(total_mean / count)
            m.running_var.copy_(total_var / count)
    module.eval()
    with torch.no_grad():
        logits = module(x)
    flat = logits.reshape(-1, logits.shape[-1])
    loss = torch.nn.functional.cross_entropy(flat.double(), y.reshape(-1)).item()
    accuracy = (flat.argmax(-1) == y.reshape(-1)).double().mean().item()
    return loss, accuracy


@pytest.fixture(scope="session")
def mnist1d_small():
    import landscape as ls

    return ls.datasets.mnist1d(n_train=400, n_test=200)
