"""Table: the fusion family on mnist1d and digits MLPs and CNNs (3 seeds, mean ± std).

    python analyses/fusion_family.py --out results/fusion_family \\
        [--seeds 3] [--epochs 30] [--finetune-epochs 1] [--combos mnist1d-mlp ...] [--quick]

For every seed and every dataset/model pair (``mnist1d-mlp``: 40-128-128-10; ``mnist1d-cnn``:
the zoo cnn1d with BatchNorm; ``digits-mlp``: 64-128-128-10; ``digits-cnn``: the zoo cnn2d
with BatchNorm) it records test accuracy over all ten classes of:

1. Structured pruning without fine-tuning: a network trained on all classes, with 30%, 50%
   and 70% of the units of every group removed, by Intra-Fusion (``method="fuse"``) and by
   discarding the least important units (``"discard"``), both with l1 importance, and both
   followed by REPAIR's statistics correction (``repair=True``).
2. Non-IID fusion: 2 parents trained on disjoint label halves ({0..4}, {5..9}) and 4 parents
   on disjoint label quarters ({0,1,2}, {3,4,5}, {6,7}, {8,9}); vanilla averaging, OT fusion
   (``fuse(method="ot")``), ZipIt! (full merge) and neuron interpolation (conductance), zero
   shot and after ``--finetune-epochs`` of training on all classes; the parents' mean and
   the ensemble (mean softmax) for reference.
3. ZipIt! partial merging of the 2 label-half parents: joint accuracy of each parent, of the
   networks merged up to each hidden layer (one head per parent, logits averaged), and of the
   full merge.

One netCDF file per (pair, seed) is written as it finishes (a re-run resumes); ``table.csv``
and ``table.md`` hold mean and standard deviation over seeds (fractions, not percent).
``LANDSCAPE_TINY=1`` or ``--quick`` runs tiny settings.
"""

from __future__ import annotations

import argparse
import copy
import csv
import os
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr

import landscape as ls
from landscape.alignment import fuse, neuron_interpolation, zipit
from landscape.core.io import ResumableRun
from landscape.pruning import intra_fusion

