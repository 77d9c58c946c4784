"""The three subcommands end to end at tiny settings: random-teacher -> imp -> basins."""

from __future__ import annotations

import pytest

import landscape as ls
from landscape.cli import main


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_random_teacher_then_imp_then_basins(tmp_path, capsys) -> None:
    data = ["--data", "mnist1d", "--n-train", "96", "--n-test", "48", "--quiet"]
    rt = tmp_path / "rt"
    code = main(
        [
            "random-teacher",
            "--model",
            "cnn1d:width=4",
            "--epochs",
            "1",
            "--probe-every",
            "1",
            "--probe-epochs",
            "2",
            "--hidden-dim",
            "8",
            "--bottleneck-dim",
            "4",
            "--out-dim",
            "16",
            "--save-epochs",
            "0",
            "--out",
            str(rt),
            *data,
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "teacher" in printed and "student" in printed
    for name in ("teacher.safetensors", "student.safetensors", "student-epoch0.safetensors", "history.nc"):
        assert (rt / name).exists(), name
    student = ls.load_state(rt / "student.safetensors")
    assert student.provenance["metadata"]["model_spec"]["name"] == "cnn1d"

    imp_dir = tmp_path / "imp"
    args = ["imp", "--start", str(rt / "student.safetensors"), "--rounds", "1", "--epochs", "1", "--out", str(imp_dir)]
    assert main([*args, "--controls", "reinit", *data]) == 0
    assert "sparsity" in capsys.readouterr().out
    assert (imp_dir / "imp.nc").exists() and (imp_dir / "round-001.nc").exists()
    # Same folder, other settings: refused with the differing setting named, exit code 2.
    assert main([*args, "--prune-rate", "0.5", *data]) == 2
    assert "prune_rate" in capsys.readouterr().err

    basins = tmp_path / "basins"
    code = main(
        [
            "basins",
            "--student",
            str(rt / "student.safetensors"),
            "--steps",
            "2",
            "--epochs",
            "1",
            "--alphas",
            "3",
            "--out",
            str(basins),
            *data,
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "student" in out and "supervised@2" in out and "init" in out
    result = ls.load_result(basins / "basins.nc")
    assert list(result.start.values) == ["init", "student", "supervised@2"]
