"""Locality sweep: the student's probe accuracy against how far from the teacher it starts.

Observation (4) of Sarnthein et al. (2023): feature learning is strongly amplified when the
student is initialised close to the teacher. The student starts at the variance-preserving
interpolation ``((1 - a) teacher + a fresh) / sqrt(a^2 + (1 - a)^2)`` for every ``a`` in
``--alphas``; probes run at the end of distillation only. Every finished (alpha, seed) is written
to the output folder and a re-run resumes.

    python analyses/random_teacher_locality.py --out results/rt-locality --seeds 0 --epochs 60 \
        --alphas 1e-10 1e-4 1e-2 0.1 0.3 0.6 1

Writes ``alpha-A-seed-N.nc``, ``locality.nc`` (accuracy over alpha_init, seed, net, probe,
scaling), ``summary.md`` and ``locality.png``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import xarray as xr
from random_teacher_probes import add_common_options, distill_seed, settings_of

import landscape as ls
from landscape.core.io import ResumableRun


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_options(parser)
    parser.add_argument("--alphas", type=float, nargs="+", default=[1e-10, 1e-4, 1e-2, 0.1, 0.3, 0.6, 1.0])
    parser.set_defaults(seeds=[0], probe_every=0)
    args = parser.parse_args(argv)
    ls.set_num_threads(args.threads)
    folder = Path(args.out)
    data = ls.datasets.mnist1d(n_train=args.n_train, n_test=args.n_test)
    run = ResumableRun(folder, settings_of(args, alphas=args.alphas), function="random_teacher_locality.py")
    rows = []
    for alpha in args.alphas:
        per_seed = []
        for seed in args.seeds:
            step = f"alpha-{alpha:g}-seed-{seed}"
            if not run.done(step):
                start = time.time()
                history = distill_seed(args, data, seed, alpha_init=alpha).history
                run.save(step, history.assign_attrs(wall_seconds=round(time.time() - start, 1)))
                print(f"alpha {alpha:g} seed {seed}: {time.time() - start:.0f} s", flush=True)
            history = run.load(step)
            per_seed.append(
                history.accuracy.isel(epoch=[0, -1]).assign_coords(epoch=["start", "end"]).expand_dims(seed=[seed])
            )
        rows.append(xr.concat(per_seed, dim="seed").expand_dims(alpha_init=[alpha]))
    both = xr.concat(rows, dim="alpha_init")
    result = xr.Dataset(
        {"accuracy": both.sel(epoch="end", drop=True), "accuracy_at_start": both.sel(epoch="start", drop=True)}
    )
    result["accuracy_at_start"].attrs["description"] = "probe accuracy before distillation (epoch 0)"
    result.attrs = ls.core.io.provenance_attrs(analysis="random_teacher_locality", **settings_of(args))
    ls.save_result(result, folder / "locality.nc")

    lines = [
        f"### Locality sweep ({args.model}, mnist1d, {args.epochs} epochs, seeds {args.seeds})",
        "",
        "Test accuracy in %, mean over seeds, after distillation (in brackets: the student before distillation);",
        "the teacher does not depend on alpha.",
        "",
        "| alpha_init | " + " | ".join(f"{p} {s}" for p in result.probe.values for s in result.scaling.values) + " |",
        "|---|" + "---|" * (result.sizes["probe"] * result.sizes["scaling"]),
    ]
    teacher = 100 * result.accuracy.sel(net="teacher").isel(alpha_init=0).mean("seed")
    lines.append("| teacher | " + " | ".join(f"{v:.1f}" for v in np.ravel(teacher.values)) + " |")
    if "teacher_calibrated" in result.net.values:
        calibrated = 100 * result.accuracy.sel(net="teacher_calibrated").isel(alpha_init=0).mean("seed")
        lines.append("| teacher, BN calibrated | " + " | ".join(f"{v:.1f}" for v in np.ravel(calibrated.values)) + " |")
    for alpha in result.alpha_init.values:
        student = 100 * result.accuracy.sel(net="student", alpha_init=alpha).mean("seed")
        start = 100 * result.accuracy_at_start.sel(net="student", alpha_init=alpha).mean("seed")
        lines.append(
            f"| student, {alpha:g} | "
            + " | ".join(f"{v:.1f} (start {w:.1f})" for v, w in zip(np.ravel(student.values), np.ravel(start.values)))
            + " |"
        )
    table = "\n".join(lines)
    (folder / "summary.md").write_text(table + "\n")
    print(table)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from landscape import plot

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    plot.locality(result, probe="linear", scaling="raw", ax=axes[0])
    plot.locality(result, probe="knn", scaling="raw", ax=axes[1])
    fig.tight_layout()
    fig.savefig(folder / "locality.png", dpi=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
