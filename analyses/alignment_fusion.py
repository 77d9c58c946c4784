"""Table and figure: fused MLPs on mnist1d against their parents, vanilla averaging and the
ensemble (Singh & Jaggi 2020), including fusion into a narrower model.

    python analyses/alignment_fusion.py --out results/alignment_fusion \\
        [--width 128] [--parents 2] [--seeds 3] [--epochs 100] [--finetune-epochs 5] [--quick]

For each of ``--seeds`` groups of ``--parents`` MLPs (one hidden layer) trained from different
seeds it records the test accuracy of: every parent, the vanilla average (no alignment), the
fusion after exact OT, Sinkhorn, weight matching and activation matching (each with and
without REPAIR), fusion into half the width (with and without REPAIR), the half-width anchor
restricted to its largest units, a half-width model trained from scratch, the OT fusions
after ``--finetune-epochs`` of training, and the ensemble (mean of the parents' softmax).
One netCDF file per group is written as it finishes; ``table.csv`` holds mean and standard
deviation over the groups.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr

import landscape as ls
from landscape.alignment import fuse
from landscape.core.io import ResumableRun
from landscape.core.metrics import model_output_logits
from landscape.core.state import lerp


def test_accuracy(model, state, data) -> float:
    x, y = data.test
    with torch.no_grad():
        logits = model_output_logits(torch.func.functional_call(model, dict(state), (x,)))
    return float((logits.argmax(-1) == y).float().mean())


def ensemble_accuracy(model, states, data) -> float:
    x, y = data.test
    with torch.no_grad():
        probs = sum(torch.softmax(torch.func.functional_call(model, dict(s), (x,)), -1) for s in states)
    return float((probs.argmax(-1) == y).float().mean())


def one_group(args, data, group: int, epochs: int) -> xr.Dataset:
    model = ls.models.create("mlp", width=args.width, depth=1)
    narrow = ls.models.create("mlp", width=args.width // 2, depth=1)
    train = {"epochs": epochs, "lr": args.lr, "schedule": "cosine", "progress": False}
    seeds = [group * args.parents + i for i in range(args.parents)]
    parents = [ls.train(model, data, init_seed=s, data_seed=s, **train).state for s in seeds]
    rows: dict[str, float] = {}
    seconds: dict[str, float] = {}
    for i, p in enumerate(parents):
        rows[f"parent {i}"] = test_accuracy(model, p, data)
    average = parents[0]
    for i, p in enumerate(parents[1:], start=2):
        average = lerp(average, p, 1.0 / i)
    rows["vanilla average"] = test_accuracy(model, average, data)
    fused_ot = None
    for method in ("ot", "sinkhorn", "weights", "activations"):
        for use_repair in (False, True):
            started = time.perf_counter()
            fused = fuse(model, parents, method=method, data=data, repair=use_repair, reg=args.reg, progress=False)
            name = f"fused {method}" + (" + repair" if use_repair else "")
            seconds[name] = time.perf_counter() - started
            rows[name] = test_accuracy(model, fused, data)
            if method == "ot" and not use_repair:
                fused_ot = fused
    for use_repair in (False, True):
        started = time.perf_counter()
        fused = fuse(model, parents, target_model=narrow, data=data, repair=use_repair, progress=False)
        name = f"fused ot, width {args.width // 2}" + (" + repair" if use_repair else "")
        seconds[name] = time.perf_counter() - started
        rows[name] = test_accuracy(narrow, fused, data)
    # the starting point of narrow fusion: the anchor's largest units
    restricted = fuse(model, parents, target_model=narrow, iterations=0, progress=False)
    rows[f"anchor restricted to width {args.width // 2}"] = test_accuracy(narrow, restricted, data)
    scratch = ls.train(narrow, data, init_seed=1000 + group, data_seed=1000 + group, **train).state
    rows[f"trained at width {args.width // 2}"] = test_accuracy(narrow, scratch, data)
    if args.finetune_epochs:
        tuned = ls.train(
            model, data, start=fused_ot, data_seed=2000 + group, **{**train, "epochs": args.finetune_epochs}
        )
        rows[f"fused ot + {args.finetune_epochs} epochs"] = test_accuracy(model, tuned.state, data)
        tuned = ls.train(
            model, data, start=average, data_seed=2000 + group, **{**train, "epochs": args.finetune_epochs}
        )
        rows[f"vanilla average + {args.finetune_epochs} epochs"] = test_accuracy(model, tuned.state, data)
    rows["ensemble"] = ensemble_accuracy(model, parents, data)
    names = list(rows)
    return xr.Dataset(
        {
            "test_accuracy": ("model", np.array([rows[n] for n in names])),
            "seconds": ("model", np.array([seconds.get(n, np.nan) for n in names])),
        },
        coords={"model": names},
    ).expand_dims(seed=[group])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results/alignment_fusion")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--parents", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=3, help="independent groups of parents")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--finetune-epochs", type=int, default=5)
    parser.add_argument("--reg", type=float, default=0.01, help="Sinkhorn regularisation")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="tiny settings to check the script runs")
    args = parser.parse_args()
    ls.set_num_threads(args.threads)
    epochs, sizes = (2, {"n_train": 400, "n_test": 200}) if args.quick else (args.epochs, {})
    if args.quick:
        args.finetune_epochs = min(args.finetune_epochs, 1)
    data = ls.datasets.mnist1d(**sizes)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "threads", "quick")}
    run = ResumableRun(args.out, {**settings, "epochs": epochs, "data": sizes}, function="alignment_fusion")
    parts = []
    for group in range(args.seeds):
        step = f"group{group}"
        if not run.done(step):
            started = time.perf_counter()
            run.save(step, one_group(args, data, group, epochs))
            print(f"{step}: {time.perf_counter() - started:.0f} s", flush=True)
        parts.append(run.load(step))
    combined = xr.concat(parts, dim="seed")
    ls.save_result(combined, Path(args.out) / "combined.nc")
    acc = combined.test_accuracy
    with open(Path(args.out) / "table.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "test_accuracy_mean", "test_accuracy_std", "groups", "seconds_mean"])
        for name in acc.model.values:
            values = acc.sel(model=name)
            secs = combined.seconds.sel(model=name)
            writer.writerow(
                [
                    name,
                    f"{float(values.mean()):.4f}",
                    f"{float(values.std()):.4f}",
                    int(values.count()),
                    f"{float(secs.mean()):.2f}",
                ]
            )
    print(f"test accuracy, mean ± std over {args.seeds} groups of {args.parents} parents (width {args.width}):")
    for name in acc.model.values:
        values = acc.sel(model=name)
        print(f"  {name:36s} {float(values.mean()):.4f} ± {float(values.std()):.4f}")
    import matplotlib

    matplotlib.use("Agg")
    from landscape.plot.alignment import fusion_accuracy

    ax = fusion_accuracy(combined)
    ax.figure.savefig(Path(args.out) / "alignment_fusion.png", dpi=150, bbox_inches="tight")
    print(f"wrote {Path(args.out) / 'combined.nc'} and table.csv")


if __name__ == "__main__":
    main()
