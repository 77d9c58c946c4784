"""How long do symmetry graphs and alignment take on the CPU?

    python benchmarks/align.py [--repeats 3] [--threads 1]

1. ``symmetry_graph`` (trace + rules + union-find) for every zoo model at its default size.
2. Weight matching of two independently initialised networks: an MLP 784-512-512-512-10 and
   the zoo ResNet at width x4 (channels 64/128/256 on 8x8 inputs); rounds of coordinate
   descent and seconds, against a plain hand-written weight-matching loop for the MLP (the
   algorithm of Ainsworth et al. with a hand-written permutation spec, numpy + scipy),
   started from the same identity and visiting the layers in the same order.
3. The other methods on the MLP (activations on 4,000 random inputs, exact OT, Sinkhorn).

Times are medians over ``--repeats`` runs; the alignment times include tracing the model.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

import landscape as ls
from landscape.alignment import align
from landscape.symmetry import symmetry_graph


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def plain_weight_matching(a: dict, b: dict, depth: int, max_iter: int = 100, seed: int = 0) -> tuple[int, dict]:
    """Weight matching for an MLP written out by hand (Ainsworth et al., Algorithm 1)."""
    names = [f"features.fc{i}" for i in range(1, depth + 1)]
    nxt = [*names[1:], "classifier"]
    wa = {k: v.double().numpy() for k, v in a.items()}
    wb = {k: v.double().numpy() for k, v in b.items()}
    perms = {n: np.arange(wa[f"{n}.weight"].shape[0]) for n in names}
    rng = np.random.default_rng(seed)
    rounds = 0
    while rounds < max_iter:
        rounds += 1
        changed = False
        for i in rng.permutation(len(names)):
            n, m = names[i], nxt[i]
            prev = perms[names[i - 1]] if i > 0 else None
            w_in = wb[f"{n}.weight"] if prev is None else wb[f"{n}.weight"][:, prev]
            s = wa[f"{n}.weight"] @ w_in.T + np.outer(wa[f"{n}.bias"], wb[f"{n}.bias"])
            w_out = wb[f"{m}.weight"] if m == "classifier" else wb[f"{m}.weight"][perms[m]]
            s += wa[f"{m}.weight"].T @ w_out
            _, cols = linear_sum_assignment(s, maximize=True)
            old = perms[n]
            gain = s[np.arange(len(cols)), cols].sum() - s[np.arange(len(old)), old].sum()
            if gain > 1e-9 and not np.array_equal(cols, old):
                perms[n] = cols
                changed = True
        if not changed:
            break
    return rounds, perms


def objective(a: dict, b: dict) -> float:
    """sum over the parameters of <a, b> (what weight matching maximises)."""
    return sum(float((a[k].double() * b[k].double()).sum()) for k in a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    ls.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)\n")

    print("symmetry_graph on every zoo model (default sizes):")
    for name in ls.models.available():
        model = ls.models.create(name, seed=0)
        seconds, graph = timed(lambda model=model: symmetry_graph(model), args.repeats)
        sizes = ", ".join(f"{g.size}" for g in graph.groups.values())
        print(f"  {name:8s} {seconds * 1e3:7.1f} ms  {len(graph.groups):2d} groups ({sizes})")

    print("\nweight matching of two independent initialisations (median of repeats):")
    mlp = ls.models.create("mlp", input_shape=784, width=512, depth=3, seed=0)
    a, b = ls.state_of(mlp), ls.state_of(ls.models.create("mlp", input_shape=784, width=512, depth=3, seed=1))
    seconds, result = timed(lambda: align(mlp, a, b, method="weights", progress=False), args.repeats)
    graph = result.graph
    print(
        f"  MLP 784-512-512-512-10   landscape  {result.history.rounds:3d} rounds {seconds:7.2f} s"
        f"  objective {objective(a, graph.apply(b, result.permutations)):.2f}"
    )
    plain_seconds, (rounds, perms) = timed(lambda: plain_weight_matching(a, b, 3), args.repeats)
    print(
        f"  MLP 784-512-512-512-10   plain loop {rounds:3d} rounds {plain_seconds:7.2f} s"
        f"  objective {objective(a, graph.apply(b, perms)):.2f} (hand-written spec, identity start)"
    )
    resnet = ls.models.create("resnet", width_multiplier=4, seed=0)
    ra, rb = ls.state_of(resnet), ls.state_of(ls.models.create("resnet", width_multiplier=4, seed=1))
    seconds, result = timed(lambda: align(resnet, ra, rb, method="weights", progress=False), args.repeats)
    params = sum(t.numel() for t in ra.values())
    print(
        f"  ResNet x4 ({len(result.graph.groups)} groups, {params / 1e6:.2f} M numbers) "
        f"{result.history.rounds:3d} rounds {seconds:7.2f} s"
    )

    print("\nother methods on the MLP:")
    x = torch.randn(4000, 784, generator=torch.Generator().manual_seed(0))
    for method in ("activations", "ot", "sinkhorn"):
        seconds, result = timed(
            lambda method=method: align(mlp, a, b, method=method, data=x, progress=False), args.repeats
        )
        print(f"  {method:12s} {result.history.rounds:3d} rounds {seconds:7.2f} s")


if __name__ == "__main__":
    main()
