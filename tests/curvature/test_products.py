"""Products of the Hessian and GGN against dense matrices built by torch.autograd.functional."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import landscape as ls
from landscape.curvature import hessian_operator
from tests.conftest import zoo_data
from tests.curvature.reference import exact_ggn, exact_hessian

# Sizes whose dense Hessian takes well under a second.
TINY_ZOO = {
    "mlp": {"width": 6, "depth": 2},
    "cnn1d": {"width": 4},
    "cnn2d": {"width": 2},
    "resnet": {"base_width": 2, "blocks": (1, 1), "norm": "batch"},
    "vit": {"dim": 4, "depth": 1, "heads": 2, "patch_size": 4},
    "gpt": {"dim": 4, "depth": 1, "context": 8, "vocab_size": 12},
}
# float64 throughout: products and dense matrices agree to rounding (measured 1e-15 relative).
TOL = 1e-10


def _double_zoo(name: str, n: int = 12):
    model = ls.models.create(name, seed=0, **TINY_ZOO[name]).double()
    x, y = zoo_data(name, n=n)
    if name == "gpt":
        x, y = x % 12, y % 12
    return model, (x.double() if x.is_floating_point() else x), y


def _random_vectors(dim: int, m: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((dim, m))


def _close(a: np.ndarray, b: np.ndarray, tol: float = TOL) -> None:
    scale = max(np.abs(b).max(), 1e-300)
    assert np.abs(a - b).max() <= tol * scale, np.abs(a - b).max() / scale


@pytest.mark.parametrize("name", sorted(TINY_ZOO))
def test_hessian_products_match_the_exact_hessian_for_every_zoo_model(name: str, device: str) -> None:
    model, x, y = _double_zoo(name)
    op = hessian_operator(model, None, (x, y), device=device)
    exact = exact_hessian(model, None, x, y)
    assert op.shape == exact.shape
    v = _random_vectors(op.shape[0], 3)
    _close(op @ v, exact @ v)
    _close(op @ v[:, 0], exact @ v[:, 0])  # matvec, and the cached product used a second time


@pytest.mark.parametrize("name", ["mlp", "cnn1d", "resnet"])
def test_ggn_products_match_j_transpose_h_j_built_by_hand(name: str, device: str) -> None:
    model, x, y = _double_zoo(name)
    op = hessian_operator(model, None, (x, y), matrix="ggn", device=device)
    v = _random_vectors(op.shape[0], 4)
    _close(op @ v, exact_ggn(model, None, x, y) @ v)


@pytest.mark.parametrize("matrix", ["hessian", "ggn"])
def test_products_summed_over_data_batches_equal_the_full_batch_product(matrix: str, device: str) -> None:
    model, x, y = _double_zoo("cnn1d", n=23)
    v = _random_vectors(sum(p.numel() for p in model.parameters()), 5)
    full_operator = hessian_operator(model, None, (x, y), matrix=matrix, batch_size=23, device=device)
    assert full_operator._products.cache  # a tiny problem keeps its graphs
    full = full_operator @ v
    for batch_size in (1, 5, 22):  # 22 leaves a last batch of one example
        for cache in (True, False):  # graphs kept for every product, or rebuilt per product
            batched = hessian_operator(model, None, (x, y), matrix=matrix, batch_size=batch_size, device=device)
            batched._products.cache = cache
            _close(batched @ v, full, 1e-12)
            _close(batched @ v[:, :2], full[:, :2], 1e-12)  # a second product on the same graphs


def test_vmap_over_vectors_equals_one_vector_at_a_time(device: str) -> None:
    model, x, y = _double_zoo("mlp")
    op = hessian_operator(model, None, (x, y), device=device)
    v = _random_vectors(op.shape[0], 11)  # more than one vmap chunk
    columns = np.stack([op @ v[:, i] for i in range(v.shape[1])], axis=1)
    _close(op @ v, columns, 1e-12)
    assert op.products == 22


def test_float32_products_agree_with_the_float64_hessian(device: str) -> None:
    model = ls.models.create("mlp", seed=0, **TINY_ZOO["mlp"])
    x, y = zoo_data("mlp", n=12)
    op = hessian_operator(model, None, (x, y), device=device)
    exact = exact_hessian(model.double(), None, x.double(), y)
    v = _random_vectors(op.shape[0], 2)
    # float32 products of float32 weights: rounding of a few hundred terms, 1e-5 relative.
    _close(op @ v, exact @ v, 1e-4)


def test_products_use_the_given_state_not_the_models_weights(device: str) -> None:
    model, x, y = _double_zoo("mlp")
    other = ls.state_of(ls.models.create("mlp", seed=5, **TINY_ZOO["mlp"]).double())
    op = hessian_operator(model, other, (x, y), device=device)
    v = _random_vectors(op.shape[0], 2)
    _close(op @ v, exact_hessian(model, other, x, y) @ v)


def test_only_trainable_parameters_are_differentiated(device: str) -> None:
    model, x, y = _double_zoo("resnet")
    model.features.stem.weight.requires_grad_(False)
    op = hessian_operator(model, None, (x, y), device=device)
    assert "features.stem.weight" not in op.keys
    assert all("running" not in k and "num_batches" not in k for k in op.keys)
    v = _random_vectors(op.shape[0], 2)
    _close(op @ v, exact_hessian(model, None, x, y) @ v)  # the reference skips frozen ones too


def test_parameters_option_gives_the_principal_submatrix(device: str) -> None:
    model, x, y = _double_zoo("mlp")
    keys = ["features.fc2.weight", "classifier.bias"]
    op = hessian_operator(model, None, (x, y), parameters=keys, device=device)
    exact = exact_hessian(model, None, x, y, keys=keys)
    v = _random_vectors(op.shape[0], 2)
    _close(op @ v, exact @ v)


def test_a_custom_loss_is_differentiated_twice(device: str) -> None:
    model, x, y = _double_zoo("mlp")

    def squared_logits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (logits**2).sum(dim=-1) + nn.functional.cross_entropy(logits, targets, reduction="none")

    op = hessian_operator(model, None, (x, y), loss=squared_logits, device=device)
    exact = exact_hessian(model, None, x, y, loss=lambda z, t: squared_logits(z, t).mean())
    v = _random_vectors(op.shape[0], 2)
    _close(op @ v, exact @ v)


class TiedLM(nn.Module):
    """An embedding shared with the output layer."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(7, 4)
        self.hidden = nn.Linear(4, 4)
        self.out = nn.Linear(4, 7, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.hidden(self.embed(tokens))))


