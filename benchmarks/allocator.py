"""How much faster is CPU work with glibc's allocator tuned (``ls.tune_cpu_allocator()``)?

    python benchmarks/allocator.py [--repeats 3] [--threads 1] [--resolution 7]

The setting is process-wide and cannot be undone, so each measurement runs in a fresh Python
process, three kinds interleaved (A B C, A B C, ...) so that machine noise hits them alike:

- default: glibc as the process starts;
- tuned: ``ls.tune_cpu_allocator()`` called first (what the command line and the library's
  Dask workers do);
- Dask worker default: ``MALLOC_TRIM_THRESHOLD_=65536`` in the environment, as Dask starts
  its worker processes (``distributed.nanny.pre-spawn-environ``).

Each process times ``connectivity.random_plane`` (resolution x resolution points of the zoo
model at its seed-0 initialisation, the whole data set) after one small warm-up plane, and
two epochs of ``train``; medians over the repeats, with the ratio to the default, and the
minor page faults per plane (what the tuning removes).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

_CHILD = """
import json, resource, sys, time
import torch
import landscape as ls
from landscape import connectivity

kind, threads, resolution = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if kind == "tuned":
    assert ls.tune_cpu_allocator()
torch.set_num_threads(threads)
out = {}
for name, dataset in (("cnn1d", "mnist1d"), ("cnn2d", "digits"), ("resnet", "digits"), ("mlp", "mnist1d")):
    data = getattr(ls.datasets, dataset)()
    model = ls.models.create(name, seed=0)
    state = ls.state_of(model)
    connectivity.random_plane(model, state, data, resolution=3, device="cpu", progress=False)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    connectivity.random_plane(model, state, data, resolution=resolution, device="cpu", progress=False)
    out[f"{name} plane"] = time.perf_counter() - start
    out[f"{name} plane faults"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    start = time.perf_counter()
    ls.train(model, data, epochs=2, device="cpu", progress=False)
    out[f"{name} train"] = time.perf_counter() - start
print(json.dumps(out))
"""

KINDS = {
    "default": {},
    "tuned": {},
    "Dask worker default": {"MALLOC_TRIM_THRESHOLD_": "65536"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--resolution", type=int, default=7)
    args = parser.parse_args()
    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in KINDS}
    loads = [os.getloadavg()[0]]
    for _ in range(args.repeats):
        for kind, env in KINDS.items():
            done = subprocess.run(
                [sys.executable, "-c", _CHILD, kind, str(args.threads), str(args.resolution)],
                env={**base, **env},
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                raise SystemExit(done.stderr)
            runs[kind].append(json.loads(done.stdout.strip().splitlines()[-1]))
            loads.append(os.getloadavg()[0])
    points = args.resolution**2
    print(
        f"{points}-point random_plane and 2 training epochs per model, {args.threads} torch thread(s), "
        f"median of {args.repeats} fresh processes per kind (interleaved); ratio = default time / time"
    )
    print(f"load average (1 min) during the runs: {min(loads):.1f} - {max(loads):.1f} on {os.cpu_count()} cores")
    print()
    print("| work | " + " | ".join(KINDS) + " |")
    print("| --- |" + " --- |" * len(KINDS))
    for key in runs["default"][0]:
        if key.endswith("faults"):
            continue
        default = statistics.median(r[key] for r in runs["default"])
        cells = []
        for kind in KINDS:
            t = statistics.median(r[key] for r in runs[kind])
            faults = (
                statistics.median(r[f"{key} faults"] for r in runs[kind]) if f"{key} faults" in runs[kind][0] else None
            )
            cell = f"{t:.2f} s ({default / t:.2f}x)"
            if faults is not None:
                cell += f", {faults / points:,.0f} faults/point"
            cells.append(cell)
        print(f"| {key} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
