"""The three subcommands end to end at tiny settings: random-teacher -> imp -> basins."""

from __future__ import annotations

import pytest
import torch

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
            "--probe-solver",
            "adamw",
            "--probe-epochs",
            "2",
            "--scalings",
            "standardized",
            "raw",
            "--transfer-seeds",
            "3",
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
    assert "teacher" in printed and "student" in printed and "transfer mnist1d-seed3" in printed
    for name in ("teacher.safetensors", "student.safetensors", "student-epoch0.safetensors", "history.nc"):
        assert (rt / name).exists(), name
    student = ls.load_state(rt / "student.safetensors")
    assert student.provenance["metadata"]["model_spec"]["name"] == "cnn1d"
    history = ls.load_result(rt / "history.nc")
    assert history.accuracy.dims == ("epoch", "net", "probe", "scaling")
    assert list(history.scaling.values) == ["standardized", "raw"] and list(history.epoch.values) == [0, 1]
    assert list(history.transfer.values) == ["mnist1d-seed3"]
    for name in ("accuracy", "transfer_accuracy"):
        values = history[name].values
        assert ((values >= 0) & (values <= 1)).all(), name  # fractions, every cell probed
    assert history.loss.values[0] > 0 and history.attrs["head"].find("reference") >= 0
    # the saved student is the zoo model's state: its encoder moved, its classifier is the teacher's
    teacher = ls.load_state(rt / "teacher.safetensors")
    assert any(not torch.equal(student[k], teacher[k]) for k in student if k.startswith("features"))
    assert all(torch.equal(student[k], teacher[k]) for k in student if k.startswith("classifier"))

    imp_dir = tmp_path / "imp"
    args = ["imp", "--start", str(rt / "student.safetensors"), "--rounds", "1", "--epochs", "1", "--out", str(imp_dir)]
    assert main([*args, "--controls", "reinit", "--prune-output", *data]) == 0
    assert "sparsity" in capsys.readouterr().out
    result = ls.load_result(imp_dir / "imp.nc")
    assert result.test_accuracy.dims == ("round", "branch") and list(result.branch.values) == ["imp", "reinit"]
    assert list(result.density.values) == pytest.approx([1.0, 0.8], abs=0.01)
    assert "classifier.weight" in result.attrs["parameters"]
    assert ((result.test_accuracy >= 0) & (result.test_accuracy <= 1)).all()
    # Same folder, other settings: refused with the differing setting named, exit code 2.
    assert main([*args, "--controls", "reinit", "--prune-output", "--prune-rate", "0.5", *data]) == 2
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
    assert result.error_barrier.dims == ("start", "split")
    assert (result.error_barrier.values >= -1).all() and (result.error_barrier.values <= 1).all()
