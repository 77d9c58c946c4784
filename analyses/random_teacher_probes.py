"""Probe accuracy of random-teacher students against their teachers over distillation epochs.

Reproduces observation (1) of Sarnthein et al. (2023) at small scale: a student distilled into a
teacher frozen at random initialisation probes better than the teacher. One distillation per
seed (teacher initialisation = data order = seed) with the reference recipe as it runs (head
without weight normalisation, the student an exact copy of the teacher); the student is compared
with the teacher in eval mode (BatchNorm statistics of its initialisation) and with the teacher
whose BatchNorm statistics are calibrated on the data, on standardised features (the reference's
headline) and raw ones. Every finished seed is written to the output folder (history as netCDF,
teacher and student as safetensors), and a re-run resumes.

    python analyses/random_teacher_probes.py --out results/rt-probes --seeds 0 1 2 --epochs 60 --threads 1

Writes ``seed-N.nc`` (history), ``teacher-N.safetensors``, ``student-N.safetensors``,
``probes.nc`` (histories over ``seed``), ``summary.md`` and ``probes.png``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import xarray as xr

import landscape as ls
from landscape.core.io import ResumableRun
from landscape.distillation import DEFAULT_HEAD, distill_random_teacher, gaussian_inputs

NETS = {
    "teacher": "teacher (eval mode)",
    "teacher_calibrated": "teacher (BN calibrated)",
    "student": "student",
}


def add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (resumes when it holds the same run)")
    parser.add_argument(
        "--model",
        default="cnn1d:norm=batch",
        help="encoder spec (default: %(default)s, BatchNorm like the paper's VGG/ResNet encoders)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument(
        "--alpha-init", type=float, default=None, help="student init (default: an exact copy of the teacher)"
    )
    parser.add_argument("--head", default="reference", choices=("reference", "weight_normalized"))
    parser.add_argument("--probe-every", type=int, default=5)
    parser.add_argument("--hidden-dim", type=int, default=DEFAULT_HEAD["hidden_dims"][0])
    parser.add_argument("--bottleneck-dim", type=int, default=DEFAULT_HEAD["bottleneck_dim"])
    parser.add_argument("--out-dim", type=int, default=DEFAULT_HEAD["out_dim"])
    parser.add_argument("--scalings", nargs="+", default=["standardized", "raw"], choices=("standardized", "raw"))
    parser.add_argument("--n-train", type=int, default=4000)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def settings_of(args: argparse.Namespace, **extra: object) -> dict[str, object]:
    return {
        "model": args.model,
        "epochs": args.epochs,
        "alpha_init": "copy" if args.alpha_init is None else args.alpha_init,
        "head": args.head,
        "probe_every": args.probe_every,
        "head_dims": [args.hidden_dim, args.bottleneck_dim, args.out_dim],
        "scalings": list(args.scalings),
        "n_train": args.n_train,
        "n_test": args.n_test,
        **extra,
    }


def command() -> str:
    """The command line that is running, for the tables' headers."""
    return "python " + " ".join(shlex.quote(a) for a in [f"analyses/{Path(sys.argv[0]).name}", *sys.argv[1:]])


def distill_seed(
    args: argparse.Namespace,
    data: ls.Splits,
    seed: int,
    *,
    alpha_init: float | None,
    noise: bool = False,
    transfer: dict[str, ls.Splits] | None = None,
    probe_every: int | None = None,
):
    return distill_random_teacher(
        args.model,
        data,
        train={"epochs": args.epochs},
        alpha_init=alpha_init,
        head=args.head,
        seed=seed,
        probe_every=args.probe_every if probe_every is None else probe_every,
        hidden_dims=(args.hidden_dim, args.hidden_dim),
        bottleneck_dim=args.bottleneck_dim,
        out_dim=args.out_dim,
        inputs=gaussian_inputs(data.train[0], seed=seed) if noise else None,
        scalings=args.scalings,
        transfer=transfer,
        device="cpu",
        progress=False,
    )


