"""Locality sweep: the student's probe accuracy against how far from the teacher it starts.

Observation (4) of Sarnthein et al. (2023): feature learning is strongly amplified when the
student is initialised close to the teacher. The student starts at the variance-preserving
interpolation ``((1 - a) teacher + a fresh) / sqrt(a^2 + (1 - a)^2)`` for every ``a`` in
``--alphas`` (0 is an exact copy of the teacher, the default of the other scripts); probes run
at the end of distillation only. Every finished (alpha, seed) is written to the output folder
and a re-run resumes.

    python analyses/random_teacher_locality.py --out results/rt-locality --seeds 0 1 2 --epochs 60 \\
        --alphas 0 0.01 0.1 0.3 0.6 1 --threads 1

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
from random_teacher_probes import NETS, add_common_options, command, distill_seed, fmt, settings_of

import landscape as ls
from landscape.core.io import ResumableRun


def tables(result: xr.Dataset, args: argparse.Namespace, run: str) -> str:
    """Accuracy by alpha (mean ± std over seeds), and each alpha's change against the first."""
    columns = [(p, s) for s in result.scaling.values for p in result.probe.values]
    head = "| | " + " | ".join(f"{p}, {s}" for p, s in columns) + " |"
    rule = "|---|" + "---|" * len(columns)
    acc = 100 * result.accuracy
    first = float(result.alpha_init.values[0])
    lines = [
        f"### Locality sweep ({args.model}, mnist1d, {args.epochs} epochs, seeds {args.seeds})",
        "",
        f"`{run}`",
        "",
        "Test accuracy in % after distillation, mean ± std over seeds (per-seed values in brackets);",
        "the teachers do not depend on alpha.",
        "",
        head,
        rule,
    ]
    for net in ("teacher", "teacher_calibrated"):
        if net in result.net.values:
            cells = [fmt(acc.sel(net=net, probe=p, scaling=s).isel(alpha_init=0).values) for p, s in columns]
            lines.append(f"| {NETS[net]} | " + " | ".join(cells) + " |")
    for alpha in result.alpha_init.values:
        cells = [fmt(acc.sel(net="student", alpha_init=alpha, probe=p, scaling=s).values) for p, s in columns]
        lines.append(f"| student, alpha {float(alpha):g} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Change of the student's accuracy against alpha {first:g}, seed by seed, in percentage points:",
        "",
        head,
        rule,
    ]
    base = acc.sel(net="student").isel(alpha_init=0)
    for alpha in result.alpha_init.values[1:]:
        change = acc.sel(net="student", alpha_init=alpha) - base
        cells = [fmt(change.sel(probe=p, scaling=s).values) for p, s in columns]
        lines.append(f"| alpha {float(alpha):g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_options(parser)
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.01, 0.1, 0.3, 0.6, 1.0])
    parser.set_defaults(probe_every=0)
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
    table = tables(result, args, command())
    (folder / "summary.md").write_text(table + "\n")
    print(table)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from landscape import plot

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, probe in zip(axes, ("linear", "knn")):
        plot.locality(result, probe=probe, scaling=args.scalings[0], ax=ax)
        positive = result.alpha_init.values[result.alpha_init.values > 0]
        ax.set_xscale("symlog", linthresh=float(np.min(positive)) if positive.size else 1e-2)  # alpha 0 shows
    fig.tight_layout()
    fig.savefig(folder / "locality.png", dpi=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
