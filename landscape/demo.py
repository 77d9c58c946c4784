"""``landscape demo``: train two small models on mnist1d and evaluate them.

The connectivity analysis replaces this with the linear-mode-connectivity tour.
"""

from __future__ import annotations

import time
from pathlib import Path

import landscape as ls


def run(out: Path, *, seed: int = 0, quick: bool = False, progress: bool = True) -> dict[str, Path]:
    """Train two MLPs with seeds ``seed`` and ``seed + 1`` and evaluate both on train and test."""
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    data = ls.datasets.mnist1d(n_train=500 if quick else 4000, n_test=200 if quick else 1000)
    epochs = 2 if quick else 30
    states = {}
    for s in (seed, seed + 1):
        model = ls.models.create("mlp", width=128, depth=2, seed=s)
        result = ls.train(model, data, epochs=epochs, lr=0.05, data_seed=s, progress=progress)
        states[f"seed{s}"] = result.state
    result = ls.evaluate(model, states, data, progress=progress)
    path = ls.save_result(result, out / "demo.nc")
    print(result.to_dataframe().to_string(float_format=lambda v: f"{v:.4f}"))
    print(f"wrote {path} in {time.perf_counter() - started:.0f} s")
    return {"result": path}
