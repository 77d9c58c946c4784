"""How much faster is a surface on a 2-worker local Dask cluster than in one process?

    python benchmarks/scale_out.py [--repeats 5] [--resolution 41] [--model cnn1d|cnn2d]

A ``random_plane`` (resolution x resolution points, filter-normalised directions) around the
zoo CNN at its seed-0 initialisation, on the full data set (cnn1d: mnist1d, 4,000 + 1,000
examples; cnn2d: sklearn digits, 1,437 + 360), computed four ways, interleaved A B C D, A B C D
... so that machine noise hits every way alike:

- one process, 1 torch thread (the baseline: what one core does);
- one process, 2 torch threads (what one process does with both cores);
- one process, 1 thread, in the cluster's pieces (``evaluate_sharded`` without a client: what
  splitting into pieces costs by itself);
- a local cluster of 2 worker processes with 1 thread each (``client=``), started once before
  the repeats; every repeat pays the whole call (the payload sent to each worker, the model and
  data prepared there, the tasks, the result assembled).

The cluster's values are compared with the baseline's. The overhead per task is what the
cluster spends beyond the tasks' own compute time: (workers x wall time - sum of the tasks'
compute times) / number of tasks, from Dask's task stream; it includes the workers' idle time
at the end, when one worker has finished and the other has not. An empty task's round trip is
measured too.

CPU seconds are counted as well (this process, plus every worker process for the cluster):
on a machine shared with other work, wall time measures the share of the cores each way got
as much as the way itself, while CPU time measures the work done. "1 thread CPU / busiest
worker CPU" is the speed-up the cluster would reach on otherwise idle cores if it waited for
nothing but its busiest worker: a projection, printed next to the measured wall times.

Every way runs with glibc's allocator tuned (``ls.tune_cpu_allocator()``, here and in the
workers, as the library's workers and command line do): the comparison is between ways of
spreading the work, not between allocator settings (``benchmarks/allocator.py`` measures those).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

import landscape as ls
from landscape import connectivity
from landscape.distributed import evaluate_sharded, local_cluster
from landscape.distributed._evaluate import PIECES_PER_THREAD


def _noop() -> None:
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--resolution", type=int, default=41)
    parser.add_argument("--model", default="cnn1d", choices=("cnn1d", "cnn2d"))
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    from distributed import Client, get_task_stream

    tuned = ls.tune_cpu_allocator()

    data = ls.datasets.mnist1d() if args.model == "cnn1d" else ls.datasets.digits()
    model = ls.models.create(args.model, seed=0)
    state = ls.state_of(model)
    points = args.resolution**2
    surface = dict(resolution=args.resolution, device="cpu", progress=False)
    # The same family random_plane builds, for the in-process pieces.
    directions = [ls.random_direction(state, seed=s) for s in (0, 1)]
    grid = np.linspace(-1.0, 1.0, args.resolution)
    family = ls.AffineFamily.grid(state, directions, grid, grid)

    started = time.perf_counter()
    cluster = local_cluster(args.workers, gpus=None, torch_threads=1)
    client = Client(cluster, set_as_default=False)
    start_time = time.perf_counter() - started
    pieces = PIECES_PER_THREAD * args.workers

    def single(threads: int):
        def run():
            torch.set_num_threads(threads)
            return connectivity.random_plane(model, state, data, **surface)

        return run

    def in_pieces():
        torch.set_num_threads(1)
        return evaluate_sharded(model, family, data, device="cpu", progress=False, pieces=pieces)

    streams: list[list[dict]] = []
    worker_cpu: list[dict[str, float]] = []

    def on_cluster():
        torch.set_num_threads(1)  # the client process only schedules and assembles
        before = client.run(time.process_time)
        with get_task_stream(client) as stream:
            result = connectivity.random_plane(model, state, data, client=client, **surface)
        after = client.run(time.process_time)
        streams.append(stream.data)
        worker_cpu.append({w: after[w] - before[w] for w in after if w in before})
        return result

    ways = {
        "one process, 1 thread": single(1),
        "one process, 2 threads": single(2),
        f"one process, 1 thread, {pieces} pieces": in_pieces,
        f"{args.workers} workers x 1 thread": on_cluster,
    }
    cold = time.perf_counter()
    first = on_cluster()
    cold = time.perf_counter() - cold
    times: dict[str, list[float]] = {name: [] for name in ways}
    cpu: dict[str, list[float]] = {name: [] for name in ways}
    results = {}
    loads = [os.getloadavg()[0]]
    for r in range(args.repeats):
        names = list(ways)
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate the order
            t, c = time.perf_counter(), time.process_time()
            results[name] = ways[name]()
            times[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
            if name.endswith("workers x 1 thread"):
                cpu[name][-1] += sum(worker_cpu[-1].values())
            loads.append(os.getloadavg()[0])
    torch.set_num_threads(1)

    baseline = results["one process, 1 thread"]
    cluster_result = results[f"{args.workers} workers x 1 thread"]
    worst = max(
        float(
            np.max(
                np.abs(cluster_result[v].values - baseline[v].values) / np.maximum(np.abs(baseline[v].values), 1e-12)
            )
        )
        for v in ("loss", "accuracy")
    )
    same_as_cold = bool(np.array_equal(first.loss.values, cluster_result.loss.values))

    computes, walls = [], statistics.median(times[f"{args.workers} workers x 1 thread"])
    for stream in streams[1:]:
        computes.append(
            [sum(s["stop"] - s["start"] for s in task["startstops"] if s["action"] == "compute") for task in stream]
        )
    n_tasks = len(computes[-1])
    compute_total = statistics.median(sum(c) for c in computes)
    overhead = (args.workers * walls - compute_total) / n_tasks
    t = time.perf_counter()
    client.gather([client.submit(_noop, pure=False) for _ in range(200)])
    empty = (time.perf_counter() - t) / 200

    base = statistics.median(times["one process, 1 thread"])
    print(
        f"{args.model} on {data.name}, {args.resolution} x {args.resolution} = {points} points, "
        f"{sum(int(y.shape[0]) for _, y in data.values())} examples, strategy {baseline.attrs['strategy']}; "
        f"median of {args.repeats} interleaved repeats (min - max)\n"
    )
    print("| way | wall time | speed-up over 1 thread (wall) | CPU time |")
    print("| --- | --- | --- | --- |")
    for name, values in times.items():
        med = statistics.median(values)
        print(
            f"| {name} | {med:.2f} s ({min(values):.2f} - {max(values):.2f}) | {base / med:.2f}x "
            f"({base / max(values):.2f} - {base / min(values):.2f}) | {statistics.median(cpu[name]):.2f} s |"
        )
    print()
    busiest = statistics.median(max(w.values()) for w in worker_cpu[1:])
    single_cpu = statistics.median(cpu["one process, 1 thread"])
    print(
        f"busiest worker's CPU time per call {busiest:.2f} s (the other: "
        f"{statistics.median(min(w.values()) for w in worker_cpu[1:]):.2f} s); 1 thread CPU / busiest worker CPU: "
        f"{single_cpu / busiest:.2f}x (the projection for idle cores)"
    )
    print(f"glibc allocator tuned in this process (and the workers): {tuned}")
    print(f"load average (1 min) during the repeats: {min(loads):.1f} - {max(loads):.1f} on {os.cpu_count()} cores")
    print(f"cluster start (2 processes, torch imported and warmed up): {start_time:.1f} s; first call: {cold:.2f} s")
    print(
        f"tasks per call: {n_tasks}; compute per task {compute_total / n_tasks * 1e3:.0f} ms; "
        f"overhead per task {overhead * 1e3:.0f} ms ({args.workers} x wall - compute, over tasks); "
        f"empty task round trip {empty * 1e3:.1f} ms"
    )
    print(f"largest relative difference, cluster vs one process: {worst:.1e}; repeat calls identical: {same_as_cold}")
    client.close()
    cluster.close()


if __name__ == "__main__":
    main()
