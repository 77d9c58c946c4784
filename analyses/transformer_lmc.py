"""Table: linear mode connectivity of transformers trained from different seeds, before and
after aligning them with each class of symmetry of Theus et al. (2025), and transformer fusion
(Imfeld et al. 2023).

    python analyses/transformer_lmc.py --out results/transformer_lmc [--pairs 3] [--quick]

Trains ``2 x --pairs`` zoo ViTs on sklearn's digits and zoo GPTs on character-level Python
docstrings (``landscape.datasets.docstrings``) from different seeds, then for every pair
aligns the second to the first with permutations only, with orthogonal maps where the graph
allows them (the residual stream, every head's coordinates), and with the full set of Theus et
al. (orthogonal residual stream, invertible per-head query/key and value maps, permutations of
heads and MLP units): first by weight matching (closed form), then refined by gradient
descent on the training loss of interpolated networks (``method="learned"``, the learned
alignment of the paper), and evaluates every linear path against vanilla averaging. For the
ViTs it also fuses each pair, by OT fusion (Imfeld et al.: transport of units, heads as
units) and by the learned alignment, and fine-tunes each fused network for one epoch.

Every model and every pair's result is written as it finishes, so a killed run resumes.
``table.csv`` holds mean and standard deviation over the pairs (fractions; the printed
table shows percentage points). ``--quick`` (or ``LANDSCAPE_TINY=1``) runs tiny settings.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import xarray as xr

import landscape as ls
from landscape.alignment import align, fuse
from landscape.connectivity import barriers, interpolate
from landscape.core.io import ResumableRun

ALIGNMENTS = {
    "vanilla": None,
    "permutation": {"kinds": "permutation"},
    "orthogonal": {"kinds": "orthogonal"},
    "glmc": {"kinds": "max"},
    "permutation, learned": {"kinds": "permutation", "method": "learned"},
    "orthogonal, learned": {"kinds": "orthogonal", "method": "learned"},
    "glmc, learned": {"kinds": "max", "method": "learned"},
}


def settings_for(quick: bool) -> dict[str, dict[str, object]]:
    if quick:
        return {
            "vit": {
                "model": {"dim": 16, "depth": 1, "heads": 2},
                "data": {"n": 200},
                "train": {"epochs": 2, "lr": 3e-3, "batch_size": 64},
                "learn": {"epochs": 1, "lr": 3e-3},
            },
            "gpt": {
                "model": {"dim": 16, "depth": 1, "heads": 2, "context": 16},
                "data": {"n_train": 200, "n_test": 100, "context": 16},
                "train": {"epochs": 1, "lr": 3e-3, "batch_size": 64},
                "learn": {"epochs": 1, "lr": 3e-3},
            },
        }
    return {
        "vit": {
            "model": {"dim": 64, "depth": 2, "heads": 4},
            "data": {},
            "train": {"epochs": 60, "lr": 1e-3, "batch_size": 64},
            "learn": {"epochs": 20, "lr": 3e-3},
        },
        "gpt": {
            "model": {"dim": 64, "depth": 2, "heads": 4, "context": 32},
            "data": {"n_train": 10000, "n_test": 1000, "context": 32},
            "train": {"epochs": 30, "lr": 1e-3, "batch_size": 64},
            "learn": {"epochs": 3, "lr": 3e-3},
        },
    }


def data_for(task: str, setting: dict[str, object]) -> ls.core.data.Splits:
    if task == "vit":
        data = ls.datasets.digits()
        n = setting["data"].get("n")
        return data.subset(n) if n else data
    return ls.datasets.docstrings(**setting["data"])


def train_models(task: str, setting: dict, data, seeds: list[int], folder: Path) -> list[ls.State]:
    model = ls.models.create(task, **setting["model"])
    states = []
    for seed in seeds:
        path = folder / f"{task}-seed{seed}.safetensors"
        if not path.exists():
            started = time.perf_counter()
            result = ls.train(
                model,
                data,
                optimizer="adamw",
                weight_decay=0.05,
                schedule="cosine",
                warmup=100,
                init_seed=seed,
                data_seed=seed,
                progress=False,
                **setting["train"],
            )
            ls.save_state(result.state, path, model=model)
            print(f"trained {task} seed {seed}: {time.perf_counter() - started:.0f} s", flush=True)
        states.append(ls.load_state(path))
    return states


def one_pair(task: str, model, data, a, b, *, alphas: int, fuse_epochs: int | None, setting: dict) -> xr.Dataset:
    """Curves (alignment, alpha, split) for every alignment, and fusion accuracies."""
    graph = ls.symmetry.symmetry_graph(model, data.train[0][:2])
    curves, seconds, aligned_by = [], [], {}
    for name, options in ALIGNMENTS.items():
        started = time.perf_counter()
        if options is None:
            aligned = b
        else:
            options = dict(options)
            method = options.pop("method", "weights")
            extra = setting["learn"] if method == "learned" else {}
            result = align(model, a, b, method=method, data=data, graph=graph, progress=False, **options, **extra)
            aligned = result.apply(b)
        aligned_by[name] = aligned
        seconds.append(time.perf_counter() - started)
        curve = interpolate(model, a, aligned, data, alphas=alphas, progress=False)
        curves.append(curve[["loss", "accuracy"]])
    result = xr.concat(curves, dim="alignment", combine_attrs="override")
    result = result.assign_coords(alignment=list(ALIGNMENTS))
    result["align_seconds"] = ("alignment", np.array(seconds))
    if task == "vit" and fuse_epochs is not None:
        result = result.merge(
            fusion(model, data, graph, a, b, aligned_by["glmc, learned"], epochs=fuse_epochs, setting=setting)
        )
    return result


def fusion(model, data, graph, a, b, glmc_aligned, *, epochs: int, setting: dict) -> xr.Dataset:
    """Test accuracy of vanilla averaging, OT fusion and fusion after the learned GLMC
    alignment (the midpoint of that path: ``fuse([a, b], method="learned", kinds="max")``),
    each also fine-tuned for ``epochs``."""

    def tune(state):
        return ls.train(
            model,
            data,
            start=state,
            epochs=epochs,
            optimizer="adamw",
            lr=float(setting["train"]["lr"]) / 10,
            weight_decay=0.05,
            schedule="cosine",
            batch_size=int(setting["train"]["batch_size"]),
            data_seed=123,
            progress=False,
        ).state

    vanilla = ls.lerp(a, b, 0.5)
    ot = fuse(model, [a, b], method="ot", graph=graph, progress=False)
    glmc = ls.lerp(a, glmc_aligned, 0.5)
    names = [
        "parent a",
        "parent b",
        "vanilla",
        "OT fusion",
        "OT fusion + fine-tune",
        "GLMC fusion",
        "GLMC fusion + fine-tune",
    ]
    points = ls.AffineFamily.points([a, b, vanilla, ot, tune(ot), glmc, tune(glmc)], names)
    result = ls.evaluate(model, points, {"test": data.test}, progress=False)
    return xr.Dataset({"fusion_accuracy": result.accuracy.sel(split="test").rename(point="fusion")})


def summarize(combined: xr.Dataset) -> list[dict[str, object]]:
    rows = []
    for task in combined.task.values:
        part = combined.sel(task=task)
        test = part.accuracy.sel(split="test")
        ends = (test.isel(alpha=0) + test.isel(alpha=-1)) / 2
        mid = test.sel(alpha=0.5, method="nearest")
        curves = part[["loss", "accuracy"]]
        barrier = xr.concat(
            [
                xr.concat([barriers(curves.sel(alignment=n, pair=p)) for p in part.pair.values], dim="pair")
                for n in part.alignment.values
            ],
            dim="alignment",
        ).assign_coords(alignment=part.alignment.values, pair=part.pair.values)
        barrier = barrier.loss_barrier.sel(split="test", kind="max_minus_mean")
        for name in part.alignment.values:
            rows.append(
                {
                    "task": str(task),
                    "alignment": str(name),
                    "endpoints_test_acc_mean": float(ends.sel(alignment=name).mean()),
                    "midpoint_test_acc_mean": float(mid.sel(alignment=name).mean()),
                    "midpoint_test_acc_std": float(mid.sel(alignment=name).std()),
                    "gap_points_mean": float(100 * (ends - mid).sel(alignment=name).mean()),
                    "test_loss_barrier_mean": float(barrier.sel(alignment=name).mean()),
                    "test_loss_barrier_std": float(barrier.sel(alignment=name).std()),
                    "align_seconds_mean": float(part.align_seconds.sel(alignment=name).mean()),
                    "pairs": int(mid.sel(alignment=name).count()),
                }
            )
    if "fusion_accuracy" in combined:
        fused = combined.fusion_accuracy.sel(task="vit")
        for name in fused.fusion.values:
            values = fused.sel(fusion=name)
            rows.append(
                {
                    "task": "vit fusion",
                    "alignment": str(name),
                    "endpoints_test_acc_mean": float("nan"),
                    "midpoint_test_acc_mean": float(values.mean()),
                    "midpoint_test_acc_std": float(values.std()),
                    "gap_points_mean": float("nan"),
                    "test_loss_barrier_mean": float("nan"),
                    "test_loss_barrier_std": float("nan"),
                    "align_seconds_mean": float("nan"),
                    "pairs": int(values.count()),
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results/transformer_lmc")
    parser.add_argument("--pairs", type=int, default=3, help="seed pairs per task")
    parser.add_argument("--tasks", default="vit,gpt")
    parser.add_argument("--alphas", type=int, default=11)
    parser.add_argument("--fuse-epochs", type=int, default=1, help="fine-tuning epochs after fusion")
    parser.add_argument(
        "--learn-epochs",
        type=int,
        default=None,
        help="epochs of the learned refinement (default: 20 for the ViT, 3 for the GPT)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train-only", action="store_true", help="train the models and stop")
    parser.add_argument("--quick", action="store_true", help="tiny settings to check the script runs")
    args = parser.parse_args()
    quick = args.quick or os.environ.get("LANDSCAPE_TINY") == "1"
    ls.set_num_threads(args.threads)
    tasks = args.tasks.split(",")
    settings = settings_for(quick)
    if args.learn_epochs is not None:
        for setting in settings.values():
            setting["learn"]["epochs"] = args.learn_epochs
    pairs = 1 if quick else args.pairs
    alphas = 3 if quick else args.alphas
    out = Path(args.out)
    # The tasks are left out of the settings: each step holds one task, so a run of one task
    # and a later run of both share their steps.
    run = ResumableRun(
        out,
        {"pairs": pairs, "alphas": alphas, "fuse_epochs": args.fuse_epochs, "settings": settings},
        function="transformer_lmc",
    )
    models = out / "models"
    models.mkdir(parents=True, exist_ok=True)
    parts = []
    for task in tasks:
        setting = settings[task]
        data = data_for(task, setting)
        model = ls.models.create(task, **setting["model"])
        states = train_models(task, setting, data, list(range(2 * pairs)), models)
        if args.train_only:
            continue
        for pair in range(pairs):
            step = f"{task}-pair{pair}"
            if not run.done(step):
                started = time.perf_counter()
                a, b = states[2 * pair], states[2 * pair + 1]
                result = one_pair(task, model, data, a, b, alphas=alphas, fuse_epochs=args.fuse_epochs, setting=setting)
                run.save(step, result.expand_dims(task=[task], pair=[pair]))
                print(f"{step}: {time.perf_counter() - started:.0f} s", flush=True)
            parts.append(run.load(step))
    if args.train_only:
        return
    combined = xr.combine_by_coords(parts, combine_attrs="drop_conflicts")
    ls.save_result(combined, out / "combined.nc")
    rows = summarize(combined)
    import csv

    with open(out / "table.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print("test accuracy (percentage points), mean ± std over pairs; midpoint of the linear path unless stated:")
    print(f"{'task':12s} {'alignment':24s} {'endpoints':>9s} {'midpoint':>16s} {'gap':>7s} {'loss barrier':>14s}")
    for r in rows:
        print(
            f"{r['task']:12s} {r['alignment']:24s} {100 * r['endpoints_test_acc_mean']:9.1f} "
            f"{100 * r['midpoint_test_acc_mean']:8.1f} ± {100 * r['midpoint_test_acc_std']:4.1f} "
            f"{r['gap_points_mean']:7.1f} {r['test_loss_barrier_mean']:8.3f} ± {r['test_loss_barrier_std']:.3f}"
        )
    print(f"wrote {out / 'combined.nc'} and table.csv")


if __name__ == "__main__":
    main()