def fmt(values: np.ndarray) -> str:
    """Mean ± std over seeds (ddof 1) with the per-seed values in brackets."""
    spread = f" ± {values.std(ddof=1):.1f}" if len(values) > 1 else ""
    return f"{values.mean():.1f}{spread} [{', '.join(f'{x:.1f}' for x in values)}]"


def comparison_rows(last: xr.DataArray) -> list[str]:
    """Rows probe x scaling: every net, and the student's gain over each teacher, in points.

    ``last`` holds accuracies (fractions) over (seed, net, probe, scaling)."""
    teachers = [n for n in ("teacher", "teacher_calibrated") if n in last.net.values]
    rows = []
    for scaling in last.scaling.values:
        for probe in last.probe.values:
            cell = 100 * last.sel(probe=probe, scaling=scaling)
            values = [fmt(cell.sel(net=n).values) for n in (*teachers, "student")]
            gains = [fmt((cell.sel(net="student") - cell.sel(net=n)).values) for n in teachers]
            rows.append(f"| {probe} | {scaling} | " + " | ".join(values + gains) + " |")
    return rows


def comparison_header(nets: list[str]) -> list[str]:
    teachers = [n for n in ("teacher", "teacher_calibrated") if n in nets]
    names = [NETS[n] for n in (*teachers, "student")] + [f"student − {NETS[n]}" for n in teachers]
    header = "| probe | features | " + " | ".join(names) + " |"
    return [header, "|" + "---|" * (header.count("|") - 1)]


def final_table(histories: xr.Dataset, *, title: str, run: str | None = None) -> str:
    """Markdown table of the last epoch: both teachers, the student and its gains, over seeds."""
    last = histories.accuracy.isel(epoch=-1)
    seeds = [int(s) for s in histories.seed.values]
    lines = [f"### {title}", ""]
    if run:
        lines += [f"`{run}`", ""]
    lines += [
        f"Seeds {seeds}, epoch {int(histories.epoch[-1])}; test accuracy in %, gains in percentage points;"
        " mean ± std over seeds (per-seed values in brackets).",
        "",
        *comparison_header(list(last.net.values)),
        *comparison_rows(last),
    ]
    return "\n".join(lines)


def run_seeds(args: argparse.Namespace, folder: Path, settings: dict[str, object], *, noise: bool) -> xr.Dataset:
    data = ls.datasets.mnist1d(n_train=args.n_train, n_test=args.n_test)
    run = ResumableRun(folder, settings, function=Path(sys.argv[0]).name)
    histories = []
    for seed in args.seeds:
        step = f"seed-{seed}"
        if not run.done(step):
            start = time.time()
            result = distill_seed(args, data, seed, alpha_init=args.alpha_init, noise=noise)
            ls.save_state(result.teacher, folder / f"teacher-{seed}.safetensors", model=result.model)
            ls.save_state(result.student, folder / f"student-{seed}.safetensors", model=result.model)
            history = result.history.assign_attrs(wall_seconds=round(time.time() - start, 1))
            run.save(step, history)  # last: the seed counts as done only when its states exist
            print(f"seed {seed}: {history.attrs['wall_seconds']:.0f} s", flush=True)
        histories.append(run.load(step).expand_dims(seed=[seed]))
    return xr.concat(histories, dim="seed", combine_attrs="drop_conflicts")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_options(parser)
    args = parser.parse_args(argv)
    ls.set_num_threads(args.threads)
    folder = Path(args.out)
    histories = run_seeds(args, folder, settings_of(args, inputs="data"), noise=False)
    ls.save_result(histories, folder / "probes.nc")
    table = final_table(histories, title=f"Random-teacher student vs teacher ({args.model}, mnist1d)", run=command())
    (folder / "summary.md").write_text(table + "\n")
    print(table)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from landscape import plot

    scaling = args.scalings[0]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    plot.probe_history(histories, probe="linear", scaling=scaling, ax=axes[0])
    plot.probe_history(histories, probe="knn", scaling=scaling, ax=axes[1])
    fig.tight_layout()
    fig.savefig(folder / "probes.png", dpi=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
