"""The GPU benchmark runs on the CPU at tiny settings, so it cannot rot between GPU runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_benchmark_runs_tiny_on_the_cpu() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--device", "cpu", "--tiny", "--threads", "1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "matmul TFLOP/s: float32" in out
    rows = [line for line in out.splitlines() if " line " in line or "plane" in line]
    # five cases, each with the plain loop and every variant
    assert sum("plain loop" in r for r in rows) == 5
    assert sum(" auto " in r and "auto bf16" not in r for r in rows) == 5
    for row in rows:
        if "plain loop" not in row and "skipped" not in row:
            assert float(row.split()[-1]) < 1e-3  # max relative difference from the plain loop
    assert "landscape.train" in out and "plain PyTorch loop" in out
