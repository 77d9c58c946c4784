"""Figure: instability analysis (Frankle et al. 2020) over the step at which two copies of a
network start to see different data orders.

    python analyses/instability.py --out results/instability [--model cnn1d] [--steps 0,25,100,400] [--quick]

Trains a parent, keeps its state at each step, trains two children from each state with
data-order seeds 0 and 1, and records the error and loss barriers between the children.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import landscape as ls
from landscape import connectivity, plot
from landscape.core.io import ResumableRun
from landscape.models import parse_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results/instability")
    parser.add_argument("--model", default="cnn1d")
    parser.add_argument("--steps", default="0,25,100,400")
    parser.add_argument("--epochs", type=int, default=20, help="epochs of each child")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    ls.set_num_threads(args.threads)
    steps = sorted(int(s) for s in args.steps.split(","))
    epochs, sizes = (1, {"n_train": 400, "n_test": 200}) if args.quick else (args.epochs, {})
    if args.quick:
        steps = [s for s in steps if s <= 3] or [0]
    data = ls.datasets.mnist1d(**sizes)
    spec = parse_spec(args.model)
    model = ls.models.create(spec.pop("name"), **spec)
    run = ResumableRun(
        args.out, {"model": args.model, "steps": steps, "epochs": epochs, "data": sizes}, function="instability"
    )
    parent = ls.train(
        model, data, steps=max(steps) or 1, init_seed=0, data_seed=100, checkpoint_steps=steps, progress=False
    )
    results = []
    for step in steps:
        name = f"step{step}"
        if not run.done(name):
            result = connectivity.instability(
                model,
                parent.checkpoints[step],
                data,
                train={"epochs": epochs, "lr": 0.05, "schedule": "cosine"},
                progress=False,
            )
            run.save(name, result.expand_dims(step=[step]))
        results.append(run.load(name))
    import xarray as xr

    sweep = xr.concat(results, dim="step", combine_attrs="drop_conflicts")
    ls.save_result(sweep, Path(args.out) / "sweep.nc")
    print((sweep.error_barrier * 100).to_dataframe().unstack("split").round(2).to_string())
    ax = plot.instability(sweep)
    ax.figure.savefig(Path(args.out) / "instability.png", dpi=150)
    print(f"wrote {Path(args.out) / 'sweep.nc'} and instability.png")


if __name__ == "__main__":
    main()
