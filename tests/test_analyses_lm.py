"""The language-model connectivity script runs end to end on a tiny random Llama."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest

import landscape as ls

matplotlib.use("Agg")
pytest.importorskip("transformers")

ANALYSES = Path(__file__).resolve().parents[1] / "analyses"


def test_lm_connectivity_quick(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "lm"
    monkeypatch.setattr(sys, "argv", ["lm_connectivity.py", "--quick", "--out", str(out), "--threads", "1"])
    runpy.run_path(str(ANALYSES / "lm_connectivity.py"), run_name="__main__")
    line = ls.load_result(out / "lm_connectivity.nc", group="line")
    plane = ls.load_result(out / "lm_connectivity.nc", group="plane")
    assert line.lm_loss.dims == ("alpha", "split") and plane.lm_loss.dims == ("alpha", "beta", "split")
    # A random model over a ~100-token vocabulary: losses near log(104), perplexity = exp(loss).
    assert np.all((line.lm_loss > 3) & (line.lm_loss < 6))
    np.testing.assert_allclose(line.perplexity, np.exp(line.lm_loss), rtol=1e-6)
    assert (out / "lm_connectivity.png").stat().st_size > 10_000
