"""Lottery tickets from the random-teacher student, the random initialisation, and rewinding.

Observation (3a) of Sarnthein et al. (2023): iterative magnitude pruning that rewinds to the
distilled student finds sparse trainable networks, like rewinding to an early supervised
checkpoint and unlike rewinding to the random initialisation. For every seed this runs
``landscape.pruning.imp`` from three starts, each with its re-initialisation and random-mask
controls:

- ``student``: rewind to the student distilled from teacher ``seed`` (step 0 of training from it);
- ``init``: rewind to the teacher itself, the student's random initialisation;
- ``rewind@K``: start at the teacher, rewind to supervised step K (``--rewind-step``).

Students and teachers come from ``random_teacher_probes.py`` (``--students``). Every round of every
run is written as it finishes; a re-run resumes.

    python analyses/lottery_imp.py --students results/rt-probes --out results/imp --seeds 0 1 2 --rounds 8 --threads 1

The output layer is kept and the first layer pruned, as open_lth does for VGG-style networks
(``--prune-output`` prunes it too).

Writes one folder per (start, seed), ``imp.nc`` (over start, seed, round, branch), ``summary.md``
and ``imp.png``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np
import xarray as xr

import landscape as ls
from landscape.pruning import imp
from landscape.training import TrainConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (resumes)")
    parser.add_argument("--students", required=True, help="output folder of random_teacher_probes.py")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--rewind-step", type=int, default=64, help="supervised step K of the rewind@K start")
    parser.add_argument("--epochs", type=int, default=20, help="epochs of every training run")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--controls", nargs="*", default=["reinit", "random_mask"])
    parser.add_argument(
        "--prune-output", action="store_true", help="prune the output layer too (default: as open_lth, kept)"
    )
    parser.add_argument("--n-train", type=int, default=4000)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    ls.set_num_threads(args.threads)
    data = ls.datasets.mnist1d(n_train=args.n_train, n_test=args.n_test)
    students = Path(args.students)
    out = Path(args.out)
    train = TrainConfig(epochs=args.epochs, optimizer="sgd", lr=args.lr, momentum=0.9, batch_size=128)
    per_start: dict[str, list[xr.Dataset]] = {}
    for seed in args.seeds:
        teacher = ls.load_state(students / f"teacher-{seed}.safetensors")
        student = ls.load_state(students / f"student-{seed}.safetensors")
        model = ls.models.from_spec(teacher.provenance["metadata"]["model_spec"])
        plans = {
            "student": (student, 0),
            "init": (teacher, 0),
            f"rewind@{args.rewind_step}": (teacher, args.rewind_step),
        }
        for label, (start, rewind_step) in plans.items():
            print(f"seed {seed}, start {label}", flush=True)
            result = imp(
                model,
                data,
                rounds=args.rounds,
                rewind_step=rewind_step,
                start=start,
                train=train.replace(data_seed=seed),
                prune_output=True if args.prune_output else None,
                controls=tuple(args.controls),
                seed=seed,
                out=out / f"{label}-seed{seed}",
                progress=False,
            )
            result.attrs = {}
            per_start.setdefault(label, []).append(result.expand_dims(seed=[seed]))
    combined = xr.concat([xr.concat(v, dim="seed").expand_dims(start=[k]) for k, v in per_start.items()], dim="start")
    combined.attrs = ls.core.io.provenance_attrs(
        analysis="lottery_imp",
        train=train.as_dict(),
        rounds=args.rounds,
        rewind_step=args.rewind_step,
        seeds=args.seeds,
        prune_output=bool(args.prune_output),
    )
    ls.save_result(combined, out / "imp.nc")

    density = combined.density
    density = 100 * density.isel({d: 0 for d in density.dims if d != "round"}).values
    run = "python " + " ".join(shlex.quote(a) for a in ["analyses/lottery_imp.py", *sys.argv[1:]])
    kept = "pruned" if args.prune_output else "kept (open_lth's default for VGG-style nets)"
    lines = [
        f"### IMP on mnist1d ({args.epochs} epochs SGD per run, prune 20%/round, seeds {args.seeds})",
        "",
        f"`{run}`",
        "",
        f"Test accuracy in %, mean ± std over seeds, by prunable weights remaining; output layer {kept}.",
        "",
        "| start | branch | " + " | ".join(f"{d:.1f}%" for d in density) + " |",
        "|---|---|" + "---|" * len(density),
    ]
    for start in combined.start.values:
        for branch in combined.branch.values:
            acc = 100 * combined.test_accuracy.sel(start=start, branch=branch)
            mean, std = acc.mean("seed").values, acc.std("seed", ddof=1).values if acc.sizes["seed"] > 1 else None
            cells = [
                f"{m:.1f}" + (f" ± {s:.1f}" if std is not None else "")
                for m, s in zip(mean, std if std is not None else mean)
            ]
            lines.append(f"| {start} | {branch} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    (out / "summary.md").write_text(table + "\n")
    print(table)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from landscape import plot

    fig, axes = plt.subplots(1, combined.sizes["start"], figsize=(5 * combined.sizes["start"], 3.5), sharey=True)
    for ax, start in zip(np.atleast_1d(axes), combined.start.values):
        plot.imp(combined.sel(start=start), ax=ax)
        ax.set_title(f"IMP from {start}")
    fig.tight_layout()
    fig.savefig(out / "imp.png", dpi=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
