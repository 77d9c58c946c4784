"""Figure: instability analysis (Frankle et al. 2020) over the step at which two copies of a
network start to see different data orders.

    python analyses/instability.py --out results/instability [--model cnn1d] [--steps 0,25,100,400] [--quick] [--workers N]

Trains a parent, keeps its state at each step, trains two children from each state with
data-order seeds 0 and 1, and records the error and loss barriers between the children. The
steps are a ``landscape.distributed.sweep`` (in this process, or on a Dask cluster with
``--workers N`` / ``--scheduler ADDRESS``), each written as it finishes and resumed.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import xarray as xr
from torch import nn

import landscape as ls
from landscape import connectivity, plot
from landscape.distributed import local_cluster, sweep
from landscape.models import parse_spec


def children_at(step: int, *, model: nn.Module, checkpoints: dict, data: ls.Splits, epochs: int) -> xr.Dataset:
    """One cell: two children of the parent's state at ``step``, and the barrier between them."""
    return connectivity.instability(
        model, checkpoints[step], data, train={"epochs": epochs, "lr": 0.05, "schedule": "cosine"}, progress=False
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results/instability")
    parser.add_argument("--model", default="cnn1d")
    parser.add_argument("--steps", default="0,25,100,400")
    parser.add_argument("--epochs", type=int, default=20, help="epochs of each child")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, default=None, help="run the steps on a local Dask cluster of N workers")
    where.add_argument("--scheduler", default=None, help="run the steps on the Dask cluster at this address")
    args = parser.parse_args()
    ls.set_num_threads(args.threads)
    steps = sorted(int(s) for s in args.steps.split(","))
    epochs, sizes = (1, {"n_train": 400, "n_test": 200}) if args.quick else (args.epochs, {})
    if args.quick:
        steps = [s for s in steps if s <= 3] or [0]
    data = ls.datasets.mnist1d(**sizes)
    spec = parse_spec(args.model)
    model = ls.models.create(spec.pop("name"), seed=0, **spec)  # deterministic, so a re-run resumes
    parent = ls.train(
        model, data, steps=max(steps) or 1, init_seed=0, data_seed=100, checkpoint_steps=steps, progress=False
    )
    cluster = local_cluster(args.workers) if args.workers else contextlib.nullcontext(args.scheduler)
    with cluster as client:
        result = sweep(
            children_at,
            {"step": steps},
            shared={"model": model, "checkpoints": parent.checkpoints, "data": data, "epochs": epochs},
            out=args.out,
            client=client,
        )
    ls.save_result(result, Path(args.out) / "sweep.nc")
    print((result.error_barrier * 100).to_dataframe().unstack("split").round(2).to_string())
    ax = plot.instability(result)
    ax.figure.savefig(Path(args.out) / "instability.png", dpi=150)
    print(f"wrote {Path(args.out) / 'sweep.nc'} and instability.png")


if __name__ == "__main__":
    main()
