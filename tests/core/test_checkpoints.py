from __future__ import annotations

import json

import pytest
import torch

import landscape as ls
from landscape.core.errors import CheckpointError, StateMismatchError


@pytest.fixture
def model():
    return ls.models.create("mlp", width=8, depth=1, seed=0)


def test_every_format_loads_the_same_numbers_and_hash(model, tmp_path) -> None:
    reference = ls.state_of(model)
    ls.save_state(model, tmp_path / "a.safetensors", metadata={"seed": 0, "step": 12})
    torch.save(model.state_dict(), tmp_path / "a.pt")
    torch.save({"epoch": 3, "state_dict": model.state_dict()}, tmp_path / "nested.pth")
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, tmp_path / "ddp.pt")
    hf = tmp_path / "hf"
    hf.mkdir()
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, hf / "model.safetensors")
    sources = [tmp_path / "a.safetensors", tmp_path / "a.pt", tmp_path / "nested.pth", tmp_path / "ddp.pt", hf, model]
    hashes = set()
    for source in sources:
        state = ls.load_state(source, model=model)
        assert all(torch.equal(state[k], reference[k]) for k in reference), source
        assert {"format", "source", "sha256"} <= set(state.provenance)
        hashes.add(state.provenance["sha256"])
    assert len(hashes) == 1
    meta = ls.load_state(tmp_path / "a.safetensors").provenance["metadata"]
    assert meta["step"] == 12 and meta["model_spec"]["name"] == "mlp"
    assert ls.load_state(tmp_path / "ddp.pt").provenance["stripped_prefix"] == "module."


def test_sharded_hf_directory(model, tmp_path) -> None:
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    keys = list(state)
    save_file({k: state[k] for k in keys[:2]}, tmp_path / "model-00001-of-00002.safetensors")
    save_file({k: state[k] for k in keys[2:]}, tmp_path / "model-00002-of-00002.safetensors")
    weight_map = {
        k: "model-00001-of-00002.safetensors" if i < 2 else "model-00002-of-00002.safetensors"
        for i, k in enumerate(keys)
    }
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    loaded = ls.load_state(tmp_path, model=model)
    assert loaded.provenance["format"] == "hf-sharded" and set(loaded) == set(state)


def test_pickled_code_is_refused_with_a_conversion_recipe(model, tmp_path) -> None:
    torch.save(model, tmp_path / "whole.pt")
    with pytest.raises(CheckpointError, match=r"pickle that carries code.*Unsupported global.*convert it once"):
        ls.load_state(tmp_path / "whole.pt")


def test_missing_truncated_and_unknown_files(model, tmp_path) -> None:
    with pytest.raises(CheckpointError, match=r"load_state\(source=...\): expected an existing file.*does not exist"):
        ls.load_state(tmp_path / "nope.safetensors")
    path = ls.save_state(model, tmp_path / "a.safetensors")
    (tmp_path / "cut.safetensors").write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        ls.load_state(tmp_path / "cut.safetensors")
    torch.save(model.state_dict(), tmp_path / "a.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "a.pt").read_bytes()[:200])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        ls.load_state(tmp_path / "cut.pt")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="match no known format"):
        ls.load_state(tmp_path / "notes.txt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty file"):
        ls.load_state(tmp_path / "empty.pt")
    (tmp_path / "dir").mkdir()
    with pytest.raises(CheckpointError, match="save_pretrained"):
        ls.load_state(tmp_path / "dir")


def test_key_and_shape_mismatches_are_listed(model, tmp_path) -> None:
    path = ls.save_state(model, tmp_path / "a.safetensors")
    with pytest.raises(StateMismatchError, match=r"in model but not in checkpoint: 'features.fc2.weight'"):
        ls.load_state(path, model=ls.models.create("mlp", width=8, depth=2))
    with pytest.raises(StateMismatchError, match=r"'features.fc1.weight' has shape \(16, 40\) in model and \(8, 40\)"):
        ls.load_state(path, model=ls.models.create("mlp", width=16, depth=1))


def test_nonfinite_weights_are_refused_unless_allowed(model, tmp_path) -> None:
    state = ls.state_of(model)
    state["classifier.bias"][0] = float("inf")
    path = ls.save_state(state, tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError, match=r"NaN or Inf in 'classifier.bias' \(1 values\).*allow_nonfinite=True"):
        ls.load_state(path)
    assert torch.isinf(ls.load_state(path, allow_nonfinite=True)["classifier.bias"][0])


def test_save_state_is_safetensors_only_and_handles_tied_weights(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"save_state\(path=...\).*\.safetensors"):
        ls.save_state({"w": torch.ones(2)}, tmp_path / "w.pt")
    shared = torch.ones(3)
    ls.save_state({"a": shared, "b": shared}, tmp_path / "tied.safetensors")
    assert set(ls.load_state(tmp_path / "tied.safetensors")) == {"a", "b"}


def test_numpy_scalars_next_to_the_weights_are_plain_data(model, tmp_path) -> None:
    import numpy as np

    torch.save({"epoch": np.int64(3), "best": np.float64(0.5), "state_dict": model.state_dict()}, tmp_path / "n.pt")
    assert set(ls.load_state(tmp_path / "n.pt")) == set(model.state_dict())


def test_a_pickle_that_runs_a_command_is_refused_without_unsafe_advice(tmp_path) -> None:
    import os

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "hacked"),))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError) as info:
        ls.load_state(tmp_path / "evil.pt")
    assert "system" in str(info.value) and "set to `False`" not in str(info.value)
    assert not (tmp_path / "hacked").exists()


def test_a_shared_key_prefix_is_stripped_when_it_makes_the_keys_fit(model, tmp_path) -> None:
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "lightning.ckpt")
    state = ls.load_state(tmp_path / "lightning.ckpt", model=model)
    assert state.provenance["stripped_prefix"] == "model." and set(state) == set(model.state_dict())
