"""How long do symmetry graphs and alignment take on the CPU?

    python benchmarks/align.py [--repeats 3] [--threads 1] [--vgg] [--baseline PATH]

1. ``symmetry_graph`` (trace + rules + union-find) for every zoo model at its default size.
2. Weight matching of two independently initialised networks: an MLP 784-512-512-512-10 and
   the zoo ResNet at width x4 (channels 64/128/256 on 8x8 inputs); rounds of coordinate
   descent and seconds, against a plain hand-written weight-matching loop for the MLP (the
   algorithm of Ainsworth et al. with a hand-written permutation spec, numpy + scipy),
   started from the same identity and visiting the layers in the same order.
3. The other methods on the MLP (activations on 4,000 random inputs, exact OT, Sinkhorn).
4. Transformers: the zoo ViT (dim 64, depth 2, 4 heads) by weight matching with every kind of
   map, and the graph of a Hugging Face GPT-2 built from a config (captured by torch.export).
5. ``--vgg``: weight matching of two VGG-11-BN (torchvision's architecture, built here by hand:
   torchvision does not import with every torch; 133 M parameters), once; with
   ``--baseline PATH`` the same alignment also runs with the ``landscape`` checked out at PATH
   (an older version) in a subprocess, and the ratio is printed.

Times are medians over ``--repeats`` runs; the alignment times include tracing the model.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
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


def vgg11_bn(num_classes: int = 1000) -> torch.nn.Module:
    """torchvision's ``vgg11_bn`` architecture (configuration "A" with BatchNorm)."""
    from torch import nn

    layers: list[nn.Module] = []
    channels = 3
    for v in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, v, kernel_size=3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            channels = v

    class VGG(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(*layers)
            self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
            self.classifier = nn.Sequential(
                nn.Linear(512 * 7 * 7, 4096),
                nn.ReLU(True),
                nn.Dropout(),
                nn.Linear(4096, 4096),
                nn.ReLU(True),
                nn.Dropout(),
                nn.Linear(4096, num_classes),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))

    return VGG()


VGG_SCRIPT = """
import sys, time, torch
sys.path.insert(0, {bench!r})
from align import vgg11_bn
import landscape as ls
from landscape.alignment import align
torch.set_num_threads({threads})
torch.manual_seed(0); a = ls.state_of(vgg11_bn())
torch.manual_seed(1); model = vgg11_bn(); b = ls.state_of(model)
start = time.perf_counter()
result = align(model, a, b, method="weights", example_input=torch.randn(1, 3, 32, 32), progress=False)
seconds = time.perf_counter() - start
aligned = result.graph.apply(b, result.permutations)
objective = sum(float((a[k].double() * aligned[k].double()).sum()) for k in a)
print(f"{{seconds:.3f}} {{result.history.rounds}} {{objective:.6f}}")
"""


def vgg_alignment(path: str, threads: int) -> tuple[float, int, float]:
    """Seconds, rounds and objective of weight matching two VGG-11-BN with the ``landscape``
    found at ``path`` (a subprocess, so that two versions can be compared)."""
    script = VGG_SCRIPT.format(bench=os.path.dirname(os.path.abspath(__file__)), threads=threads)
    env = {**os.environ, "PYTHONPATH": path}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    seconds, rounds, value = done.stdout.strip().splitlines()[-1].split()
    return float(seconds), int(rounds), float(value)


def objective(a: dict, b: dict) -> float:
    """sum over the parameters of <a, b> (what weight matching maximises)."""
    return sum(float((a[k].double() * b[k].double()).sum()) for k in a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--vgg", action="store_true", help="also weight-match two VGG-11-BN (minutes)")
    parser.add_argument("--baseline", default=None, help="a landscape checkout to compare the VGG time with")
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

    print("\ntransformers:")
    vit = ls.models.create("vit", dim=64, depth=2, heads=4, seed=0)
    va, vb = ls.state_of(vit), ls.state_of(ls.models.create("vit", dim=64, depth=2, heads=4, seed=1))
    for kinds in ("permutation", "orthogonal", "max"):
        seconds, result = timed(
            lambda kinds=kinds: align(vit, va, vb, method="weights", kinds=kinds, progress=False), args.repeats
        )
        print(f"  zoo ViT, kinds={kinds:12s} {result.history.rounds:3d} rounds {seconds:7.2f} s")
    try:
        import transformers

        config = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=96, n_positions=32)
        gpt2 = transformers.GPT2LMHeadModel(config).eval()
        tokens = torch.randint(0, 96, (2, 16))
        seconds, graph = timed(lambda: symmetry_graph(gpt2, tokens), args.repeats)
        print(f"  Hugging Face GPT-2 graph ({graph.frontend}) {seconds:7.2f} s, {len(graph.groups)} groups")
    except ImportError:
        print("  (transformers is not installed: no Hugging Face graph)")

    if args.vgg:
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        print(f"\nVGG-11-BN weight matching ({args.threads} thread(s), once):")
        seconds, rounds, value = vgg_alignment(here, args.threads)
        print(f"  this checkout      {seconds:8.1f} s  {rounds:3d} rounds  objective {value:.2f}")
        if args.baseline:
            base_seconds, base_rounds, base_value = vgg_alignment(args.baseline, args.threads)
            print(f"  baseline           {base_seconds:8.1f} s  {base_rounds:3d} rounds  objective {base_value:.2f}")
            print(f"  speed-up {base_seconds / seconds:.1f}x")


if __name__ == "__main__":
    main()
