"""Data as researchers have it: DataLoaders of dicts, several or keyword inputs, loaders too
large for memory (streamed), and language models with next-token metrics. Every path gives
the numbers of the plain in-memory computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import landscape as ls
from landscape.core import AffineFamily, LandscapeError
from landscape.core.data import Loader, TokenData
from tests.conftest import ZOO_INPUTS, zoo_data


def _zoo(name: str, seed: int) -> nn.Module:
    kwargs, _ = ZOO_INPUTS[name]
    return ls.models.create(name, seed=seed, **kwargs)


class CountingLoader:
    """A re-iterable of batches that counts how often it is read from the start."""

    def __init__(self, batches: list) -> None:
        self.batches = batches
        self.passes = 0

    def __iter__(self):
        self.passes += 1
        return iter(self.batches)


def _dict_batches(x: torch.Tensor, y: torch.Tensor, size: int, key: str = "x") -> list[dict]:
    return [{key: x[s], "labels": y[s]} for s in ls.core.batch_slices(x.shape[0], size)]


@pytest.mark.parametrize("strategy", ["loop", "affine", "vmap"])
def test_a_loader_of_dicts_in_memory_and_streamed_gives_the_in_memory_numbers(strategy: str, device: str) -> None:
    model, other = _zoo("mlp", 0), _zoo("mlp", 1)
    x, y = zoo_data("mlp", n=50)
    line = AffineFamily.line(ls.state_of(model), ls.state_of(other), [0.0, 0.5, 1.0])
    plain = ls.evaluate(model, line, (x, y), strategy=strategy, device=device, progress=False)

    class Keyword(nn.Module):  # the mlp, called with a keyword input as a Hugging Face model is
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x)

    keyword = Keyword(model)
    kline = AffineFamily.line(ls.state_of(Keyword(model)), ls.state_of(Keyword(other)), [0.0, 0.5, 1.0])
    torch_loader = torch.utils.data.DataLoader(
        [{"x": x[i], "labels": y[i]} for i in range(50)], batch_size=16, shuffle=False
    )
    held = ls.evaluate(keyword, kline, torch_loader, strategy=strategy, device=device, progress=False)
    np.testing.assert_allclose(held.loss.values, plain.loss.values, rtol=1e-6)

    counting = CountingLoader(_dict_batches(x, y, 16))
    streamed_data = Loader(counting, memory_budget=1)  # nothing fits: streamed
    run = ls.core.run_points(keyword, kline, streamed_data, strategy=strategy, device=device)
    before = counting.passes
    streamed = ls.evaluate(keyword, kline, streamed_data, strategy=strategy, device=device, progress=False)
    np.testing.assert_allclose(streamed.loss.values, plain.loss.values, rtol=1e-6)
    np.testing.assert_allclose(streamed.accuracy.values, plain.accuracy.values, atol=1e-12)
    passes = counting.passes
    list(run)
    # The run itself reads the stream once for all points (vmap: once per chunk of points).
    assert counting.passes - passes == 1
    assert before >= 1


def test_several_positional_and_keyword_inputs(device: str) -> None:
    class Masked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(6, 3)

        def forward(self, x: torch.Tensor, scale: torch.Tensor, *, mask: torch.Tensor | None = None):
            out = self.lin(x) * scale[:, None]
            return out if mask is None else out + mask[:, None]

    torch.manual_seed(0)
    model = Masked()
    x, scale, mask = torch.randn(20, 6), torch.rand(20), torch.randn(20)
    y = torch.randint(0, 3, (20,))
    with torch.no_grad():
        logits = model(x, scale, mask=mask)
    expected = nn.functional.cross_entropy(logits, y).item()
    positional = ls.evaluate(model, [model], ((x, scale), y), device=device, progress=False)
    assert float(positional.loss[0]) == pytest.approx(
        nn.functional.cross_entropy(model.lin(x).detach() * scale[:, None], y).item(), rel=1e-6
    )
    loader = [((x[s], scale[s]), y[s]) for s in ls.core.batch_slices(20, 8)]
    keyword = ls.evaluate(
        model,
        [model],
        Loader(loader, to_batch=lambda b: (b[0], {"mask": mask[: len(b[1])] * 0 + 0}, b[1])),
        device=device,
        progress=False,
    )
    assert float(keyword.loss[0]) == pytest.approx(float(positional.loss[0]), rel=1e-6)
    dict_inputs = ls.evaluate(
        model, [model], ({"x": x, "scale": scale, "mask": mask}, y), device=device, progress=False
    )
    assert float(dict_inputs.loss[0]) == pytest.approx(expected, rel=1e-6)


def test_loader_errors_name_the_fields() -> None:
    model = _zoo("mlp", 0)
    x, y = zoo_data("mlp", n=8)
    with pytest.raises(LandscapeError, match=r"evaluate\(data=...\).*target field 'target'.*fields \['x', 'labels'\]"):
        ls.evaluate(model, [model], Loader(_dict_batches(x, y, 4), targets="target"), progress=False)
    with pytest.raises(LandscapeError, match=r"evaluate\(data=...\).*input fields \['pixels'\]"):
        ls.evaluate(model, [model], Loader(_dict_batches(x, y, 4), inputs=["pixels"]), progress=False)
    with pytest.raises(LandscapeError, match=r"evaluate\(data=...\).*to_batch"):
        ls.evaluate(model, [model], Loader(["not a batch"]), progress=False)


# -- language models ------------------------------------------------------------------------
transformers = pytest.importorskip("transformers")


def _tiny_lm(arch: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    if arch == "llama":
        config = transformers.LlamaConfig(
            vocab_size=40,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=64,
            pad_token_id=0,
        )
        return transformers.LlamaForCausalLM(config).eval()
    config = transformers.GPT2Config(vocab_size=40, n_embd=16, n_layer=2, n_head=2, n_positions=64, pad_token_id=0)
    return transformers.GPT2LMHeadModel(config).eval()


def _sequences(n: int = 9, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randint(1, 40, (int(torch.randint(2, 12, (1,), generator=g)),), generator=g).tolist() for _ in range(n)
    ]


def _hand_lm_loss(model: nn.Module, state, sequences: list[list[int]]) -> float:
    """Each sequence alone, unpadded, through the model's own labels= loss, token-weighted."""
    module = _tiny_lm("llama" if isinstance(model, transformers.LlamaForCausalLM) else "gpt2", 0)
    module.load_state_dict(state, strict=False)
    total = tokens = 0.0
    with torch.no_grad():
        for seq in sequences:
            ids = torch.tensor([seq])
            out = module(input_ids=ids, labels=ids)
            total += float(out.loss) * (len(seq) - 1)
            tokens += len(seq) - 1
    return total / tokens


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_lm_loss_and_perplexity_along_a_line_match_the_models_own_loss(arch: str, device: str) -> None:
    a_model, b_model = _tiny_lm(arch, 0), _tiny_lm(arch, 1)
    a, b = ls.state_of(a_model), ls.state_of(b_model)
    sequences = _sequences()
    data = TokenData({"test": sequences}, pad_id=0)
    curve = ls.connectivity.interpolate(
        a_model,
        a,
        b,
        data,
        alphas=[0.0, 0.5, 1.0],
        metrics=["lm_loss", "perplexity", "next_token_accuracy"],
        batch_size=4,
        device=device,
        progress=False,
    )
    for k, alpha in enumerate([0.0, 0.5, 1.0]):
        expected = _hand_lm_loss(a_model, ls.lerp(a, b, alpha), sequences)
        got = float(curve.lm_loss.sel(split="test")[k])
        assert got == pytest.approx(expected, rel=1e-5)
        assert float(curve.perplexity.sel(split="test")[k]) == pytest.approx(math.exp(expected), rel=1e-5)
    acc = curve.next_token_accuracy.values
    assert ((acc >= 0) & (acc <= 1)).all()


