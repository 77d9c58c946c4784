"""Figure: the top Hessian eigenvalue (and trace) along the path between two MLPs, before and
after aligning their hidden units, beside the loss.

    python analyses/curvature_path.py --out results/curvature_path [--width 128] [--depth 2] [--quick]

Trains two MLPs on mnist1d from different seeds, aligns the second to the first by weight
matching, and computes the training loss, the top eigenvalue of the loss Hessian and its
trace (Hutchinson) at every point of the straight line between them: the vanilla path
a -> b and the aligned path a -> b_aligned. Writes ``curvature_path.nc`` (dims ``path`` and
``alpha``) and ``curvature_path.png``; a killed run resumes (points are written as they are
computed).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import xarray as xr

import landscape as ls
from landscape import plot
from landscape.alignment import align
from landscape.curvature import curvature


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results/curvature_path")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--alphas", type=int, default=11)
    parser.add_argument("--probes", type=int, default=50, help="Hutchinson probes per point")
    parser.add_argument("--seed", type=int, default=0, help="the networks use init seeds 2s and 2s+1")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="tiny settings to check the script runs")
    args = parser.parse_args()
    ls.set_num_threads(args.threads)
    sizes = {}
    if args.quick:
        args.width, args.depth, args.epochs, args.alphas, args.probes = 16, 1, 3, 3, 4
        sizes = {"n_train": 300, "n_test": 100}
    out = Path(args.out)
    data = ls.datasets.mnist1d(**sizes)
    model = ls.models.create("mlp", width=args.width, depth=args.depth)
    a, b = (
        ls.train(model, data, epochs=args.epochs, schedule="cosine", init_seed=s, data_seed=s, progress=False).state
        for s in (2 * args.seed, 2 * args.seed + 1)
    )
    b_aligned = align(model, a, b, method="weights", progress=False).apply(b)
    paths = {"vanilla": b, "weight matching": b_aligned}
    results = {}
    for name, end in paths.items():
        line = ls.AffineFamily.line(a, end, alphas=args.alphas)
        results[name] = curvature(
            model,
            line,
            data,
            statistics=("top_eigenvalue", "trace", "loss"),
            probes=args.probes,
            out=out / name.replace(" ", "_"),
            progress=False,
        )
    combined = xr.concat(list(results.values()), dim="path", combine_attrs="drop_conflicts")
    combined = combined.assign_coords(path=list(results))
    ls.save_result(combined, out / "curvature_path.nc")

    print("train loss, top Hessian eigenvalue and trace along the two paths:")
    table = combined[["loss", "top_eigenvalue", "trace"]].to_dataframe().unstack("path")
    print(table.to_string(float_format=lambda v: f"{v:.4g}"))

    fig, axes = plt.subplots(1, 3, figsize=(12.6, 3.6), constrained_layout=True)
    for (name, ds), color in zip(results.items(), ("C3", "C0")):
        plot.curvature_curve(ds, list(axes), statistics=("top_eigenvalue", "trace"), label_prefix=name, color=color)
    axes[0].set_title(f"MLP {args.width}x{args.depth} on mnist1d: training loss", fontsize="medium")
    axes[1].set_title("top eigenvalue of the Hessian", fontsize="medium")
    axes[2].set_title("trace of the Hessian (± 2 s.e.)", fontsize="medium")
    fig.savefig(out / "curvature_path.png", dpi=150)
    print(f"wrote {out / 'curvature_path.nc'} and curvature_path.png")


if __name__ == "__main__":
    main()
