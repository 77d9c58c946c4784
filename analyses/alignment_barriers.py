"""Table and figure: barriers between independently trained MLPs on mnist1d, before and after
each alignment method, with and without REPAIR (the shape of Jordan et al.'s MNIST MLP table).

    python analyses/alignment_barriers.py --out results/alignment_barriers \\
        [--widths 32,128,512] [--depths 1] [--pairs 3] [--epochs 100] [--norm none] [--quick]

For every (width, depth) it trains ``--pairs`` pairs of MLPs from different seeds to
convergence, aligns the second model of each pair to the first by weight matching,
activation matching, exact optimal transport and Sinkhorn transport, and interpolates
between them with no correction, with REPAIR, and (for ``--norm batch``) with BatchNorm
statistics reset. One netCDF file per (width, depth, pair) is written as it finishes, so a
killed run resumes; ``table.csv`` holds midpoint test accuracy and barriers, mean and
standard deviation over the pairs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import xarray as xr

import landscape as ls
from landscape.alignment import align, repair
from landscape.connectivity import barriers, interpolate
from landscape.core.io import ResumableRun

METHODS = ("none", "weights", "activations", "ot", "sinkhorn")


def one_pair(model, data, a, b, *, alphas: int, norm: str, reg: float) -> xr.Dataset:
    """Curves and barriers for every method and correction, over (alignment, correction, alpha, split)."""
    rows = []
    seconds = {}
    corrections = ["none", "repair"] + (["bn_reset"] if norm == "batch" else [])
    for method in METHODS:
        started = time.perf_counter()
        if method == "none":
            aligned = b
        else:
            aligned = align(model, a, b, method=method, data=data, reg=reg, progress=False).apply(b)
        seconds[method] = time.perf_counter() - started
        per_correction = []
        for correction in corrections:
            options = {"alphas": alphas, "progress": False}
            if correction == "repair":
                options["correct"] = repair(model, a, aligned, data)
            elif correction == "bn_reset":
                options["bn"] = "reset"
            curve = interpolate(model, a, aligned, data, **options)
            curve = xr.merge([curve, barriers(curve)], combine_attrs="override")
            per_correction.append(curve.drop_vars([v for v in curve.data_vars if v == "nonfinite"]))
        rows.append(xr.concat(per_correction, dim="correction", combine_attrs="override"))
    # "alignment", not "method": xarray's .sel() takes a keyword of that name
    result = xr.concat(rows, dim="alignment", combine_attrs="override")
    result = result.assign_coords(alignment=list(METHODS), correction=corrections)
    result["align_seconds"] = ("alignment", np.array([seconds[m] for m in METHODS]))
    return result


def summarize(combined: xr.Dataset) -> list[dict[str, object]]:
    rows = []
    test = combined.sel(split="test")
    train = combined.sel(split="train")
    mid = test.accuracy.sel(alpha=0.5, method="nearest")
    train_mid = train.accuracy.sel(alpha=0.5, method="nearest")
    ends = (test.accuracy.isel(alpha=0) + test.accuracy.isel(alpha=-1)) / 2
    for width in combined.width.values:
        for depth in combined.depth.values:
            for method in combined.alignment.values:
                for correction in combined.correction.values:
                    sel = {"width": width, "depth": depth, "alignment": method, "correction": correction}
                    m = mid.sel(sel)
                    if np.all(np.isnan(m.values)):
                        continue
                    e = ends.sel(sel)
                    loss_b = test.loss_barrier.sel(kind="max_minus_mean").sel(sel)
                    loss_mid = test.loss_barrier.sel(kind="midpoint").sel(sel)
                    train_loss_b = train.loss_barrier.sel(kind="max_minus_mean").sel(sel)
                    err_b = test.error_barrier.sel(kind="max_minus_mean").sel(sel)
                    secs = combined.align_seconds.sel({"width": width, "depth": depth, "alignment": method})
                    rows.append(
                        {
                            "width": int(width),
                            "depth": int(depth),
                            "method": str(method),
                            "correction": str(correction),
                            "endpoints_test_acc_mean": float(e.mean()),
                            "midpoint_test_acc_mean": float(m.mean()),
                            "midpoint_test_acc_std": float(m.std()),
                            "train_midpoint_acc_mean": float(train_mid.sel(sel).mean()),
                            "test_loss_barrier_mean": float(loss_b.mean()),
                            "test_loss_barrier_std": float(loss_b.std()),
                            "test_loss_barrier_midpoint_mean": float(loss_mid.mean()),
                            "test_loss_barrier_midpoint_std": float(loss_mid.std()),
                            "train_loss_barrier_mean": float(train_loss_b.mean()),
                            "train_loss_barrier_std": float(train_loss_b.std()),
                            "test_error_barrier_mean": float(err_b.mean()),
                            "test_error_barrier_std": float(err_b.std()),
                            "align_seconds_mean": float(secs.mean()),
                            "pairs": int(m.count()),
                        }
                    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results/alignment_barriers")
    parser.add_argument("--widths", default="32,128,512")
    parser.add_argument("--depths", default="1")
    parser.add_argument("--pairs", type=int, default=3, help="seed pairs per configuration")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--norm", default="none", choices=("none", "batch", "layer"))
    parser.add_argument("--alphas", type=int, default=25)
    parser.add_argument("--reg", type=float, default=0.01, help="Sinkhorn regularisation")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="tiny settings to check the script runs")
    args = parser.parse_args()
    ls.set_num_threads(args.threads)
    widths = [int(w) for w in args.widths.split(",")]
    depths = [int(d) for d in args.depths.split(",")]
    epochs, sizes = (2, {"n_train": 400, "n_test": 200}) if args.quick else (args.epochs, {})
    alphas = 5 if args.quick else args.alphas
    data = ls.datasets.mnist1d(**sizes)
    settings = {
        "widths": widths,
        "depths": depths,
        "pairs": args.pairs,
        "epochs": epochs,
        "lr": args.lr,
        "norm": args.norm,
        "alphas": alphas,
        "reg": args.reg,
        "data": sizes,
    }
    run = ResumableRun(args.out, settings, function="alignment_barriers")
    parts = []
    for depth in depths:
        for width in widths:
            model = ls.models.create("mlp", width=width, depth=depth, norm=args.norm)
            for pair in range(args.pairs):
                step = f"width{width}-depth{depth}-pair{pair}"
                if not run.done(step):
                    started = time.perf_counter()
                    trained = [
                        ls.train(
                            model,
                            data,
                            epochs=epochs,
                            lr=args.lr,
                            schedule="cosine",
                            init_seed=s,
                            data_seed=s,
                            progress=False,
                        )
                        for s in (2 * pair, 2 * pair + 1)
                    ]
                    a, b = (t.state for t in trained)
                    result = one_pair(model, data, a, b, alphas=alphas, norm=args.norm, reg=args.reg)
                    final = [float(t.history.loss[-32:].mean()) for t in trained]
                    result["final_train_loss"] = ("endpoint", np.array(final))
                    result = result.expand_dims(width=[width], depth=[depth], pair=[pair])
                    run.save(step, result)
                    print(f"{step}: {time.perf_counter() - started:.0f} s", flush=True)
                parts.append(run.load(step))
    combined = xr.combine_by_coords(parts, combine_attrs="drop_conflicts")
    ls.save_result(combined, Path(args.out) / "combined.nc")
    rows = summarize(combined)
    import csv

    with open(Path(args.out) / "table.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print("midpoint test accuracy and test loss barrier (max_minus_mean), mean ± std over pairs:")
    for r in rows:
        print(
            f"  width {r['width']:4d} depth {r['depth']} {r['method']:12s} {r['correction']:8s} "
            f"ends {r['endpoints_test_acc_mean']:.3f}  "
            f"mid {r['midpoint_test_acc_mean']:.3f} ± {r['midpoint_test_acc_std']:.3f}  "
            f"loss barrier {r['test_loss_barrier_mean']:.3f} ± {r['test_loss_barrier_std']:.3f} "
            f"(midpoint {r['test_loss_barrier_midpoint_mean']:.3f}; train {r['train_loss_barrier_mean']:.3f})  "
            f"align {r['align_seconds_mean']:.2f} s"
        )
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from landscape.plot.alignment import alignment_barriers

        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True, constrained_layout=True)
        alignment_barriers(combined, axes[0], correction="none")
        alignment_barriers(combined, axes[1], correction="repair")
        fig.savefig(Path(args.out) / "alignment_barriers.png", dpi=150)
    except ImportError:
        pass
    print(f"wrote {Path(args.out) / 'combined.nc'} and table.csv")


if __name__ == "__main__":
    main()
