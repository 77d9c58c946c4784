"""``landscape demo``: the linear-mode-connectivity tour in about a minute on 2 CPU cores.

Trains two MLPs on mnist1d from different seeds, interpolates between them, tabulates the
barrier in all three definitions, maps a filter-normalised random surface around one of
them, and writes ``demo.nc`` (one netCDF group per result) and ``demo.png``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import xarray as xr

import landscape as ls
from landscape import connectivity


@dataclass(frozen=True)
class DemoSettings:
    width: int = 256
    depth: int = 2
    epochs: int = 40
    lr: float = 0.05
    n_train: int = 4000
    n_test: int = 1000
    alphas: int = 25
    surface_resolution: int = 21
    surface_span: float = 1.0


QUICK = DemoSettings(width=32, depth=1, epochs=2, n_train=500, n_test=200, alphas=5, surface_resolution=5)


def run(out: Path, *, seed: int = 0, quick: bool = False, progress: bool = True) -> dict[str, Path]:
    """Run the demo into folder ``out``; returns the paths of ``demo.nc`` and ``demo.png``."""
    settings = QUICK if quick else DemoSettings()
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    data = ls.datasets.mnist1d(n_train=settings.n_train, n_test=settings.n_test)
    model = ls.models.create("mlp", width=settings.width, depth=settings.depth, seed=seed)
    endpoints = []
    for s in (seed, seed + 1):
        result = ls.train(
            model,
            data,
            epochs=settings.epochs,
            lr=settings.lr,
            schedule="cosine",
            init_seed=s,
            data_seed=s,
            progress=progress,
        )
        endpoints.append(result.state)
    a, b = endpoints

    curve = connectivity.interpolate(model, a, b, data, alphas=settings.alphas, progress=progress)
    table = connectivity.barriers(curve)
    surface = connectivity.random_plane(
        model,
        a,
        {"test": data.test},
        span=settings.surface_span,
        resolution=settings.surface_resolution,
        seed=seed,
        progress=progress,
    )
    results = {"curve": curve, "barriers": table, "surface": surface}
    nc = ls.save_result(results, out / "demo.nc")
    png = out / "demo.png"
    figure(curve, surface).savefig(png, dpi=150)

    print(summary(curve, table))
    print(f"\nwrote {nc} (groups: {', '.join(results)}) and {png} in {time.perf_counter() - started:.0f} s")
    print(f"open it with: landscape.load_result({str(nc)!r}, group='curve')")
    return {"result": nc, "figure": png}


def summary(curve: xr.Dataset, table: xr.Dataset) -> str:
    """Endpoint and midpoint accuracy, and the barrier table, as text."""
    lines = [
        "test accuracy: endpoint a {:.1%}, endpoint b {:.1%}, midpoint {:.1%}".format(
            float(curve.accuracy.sel(split="test").isel(alpha=0)),
            float(curve.accuracy.sel(split="test").isel(alpha=-1)),
            float(curve.accuracy.sel(split="test").interp(alpha=0.5)),
        ),
        "",
        "barriers (loss in nats, error in percentage points):",
    ]
    frame = table.to_dataframe()
    frame["error_barrier"] *= 100
    lines.append(frame.unstack("split").to_string(float_format=lambda v: f"{v:.3f}"))
    return "\n".join(lines)


def figure(curve: xr.Dataset, surface: xr.Dataset):
    """Loss and accuracy along the line, and the random-direction surface around endpoint a."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from landscape import plot

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), constrained_layout=True)
    plot.curve(curve, axes[:2])
    axes[0].set_title("loss between two independently trained MLPs", fontsize="medium")
    axes[1].set_title("accuracy between them", fontsize="medium")
    plot.surface(surface, axes[2], log_levels=True)
    axes[2].set_title("test loss around a (random filter-normalised plane)", fontsize="medium")
    return fig
