"""Resumable runs (issue 12, findings 4-6): one settings fingerprint, hash-checked files, an OS
lock per folder, atomic writes on a full disk, umask-respecting modes, named errors for damaged
files and read-only folders, and one line on Ctrl-C."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

import landscape as ls
from landscape.connectivity import instability_sweep
from landscape.core.errors import FolderInUseError, RunFolderError, RunInterrupted, StorageError
from landscape.core.io import ResumableRun, data_fingerprint, open_run, run_settings

ROOT = Path(__file__).resolve().parents[2]
TINY_TRAIN = {"epochs": 1, "batch_size": 32, "lr": 0.05}


@pytest.fixture(scope="module")
def tiny():
    data = ls.datasets.mnist1d(n_train=64, n_test=32)
    return ls.models.create("mlp", width=8, depth=1, seed=0), data


def _python(code: str, *args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"process ended early: {process.communicate()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"{path} did not appear")
        time.sleep(0.05)


# ------------------------------------------------------------------ one settings fingerprint


def test_data_fingerprint_sees_the_numbers_not_the_container() -> None:
    x, y = torch.randn(10, 3), torch.arange(10) % 2
    splits = ls.core.data.Splits({"train": (x, y)}, name="toy")
    assert data_fingerprint(splits) == data_fingerprint({"train": (x.clone(), y.clone())})
    assert data_fingerprint({"train": (x, y)}) != data_fingerprint({"train": (x, (y + 1) % 2)})
    assert data_fingerprint({"train": (x, y)}) != data_fingerprint({"test": (x, y)})
    dataset = torch.utils.data.TensorDataset(x, y)
    shuffled = torch.utils.data.DataLoader(dataset, batch_size=3, shuffle=True)
    assert data_fingerprint(shuffled) == data_fingerprint(torch.utils.data.DataLoader(dataset, batch_size=5))
    assert data_fingerprint(x.numpy()) != data_fingerprint(x.double().numpy())  # dtype is part of the content
    with pytest.raises(
        ls.core.errors.LandscapeError, match=r"data_fingerprint\(data=...\).*one-pass iterator \(list_iterator\)"
    ):
        data_fingerprint(iter([x]))


def test_run_settings_change_with_every_input(tiny) -> None:
    model, data = tiny
    state = ls.state_of(model)
    base = run_settings("f", model=model, states={"a": state}, data=data, options={"lr": 0.1})
    assert base == run_settings("f", model=model, states={"a": ls.state_of(model)}, data=data, options={"lr": 0.1})
    changed = ls.state_of(model)
    changed["classifier.bias"].data[0] += 1  # a write through .data
    others = [
        run_settings("f", model=model, states={"a": changed}, data=data, options={"lr": 0.1}),
        run_settings("f", model=model, states={"a": state}, data=data.subset(10), options={"lr": 0.1}),
        run_settings("f", model=model, states={"a": state}, data=data, options={"lr": 0.2}),
        run_settings("f", model=ls.models.create("mlp", width=9, depth=1), states={"a": state}, data=data),
    ]
    assert all(other != base for other in others)
    assert base["landscape_version"] == ls.core.io.library_version()


# ------------------------------------------------------------------ files reused on resume


def test_imp_refuses_a_replaced_trained_state_and_names_it(tiny, tmp_path) -> None:
    model, data = tiny
    options = {"rounds": 1, "train": TINY_TRAIN, "progress": False, "out": tmp_path}
    first = ls.pruning.imp(model, data, **options)
    again = ls.pruning.imp(model, data, **options)  # resumes: same numbers
    xr.testing.assert_equal(first.drop_attrs(), again.drop_attrs())
    original = (tmp_path / "trained-001.safetensors").read_bytes()
    trained = ls.load_state(tmp_path / "trained-001.safetensors")
    ls.save_state({k: v * 0.5 for k, v in trained.items()}, tmp_path / "trained-001.safetensors")
    with pytest.raises(RunFolderError, match=r"imp\(out=...\): expected .*trained-001.safetensors' to hold the bytes"):
        ls.pruning.imp(model, data, **{**options, "rounds": 2})
    (tmp_path / "trained-001.safetensors").write_bytes(original)  # the original bytes are accepted again
    assert ls.pruning.imp(model, data, **{**options, "rounds": 2}).sizes["round"] == 3
    (tmp_path / "round-000.nc").write_bytes((tmp_path / "round-000.nc").read_bytes()[:-10] + b"0" * 10)
    with pytest.raises(RunFolderError, match=r"round-000.nc' to hold the bytes this run wrote"):
        ls.pruning.imp(model, data, **options)


def test_an_interrupted_imp_resumes_to_the_same_bits(tiny, tmp_path, monkeypatch) -> None:
    model, data = tiny
    options = {"rounds": 2, "train": TINY_TRAIN, "controls": (), "progress": False}
    uninterrupted = ls.pruning.imp(model, data, **options)
    module = sys.modules["landscape.pruning._imp_rounds"]
    original, calls = module.train_model, []

    def stop_in_round_two(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # round 0 and round 1 train once each (no controls)
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(module, "train_model", stop_in_round_two)
    with pytest.raises(RunInterrupted, match=r"^imp: interrupted; 2 finished step\(s\) are saved .*round-001\)"):
        ls.pruning.imp(model, data, out=tmp_path, **options)
    monkeypatch.setattr(module, "train_model", original)
    resumed = ls.pruning.imp(model, data, out=tmp_path, **options)
    xr.testing.assert_identical(resumed.drop_attrs(), uninterrupted.drop_attrs())


def test_linear_basins_refuses_other_data_in_the_same_folder(tiny, tmp_path) -> None:
    model, data = tiny
    starts = {"init": ls.state_of(model)}
    options = {"train": TINY_TRAIN, "alphas": 3, "progress": False, "out": tmp_path}
    ls.distillation.linear_basins(model, starts, data, **options)
    other = ls.datasets.mnist1d(n_train=64, n_test=32, seed=1)
    with pytest.raises(RunFolderError, match=r"linear_basins\(out=...\).*settings differ \(data: "):
        ls.distillation.linear_basins(model, starts, other, **options)


def test_instability_sweep_resumes_and_reports_ctrl_c(tiny, tmp_path, monkeypatch) -> None:
    module = sys.modules["landscape.connectivity.instability"]

    model, data = tiny
    run = ls.train(model, data, epochs=1, batch_size=32, checkpoint_steps=[0, 1, 2], progress=False)
    options = {"train": TINY_TRAIN, "alphas": 3, "progress": False}
    plain = instability_sweep(model, run.checkpoints, data, **options)
    calls = []
    original = module.instability

    def interrupted_after_one(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2 and not resuming:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    resuming = False

    monkeypatch.setattr(module, "instability", interrupted_after_one)
    with pytest.raises(RunInterrupted) as info:
        instability_sweep(model, run.checkpoints, data, out=tmp_path, **options)
    assert isinstance(info.value, KeyboardInterrupt) and info.value.saved == ["step-000000000"]
    assert str(info.value) == (
        f"instability_sweep: interrupted; 1 finished step(s) are saved in {str(tmp_path)!r} (step-000000000). "
        f"Call instability_sweep again with out={str(tmp_path)!r} and the same settings to resume."
    )
    calls.clear()
    resuming = True
    resumed = instability_sweep(model, run.checkpoints, data, out=tmp_path, **options)
    assert len(calls) == 2  # steps 1 and 2; step 0 came from the folder
    xr.testing.assert_allclose(resumed.drop_attrs(), plain.drop_attrs())
    assert resumed.stable.dtype == bool
    with pytest.raises(RunFolderError, match=r"options.alphas: 3 there, 4 now"):
        instability_sweep(model, run.checkpoints, data, out=tmp_path, **{**options, "alphas": 4})


# ------------------------------------------------------------------ locks


def test_a_folder_in_use_by_another_process_is_refused_until_it_dies(tmp_path) -> None:
    holder = _python(
        """
        import sys, time
        from landscape.core.io import ResumableRun
        run = ResumableRun(sys.argv[1], {"a": 1})
        open(sys.argv[2], "w").close()
        time.sleep(600)
        """,
        str(tmp_path / "run"),
        str(tmp_path / "ready"),
    )
    try:
        _wait_for(tmp_path / "ready", holder)
        with pytest.raises(
            FolderInUseError, match=rf"expected a run folder no other process is using.*process {holder.pid} on"
        ):
            ResumableRun(tmp_path / "run", {"a": 1})
    finally:
        holder.send_signal(signal.SIGKILL)  # a crash: the OS releases the lock
        holder.wait()
    with ResumableRun(tmp_path / "run", {"a": 1}) as run:
        run.save("step", xr.Dataset({"v": 1.0}))


def test_a_newer_run_in_the_same_process_takes_the_folder_over(tmp_path) -> None:
    old = ResumableRun(tmp_path, {"a": 1})
    new = ResumableRun(tmp_path, {"a": 1})  # e.g. a notebook cell re-run after an exception
    new.save("one", xr.Dataset({"v": 1.0}))
    with pytest.raises(RunFolderError, match="superseded by a newer run"):
        old.save("two", xr.Dataset({"v": 2.0}))
    new.close()
    with open_run(tmp_path, {"a": 1}, function="f") as again:
        assert again.done("one") and not again.done("two")


# ------------------------------------------------------------------ disk full, modes, damaged files


def test_a_full_disk_gives_a_named_error_and_leaves_no_temporary_file(tmp_path) -> None:
    # RLIMIT_FSIZE makes every write past 64 KiB fail (EFBIG), as a full disk would.
    process = _python(
        """
        import resource, signal, sys, torch, xarray as xr
        import landscape as ls
        from landscape.core.errors import StorageError
        from landscape.core.io import ResumableRun
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        run = ResumableRun(sys.argv[1], {"a": 1})
        resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
        big = {"w": torch.zeros(100_000)}
        for label, write in [
            ("save_state", lambda: ls.save_state(big, sys.argv[1] + "/big.safetensors")),
            ("save_result", lambda: ls.save_result(xr.Dataset({"v": ("i", big["w"].numpy())}), sys.argv[1] + "/big.nc")),
            ("run.save", lambda: run.save("step", xr.Dataset({"v": ("i", big["w"].numpy())}))),
            ("run.save_state", lambda: run.save_state("state", big)),
        ]:
            try:
                write()
                print(label, "wrote")
            except StorageError as err:
                print(label, err)
        """,
        str(tmp_path),
    )
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 4, out
    for line, name in zip(lines, ["big.safetensors", "big.nc", "step.nc", "state.safetensors"], strict=True):
        assert "expected a writable location with free space" in line and name in line, line
        assert "the disk or quota is full" in line and "no partial or temporary file" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", ".lock-owner.json", "settings.json"]


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_files_follow_the_umask(umask, tmp_path) -> None:
    previous = os.umask(umask)
    try:
        paths = [
            ls.save_state({"w": torch.ones(2)}, tmp_path / "a.safetensors"),
            ls.save_result(xr.Dataset({"v": 1.0}), tmp_path / "r.nc"),
        ]
        with ResumableRun(tmp_path / "run", {"a": 1}) as run:
            run.save("step", xr.Dataset({"v": 1.0}))
            paths += [
                run.save_state("s", {"w": torch.ones(2)}),
                run.folder / "settings.json",
                run.folder / "files.json",
            ]
    finally:
        os.umask(previous)
    for path in paths:
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path


def test_damaged_settings_manifest_and_steps_name_the_file(tmp_path) -> None:
    with ResumableRun(tmp_path, {"a": 1}) as run:
        run.save("step", xr.Dataset({"v": 1.0}))
    (tmp_path / "files.json").write_text('{"step.nc": ')
    with pytest.raises(
        RunFolderError, match=r"whose files.json is the JSON this library wrote; found .*files.json', which is damaged"
    ):
        ResumableRun(tmp_path, {"a": 1})
    (tmp_path / "settings.json").write_text("\x00\x01garbage")
    with pytest.raises(
        RunFolderError,
        match=r"ResumableRun\(out=...\): expected a run folder whose settings.json .*settings.json', which is damaged",
    ):
        ResumableRun(tmp_path, {"a": 1})
    (tmp_path / "settings.json").write_text("[1, 2]")
    with pytest.raises(RunFolderError, match=r"settings.json is a JSON object; found .*a JSON list"):
        ResumableRun(tmp_path, {"a": 1})


def test_a_read_only_folder_gives_a_named_error(tmp_path, monkeypatch) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):  # as a read-only mount answers (root ignores chmod)
        if str(path).startswith(str(folder)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(
        StorageError,
        match=r"ResumableRun\(out=...\): expected a writable location.*ro/.lock', which could not be written: read-only file system",
    ):
        ResumableRun(folder, {"a": 1})
    with pytest.raises(
        StorageError,
        match=r"save_state\(path=...\): expected a writable location.*a.safetensors', which could not be written: read-only",
    ):
        ls.save_state({"w": torch.ones(2)}, folder / "a.safetensors")
    assert list(folder.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_chmod_read_only_folder_gives_a_named_error(tmp_path) -> None:  # pragma: no cover - not root
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(StorageError, match="permission denied"):
            ls.save_result(xr.Dataset({"v": 1.0}), folder / "r.nc")
    finally:
        folder.chmod(0o755)


# ------------------------------------------------------------------ Ctrl-C


def test_ctrl_c_in_the_cli_prints_one_line(tmp_path) -> None:
    process = _python(
        """
        import signal, sys
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even if started ignoring it
        from landscape.cli import main
        sys.exit(main(sys.argv[1:]))
        """,
        "imp", "--rounds", "20", "--epochs", "1", "--n-train", "256", "--n-test", "64", "--model", "mlp:width=8,depth=1",
        "--controls", "--quiet", "--out", str(tmp_path),
    )  # fmt: skip
    _wait_for(tmp_path / "mask-001.safetensors", process)  # written in round 1, after round 0 was recorded
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("landscape imp: interrupted; ") and "finished step(s) are saved in" in err, err
    assert err.rstrip().endswith("run the same command again to resume.")


def test_ctrl_c_outside_a_run_folder_says_nothing_was_written(monkeypatch, capsys) -> None:
    import landscape.commands.engine as engine

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "run_evaluate", interrupted, raising=False)
    from landscape import cli

    parser = cli.build_parser
    monkeypatch.setattr(
        cli,
        "build_parser",
        lambda: _with_handler(parser(), "evaluate", interrupted),
    )
    assert cli.main(["evaluate", "x.safetensors"]) == 130
    err = capsys.readouterr().err
    assert err == (
        "landscape evaluate: interrupted before it finished; it writes its outputs when it finishes, "
        "so none were written.\n"
    )


@pytest.fixture
def ctrl_c_raises():
    """SIGINT raises KeyboardInterrupt, as in a terminal (a run started in the background
    has SIGINT ignored, and gets no interrupt at all)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_during_a_netcdf_write_or_read_waits_for_it(tmp_path, monkeypatch, ctrl_c_raises) -> None:
    # Ctrl-C inside h5netcdf's File constructor left a half-built object whose collection
    # printed a traceback after the one-line message (seen once in CI); the interrupt now
    # arrives after the encode or decode, which run to the end.
    finished = []
    real_write, real_open = xr.Dataset.to_netcdf, xr.open_dataset

    def write_after_ctrl_c(self, *args, **kwargs):
        signal.raise_signal(signal.SIGINT)
        out = real_write(self, *args, **kwargs)
        finished.append("write")
        return out

    def open_after_ctrl_c(*args, **kwargs):
        signal.raise_signal(signal.SIGINT)
        finished.append("open")
        return real_open(*args, **kwargs)

    path = tmp_path / "r.nc"
    monkeypatch.setattr(xr.Dataset, "to_netcdf", write_after_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        ls.save_result(xr.Dataset({"v": ("x", [1.0, 2.0])}), path)
    assert finished == ["write"] and not path.exists()  # the interrupt came before the file was placed
    monkeypatch.setattr(xr.Dataset, "to_netcdf", real_write)
    ls.save_result(xr.Dataset({"v": ("x", [1.0, 2.0])}), path)
    monkeypatch.setattr(xr, "open_dataset", open_after_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        ls.load_result(path)
    assert finished == ["write", "open"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back as it was


def _with_handler(parser, command, handler):
    for action in parser._subparsers._group_actions:  # the subcommand table
        action.choices[command].set_defaults(handler=handler)
    return parser


def test_round_trip_of_a_run_keeps_numbers_exact(tmp_path) -> None:
    values = np.random.default_rng(0).standard_normal(7)
    with open_run(tmp_path, {"a": 1}, function="f") as run:
        run.save("s", xr.Dataset({"v": ("i", values)}))
        run.save_state("w", {"w": torch.from_numpy(values)})
    with open_run(tmp_path, {"a": 1}, function="f") as run:
        np.testing.assert_array_equal(run.load("s").v.values, values)
        assert torch.equal(run.load_state("w")["w"], torch.from_numpy(values))
        assert json.loads((tmp_path / "files.json").read_text()).keys() == {"s.nc", "w.safetensors"}


def test_data_fingerprint_of_the_engine_data_sources() -> None:
    from landscape.core import Loader, TokenData

    rows = [{"x": torch.full((3,), float(i)), "labels": torch.tensor(i % 2)} for i in range(6)]
    loader = torch.utils.data.DataLoader(rows, batch_size=2)
    assert data_fingerprint(Loader(loader, inputs=["x"])) != data_fingerprint(Loader(loader, inputs=["x"], targets="x"))
    assert data_fingerprint(Loader(loader, inputs=["x"])) == data_fingerprint(
        Loader(torch.utils.data.DataLoader(rows, batch_size=3, shuffle=True), inputs=["x"])
    )
    tokens = TokenData({"test": [[5, 6, 7], [8, 9]]}, pad_id=0)
    assert data_fingerprint(tokens) != data_fingerprint(TokenData({"test": [[5, 6, 7], [8, 8]]}, pad_id=0))