COMBOS = ("mnist1d-mlp", "mnist1d-cnn", "digits-mlp", "digits-cnn")
SPARSITIES = (0.3, 0.5, 0.7)
HALVES = [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
QUARTERS = [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]


def make_model(combo: str, data: ls.Splits, width: int) -> torch.nn.Module:
    name = combo.split("-")[1]
    if name == "mlp":
        return ls.models.create("mlp", input_shape=data.input_shape, width=width, depth=2)
    if combo.startswith("mnist1d"):
        return ls.models.create("cnn1d", width=max(4, width // 4), norm="batch")
    return ls.models.create("cnn2d", width=max(4, width // 8), norm="batch")


def cuts(model: torch.nn.Module) -> list[str]:
    """The hidden activations a partial merge can stop after."""
    return [name for name, _ in model.named_modules() if name.startswith("features.act")]


def test_accuracy(model: torch.nn.Module, state, data: ls.Splits) -> float:
    result = ls.evaluate(model, state, {"test": data.test}, progress=False)
    return float(result.accuracy.squeeze())


def ensemble_accuracy(model: torch.nn.Module, states, data: ls.Splits) -> float:
    x, y = data.test
    probs = 0
    for s in states:
        m = copy.deepcopy(model)
        m.load_state_dict(s)
        m.eval()
        with torch.no_grad():
            probs = probs + torch.softmax(m(x), -1)
    return float((probs.argmax(-1) == y).float().mean())


def one_step(args, combo: str, seed: int, epochs: int) -> xr.Dataset:
    dataset = combo.split("-")[0]
    data = ls.datasets.mnist1d(**args.sizes) if dataset == "mnist1d" else ls.datasets.digits()
    if args.quick and dataset == "digits":
        data = data.subset(300)
    model = make_model(combo, data, args.width)
    train = {"epochs": epochs, "lr": args.lr, "schedule": "cosine", "progress": False}
    tune = {"epochs": args.finetune_epochs, "lr": args.finetune_lr, "progress": False}
    rows: dict[str, float] = {}
    seconds: dict[str, float] = {}

    def timed(name: str, fn):
        started = time.perf_counter()
        value = fn()
        seconds[name] = time.perf_counter() - started
        return value

    # 1. structured pruning, no fine-tuning
    dense = ls.train(model, data, init_seed=seed, data_seed=seed, **train).state
    rows["dense"] = test_accuracy(model, dense, data)
    for sparsity in SPARSITIES:
        for method in ("discard", "fuse"):
            for repair in (False, True):
                name = f"prune {int(sparsity * 100)}% {method}" + (" + repair" if repair else "")
                pruned = timed(
                    name,
                    lambda method=method, repair=repair, sparsity=sparsity: intra_fusion(
                        model, dense, data, sparsity=sparsity, method=method, repair=repair, progress=False
                    ),
                )
                rows[name] = test_accuracy(pruned.model, pruned.state, data)
    # 2. non-IID parents: fusion zero-shot and after a short fine-tune on all classes
    halves_parents = None
    for labels in (HALVES, QUARTERS):
        k = len(labels)
        parts = ls.datasets.split_by_labels(data, labels)
        parents = [
            ls.train(model, part, init_seed=100 * seed + i, data_seed=100 * seed + i, **train).state
            for i, part in enumerate(parts)
        ]
        if k == 2:
            halves_parents = parents
        prefix = f"{k} parents"
        rows[f"{prefix}: parent mean"] = float(np.mean([test_accuracy(model, p, data) for p in parents]))
        rows[f"{prefix}: ensemble"] = ensemble_accuracy(model, parents, data)
        average = parents[0]
        for i, p in enumerate(parents[1:], start=2):
            average = ls.lerp(average, p, 1.0 / i)
        fused = {
            "vanilla": average,
            "ot": timed(f"{prefix}: ot", lambda parents=parents: fuse(model, parents, method="ot", progress=False)),
            "zipit": timed(
                f"{prefix}: zipit", lambda parents=parents: zipit(model, parents, data, progress=False).state
            ),
            "neuron interpolation": timed(
                f"{prefix}: neuron interpolation",
                lambda parents=parents: neuron_interpolation(model, parents, data, seed=seed, progress=False),
            ),
        }
        for method, state in fused.items():
            rows[f"{prefix}: {method}"] = test_accuracy(model, state, data)
            if args.finetune_epochs:
                tuned = ls.train(model, data, start=state, data_seed=1000 + seed, **tune).state
                rows[f"{prefix}: {method} + {args.finetune_epochs} epoch"] = test_accuracy(model, tuned, data)
    # 3. ZipIt partial merging of the two label-half parents
    for i, p in enumerate(halves_parents):
        rows[f"zip: parent {i}"] = test_accuracy(model, p, data)
    for cut in cuts(model):
        zipped = timed(
            f"zip: up to {cut}", lambda cut=cut: zipit(model, halves_parents, data, up_to=cut, progress=False)
        )
        rows[f"zip: up to {cut}"] = test_accuracy(zipped.model, zipped.state, data)
    full = zipit(model, halves_parents, data, progress=False)
    rows["zip: full"] = test_accuracy(full.model, full.state, data)
    names = list(rows)
    return xr.Dataset(
        {
            "test_accuracy": ("model", np.array([rows[n] for n in names])),
            "seconds": ("model", np.array([seconds.get(n, np.nan) for n in names])),
        },
        coords={"model": names},
    ).expand_dims(seed=[seed], combo=[combo])


def write_tables(combined: xr.Dataset, out: Path) -> None:
    acc = combined.test_accuracy
    with open(out / "table.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["combo", "model", "test_accuracy_mean", "test_accuracy_std", "seeds"])
        for combo in acc.combo.values:
            for name in acc.model.values:
                values = acc.sel(combo=combo, model=name)
                if int(values.count()):
                    writer.writerow(
                        [combo, name, f"{float(values.mean()):.4f}", f"{float(values.std()):.4f}", int(values.count())]
                    )
    lines = [
        "| result | " + " | ".join(str(c) for c in acc.combo.values) + " |",
        "| --- | " + " | ".join("---" for _ in acc.combo.values) + " |",
    ]
    for name in acc.model.values:
        cells = []
        for combo in acc.combo.values:
            values = acc.sel(combo=combo, model=name)
            cells.append(f"{float(values.mean()):.3f} ± {float(values.std()):.3f}" if int(values.count()) else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("test accuracy over all classes (fraction), mean ± std over seeds:")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results/fusion_family")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument(
        "--width", type=int, default=128, help="MLP width (CNNs: width/4 on mnist1d, width/8 on digits)"
    )
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--finetune-lr", type=float, default=0.01)
    parser.add_argument("--combos", nargs="+", default=list(COMBOS), choices=COMBOS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="tiny settings to check the script runs")
    args = parser.parse_args()
    args.quick = args.quick or os.environ.get("LANDSCAPE_TINY") == "1"
    ls.set_num_threads(args.threads)
    epochs = args.epochs
    args.sizes = {}
    if args.quick:
        epochs, args.seeds, args.width = 1, 1, 16
        args.sizes = {"n_train": 300, "n_test": 100}
        args.combos = [c for c in args.combos if c in ("mnist1d-mlp", "digits-cnn")] or args.combos[:1]
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "threads", "quick")}
    run = ResumableRun(args.out, {**settings, "epochs": epochs}, function="fusion_family")
    parts = []
    for combo in args.combos:
        for seed in range(args.seeds):
            step = f"{combo}-seed{seed}"
            if not run.done(step):
                started = time.perf_counter()
                run.save(step, one_step(args, combo, seed, epochs))
                print(f"{step}: {time.perf_counter() - started:.0f} s", flush=True)
            parts.append(run.load(step))
    order = list(dict.fromkeys(name for part in parts for name in part.model.values.tolist()))
    order = [n for n in order if n != "zip: full"] + ["zip: full"]
    per_combo = [
        xr.concat([p.reindex(model=order) for p in parts if p.combo.values[0] == combo], dim="seed")
        for combo in args.combos
    ]
    combined = xr.concat(per_combo, dim="combo")
    out = Path(args.out)
    ls.save_result(combined, out / "combined.nc")
    write_tables(combined, out)
    print(f"wrote {out / 'combined.nc'}, table.csv and table.md")


if __name__ == "__main__":
    main()
