"""Hostile and malformed files (issue 12, findings 2, 3 and 6): each is built by the test in a
temporary folder and must give a named error, without allocating, reading outside the folder
or running code."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import xarray as xr
from safetensors.torch import save_file
from torch import nn

import landscape as ls
from landscape.cli import main
from landscape.core.errors import CheckpointError, LandscapeError, StorageError
from landscape.core.validate import build_checked, dry_build

HUGE_SPEC = {"name": "mlp", "input_shape": [40], "num_classes": 10, "width": 200_000, "depth": 4}  # 480 GB
DEEP_SPEC = {"name": "mlp", "input_shape": [40], "num_classes": 10, "width": 8, "depth": 10**9}
SMALL_SPEC = {"name": "mlp", "input_shape": [40], "num_classes": 10, "width": 8, "depth": 1}  # not the file's tensors
EXPECTED = {
    "huge": "found a spec for a model of 457,805 MiB",
    "deep": "registers more than 272 parameters, buffers and submodules while being built",
    "small": "does not fit them (expected the same parameter names; keys in model but not in state:",
}


def _lying_file(path, spec) -> None:
    """A file of a few hundred bytes whose metadata describes another model."""
    save_file({"w": torch.zeros(2)}, str(path), metadata={"model_spec": json.dumps(spec), "data": "mnist1d"})


@pytest.fixture
def built_devices():
    """The devices of every parameter registered while the fixture is active: a model built for
    real registers CPU parameters, a dry build only meta ones."""
    seen: list[str] = []
    handle = nn.modules.module.register_module_parameter_registration_hook(
        lambda module, name, param: seen.append(param.device.type) if param is not None else None
    )
    yield seen
    handle.remove()


@pytest.mark.parametrize("command", [["evaluate"], ["imp", "--rounds", "1", "--out", "OUT", "--start"]])
@pytest.mark.parametrize("case", ["huge", "deep", "small"])
def test_a_small_file_with_a_huge_spec_fails_before_any_allocation(command, case, tmp_path, capsys, built_devices):
    spec = {"huge": HUGE_SPEC, "deep": DEEP_SPEC, "small": SMALL_SPEC}[case]
    path = tmp_path / "lie.safetensors"
    _lying_file(path, spec)
    assert path.stat().st_size < 400
    argv = [a.replace("OUT", str(tmp_path / "imp")) for a in command] + [str(path), "--n-train", "64", "--n-test", "32"]
    start = time.perf_counter()
    assert main(argv) == 2
    assert time.perf_counter() - start < 10
    err = capsys.readouterr().err
    assert "landscape(checkpoint=...): expected a model spec in" in err and "lie.safetensors" in err
    assert EXPECTED[case] in err
    assert "Traceback" not in err
    assert set(built_devices) <= {"meta"}  # no parameter was ever allocated for real


def test_build_checked_budget_shapes_and_build_failures() -> None:
    state = {"weight": torch.zeros(4, 3), "bias": torch.zeros(4)}
    assert isinstance(build_checked(lambda: nn.Linear(3, 4), state, function="f", argument="a"), nn.Linear)
    with pytest.raises(
        CheckpointError, match=r"f\(a=...\): expected a model spec .* that matches its tensors.*\(5, 3\)"
    ):
        build_checked(lambda: nn.Linear(3, 5), state, function="f", argument="a")

    class BigBuffer(nn.Linear):  # a non-persistent buffer is not in the file but takes memory
        def __init__(self) -> None:
            super().__init__(3, 4)
            self.register_buffer("cache", torch.zeros(10**9), persistent=False)

    with pytest.raises(CheckpointError, match=r"at most 256 MiB.*a model of 3,815 MiB"):
        build_checked(BigBuffer, state, function="f", argument="a")

    def broken() -> nn.Module:
        raise KeyError("no such layer")

    with pytest.raises(CheckpointError, match=r"fails to build \(KeyError"):
        build_checked(broken, state, function="f", argument="a")


@pytest.mark.parametrize("name", ls.models.available())
def test_every_zoo_model_dry_builds_to_the_real_shapes(name) -> None:
    shapes = {}
    for fast in (True, False):  # the shortcut against the plain meta build
        model = dry_build(lambda: ls.models.create(name), max_registrations=10_000, fast=fast)
        assert {t.device.type for t in [*model.parameters(), *model.buffers()]} == {"meta"}
        shapes[fast] = [(k, t.shape, t.dtype) for k, t in [*model.named_parameters(), *model.named_buffers()]]
    real = ls.models.create(name, seed=0)
    assert (
        shapes[True]
        == shapes[False]
        == [(k, t.shape, t.dtype) for k, t in [*real.named_parameters(), *real.named_buffers()]]
    )
    assert build_checked(lambda: ls.models.create(name), real.state_dict(), function="f", argument="a") is not None


def test_the_dry_build_of_the_zoo_imports_nothing_heavy() -> None:
    # torch's Python meta kernels import torch._dynamo and sympy on first use (5-8 s here):
    # the shortcut keeps checking a checkpoint's spec as cheap as building the model.
    code = (
        "import sys, landscape as ls\n"
        "from landscape.core.validate import build_checked\n"
        "for name in ls.models.available():\n"
        "    state = ls.models.create(name, seed=0).state_dict()\n"
        "    build_checked(lambda: ls.models.create(name), state, function='f', argument='a')\n"
        "print(sorted(m for m in ('torch._dynamo', 'sympy') if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def _sharded(folder, weight_map) -> None:
    folder.mkdir(exist_ok=True)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@pytest.mark.parametrize(
    "target", ["../outside.safetensors", "ABS", "sub/../../outside.safetensors", "..\\outside.safetensors", "C:/x.bin"]
)
def test_index_files_cannot_point_outside_their_folder(target, tmp_path) -> None:
    save_file({"w": torch.ones(2)}, str(tmp_path / "outside.safetensors"))
    folder = tmp_path / "model"
    target = str(tmp_path / "outside.safetensors") if target == "ABS" else target
    _sharded(folder, {"w": target})
    with pytest.raises(CheckpointError, match=r"inside .*model'.*points outside the folder"):
        ls.load_state(folder)


@pytest.mark.parametrize(
    ("content", "found"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "a JSON list"),
        ('{"weight_map": ["a.safetensors"]}', "weight_map list"),
        ('{"weight_map": {}}', "weight_map dict"),
        ('{"weight_map": {"w": 3}}', "3, which points outside the folder or is not a shard file"),
        ('{"weight_map": {"w": "model.py"}}', "'model.py', which points outside"),
    ],
)
def test_malformed_index_files_give_named_errors(content, found, tmp_path) -> None:
    (tmp_path / "model.safetensors.index.json").write_text(content)
    with pytest.raises(
        CheckpointError, match=r"load_state\(source=...\): expected .*model.safetensors.index.json"
    ) as info:
        ls.load_state(tmp_path)
    assert found in str(info.value)


def test_an_index_that_lists_tensors_its_shards_lack_is_refused(tmp_path) -> None:
    save_file({"w": torch.ones(2)}, str(tmp_path / "a.safetensors"))
    _sharded(tmp_path, {"w": "a.safetensors", "v": "a.safetensors"})
    with pytest.raises(CheckpointError, match=r"every tensor listed .* 1 missing, such as 'v'"):
        ls.load_state(tmp_path)


@pytest.mark.parametrize(
    ("content", "found"),
    [
        (b"GGUF" + struct.pack("<I", 9) + b"\0" * 32, "which says it is version 9"),
        (b"GGUF" + struct.pack("<I", 3) + b"garbage" * 5, "which could not be read"),
        (b"GGUF\x03", "too short for a GGUF header"),
    ],
    ids=["future-version", "garbage", "truncated-header"],
)
def test_garbage_and_future_gguf_files_give_named_errors(content, found, tmp_path) -> None:
    pytest.importorskip("gguf")
    pytest.importorskip("transformers")
    path = tmp_path / "model.gguf"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"load_state\(source=...\): expected a (GGUF|complete GGUF)") as info:
        ls.load_state(path)
    assert found in str(info.value) and "model.gguf" in str(info.value)


def test_a_file_that_is_not_netcdf_and_a_missing_group(tmp_path) -> None:
    (tmp_path / "notes.nc").write_text("not a netCDF file")
    with pytest.raises(LandscapeError, match=r"load_result\(path=...\): expected a netCDF-4 file.*notes.nc"):
        ls.load_result(tmp_path / "notes.nc")
    (tmp_path / "v3.nc").write_bytes(b"CDF\x01" + b"\0" * 28)
    with pytest.raises(LandscapeError, match="classic netCDF-3 file"):
        ls.load_result(tmp_path / "v3.nc")
    path = ls.save_result({"curve": xr.Dataset({"loss": ("alpha", [1.0, 2.0])})}, tmp_path / "r.nc")
    with pytest.raises(LandscapeError, match=r"load_result\(group=...\): expected one of the groups in .*\['curve'\]"):
        ls.load_result(path, group="surface")
    good = ls.save_result(xr.Dataset({"loss": ("alpha", [1.0, 2.0])}), tmp_path / "ok.nc")
    (tmp_path / "cut.nc").write_bytes(good.read_bytes()[:600])
    with pytest.raises(StorageError, match=r"cut.nc', which could not be read"):
        ls.load_result(tmp_path / "cut.nc")
