"""analyses/curvature_path.py runs at tiny settings and writes what its figure shows."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest

import landscape as ls

matplotlib.use("Agg")

ANALYSES = Path(__file__).resolve().parents[2] / "analyses"


def test_curvature_path_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["curvature_path.py", "--quick", "--out", str(out), "--threads", "1"])
    try:
        runpy.run_path(str(ANALYSES / "curvature_path.py"), run_name="__main__")
    except SystemExit as done:
        assert done.code in (0, None)
    result = ls.load_result(out / "curvature_path.nc")
    assert list(result.path.values) == ["vanilla", "weight matching"]
    assert result.top_eigenvalue.dims == ("path", "alpha") and result.sizes["alpha"] == 3
    assert np.isfinite(result.top_eigenvalue).all() and (result.top_eigenvalue > 0).all()
    assert (result.loss > 0).all() and (result.loss < 10).all()
    # Both paths start at the same network, so their first points agree exactly.
    first = result.isel(alpha=0)
    assert float(first.loss.sel(path="vanilla")) == float(first.loss.sel(path="weight matching"))
    assert float(first.top_eigenvalue.sel(path="vanilla")) == pytest.approx(
        float(first.top_eigenvalue.sel(path="weight matching")), rel=1e-6
    )
    # b and its aligned copy are the same function with permuted units: same spectrum.
    last = result.top_eigenvalue.isel(alpha=-1)
    assert float(last.sel(path="vanilla")) == pytest.approx(float(last.sel(path="weight matching")), rel=2e-3)
    assert (out / "curvature_path.png").stat().st_size > 10_000
