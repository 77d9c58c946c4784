"""Figure: interpolation curves between independently trained MLPs of increasing width on mnist1d.

    python analyses/lmc_width.py --out results/lmc_width [--widths 32,128,512] [--seeds 3] [--quick]

For each width, trains pairs of MLPs (one hidden layer) from different seeds, interpolates
between each pair and records the loss and error barriers. Results are written as they come
(one netCDF file per width and seed pair), so a killed run resumes where it stopped.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import xarray as xr

import landscape as ls
from landscape import connectivity, plot
from landscape.core.io import ResumableRun


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results/lmc_width")
    parser.add_argument("--widths", default="32,128,512")
    parser.add_argument("--seeds", type=int, default=3, help="seed pairs per width")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="tiny settings to check the script runs")
    args = parser.parse_args()
    ls.set_num_threads(args.threads)
    widths = [int(w) for w in args.widths.split(",")]
    epochs, sizes = (2, {"n_train": 400, "n_test": 200}) if args.quick else (args.epochs, {})
    if args.quick:
        args.seeds = 1
    data = ls.datasets.mnist1d(**sizes)
    run = ResumableRun(
        args.out, {"widths": widths, "seeds": args.seeds, "epochs": epochs, "data": sizes}, function="lmc_width"
    )
    curves = []
    for width in widths:
        model = ls.models.create("mlp", width=width, depth=1)
        for pair in range(args.seeds):
            step = f"width{width}-pair{pair}"
            if not run.done(step):
                a, b = (
                    ls.train(
                        model, data, epochs=epochs, schedule="cosine", init_seed=s, data_seed=s, progress=False
                    ).state
                    for s in (2 * pair, 2 * pair + 1)
                )
                curve = connectivity.interpolate(model, a, b, data, alphas=25, progress=False)
                curve = xr.merge([curve, connectivity.barriers(curve)], combine_attrs="override")
                run.save(step, curve.expand_dims(width=[width], pair=[pair]))
            curves.append(run.load(step))
    combined = xr.combine_by_coords(curves, combine_attrs="drop_conflicts")
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