def test_tied_weights_are_differentiated_once(device: str) -> None:
    torch.manual_seed(0)
    model = TiedLM().double()
    x, y = torch.randint(0, 7, (10,)), torch.randint(0, 7, (10,))
    op = hessian_operator(model, None, (x, y), device=device)
    assert op.keys == ["embed.weight", "hidden.weight", "hidden.bias"]
    exact = exact_hessian(model, None, x, y)  # named_parameters lists the shared tensor once
    v = _random_vectors(op.shape[0], 3)
    _close(op @ v, exact @ v)
    # A checkpoint that stores only the output layer's key (as Hugging Face does) fits too.
    state = {k: v for k, v in model.state_dict().items() if k != "embed.weight"}
    _close(hessian_operator(model, state, (x, y), device=device) @ v, exact @ v)


def test_data_with_named_splits_uses_the_chosen_split(device: str) -> None:
    model, x, y = _double_zoo("mlp", n=20)
    data = {"train": (x[:12], y[:12]), "test": (x[12:], y[12:])}
    op = hessian_operator(model, None, data, split="test", device=device)
    v = _random_vectors(op.shape[0], 1)
    _close(op @ v, exact_hessian(model, None, x[12:], y[12:]) @ v)


def test_a_token_weighted_loss_is_the_mean_over_tokens(device: str) -> None:
    """lm_loss returns (sums, token counts): the Hessian is that of sum / total tokens,
    whatever the batching."""
    from landscape.core.metrics import lm_loss

    model, x, y = _double_zoo("gpt", n=9)
    y = x.clone()
    v = _random_vectors(sum(p.numel() for p in model.parameters()), 2)

    def token_mean(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        predicted, following = logits[:, :-1].reshape(-1, logits.shape[-1]), targets[:, 1:].reshape(-1)
        return nn.functional.cross_entropy(predicted, following)

    exact = exact_hessian(model, None, x, y, loss=token_mean)
    for batch_size in (9, 4):
        op = hessian_operator(model, None, (x, y), loss=lm_loss, batch_size=batch_size, device=device)
        _close(op @ v, exact @ v)


def test_graphs_that_do_not_fit_are_rebuilt_for_every_product(monkeypatch, device: str) -> None:
    from landscape.curvature import _products

    monkeypatch.setattr(_products, "CPU_CACHE_BYTES", 0)
    model, x, y = _double_zoo("mlp")
    op = hessian_operator(model, None, (x, y), batch_size=5, device=device)
    if device == "cpu":
        assert not op._products.cache
    v = _random_vectors(op.shape[0], 2)
    _close(op @ v, exact_hessian(model, None, x, y) @ v)
