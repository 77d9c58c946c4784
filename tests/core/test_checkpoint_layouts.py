"""Checkpoints as researchers have them (issue 14): every layout is built in the test, saved
the way its tool saves it, and must load to exactly the model's own state dict."""

from __future__ import annotations

import argparse
import os
import pathlib

import numpy as np
import pytest
import torch
from torch import nn

import landscape as ls
from landscape.core.checkpoints import fit_to_model, safe_globals
from landscape.core.errors import CheckpointError, StateMismatchError


@pytest.fixture
def model() -> nn.Module:
    return ls.models.create("mlp", width=8, depth=1, norm="batch", seed=0)


def _same(state, reference) -> bool:
    return set(state) == set(reference) and all(torch.equal(state[k], reference[k]) for k in reference)


def _layouts(model: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """The key layouts that wrappers produce, each from the real wrapper where it runs on the CPU."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    plain = model.state_dict()
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.99))
    ema.update_parameters(model)
    return {
        "ddp": {f"module.{k}": v for k, v in plain.items()},
        "compile": {f"_orig_mod.{k}": v for k, v in plain.items()},  # test_real_torch_compile checks it
        "ddp+compile": {f"module._orig_mod.{k}": v for k, v in plain.items()},
        "compile+ddp": {f"_orig_mod.module.{k}": v for k, v in plain.items()},
        "averaged": ema.state_dict(),
        "lightning": {f"model.{k}": v for k, v in plain.items()},
        "compiled submodule": {k.replace("features.", "features._orig_mod.", 1): v for k, v in plain.items()},
    }


def test_every_wrapper_layout_loads_from_a_file_and_from_memory(model, tmp_path) -> None:
    reference = model.state_dict()
    for name, layout in _layouts(model).items():
        path = tmp_path / f"{name.replace('+', '_').replace(' ', '_')}.pt"
        torch.save(layout, path)
        from_file = ls.load_state(path, model=model)
        from_memory = ls.load_state(layout, model=model)
        fitted = fit_to_model(layout, model)
        for state in (from_file, from_memory, fitted):
            assert _same(state, reference), name
        if name != "lightning":  # a wrapper prefix is removed even without the model
            assert _same(ls.load_state(path), reference), name
    averaged = ls.load_state(_layouts(model)["averaged"])
    assert averaged.provenance["layout"] == "AveragedModel" and averaged.provenance["n_averaged"] == 1
    assert ls.load_state(_layouts(model)["ddp+compile"]).provenance["stripped_prefix"] == "module._orig_mod."


@pytest.mark.slow  # importing torch._dynamo takes ~10 s; the layout test above uses the same keys
def test_real_torch_compile_and_ddp_compile_state_dicts_load(model) -> None:
    compiled = torch.compile(model)
    assert _same(fit_to_model(compiled.state_dict(), model), model.state_dict())
    wrapped = torch.compile(torch.nn.DataParallel(model))  # DataParallel on the CPU only wraps
    assert _same(ls.load_state(wrapped.state_dict(), model=model), model.state_dict())


def test_fit_to_model_keeps_the_tensors_and_records_what_it_changed(model) -> None:
    layout = _layouts(model)["averaged"]
    fitted = fit_to_model(layout, model)
    assert all(fitted[k].data_ptr() == layout[f"module.{k}"].data_ptr() for k in fitted)  # no copies
    assert fitted.provenance["stripped_prefix"] == "module." and fitted.provenance["layout"] == "AveragedModel"
    with pytest.raises(StateMismatchError, match=r"in model but not in state: 'features.fc1.weight'"):
        fit_to_model({"module.other.weight": torch.zeros(2)}, model)


class _Tied(nn.Module):
    """An embedding shared with the output layer, as in language models."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(5, 3)
        self.head = nn.Linear(3, 5, bias=False)
        self.head.weight = self.embed.weight


def test_fit_to_model_keeps_one_key_per_tied_group() -> None:
    tied = _Tied()
    weight = torch.randn(5, 3)
    for stored in ({"embed.weight": weight}, {"head.weight": weight}, {"embed.weight": weight, "head.weight": weight}):
        for layout in (stored, {f"module._orig_mod.{k}": v for k, v in stored.items()}):
            fitted = fit_to_model(layout, tied)
            assert list(fitted) == ["embed.weight"] and torch.equal(fitted["embed.weight"], weight)


def _timm_checkpoint(model: nn.Module) -> dict[str, object]:
    """What timm's CheckpointSaver writes: weights, EMA weights, optimizer state, argparse args."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 40)).sum().backward()
    optimizer.step()
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    args = argparse.Namespace(model="mlp", lr=0.1, output=pathlib.Path("/runs/a"), epochs=np.int64(10))
    return {
        "epoch": 9,
        "arch": "mlp",
        "state_dict": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "version": 2,
        "args": args,
        "state_dict_ema": ema,
        "metric": np.float64(0.93),
    }


def test_timm_checkpoint_needs_key_and_lists_the_entries(model, tmp_path) -> None:
    torch.save(_timm_checkpoint(model), tmp_path / "timm.pth")
    with pytest.raises(CheckpointError, match=r"'state_dict' \(\d+ tensors\), 'state_dict_ema' \(\d+ tensors\)"):
        ls.load_state(tmp_path / "timm.pth")
    ema = ls.load_state(tmp_path / "timm.pth", key="state_dict_ema", model=model)
    plain = ls.load_state(tmp_path / "timm.pth", key="state_dict", model=model)
    assert torch.equal(ema["classifier.weight"], plain["classifier.weight"] + 1)
    assert ema.provenance["key"] == "state_dict_ema"
    with pytest.raises(CheckpointError, match=r"key=.*'ema', which is not there; the entries are \{'epoch'"):
        ls.load_state(tmp_path / "timm.pth", key="ema")
    with pytest.raises(CheckpointError, match=r"'args' holding a Namespace"):
        ls.load_state(tmp_path / "timm.pth", key="args")
    nested = {"run": {"weights": model.state_dict()}, "note": "x"}
    assert _same(ls.load_state(nested, key="run/weights"), model.state_dict())


def test_lightning_checkpoint_with_namespace_hyper_parameters_loads(model, tmp_path) -> None:
    checkpoint = {
        "epoch": 3,
        "global_step": 120,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "hyper_parameters": {"args": argparse.Namespace(lr=1e-3, data=pathlib.PurePosixPath("/d"), seed=np.int32(0))},
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-3, "params": [0, 1]}]}],
        "lr_schedulers": [],
        "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": 3}}}},
    }
    torch.save(checkpoint, tmp_path / "last.ckpt")
    state = ls.load_state(tmp_path / "last.ckpt", model=model)
    assert _same(state, model.state_dict()) and state.provenance["stripped_prefix"] == "model."


def test_the_allowlist_is_plain_data_and_code_is_still_refused(tmp_path) -> None:
    allowed = {f"{getattr(g, '__module__', '')}.{getattr(g, '__qualname__', g)}" for g in safe_globals()}
    assert "argparse.Namespace" in allowed and "pathlib.PosixPath" in allowed
    assert not any(name.startswith(("os.", "builtins.", "subprocess.", "posix.")) for name in allowed)
    assert not any("ObjectDType" in name for name in allowed)
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    class EvilNamespace(argparse.Namespace):  # a subclass is another global: refused
        def __reduce__(self):
            return (eval, (f"open({str(marker)!r}, 'w')",))

    for i, payload in enumerate((Evil(), EvilNamespace(), argparse.ArgumentParser)):
        path = tmp_path / f"evil{i}.ckpt"
        torch.save({"state_dict": {"w": torch.ones(1)}, "hyper_parameters": {"args": payload}}, path)
        with pytest.raises(CheckpointError, match="pickle that carries code"):
            ls.load_state(path)
    assert not marker.exists()


def test_key_is_refused_where_there_is_one_set_of_weights(model, tmp_path) -> None:
    path = ls.save_state(model, tmp_path / "a.safetensors")
    with pytest.raises(CheckpointError, match=r"load_state\(key=...\): expected no key for a safetensors file"):
        ls.load_state(path, key="state_dict")
    with pytest.raises(CheckpointError, match="no key for a module"):
        ls.load_state(model, key="state_dict")


class _Wrapper(nn.Module):
    """A model whose own keys start with ``module.``: nothing may be stripped from them."""

    def __init__(self) -> None:
        super().__init__()
        self.module = nn.Linear(3, 2)


def test_a_model_whose_keys_start_with_module_keeps_them(tmp_path) -> None:
    model = _Wrapper()
    torch.save(model.state_dict(), tmp_path / "own.pt")
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, tmp_path / "ddp.pt")
    for path in (tmp_path / "own.pt", tmp_path / "ddp.pt"):
        assert _same(ls.load_state(path, model=model), model.state_dict())
    assert _same(fit_to_model(model.state_dict(), model), model.state_dict())
