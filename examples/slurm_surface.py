"""A 101 x 101 loss surface on a SLURM cluster, one GPU per Dask worker (not run by the tests:
it needs a SLURM cluster and ``pip install dask-jobqueue``).

    python examples/slurm_surface.py CHECKPOINT --jobs 8 --queue gpu --out /shared/surface.zarr

Each SLURM job runs one Dask worker with one GPU (``--gres=gpu:1``) and one task at a time;
``device="auto"`` in each task is that GPU. The script's process (on the login node) is the
client: it holds the scheduler, sends the model, data and points to each worker once, and
writes every finished piece into the zarr store, so ``--out`` only has to be writable from
here; run the script again with the same arguments to resume a stopped surface.

What must be importable on the workers: ``landscape`` and ``torch`` (the same versions as
here: give the jobs this environment's python), and every class or function the work refers to
by module (a model class of your own, a metric, a sweep's function) unless it is defined in the
script or notebook itself, which Dask sends by value. Data and states are sent from here.

The same with a cluster started by hand, on any machines that can reach each other:

    dask scheduler                                          # prints tcp://HOST:8786
    CUDA_VISIBLE_DEVICES=0 dask worker tcp://HOST:8786 --nworkers 1 --nthreads 1 &
    CUDA_VISIBLE_DEVICES=1 dask worker tcp://HOST:8786 --nworkers 1 --nthreads 1 &
    landscape surface CHECKPOINT --resolution 101 --scheduler tcp://HOST:8786 --out surface.zarr
"""

from __future__ import annotations

import argparse
import sys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a checkpoint written by `landscape train` (it stores its model spec)")
    parser.add_argument("--jobs", type=int, default=8, help="SLURM jobs, one GPU worker each")
    parser.add_argument("--queue", default="gpu")
    parser.add_argument("--cpus", type=int, default=8, help="CPU cores per job (torch's threads)")
    parser.add_argument("--memory", default="32GB")
    parser.add_argument("--walltime", default="02:00:00")
    parser.add_argument("--resolution", type=int, default=101)
    parser.add_argument("--out", default="surface.zarr")
    args = parser.parse_args()

    from dask_jobqueue import SLURMCluster
    from distributed import Client

    import landscape as ls
    from landscape import connectivity
    from landscape.models import from_spec

    state = ls.load_state(args.checkpoint)
    model = from_spec(state.provenance["metadata"]["model_spec"])
    data = ls.datasets.mnist1d()
    cluster = SLURMCluster(
        queue=args.queue,
        cores=1,  # one Dask thread: one task at a time per GPU
        processes=1,
        job_cpu=args.cpus,
        memory=args.memory,
        walltime=args.walltime,
        job_extra_directives=["--gres=gpu:1"],
        job_script_prologue=[f"export OMP_NUM_THREADS={args.cpus}"],
        python=sys.executable,
    )
    cluster.scale(jobs=args.jobs)
    with cluster, Client(cluster) as client:
        client.wait_for_workers(args.jobs)  # the number of pieces follows the workers present
        surface = connectivity.random_plane(model, state, data, resolution=args.resolution, client=client, out=args.out)
    print(f"wrote {args.out}; lowest test loss {float(surface.loss.sel(split='test').min()):.4f}")


if __name__ == "__main__":
    main()
