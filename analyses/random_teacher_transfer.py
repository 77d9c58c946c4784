"""Transfer: do the student's features help on data it was not distilled on?

Sarnthein et al. (2023) report that random-teacher students transfer: features distilled on
one dataset probe better than the teacher's on others. Offline, this distils on mnist1d drawn
with generator seed 0 and probes the same encoders (``distill_random_teacher(transfer=...)``)
on variants built from another draw (generator seed 1): the draw itself, the draw with every
signal circularly shifted by ``--shift`` positions, and the draw with Gaussian noise of
``--noise`` times each position's standard deviation added. Probes fit on a variant's training
split and score on its test split. Every finished seed is written and a re-run resumes.

    python analyses/random_teacher_transfer.py --out results/rt-transfer --seeds 0 1 2 --epochs 60 --threads 1

Writes ``seed-N.nc`` (history with ``transfer_accuracy``), ``transfer.nc``, ``summary.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import xarray as xr
from random_teacher_probes import (
    add_common_options,
    command,
    comparison_header,
    comparison_rows,
    distill_seed,
    settings_of,
)

import landscape as ls
from landscape.core.io import ResumableRun


def variants(args: argparse.Namespace) -> dict[str, ls.Splits]:
    """Probe data sets from mnist1d's generator seed 1: as drawn, shifted, and noised."""
    draw = ls.datasets.mnist1d(seed=1, n_train=args.n_train, n_test=args.n_test)

    def mapped(name: str, f) -> ls.Splits:
        splits = {k: (f(x, i), y) for i, (k, (x, y)) in enumerate(draw.items())}
        return ls.Splits(splits, name=name, num_classes=draw.num_classes, meta={**draw.meta, "variant": name})

    std = draw.train[0].std(dim=0, keepdim=True)

    def noised(x: torch.Tensor, i: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(100 + i)
        return x + args.noise * std * torch.randn(x.shape, generator=gen)

    return {
        "mnist1d draw 1": draw,
        f"mnist1d draw 1, shifted {args.shift}": mapped("shifted", lambda x, i: torch.roll(x, args.shift, dims=1)),
        f"mnist1d draw 1, noise {args.noise:g}": mapped("noised", noised),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_options(parser)
    parser.add_argument("--shift", type=int, default=10, help="circular shift of the shifted variant (positions)")
    parser.add_argument("--noise", type=float, default=0.5, help="noise of the noised variant (in position stds)")
    parser.set_defaults(probe_every=0, scalings=["standardized"])
    args = parser.parse_args(argv)
    ls.set_num_threads(args.threads)
    folder = Path(args.out)
    data = ls.datasets.mnist1d(seed=0, n_train=args.n_train, n_test=args.n_test)
    transfer = variants(args)
    settings = settings_of(args, transfer=list(transfer), shift=args.shift, noise=args.noise)
    run = ResumableRun(folder, settings, function="random_teacher_transfer.py")
    histories = []
    for seed in args.seeds:
        step = f"seed-{seed}"
        if not run.done(step):
            start = time.time()
            history = distill_seed(args, data, seed, alpha_init=args.alpha_init, transfer=transfer).history
            run.save(step, history.assign_attrs(wall_seconds=round(time.time() - start, 1)))
            print(f"seed {seed}: {time.time() - start:.0f} s", flush=True)
        histories.append(run.load(step).expand_dims(seed=[seed]))
    combined = xr.concat(histories, dim="seed", combine_attrs="drop_conflicts")
    ls.save_result(combined, folder / "transfer.nc")
    lines = [
        f"### Transfer ({args.model} distilled on mnist1d draw 0, probed on other data)",
        "",
        f"`{command()}`",
        "",
        f"Seeds {args.seeds}, epoch {args.epochs}; test accuracy in %, gains in percentage points;"
        " mean ± std over seeds (per-seed values in brackets). The calibrated teacher's BatchNorm",
        "statistics come from the distillation inputs.",
        "",
    ]
    header = comparison_header(list(combined.net.values))
    lines += [header[0].replace("| probe |", "| probe data | probe |"), header[1] + "---|"]
    sets = [("mnist1d draw 0 (distilled on)", combined.accuracy)]
    sets += [(name, combined.transfer_accuracy.sel(transfer=name)) for name in combined.transfer.values]
    for name, values in sets:
        lines += [f"| {name} " + row for row in comparison_rows(values.isel(epoch=-1))]
    table = "\n".join(lines)
    (folder / "summary.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
