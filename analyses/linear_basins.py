"""Linear basins: barriers between children trained from the random init, the distilled student
and early supervised checkpoints.

Observation (3b) of Sarnthein et al. (2023): the student lies at the border of a linear basin of
the supervised loss landscape; two children trained from it with different data orders are close
to linearly connected, like children of a supervised checkpoint a few hundred steps in and unlike
children of the random initialisation. For every seed, starts are the teacher (``init``, the
random initialisation the student was distilled from), the student, and supervised checkpoints
at ``--steps`` of a run from the teacher; ``landscape.distillation.linear_basins`` trains two
children of each (data-order seeds 0 and 1) and measures the error barrier between them.

    python analyses/linear_basins.py --students results/rt-probes --out results/basins --seeds 0 1 2 --threads 1

Writes one folder per seed (resumable per start), ``basins.nc`` (over seed, start, alpha, split),
``summary.md`` and ``basins.png``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import xarray as xr

import landscape as ls
from landscape.distillation import basin_starts, linear_basins
from landscape.training import TrainConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (resumes)")
    parser.add_argument("--students", required=True, help="output folder of random_teacher_probes.py")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, nargs="+", default=[32, 128, 320], help="supervised checkpoints")
    parser.add_argument("--epochs", type=int, default=20, help="epochs of every child")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--alphas", type=int, default=11)
    parser.add_argument(
        "--bn",
        default="reset",
        choices=("keep", "reset"),
        help="BatchNorm statistics along the path: recomputed from the training split at every alpha (reset, "
        "default) or interpolated (keep)",
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
    per_seed = []
    for seed in args.seeds:
        teacher = ls.load_state(students / f"teacher-{seed}.safetensors")
        student = ls.load_state(students / f"student-{seed}.safetensors")
        model = ls.models.from_spec(teacher.provenance["metadata"]["model_spec"])
        starts = basin_starts(
            model, data, student=student, init=teacher, steps=args.steps, seed=seed, train=train, progress=False
        )
        print(f"seed {seed}: starts {list(starts)}", flush=True)
        result = linear_basins(
            model, starts, data, train=train, alphas=args.alphas, bn=args.bn, out=out / f"seed{seed}", progress=False
        )
        threshold = result.attrs["threshold"]
        result.attrs = {}
        per_seed.append(result.expand_dims(seed=[seed]))
    combined = xr.concat(per_seed, dim="seed")
    combined.attrs = ls.core.io.provenance_attrs(
        analysis="linear_basins",
        train=train.as_dict(),
        steps=args.steps,
        seeds=args.seeds,
        threshold=threshold,
        bn=args.bn,
    )
    ls.save_result(combined, out / "basins.nc")
    run = "python " + " ".join(shlex.quote(a) for a in ["analyses/linear_basins.py", *sys.argv[1:]])
    lines = [
        f"### Linear basins on mnist1d (children: {args.epochs} epochs SGD, data-order seeds 0 and 1; "
        f"BatchNorm statistics: {args.bn}; seeds {args.seeds})",
        "",
        f"`{run}`",
        "",
        "Error barrier between the two children on the test split, in points (max over alpha minus the mean of the ends);",
        "mean ± std over seeds, per-seed values in brackets; children's mean test accuracy in %.",
        "",
        "| start | error barrier | stable (< 2 points) | children's accuracy |",
        "|---|---|---|---|",
    ]
    for start in combined.start.values:
        barrier = 100 * combined.error_barrier.sel(start=start, split="test").values
        stable = combined.stable.sel(start=start, split="test").values
        ends = 100 * combined.accuracy.sel(start=start, split="test").isel(alpha=[0, -1]).mean("alpha").values
        spread = f" ± {barrier.std(ddof=1):.2f}" if len(barrier) > 1 else ""
        lines.append(
            f"| {start} | {barrier.mean():.2f}{spread} [{', '.join(f'{b:.2f}' for b in barrier)}] "
            f"| {int(stable.sum())}/{len(stable)} | {ends.mean():.1f} |"
        )
    table = "\n".join(lines)
    (out / "summary.md").write_text(table + "\n")
    print(table)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from landscape import plot

    fig, ax = plt.subplots(figsize=(6, 3.5))
    plot.basins(combined, ax=ax)
    fig.tight_layout()
    fig.savefig(out / "basins.png", dpi=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
