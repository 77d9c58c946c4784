"""``landscape demo``: the linear-mode-connectivity tour in about a minute on 2 CPU cores.

Trains two MLPs on mnist1d from different seeds, interpolates between them, tabulates the
barrier in all three definitions, aligns the second network to the first (weight matching,
activation matching, optimal transport; each with and without REPAIR) and interpolates again,
maps a filter-normalised random surface around the first network, and writes ``demo.nc``
(one netCDF group per result) and ``demo.png``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import xarray as xr

import landscape as ls
from landscape import alignment, connectivity
from landscape.symmetry import symmetry_graph

METHODS = ("weights", "activations", "ot")


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
    a, b = (
        ls.train(
            model,
            data,
            epochs=settings.epochs,
            lr=settings.lr,
            schedule="cosine",
            init_seed=s,
            data_seed=s,
            progress=progress,
        ).state
        for s in (seed, seed + 1)
    )

    curves = {"vanilla": connectivity.interpolate(model, a, b, data, alphas=settings.alphas, progress=progress)}
    graph = symmetry_graph(model)
    for method in METHODS:
        b_aligned = alignment.align(model, a, b, method=method, data=data, graph=graph, progress=progress).apply(b)
        curves[method] = connectivity.interpolate(model, a, b_aligned, data, alphas=settings.alphas, progress=progress)
        fix = alignment.repair(model, a, b_aligned, data, graph=graph)
        curves[f"{method} + REPAIR"] = connectivity.interpolate(
            model, a, b_aligned, data, alphas=settings.alphas, correct=fix, progress=progress
        )
    table = connectivity.barriers(curves["vanilla"])
    surface = connectivity.random_plane(
        model,
        a,
        {"test": data.test},
        span=settings.surface_span,
        resolution=settings.surface_resolution,
        seed=seed,
        progress=progress,
    )
    results = {
        "curve": curves["vanilla"],
        "barriers": table,
        "surface": surface,
        **{f"curve_{_slug(name)}": ds for name, ds in curves.items() if name != "vanilla"},
    }
    nc = ls.save_result(results, out / "demo.nc")
    png = out / "demo.png"
    figure(curves, surface).savefig(png, dpi=150)

    print(summary(curves, table))
    print(f"\nwrote {nc} (groups: {', '.join(results)}) and {png} in {time.perf_counter() - started:.0f} s")
    print(f"open it with: landscape.load_result({str(nc)!r}, group='curve')")
    return {"result": nc, "figure": png}


def _slug(name: str) -> str:
    return name.replace(" + ", "_").replace(" ", "_").lower()


def summary(curves: dict[str, xr.Dataset], table: xr.Dataset) -> str:
    """Endpoint and midpoint accuracy, the vanilla barrier table, and the aligned curves, in
    percent and percentage points (the saved results hold fractions)."""
    vanilla = curves["vanilla"].accuracy.sel(split="test")
    lines = [
        f"test accuracy: endpoint a {float(vanilla.isel(alpha=0)):.1%}, endpoint b {float(vanilla.isel(alpha=-1)):.1%}",
        "",
        "barriers between the two networks (loss in nats, error in percentage points):",
    ]
    frame = table.to_dataframe()
    frame["error_barrier"] *= 100
    lines.append(frame.unstack("split").to_string(float_format=lambda v: f"{v:.3f}"))
    rows = []
    for name, curve in curves.items():
        rows.append(
            {
                "curve": name,
                "midpoint test accuracy (%)": 100 * float(curve.accuracy.sel(split="test").interp(alpha=0.5)),
                "test loss barrier (nats)": float(connectivity.barrier(curve, metric="loss").sel(split="test")),
                "test error barrier (pp)": 100 * float(connectivity.barrier(curve, metric="error").sel(split="test")),
            }
        )
    lines += [
        "",
        "after aligning b to a (percent and percentage points; barriers: max over alpha minus the mean of the"
        " endpoints):",
        pd.DataFrame(rows).set_index("curve").to_string(float_format=lambda v: f"{v:.3f}"),
    ]
    return "\n".join(lines)


def figure(curves: dict[str, xr.Dataset], surface: xr.Dataset):
    """Loss along the vanilla line, test accuracy and loss along every curve, and the surface."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from landscape import plot

    fig, axes = plt.subplots(1, 4, figsize=(19, 4), constrained_layout=True)
    plot.curve(curves["vanilla"], [axes[0]], metrics=("loss",))
    axes[0].set_title("loss between two independently trained MLPs", fontsize="medium")
    colors = {"vanilla": "0.3", **{m: f"C{i}" for i, m in enumerate(METHODS)}}
    styles = {
        name: {"color": colors[name.split(" + ")[0]], "linestyle": "--" if "REPAIR" in name else "-"} for name in curves
    }
    plot.curves(curves, axes[1], metric="accuracy", split="test", styles=styles)
    axes[1].set_title("after aligning the second to the first", fontsize="medium")
    axes[1].legend(loc="lower center", ncol=2, fontsize="small", frameon=False)
    plot.curves(curves, axes[2], metric="loss", split="test", styles=styles)
    axes[2].set_title("test loss, same curves", fontsize="medium")
    axes[2].get_legend().remove()
    plot.surface(surface, axes[3], log_levels=True)
    axes[3].set_title("test loss around a (random filter-normalised plane)", fontsize="medium")
    return fig
