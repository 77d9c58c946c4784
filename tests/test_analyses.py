"""Every figure script in analyses/ runs end to end at tiny settings (so none of them rots)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

ANALYSES = Path(__file__).resolve().parents[1] / "analyses"
TINY_DATA = ["--n-train", "200", "--n-test", "100"]
HEAD = ["--hidden-dim", "16", "--bottleneck-dim", "8", "--out-dim", "32"]


def _run(script: str, args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", [script, *args])
    monkeypatch.syspath_prepend(str(ANALYSES))  # scripts import their siblings, as `python analyses/x.py` allows
    try:
        runpy.run_path(str(ANALYSES / script), run_name="__main__")
    except SystemExit as done:
        assert done.code in (0, None), f"{script} exited with {done.code}"


def _fractions(values: object) -> bool:
    array = np.asarray(values, dtype=float)
    return bool(np.isfinite(array).all() and ((array >= 0) & (array <= 1)).all())


def _check_lmc_width(out: Path) -> None:
    import landscape as ls

    ds = ls.load_result(out / "combined.nc")
    assert ds.loss.dims[:2] == ("width", "pair") and {"alpha", "split"} <= set(ds.loss.dims)
    assert _fractions(ds.accuracy)
    ends = ds.loss.isel(alpha=[0, -1])
    assert (ds.loss.max("alpha") >= ends.min("alpha")).all()  # a curve is at least as high as its lower end
    assert (out / "lmc_width.png").stat().st_size > 1000


def _check_surface(out: Path) -> None:
    import landscape as ls

    for group, anchors in (("random_plane", 1), ("plane", 3)):
        ds = ls.load_result(out / "surface.nc", group=group)
        assert ds.loss.dims[:2] == ("alpha", "beta") and ds.sizes["anchor"] == anchors
        assert np.isfinite(ds.loss.values).all() and (ds.loss.values > 0).all() and _fractions(ds.accuracy)


def _check_instability(out: Path) -> None:
    import landscape as ls

    ds = ls.load_result(out / "sweep.nc")
    assert "step" in ds.error_barrier.dims and ds.stable.dtype == bool
    # stable means an error barrier under the threshold (2 points by default)
    np.testing.assert_array_equal(ds.stable.values, ds.error_barrier.values < 0.02)


def _check_alignment_barriers(out: Path) -> None:
    import landscape as ls

    ds = ls.load_result(out / "combined.nc")
    assert {"width", "pair", "alignment", "correction", "alpha", "split"} <= set(ds.loss.dims)
    assert "none" in ds.alignment.values and _fractions(ds.accuracy)
    # at alpha 0 every alignment evaluates network a itself: the same numbers whatever b became
    at_a = ds.loss.sel(alpha=0.0, correction="none")
    np.testing.assert_allclose(at_a.values, at_a.sel(alignment="none").broadcast_like(at_a).values, rtol=1e-5)


def _check_alignment_fusion(out: Path) -> None:
    import landscape as ls

    ds = ls.load_result(out / "combined.nc")
    assert ds.test_accuracy.dims == ("seed", "model") and _fractions(ds.test_accuracy)
    assert {"parent 0", "parent 1", "vanilla average", "fused ot"} <= set(ds.model.values.tolist())


QUICK_CHECKS = {
    "lmc_width.py": _check_lmc_width,
    "surface.py": _check_surface,
    "instability.py": _check_instability,
    "alignment_barriers.py": _check_alignment_barriers,
    "alignment_fusion.py": _check_alignment_fusion,
}


@pytest.mark.parametrize("script", list(QUICK_CHECKS))
def test_quick_settings(script: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _run(script, ["--quick", "--out", str(tmp_path / "out")], monkeypatch)
    QUICK_CHECKS[script](tmp_path / "out")


def test_random_teacher_scripts_chain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    import landscape as ls

    students = str(tmp_path / "rt")
    common = ["--seeds", "0", "1", *TINY_DATA, "--threads", "1"]
    head = [*HEAD, "--epochs", "1"]
    _run("random_teacher_probes.py", ["--out", students, "--probe-every", "1", *head, *common], monkeypatch)
    probes = ls.load_result(tmp_path / "rt" / "probes.nc")
    assert probes.accuracy.dims == ("seed", "epoch", "net", "probe", "scaling")
    assert list(probes.net.values) == ["student", "teacher", "teacher_calibrated"]
    assert list(probes.scaling.values) == ["standardized", "raw"]
    assert ((probes.accuracy >= 0) & (probes.accuracy <= 1)).all()
    summary = (tmp_path / "rt" / "summary.md").read_text()
    assert "python analyses/random_teacher_probes.py" in summary and "teacher (BN calibrated)" in summary
    assert summary.count(" ± ") >= 4 * 5  # 4 rows, 5 cells with a spread over the two seeds

    noise = ["--out", str(tmp_path / "noise"), "--probe-every", "1", *head, *common, "--compare", students]
    _run("random_teacher_noise_control.py", noise, monkeypatch)
    assert "data − noise" in (tmp_path / "noise" / "summary.md").read_text()

    locality = ["--out", str(tmp_path / "loc"), "--alphas", "0", "1", *head, *common]
    _run("random_teacher_locality.py", locality, monkeypatch)
    loc = ls.load_result(tmp_path / "loc" / "locality.nc")
    assert loc.accuracy.dims == ("alpha_init", "seed", "net", "probe", "scaling")
    assert list(loc.alpha_init.values) == [0.0, 1.0]
    # alpha 0 starts as an exact copy: before distillation the student probes as its teacher
    np.testing.assert_array_equal(
        loc.accuracy_at_start.sel(alpha_init=0.0, net="student"),
        loc.accuracy_at_start.sel(alpha_init=0.0, net="teacher"),
    )

    transfer = ["--out", str(tmp_path / "transfer"), *head, *common]
    _run("random_teacher_transfer.py", transfer, monkeypatch)
    moved = ls.load_result(tmp_path / "transfer" / "transfer.nc")
    assert moved.transfer_accuracy.sizes["transfer"] == 3
    assert np.isfinite(moved.transfer_accuracy.isel(epoch=-1).values).all()

    imp = ["--out", str(tmp_path / "imp"), "--students", students, "--rounds", "1", "--epochs", "1"]
    _run("lottery_imp.py", [*imp, "--rewind-step", "1", *common], monkeypatch)
    tickets = ls.load_result(tmp_path / "imp" / "imp.nc")
    assert tickets.test_accuracy.dims == ("start", "seed", "round", "branch")
    assert list(tickets.start.values) == ["student", "init", "rewind@1"]
    assert float(tickets.density.isel(round=1).max()) == pytest.approx(0.8, abs=0.01)

    basins = ["--out", str(tmp_path / "basins"), "--students", students, "--steps", "1", "--epochs", "1"]
    _run("linear_basins.py", [*basins, "--alphas", "3", *common], monkeypatch)
    result = ls.load_result(tmp_path / "basins" / "basins.nc")
    assert result.error_barrier.dims == ("seed", "start", "split")
    assert list(result.start.values) == ["init", "student", "supervised@1"]
    assert ((result.error_barrier >= -1) & (result.error_barrier <= 1)).all()


def test_fusion_family_quick_has_every_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import landscape as ls

    out = tmp_path / "fusion"
    _run("fusion_family.py", ["--quick", "--out", str(out)], monkeypatch)
    acc = ls.load_result(out / "combined.nc").test_accuracy
    assert sorted(acc.combo.values.tolist()) == ["digits-cnn", "mnist1d-mlp"]
    names = set(acc.model.values.tolist())
    for sparsity in (30, 50, 70):
        for method in ("discard", "fuse", "discard + repair", "fuse + repair"):
            assert f"prune {sparsity}% {method}" in names
    for parents in (2, 4):
        for method in ("vanilla", "ot", "zipit", "neuron interpolation"):
            assert {f"{parents} parents: {method}", f"{parents} parents: {method} + 1 epoch"} <= names
    assert {"zip: parent 0", "zip: parent 1", "zip: up to features.act1", "zip: full"} <= names
    assert "zip: up to features.act3" in names  # the CNN has three hidden layers
    values = acc.values[np.isfinite(acc.values)]
    assert values.size > 70 and ((values >= 0) & (values <= 1)).all()
    table = (out / "table.md").read_text()
    assert "| prune 50% fuse |" in table and "± 0.000" in table


def test_transformer_lmc_at_tiny_settings_has_every_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import csv

    import landscape as ls

    monkeypatch.setenv("LANDSCAPE_TINY", "1")
    out = tmp_path / "tlmc"
    _run("transformer_lmc.py", ["--out", str(out), "--threads", "1"], monkeypatch)
    combined = ls.load_result(out / "combined.nc")
    assert set(combined.task.values) == {"vit", "gpt"}
    assert list(combined.alignment.values)[:4] == ["vanilla", "permutation", "orthogonal", "glmc"]
    assert {"alpha", "split", "alignment", "pair"} <= set(combined.accuracy.dims)
    accuracy = combined.accuracy.values
    assert np.all((accuracy[np.isfinite(accuracy)] >= 0) & (accuracy[np.isfinite(accuracy)] <= 1))
    # every alignment keeps b's function: the far end of each path is b itself
    ends = combined.accuracy.sel(split="test").isel(alpha=-1)
    assert np.allclose(ends.sel(task="vit"), ends.sel(task="vit", alignment="vanilla"), atol=1e-6)
    fused = combined.fusion_accuracy.sel(task="vit")
    assert "GLMC fusion + fine-tune" in list(fused.fusion.values) and np.all((fused >= 0) & (fused <= 1))
    rows = list(csv.DictReader(open(out / "table.csv")))
    assert {r["task"] for r in rows} == {"vit", "gpt", "vit fusion"} and len(rows) == 2 * 7 + 7
