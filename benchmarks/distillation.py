"""What share of a `distill_random_teacher` run goes to probing, and how fast are the probes
against the ones they replaced?

    python benchmarks/distillation.py [--epochs 60] [--repeats 3] [--threads 1]

Part 1 runs the default recipe (cnn1d:norm=batch on mnist1d, 4,000 / 1,000 examples, default
head, probes every 5 epochs: linear L-BFGS and k-NN on standardised features, of the student,
the teacher and the calibrated teacher) and prints the probing share of the run in CPU time
of this process (one thread, so on a shared machine other processes do not count) and in wall
time, and per epoch: a training epoch against one probe of one encoder.

Part 2 times the probes on the teacher's features against the ones they replaced, interleaved
A B A B, median of ``--repeats``: k-NN with float32 distances and a partial top-k against exact
float64 distances and a full sort (the previous implementation, written out below); the
deterministic L-BFGS linear probe against 100 epochs of AdamW on mini-batches (the previous
default, still ``solver="adamw"``). It checks that the k-NN predictions are identical.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import landscape as ls
from landscape.distillation._probing import Prober
from landscape.probes import features_at, knn_probe, linear_probe, standardize
from landscape.probes._knn import knn_predict


def previous_knn(features_train, y_train, features_test, *, k=20, batch_size=256):
    """The k-NN this project had before: exact float64 distances and a full stable sort."""
    num_classes = int(y_train.max()) + 1
    train = features_train.double()
    predictions = []
    for rows in ls.core.data.batch_slices(features_test.shape[0], batch_size):
        chunk = features_test[rows].double()
        dist = torch.cdist(chunk, train, compute_mode="donot_use_mm_for_euclid_dist")
        order = torch.sort(dist, dim=1, stable=True).indices[:, :k]
        votes = torch.zeros(chunk.shape[0], num_classes, dtype=torch.long)
        votes.scatter_add_(1, y_train[order], torch.ones_like(order))
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions)


def timed(function, repeats: int) -> list[float]:
    """CPU seconds of this (one-thread) process per call: robust to other processes' load."""
    times = []
    for _ in range(repeats):
        start = time.process_time()
        function()
        times.append(time.process_time() - start)
    return times


def interleaved(a, b, repeats: int) -> tuple[float, float]:
    ta, tb = [], []
    for _ in range(repeats):
        ta += timed(a, 1)
        tb += timed(b, 1)
    return statistics.median(ta), statistics.median(tb)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--epochs", type=int, default=60, help="epochs of the part-1 run (default: the recipe's 60; probes every 5)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    ls.set_num_threads(args.threads)
    data = ls.datasets.mnist1d()
    spec = "cnn1d:norm=batch"

    print(f"== 1. share of a distill_random_teacher run spent probing ({spec}, mnist1d 4000/1000, CPU)")
    cpu = {"probe": 0.0, "rounds": 0}
    call = Prober.__call__

    def counted(self, state):
        start = time.process_time()
        try:
            return call(self, state)
        finally:
            cpu["probe"] += time.process_time() - start
            cpu["rounds"] += 1

    Prober.__call__ = counted
    start_cpu, start_wall = time.process_time(), time.perf_counter()
    run = ls.distillation.distill_random_teacher(
        spec, data, train={"epochs": args.epochs}, probe_every=5, progress=False, device="cpu"
    )
    total_cpu, wall = time.process_time() - start_cpu, time.perf_counter() - start_wall
    Prober.__call__ = call
    probe_wall = float(run.history.attrs["probe_seconds"])
    rounds = cpu["rounds"]
    print(f"  run of {args.epochs} epochs, {rounds} probes of one encoder (the student every 5 epochs, the teacher")
    print("  and the calibrated teacher once)")
    print(
        f"  CPU time: run {total_cpu:.2f} s, probing {cpu['probe']:.2f} s: share {100 * cpu['probe'] / total_cpu:.1f}%"
        "  (target: at most 25%)"
    )
    print(f"  wall time: run {wall:.2f} s, probing {probe_wall:.2f} s: share {100 * probe_wall / wall:.1f}%")
    print(
        f"  CPU per epoch: training and bookkeeping {(total_cpu - cpu['probe']) / args.epochs:.3f} s, "
        f"one probe {cpu['probe'] / rounds:.3f} s"
    )

    print("\n== 2. probes on the teacher's features, CPU seconds, median of interleaved repeats")
    model = run.model
    ftr = features_at(model, run.teacher, data.train[0], layers="features", device="cpu")["features"]
    fte = features_at(model, run.teacher, data.test[0], layers="features", device="cpu")["features"]
    a, b = standardize(ftr, fte)
    ytr, yte = data.train[1], data.test[1]
    same = torch.equal(knn_predict(a, ytr, b, k=20), previous_knn(a, ytr, b, k=20))
    new, old = interleaved(
        lambda: knn_probe(a, ytr, b, yte, k=20, device="cpu"),
        lambda: previous_knn(a, ytr, b, k=20),
        args.repeats,
    )
    print(
        f"  k-NN (k=20): float32 + top-k {new:.3f} s, float64 + full sort {old:.3f} s: {old / new:.2f}x; same predictions: {same}"
    )
    new, old = interleaved(
        lambda: linear_probe(a, ytr, b, yte, device="cpu"),
        lambda: linear_probe(a, ytr, b, yte, solver="adamw", device="cpu"),
        args.repeats,
    )
    acc_new = linear_probe(a, ytr, b, yte, device="cpu")
    acc_old = [linear_probe(a, ytr, b, yte, solver="adamw", seed=s, device="cpu") for s in range(3)]
    print(
        f"  linear: L-BFGS {new:.3f} s (accuracy {acc_new:.4f}, no seed), AdamW 100 epochs {old:.3f} s "
        f"(accuracy over seeds 0-2: {', '.join(f'{v:.4f}' for v in acc_old)}): {old / new:.2f}x"
    )
    print("\nNo GPU was used; CUDA timings are not measured here.")


if __name__ == "__main__":
    main()
