"""The lottery figures draw results of the right shapes and return their Axes."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

from landscape import plot  # noqa: E402


def _history(seeds: int) -> xr.Dataset:
    rng = np.random.default_rng(0)
    acc = rng.uniform(0.4, 0.6, size=(seeds, 4, 3, 2, 2))
    return xr.Dataset(
        {"accuracy": (("seed", "epoch", "net", "probe", "scaling"), acc)},
        coords={
            "seed": range(seeds),
            "epoch": range(4),
            "net": ["student", "teacher", "teacher_calibrated"],
            "probe": ["linear", "knn"],
            "scaling": ["raw", "standardized"],
        },
    )


def test_all_figures_return_axes() -> None:
    import matplotlib.pyplot as plt

    assert plot.probe_history(_history(3)) is not None
    assert plot.probe_history(_history(1).isel(seed=0), probe="knn").get_xlabel() == "distillation epoch"
    locality = _history(2).isel(epoch=-1, drop=True).rename(net="net").expand_dims(alpha_init=[1e-10, 0.1, 1.0])
    assert plot.locality(locality).get_xscale() == "log"
    imp = xr.Dataset(
        {"test_accuracy": (("seed", "round", "branch"), np.full((2, 3, 3), 0.8))},
        coords={"round": [0, 1, 2], "branch": ["imp", "reinit", "random_mask"], "density": ("round", [1, 0.8, 0.64])},
    )
    assert len(plot.imp(imp).get_lines()) == 3
    basins = xr.Dataset(
        {"error_barrier": (("start", "split"), [[0.1, 0.12], [0.01, 0.0]])},
        coords={"start": ["init", "student"], "split": ["train", "test"]},
        attrs={"threshold": 0.02},
    )
    _, ax = plt.subplots()
    assert plot.basins(basins, ax=ax) is ax
    plt.close("all")
