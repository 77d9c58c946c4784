"""The concept analyses and the benchmark run end to end on a tiny model, and what they write
holds what it should (dims, value ranges, the command line), not merely a file."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

ROOT = Path(__file__).resolve().parents[2]


def _run(script: Path, args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", [script.name, *args])
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as done:
        assert done.code in (0, None), f"{script.name} exited with {done.code}"


@pytest.mark.lm
def test_detection_and_guidance_scripts_write_their_results(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    out = tmp_path / "concepts"
    common = ["--model", "tiny", "--threads", "1", "--concepts", "sentiment"]
    _run(ROOT / "analyses/concepts_detection.py", [str(out), "--n", "24", "--late", "1", *common], monkeypatch)
    accuracy = xr.open_dataset(out / "accuracy.nc", engine="h5netcdf")
    assert set(accuracy.val_accuracy.dims) == {"concept", "read", "kind", "layer"}
    assert accuracy.attrs["site"] == "pre_attn"
    values = accuracy.val_accuracy.values
    assert np.isfinite(values).any() and np.nanmin(values) >= 0 and np.nanmax(values) <= 1
    summary = (out / "summary.md").read_text()
    assert "concepts_detection.py" in summary and "site pre_attn" in summary
    for kind in ("mean_diff", "logistic", "pca"):
        assert (out / "probes" / f"sentiment-mean-{kind}.safetensors").exists()

    alphas = ["-0.1", "0", "0.1"]
    _run(
        ROOT / "analyses/concepts_guidance.py",
        [str(out / "g"), "--probes", str(out / "probes"), "--alphas", *alphas, "--n-prompts", "2",
         "--n-reference", "2", "--max-new-tokens", "3", "--top-k", "1", *common],
        monkeypatch,
    )  # fmt: skip
    curves = xr.open_dataset(out / "g" / "curves-sentiment.nc", engine="h5netcdf")
    assert curves.sizes["alpha"] == 3 and curves.sizes["kind"] == 3 and curves.sizes["prompt"] == 2
    assert (curves.perplexity > 1).all() and np.isfinite(curves.perplexity).all()
    assert ((curves.effect >= -1) & (curves.effect <= 1)).all()  # VADER compound scores
    fits = json.loads((out / "g" / "pnes.json").read_text())["fits"]
    assert set(fits) == {"sentiment/mean_diff", "sentiment/logistic", "sentiment/pca"}
    assert all(np.isfinite(f["pnes"]) and len(f["layers"]) == 1 for f in fits.values())
    text = (out / "g" / "summary.md").read_text()
    assert "concepts_guidance.py" in text and "alphas -0.1, 0, 0.1" in text
    assert "| sentiment, mean_diff | " in text and "PNES (r^2)" in text


@pytest.mark.lm
def test_benchmark_runs_with_the_peers_it_finds(tmp_path, monkeypatch):
    args = ["--out", str(tmp_path), "--model", "tiny", "--n", "16", "--layers", "0,1", "--repeats", "1"]
    _run(ROOT / "benchmarks/concepts.py", [*args, "--gen-repeats", "1", "--gen-tokens", "3"], monkeypatch)
    report = json.loads((tmp_path / "concepts.json").read_text())
    rows = {(r["task"] == "extraction", r["package"]): r for r in report["rows"]}
    assert rows[True, "landscape"]["tok_s"] > 0 and rows[False, "plain"]["tok_s"] > 0
    for peer in ("steering-vectors", "repeng"):
        status = report["peers"][peer]
        assert status.startswith(("version", "failed", "generation failed", "ModuleNotFoundError", "ImportError"))
    if (True, "steering-vectors") in rows:  # the same mean difference, up to float rounding
        assert min(rows[True, "steering-vectors"]["cosine_to_mean_diff"]) > 1 - 1e-6
    assert "concepts.py" in (tmp_path / "concepts.md").read_text()
