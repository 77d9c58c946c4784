"""Random-input control: distilling on Gaussian noise gives the student no gain over its teacher.

Observation (2) of Sarnthein et al. (2023): the student's improvement depends on the data. Here
the student is distilled on Gaussian noise with the training inputs' per-position mean and
standard deviation (``landscape.distillation.gaussian_inputs``) instead of the inputs
themselves; probes still fit and score on the real mnist1d splits. Same seeds and settings as
``random_teacher_probes.py``, so the two summaries compare directly.

    python analyses/random_teacher_noise_control.py --out results/rt-noise --seeds 0 1 2 --epochs 60 \
        --threads 1 --compare results/rt-probes

Writes ``seed-N.nc``, ``teacher-N.safetensors``, ``student-N.safetensors``, ``noise.nc``,
``summary.md`` and ``noise.png``; resumes per seed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import xarray as xr
from random_teacher_probes import NETS, add_common_options, command, final_table, fmt, run_seeds, settings_of

import landscape as ls


def data_minus_noise(real: xr.Dataset, noise: xr.Dataset) -> str:
    """The student's gain over each teacher when distilled on the data minus its gain when
    distilled on noise, seed by seed (same teachers), in percentage points."""
    seeds = sorted(set(int(s) for s in real.seed.values) & set(int(s) for s in noise.seed.values))
    a = 100 * real.accuracy.isel(epoch=-1).sel(seed=seeds)
    b = 100 * noise.accuracy.isel(epoch=-1).sel(seed=seeds)
    teachers = [n for n in ("teacher", "teacher_calibrated") if n in a.net.values]
    header = (
        "| probe | features | student on data | student on noise | "
        + " | ".join(f"gain over {NETS[n]}: data − noise" for n in teachers)
        + " |"
    )
    lines = [
        "### Data against noise: the student's gains compared",
        "",
        f"Seeds {seeds}, the same teachers (each calibrated teacher on its own run's distillation inputs); accuracy",
        "in %, differences in percentage points, mean ± std over seeds.",
        "",
        header,
        "|" + "---|" * (header.count("|") - 1),
    ]
    for scaling in a.scaling.values:
        for probe in a.probe.values:
            ca, cb = a.sel(probe=probe, scaling=scaling), b.sel(probe=probe, scaling=scaling)
            cells = [fmt(ca.sel(net="student").values), fmt(cb.sel(net="student").values)]
            cells += [
                fmt(((ca.sel(net="student") - ca.sel(net=n)) - (cb.sel(net="student") - cb.sel(net=n))).values)
                for n in teachers
            ]
            lines.append(f"| {probe} | {scaling} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_options(parser)
    parser.add_argument("--compare", default=None, help="output folder of random_teacher_probes.py to compare with")
    args = parser.parse_args(argv)
    ls.set_num_threads(args.threads)
    folder = Path(args.out)
    histories = run_seeds(args, folder, settings_of(args, inputs="gaussian"), noise=True)
    ls.save_result(histories, folder / "noise.nc")
    table = final_table(
        histories, title=f"Control: student distilled on Gaussian noise ({args.model}, mnist1d)", run=command()
    )
    if args.compare and (Path(args.compare) / "probes.nc").exists():
        real = ls.load_result(Path(args.compare) / "probes.nc")
        table += "\n\n" + data_minus_noise(real, histories)
    (folder / "summary.md").write_text(table + "\n")
    print(table)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from landscape import plot

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    plot.probe_history(histories, probe="linear", scaling=args.scalings[0], ax=axes[0])
    plot.probe_history(histories, probe="knn", scaling=args.scalings[0], ax=axes[1])
    for ax in axes:
        ax.set_title("distilled on Gaussian noise")
    fig.tight_layout()
    fig.savefig(folder / "noise.png", dpi=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