def test_lm_data_refuses_class_metrics_and_class_data_refuses_lm_metrics() -> None:
    model = _tiny_lm("gpt2", 0)
    data = TokenData({"test": _sequences(3)}, pad_id=0)
    with pytest.raises(LandscapeError, match=r"evaluate\(metrics=...\).*'lm_loss'"):
        ls.evaluate(model, [model], data, progress=False)


def test_the_zoo_gpt_takes_token_data_positionally() -> None:
    model = ls.models.create("gpt", dim=16, depth=1, context=16, seed=0)
    sequences = [s[:12] for s in _sequences(6)]
    sequences = [[t % 96 for t in s] for s in sequences]
    ds = ls.evaluate(model, [model], TokenData({"data": sequences}, pad_id=0), metrics=["lm_loss"], progress=False)
    total = tokens = 0.0
    with torch.no_grad():
        for seq in sequences:
            logits = model(torch.tensor([seq]))
            ce = nn.functional.cross_entropy(logits[0, :-1], torch.tensor(seq[1:]), reduction="sum")
            total, tokens = total + float(ce), tokens + len(seq) - 1
    assert float(ds.lm_loss[0]) == pytest.approx(total / tokens, rel=1e-5)


def test_token_data_from_texts_and_a_loader_of_token_dicts() -> None:
    from tests.concepts.conftest import make_tokenizer

    tokenizer = make_tokenizer()
    data = TokenData.from_texts({"train": ["hello there", "a b"], "test": ["xyz!"]}, tokenizer)
    assert data.pad_id == tokenizer.pad_token_id and data.n_tokens == {"train": 12, "test": 3}
    model = _tiny_lm("llama", 0)
    ids = torch.randint(1, 40, (4, 7))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    loader = [{"input_ids": ids[:2], "attention_mask": mask[:2]}, {"input_ids": ids[2:], "attention_mask": mask[2:]}]
    from_loader = ls.evaluate(model, [model], Loader(loader), metrics=["lm_loss"], progress=False)
    sequences = [ids[i][mask[i] == 1].tolist() for i in range(4)]
    from_tokens = ls.evaluate(
        model, [model], TokenData({"data": sequences}, pad_id=0), metrics=["lm_loss"], progress=False
    )
    assert float(from_loader.lm_loss[0]) == pytest.approx(float(from_tokens.lm_loss[0]), rel=1e-5)


def test_batches_say_which_examples_they_hold() -> None:
    model = _zoo("mlp", 0)
    x, y = zoo_data("mlp", n=23)
    rows = [out.rows for out in ls.core.run_points(model, [model], (x, y), batch_size=7)]
    assert rows == [slice(0, 7), slice(7, 14), slice(14, 21), slice(21, 23)]
    streamed = Loader(CountingLoader(_dict_batches(x, y, 10)), memory_budget=1)
    rows = [out.rows for out in ls.core.run_points(model, [model], streamed)]
    assert rows == [slice(0, 10), slice(10, 20), slice(20, 23)]
    gpt = ls.models.create("gpt", dim=16, depth=1, context=16, seed=0)
    sequences = [[1, 2], [3, 4, 5, 6], [7, 8, 9]]
    outs = list(ls.core.run_points(gpt, [gpt], TokenData({"data": sequences}, pad_id=0), batch_size=2))
    assert [out.rows for out in outs] == [[1, 2], [0]]  # longest first
    for out in outs:  # each row's targets are its own sequence
        for j, i in enumerate(out.rows):
            assert out.targets[j][: len(sequences[i])].tolist() == sequences[i]
