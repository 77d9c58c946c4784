"""How fast is `landscape.evaluate` against the loop a researcher would write, and against
the PyPI package `loss-landscapes`?

    python benchmarks/evaluate.py [--repeats 5] [--threads 2] [--device cpu|cuda]

The baseline ("plain loop") is: for each point, build the interpolated state dict, load it
into the module, run the whole data set through it, compute loss and accuracy. Times are
medians over interleaved repeats (baseline and engine alternate, so machine noise hits both).
Effective GFLOP/s counts the forward FLOPs the plain loop performs (K points x one forward),
so a method that skips work shows more than the machine's peak.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

import landscape as ls
from landscape.core.family import AffineFamily


def matmul_peak(device: torch.device, seconds: float = 1.0) -> float:
    """Measured float32 matmul throughput of this machine, GFLOP/s."""
    n = 2048
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * count / (time.perf_counter() - start) / 1e9


def forward_flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return counter.get_total_flops()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def plain_loop(
    model: torch.nn.Module, family: AffineFamily, x: torch.Tensor, y: torch.Tensor
) -> list[tuple[float, float]]:
    module = copy.deepcopy(model).to(x.device).eval()
    out = []
    for k in range(len(family)):
        module.load_state_dict(family.state(k))
        with torch.no_grad():
            logits = module(x)
            flat = logits.reshape(-1, logits.shape[-1])
            loss = torch.nn.functional.cross_entropy(flat, y.reshape(-1)).item()
            acc = (flat.argmax(-1) == y.reshape(-1)).float().mean().item()
        out.append((loss, acc))
    return out


def timed_pair(
    baseline: Callable[[], object], engine: Callable[[], object], repeats: int, device
) -> tuple[float, float]:
    baseline(), engine()  # warm-up
    tb, te = [], []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        baseline()
        sync(device)
        tb.append(time.perf_counter() - start)
        start = time.perf_counter()
        engine()
        sync(device)
        te.append(time.perf_counter() - start)
    return statistics.median(tb), statistics.median(te)


def case(name: str, model, family, x, y, repeats: int, peak: float, device) -> dict[str, object]:
    x, y = x.to(device), y.to(device)
    flops = forward_flops(model.to(device), x) * len(family)
    model = model.cpu()
    t_loop, t_eval = timed_pair(
        lambda: plain_loop(model, family, x, y),
        lambda: ls.evaluate(model, family, (x, y), device=device, progress=False),
        repeats,
        device,
    )
    strategy = ls.evaluate(model, family, (x[:2], y[:2]), device=device, progress=False).attrs["strategy"]
    check = ls.evaluate(model, family, (x, y), device=device, progress=False)
    reference = plain_loop(model, family, x, y)
    worst = max(abs(float(v) - r[0]) / abs(r[0]) for v, r in zip(check.loss.values.reshape(-1), reference))
    return {
        "case": name,
        "K": len(family),
        "N": x.shape[0],
        "strategy": strategy,
        "loop_s": t_loop,
        "evaluate_s": t_eval,
        "speedup": t_loop / t_eval,
        "loop_gflops": flops / t_loop / 1e9,
        "evaluate_gflops": flops / t_eval / 1e9,
        "peak_gflops": peak,
        "max_rel_diff": worst,
    }


def line(model_a, model_b, k: int = 21) -> AffineFamily:
    return AffineFamily.line(ls.state_of(model_a), ls.state_of(model_b), k)


def engine_cases(repeats: int, device: torch.device, peak: float) -> list[dict[str, object]]:
    g = torch.Generator().manual_seed(0)
    rows = []
    mlp = lambda seed, **kw: ls.models.create("mlp", seed=seed, **kw)  # noqa: E731
    big = dict(input_shape=784, width=512, depth=2)
    for n in (1000, 10000):
        x, y = torch.randn(n, 784, generator=g), torch.randint(0, 10, (n,), generator=g)
        rows.append(
            case(
                "MLP 784-512-512-10, line",
                mlp(0, **big),
                line(mlp(0, **big), mlp(1, **big)),
                x,
                y,
                repeats,
                peak,
                device,
            )
        )
    wide = dict(input_shape=784, width=256, depth=1)
    a = ls.state_of(mlp(0, **wide))
    grid = np.linspace(-1, 1, 21)
    plane = AffineFamily.grid(a, (ls.random_direction(a, seed=0), ls.random_direction(a, seed=1)), grid, grid)
    x, y = torch.randn(1000, 784, generator=g), torch.randint(0, 10, (1000,), generator=g)
    rows.append(case("MLP 784-256-10, 21x21 plane", mlp(0, **wide), plane, x, y, max(1, repeats // 2), peak, device))

    digits, mnist, text = ls.datasets.digits(), ls.datasets.mnist1d(), ls.datasets.docstrings(n_test=1000)
    zoo = {
        "mlp": ({}, mnist),
        "cnn1d": ({}, mnist),
        "cnn2d": ({}, digits),
        "resnet": ({}, digits),
        "vit": ({}, digits),
        "gpt": ({}, text),
    }
    for name, (kwargs, data) in zoo.items():
        x, y = data.test
        m0, m1 = ls.models.create(name, seed=0, **kwargs), ls.models.create(name, seed=1, **kwargs)
        rows.append(case(f"zoo {name} ({data.name} test), line", m0, line(m0, m1), x, y, repeats, peak, device))
    return rows


def peer_case(repeats: int) -> dict[str, object] | None:
    """The same curve with loss-landscapes' linear_interpolation, which evaluates alpha = 1/K,
    2/K, ..., 1 (it skips alpha = 0) by adding (b - a)/K to the parameters K times, moves only
    parameters (BatchNorm buffers stay at a's values), modifies the model it is given unless
    deepcopy_model=True, and returns the loss only."""
    try:
        import loss_landscapes
        import loss_landscapes.metrics
    except ImportError:
        return None
    data = ls.datasets.mnist1d()
    x, y = data.test
    kw = dict(input_shape=40, width=512, depth=2)
    m0, m1 = ls.models.create("mlp", seed=0, **kw), ls.models.create("mlp", seed=1, **kw)
    steps = 20
    alphas = np.arange(1, steps + 1) / steps
    metric = loss_landscapes.metrics.Loss(torch.nn.functional.cross_entropy, x, y)

    def peer():
        with torch.no_grad():
            return loss_landscapes.linear_interpolation(m0, m1, metric, steps=steps, deepcopy_model=True)

    family = AffineFamily.line(ls.state_of(m0), ls.state_of(m1), alphas)
    ours = lambda: ls.evaluate(m0, family, (x, y), metrics="loss", progress=False)  # noqa: E731
    t_peer, t_ours = timed_pair(peer, ours, repeats, torch.device("cpu"))
    diff = np.max(np.abs(peer() - ours().loss.values) / np.abs(ours().loss.values))
    return {
        "case": f"loss-landscapes linear_interpolation, MLP 40-512-512-10, mnist1d test, K={steps}",
        "peer_s": t_peer,
        "landscape_s": t_ours,
        "speedup": t_peer / t_ours,
        "max_rel_diff": float(diff),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    ls.set_num_threads(args.threads)
    device = torch.device(args.device)
    peak = matmul_peak(device)
    print(
        f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"measured float32 matmul peak {peak:.0f} GFLOP/s\n"
    )
    header = (
        f"{'case':44s} {'K':>4s} {'N':>6s} {'strategy':>8s} {'loop s':>8s} {'eval s':>8s} {'speedup':>8s} "
        f"{'loop GF/s':>9s} {'eval GF/s':>9s} {'max rel diff':>12s}"
    )
    print(header)
    print("-" * len(header))
    for row in engine_cases(args.repeats, device, peak):
        print(
            f"{row['case']:44s} {row['K']:4d} {row['N']:6d} {row['strategy']:>8s} {row['loop_s']:8.3f} "
            f"{row['evaluate_s']:8.3f} {row['speedup']:7.2f}x {row['loop_gflops']:9.1f} {row['evaluate_gflops']:9.1f} "
            f"{row['max_rel_diff']:12.1e}",
            flush=True,
        )
    if device.type == "cpu":
        peer = peer_case(args.repeats)
        if peer is None:
            print("\nloss-landscapes not installed: pip install loss-landscapes to compare")
        else:
            print(
                f"\n{peer['case']}: loss-landscapes {peer['peer_s']:.3f} s, landscape {peer['landscape_s']:.3f} s "
                f"({peer['speedup']:.2f}x), values agree to {peer['max_rel_diff']:.1e} relative"
            )


if __name__ == "__main__":
    main()
