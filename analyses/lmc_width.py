"""Figure: interpolation curves between independently trained MLPs of increasing width on mnist1d.

    python analyses/lmc_width.py --out results/lmc_width [--widths 32,128,512] [--seeds 3] [--quick] [--workers N]

For each width, trains pairs of MLPs (one hidden layer) from different seeds, interpolates
between each pair and records the loss and error barriers. The (width, pair) cells are a
``landscape.distributed.sweep``: in this process by default, as tasks on a local Dask cluster
with ``--workers N`` or on a running one with ``--scheduler ADDRESS``. Results are written as
they come (one netCDF file per cell), so a killed run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import xarray as xr

import landscape as ls
from landscape import connectivity, plot
from landscape.distributed import local_cluster, sweep


def pair_curve(width: int, pair: int, *, data: ls.Splits, epochs: int) -> xr.Dataset:
    """One cell: train MLPs of this width from seeds 2 * pair and 2 * pair + 1, interpolate."""
    model = ls.models.create("mlp", width=width, depth=1)
    a, b = (
        ls.train(model, data, epochs=epochs, schedule="cosine", init_seed=s, data_seed=s, progress=False).state
        for s in (2 * pair, 2 * pair + 1)
    )
    curve = connectivity.interpolate(model, a, b, data, alphas=25, progress=False)
    return xr.merge([curve, connectivity.barriers(curve)], combine_attrs="override")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results/lmc_width")
    parser.add_argument("--widths", default="32,128,512")
    parser.add_argument("--seeds", type=int, default=3, help="seed pairs per width")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="tiny settings to check the script runs")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, default=None, help="run the cells on a local Dask cluster of N workers")
    where.add_argument("--scheduler", default=None, help="run the cells on the Dask cluster at this address")
    args = parser.parse_args()
    ls.set_num_threads(args.threads)
    widths = [int(w) for w in args.widths.split(",")]
    epochs, sizes = (2, {"n_train": 400, "n_test": 200}) if args.quick else (args.epochs, {})
    if args.quick:
        args.seeds = 1
    data = ls.datasets.mnist1d(**sizes)
    cluster = local_cluster(args.workers) if args.workers else contextlib.nullcontext(args.scheduler)
    with cluster as client:
        combined = sweep(
            pair_curve,
            {"width": widths, "pair": list(range(args.seeds))},
            shared={"data": data, "epochs": epochs},
            out=args.out,
            client=client,
        )
    ls.save_result(combined, Path(args.out) / "combined.nc")
    table = combined.error_barrier.sel(kind="max_minus_mean", split="test") * 100
    print("test error barrier (max_minus_mean, percentage points), mean ± std over seed pairs:")
    for width in widths:
        values = table.sel(width=width)
        print(f"  width {width:4d}: {float(values.mean()):5.1f} ± {float(values.std()):4.1f}")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
    mean = combined.mean("pair")
    plot.curves({f"width {w}": mean.sel(width=w) for w in widths}, axes[0], metric="accuracy", split="test")
    plot.curves({f"width {w}": mean.sel(width=w) for w in widths}, axes[1], metric="loss", split="test")
    axes[0].set_title("test accuracy between independent MLPs", fontsize="medium")
    axes[1].set_title("test loss between independent MLPs", fontsize="medium")
    fig.savefig(Path(args.out) / "lmc_width.png", dpi=150)
    print(f"wrote {Path(args.out) / 'combined.nc'} and lmc_width.png")


if __name__ == "__main__":
    main()
