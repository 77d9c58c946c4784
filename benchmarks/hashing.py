"""What does hashing states from their bytes cost?

    python benchmarks/hashing.py [--repeats 7] [--threads 1]

Results record the sha256 of every checkpoint they were computed from. The hash used to be
cached by each tensor's storage pointer and version counter, which writes through ``.data``
or a numpy view do not change (a stale hash); now ``record_hash`` reads every byte on every
call. This prints the hash throughput and, for `evaluate` on a line between two loaded states
(which records both endpoints' hashes), the time with hashing from the bytes against the same
call with the old cached hash, interleaved, median of the repeats.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import landscape as ls
from landscape.core import io as io_module
from landscape.core import state as state_module


def cached_record_hash(state):
    """The old cache: recompute only when a storage pointer or version counter changed."""
    key = hash(tuple((k, t.data_ptr(), t._version, tuple(t.shape), str(t.dtype)) for k, t in state.items()))
    if state.provenance.get("_key") != key:
        state.provenance["sha256"] = state_module.content_hash(state)
        state.provenance["_key"] = key
    return state.provenance["sha256"]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    big = {f"w{i}": torch.randn(1024, 1024) for i in range(64)}  # 256 MiB of float32
    seconds = statistics.median(timed(lambda: state_module.content_hash(big)) for _ in range(3))
    print(f"content_hash: {256 / 1024 / seconds:.2f} GiB/s on {args.threads} thread(s) (256 MiB state)")

    print("| case | state MiB | hash per call | evaluate, cached hash | evaluate, hash from bytes | ratio |")
    print("| --- | --- | --- | --- | --- | --- |")
    mlp = lambda width: lambda seed: ls.models.create("mlp", input_shape=(784,), width=width, depth=2, seed=seed)  # noqa: E731
    resnet = lambda seed: ls.models.create("resnet", input_shape=(1, 8, 8), width_multiplier=4, seed=seed)  # noqa: E731
    measure("MLP 784-512-512-10, 21-point line, N=1,000", mlp(512), (784,), 1000, args.repeats)
    measure("MLP 784-2048-2048-10, 21-point line, N=256", mlp(2048), (784,), 256, args.repeats)
    measure("zoo resnet x4, 21-point line, N=360", resnet, (1, 8, 8), 360, args.repeats)


def measure(label: str, build, shape: tuple[int, ...], n: int, repeats: int) -> None:
    model = build(0)
    a, b = ls.load_state(build(0)), ls.load_state(build(1))  # loaded states carry provenance
    data = (torch.randn(n, *shape), torch.randint(0, 10, (n,)))
    mib = sum(t.numel() * t.element_size() for t in a.values()) / 2**20

    def run():
        ls.evaluate(model, ls.AffineFamily.line(a, b, alphas=21), data, progress=False, device="cpu")

    run()
    new, old = [], []
    original = state_module.record_hash
    for _ in range(repeats):
        new.append(timed(run))
        state_module.record_hash = io_module.record_hash = cached_record_hash
        try:
            old.append(timed(run))
        finally:
            state_module.record_hash = io_module.record_hash = original
    per_hash = statistics.median(timed(lambda: original(a)) for _ in range(repeats))
    t_new, t_old = statistics.median(new), statistics.median(old)
    print(f"| {label} | {mib:.1f} | {per_hash * 1e3:.1f} ms | {t_old:.3f} s | {t_new:.3f} s | {t_new / t_old:.3f}x |")


if __name__ == "__main__":
    main()
