"""The engine on a GPU: the device's own rates, then `evaluate` with every strategy and
precision against the loop a researcher writes, then training throughput against a plain
PyTorch loop; one table each.

    python benchmarks/gpu.py                      # on a GPU machine, under 5 minutes
    python benchmarks/gpu.py --device cpu --tiny  # the same code on tiny cases, under a minute

The plain loop loads each point's state dict into the module and runs the data through it in
batches of 1,000 (``--tiny``: 32). Times are medians of ``--repeats`` interleaved repeats
(plain loop, then every variant, in turn), after one warm-up of each; CUDA is synchronised
around every timing. TFLOP/s counts the forward FLOPs of K points on N examples. "max rel
diff" is the largest relative difference of any point's loss from the plain loop's.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

import landscape as ls
from landscape.core import AffineFamily


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


# -- the device -------------------------------------------------------------------------
def matmul_rate(device: torch.device, dtype: torch.dtype, n: int, tf32: bool = False, seconds: float = 0.5) -> float:
    """Matrix-product throughput in TFLOP/s for n x n operands."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        a @ b
        sync(device)
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            a @ b
            count += 1
        sync(device)
        elapsed = time.perf_counter() - start
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    return 2 * n**3 * count / elapsed / 1e12


def bandwidth(device: torch.device, numel: int, seconds: float = 0.5) -> float:
    """Copy bandwidth in GB/s (bytes read plus bytes written)."""
    src = torch.empty(numel, device=device, dtype=torch.float32)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        dst.copy_(src)
        count += 1
    sync(device)
    return 2 * numel * 4 * count / (time.perf_counter() - start) / 1e9


# -- evaluation ------------------------------------------------------------------------
@dataclass
class Case:
    name: str
    model: torch.nn.Module
    family: AffineFamily
    x: torch.Tensor
    y: torch.Tensor


def _mlp(widths: list[int], seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for i in range(len(widths) - 1):
        layers.append(torch.nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def _line(make: Callable[[int], torch.nn.Module], k: int) -> tuple[torch.nn.Module, AffineFamily]:
    a, b = make(0), make(1)
    return a, AffineFamily.line(ls.state_of(a), ls.state_of(b), k)


def _plane(make: Callable[[int], torch.nn.Module], side: int) -> tuple[torch.nn.Module, AffineFamily]:
    model = make(0)
    origin = ls.state_of(model)
    directions = (ls.random_direction(origin, seed=0), ls.random_direction(origin, seed=1))
    grid = np.linspace(-1, 1, side)
    return model, AffineFamily.grid(origin, directions, grid, grid)


def cases(tiny: bool) -> list[Case]:
    g = torch.Generator().manual_seed(0)
    n = 64 if tiny else 10_000
    k, side, side56 = (3, 3, 2) if tiny else (21, 21, 9)
    width = 32 if tiny else 512
    image = (3, 8, 8) if tiny else (3, 32, 32)

    def data(shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g)

    def resnet(blocks: tuple[int, ...]) -> Callable[[int], torch.nn.Module]:
        base = 4 if tiny else 16
        return lambda s: ls.models.create("resnet", seed=s, input_shape=image, blocks=blocks, base_width=base)

    def vit(s: int) -> torch.nn.Module:
        kw = {"dim": 16, "depth": 1} if tiny else {}
        return ls.models.create("vit", seed=s, input_shape=image, patch_size=4, **kw)

    out = []
    model, family = _line(lambda s: _mlp([784, width, width, 10], s), k)
    out.append(Case(f"MLP 784-{width}-{width}-10, line", model, family, *data((784,))))
    model, family = _plane(lambda s: _mlp([784, width // 2, 10], s), side)
    out.append(Case(f"MLP 784-{width // 2}-10, {side}x{side} plane", model, family, *data((784,))))
    model, family = _line(resnet((1, 1, 1) if tiny else (3, 3, 3)), k)
    out.append(Case(f"ResNet-{'8' if tiny else '20'} {'x'.join(map(str, image))}, line", model, family, *data(image)))
    model, family = _line(vit, k)
    out.append(Case(f"zoo ViT {'x'.join(map(str, image))}, line", model, family, *data(image)))
    model, family = _plane(resnet((1, 1, 1) if tiny else (9, 9, 9)), side56)
    out.append(Case(f"ResNet-{'8' if tiny else '56'}, {side56}x{side56} plane", model, family, *data(image)))
    return out


def plain_loop(case: Case, device: torch.device, batch: int) -> list[float]:
    """Load each point into the module, run the data through it, sum the loss."""
    module = copy.deepcopy(case.model).to(device).eval()
    x, y = case.x.to(device), case.y.to(device)
    losses = []
    for k in range(len(case.family)):
        module.load_state_dict(case.family.state(k))
        total = torch.zeros((), device=device, dtype=torch.float64)
        with torch.no_grad():
            for s in ls.core.batch_slices(x.shape[0], batch):
                total += torch.nn.functional.cross_entropy(module(x[s]), y[s], reduction="sum").double()
        losses.append(total)
    return [float(t) / x.shape[0] for t in losses]


def forward_flops(case: Case, device: torch.device) -> float:
    module = copy.deepcopy(case.model).to(device).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(case.x[:8].to(device))
    return counter.get_total_flops() / 8 * case.x.shape[0] * len(case.family)


def variants(device: torch.device) -> list[tuple[str, dict[str, object]]]:
    out = [("auto", {}), ("loop", {"strategy": "loop"}), ("vmap", {"strategy": "vmap"})]
    if device.type == "cpu":
        out.append(("affine", {"strategy": "affine"}))
    out.append(("auto bf16", {"precision": "bfloat16"}))
    if device.type == "cuda":
        out.append(("auto tf32", {"precision": "tf32"}))
    return out


def evaluate_table(device: torch.device, tiny: bool, repeats: int) -> list[dict[str, object]]:
    batch = 32 if tiny else 1000
    rows = []
    for case in cases(tiny):
        flops = forward_flops(case, device)
        data = (case.x.to(device), case.y.to(device))
        reference = plain_loop(case, device, batch)
        runs: dict[str, Callable[[], object]] = {"plain loop": lambda c=case: plain_loop(c, device, batch)}
        results: dict[str, object] = {}
        for label, options in variants(device):

            def run(options=options, case=case, data=data) -> object:
                return ls.evaluate(
                    case.model,
                    case.family,
                    data,
                    metrics="loss",
                    batch_size=batch,
                    device=device,
                    progress=False,
                    **options,
                )

            try:
                results[label] = run()  # warm-up, and the values to check
            except ls.core.LandscapeError as err:  # e.g. affine on a model it cannot use
                rows.append({"case": case.name, "variant": label, "skipped": str(err).split(";")[0]})
                continue
            runs[label] = run
        times: dict[str, list[float]] = {label: [] for label in runs}
        for _ in range(repeats):
            for label, fn in runs.items():
                times[label].append(timed(fn, device))
        base = statistics.median(times["plain loop"])
        for label, ts in times.items():
            seconds = statistics.median(ts)
            row = {
                "case": case.name,
                "K": len(case.family),
                "N": case.x.shape[0],
                "variant": label,
                "seconds": seconds,
                "speedup": base / seconds,
                "tflops": flops / seconds / 1e12,
            }
            if label != "plain loop":
                ds = results[label]
                values = ds.loss.values.reshape(-1)
                row["strategy"] = ds.attrs["strategy"]
                row["max_rel_diff"] = float(np.max(np.abs(values - reference) / np.abs(reference)))
            rows.append(row)
    return rows


# -- training --------------------------------------------------------------------------
def train_table(device: torch.device, tiny: bool, repeats: int) -> list[dict[str, object]]:
    """landscape.train against the plain loop: the same model, data order, optimizer, batch size
    and steps; the first run of each (CUDA warm-up, allocator) is not timed. Two cases: a
    CIFAR-shaped ResNet-20 (compute-bound) and an MLP 784-256-256-10 (launch-bound: per-step
    overhead and host synchronisation show there first). On the CPU (not tiny) the ResNet is a
    ResNet-8 of width 8 on 16x16 images and the runs are 300 steps, so that the table takes
    minutes, not hours."""
    g = torch.Generator().manual_seed(0)
    small = tiny or device.type == "cpu"
    image = (3, 8, 8) if tiny else (3, 16, 16) if small else (3, 32, 32)
    n, steps, batch = (256, 8, 32) if tiny else (10_240, 300, 128) if small else (10_240, 200, 128)
    cases = {
        "resnet": (
            ls.models.create(
                "resnet",
                seed=0,
                input_shape=image,
                blocks=(1, 1, 1) if small else (3, 3, 3),
                base_width=4 if tiny else 8 if small else 16,
            ),
            torch.randn(n, *image, generator=g),
        ),
        "mlp 784-256-256-10": (
            ls.models.create("mlp", seed=0, input_shape=(1, 28, 28), width=256, depth=2),
            torch.randn(n, 1, 28, 28, generator=g),
        ),
    }
    y = torch.randint(0, 10, (n,), generator=g)
    rows = []
    for case, (model, x) in cases.items():

        def plain(model: torch.nn.Module = model, x: torch.Tensor = x) -> None:
            work = copy.deepcopy(model).to(device).train()
            opt = torch.optim.SGD(work.parameters(), lr=0.05, momentum=0.9)
            xs, ys = x.to(device), y.to(device)
            order_gen = torch.Generator().manual_seed(0)
            step = 0
            while step < steps:
                order = torch.randperm(n, generator=order_gen).to(device)
                for s in ls.core.batch_slices(n, batch):
                    if step >= steps:
                        break
                    idx = order[s]
                    loss = torch.nn.functional.cross_entropy(work(xs[idx]), ys[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    step += 1

        def ours(model: torch.nn.Module = model, x: torch.Tensor = x, precision: str = "float32") -> None:
            ls.train(
                model,
                (x, y),
                steps=steps,
                batch_size=batch,
                optimizer="sgd",
                lr=0.05,
                precision=precision,
                device=device,
                progress=False,
            )

        runs = {
            "plain PyTorch loop": plain,
            "landscape.train": ours,
            "landscape.train bf16": lambda model=model, x=x: ours(model, x, "bfloat16"),
        }
        for fn in runs.values():
            fn()  # warm-up
        times: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(repeats):
            for label, fn in runs.items():
                times[label].append(timed(fn, device))
        base = statistics.median(times["plain PyTorch loop"])
        rows += [
            {
                "case": case,
                "variant": label,
                "steps": steps,
                "batch": batch,
                "seconds": statistics.median(ts),
                "steps_per_s": steps / statistics.median(ts),
                "relative": base / statistics.median(ts),
            }
            for label, ts in times.items()
        ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny cases, for a smoke run on the CPU")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default 3; tiny 1)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--only", choices=("all", "evaluate", "train"), default="all", help="run one of the two tables (default: both)"
    )
    args = parser.parse_args()
    ls.set_num_threads(args.threads)
    device = ls.core.resolve_device(args.device, function="benchmarks/gpu.py")
    repeats = args.repeats or (1 if args.tiny else 3)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device {device} ({name}), torch {torch.__version__}, repeats {repeats}{' (tiny)' if args.tiny else ''}\n")

    if args.only in ("all", "evaluate"):
        n = 512 if args.tiny else 8192
        rates = {"float32": matmul_rate(device, torch.float32, n)}
        if device.type == "cuda":
            rates["tf32"] = matmul_rate(device, torch.float32, n, tf32=True)
        rates["bfloat16"] = matmul_rate(device, torch.bfloat16, n)
        gbs = bandwidth(device, 2**20 if args.tiny else 2**28)
        print(
            "matmul TFLOP/s: "
            + ", ".join(f"{k} {v:.2f}" for k, v in rates.items())
            + f"; copy bandwidth {gbs:.0f} GB/s\n"
        )

        header = (
            f"{'case':32s} {'K':>4s} {'N':>6s} {'variant':>10s} {'strategy':>8s} {'seconds':>9s} "
            f"{'vs loop':>8s} {'TFLOP/s':>8s} {'max rel diff':>12s}"
        )
        print(header)
        print("-" * len(header))
        for row in evaluate_table(device, args.tiny, repeats):
            if "skipped" in row:
                print(f"{row['case']:32s} {'':>4s} {'':>6s} {row['variant']:>10s}  skipped: {row['skipped']}")
                continue
            diff = f"{row['max_rel_diff']:12.1e}" if "max_rel_diff" in row else f"{'':>12s}"
            print(
                f"{row['case']:32s} {row['K']:4d} {row['N']:6d} {row['variant']:>10s} {row.get('strategy', ''):>8s} "
                f"{row['seconds']:9.4f} {row['speedup']:7.2f}x {row['tflops']:8.3f} {diff}",
                flush=True,
            )

    if args.only == "evaluate":
        return
    print()
    header = (
        f"{'training':20s} {'variant':22s} {'steps':>6s} {'batch':>6s} {'seconds':>9s} {'steps/s':>8s} {'vs plain':>8s}"
    )
    print(header)
    print("-" * len(header))
    for row in train_table(device, args.tiny, repeats):
        print(
            f"{row['case']:20s} {row['variant']:22s} {row['steps']:6d} {row['batch']:6d} {row['seconds']:9.3f} "
            f"{row['steps_per_s']:8.1f} {row['relative']:7.2f}x"
        )


if __name__ == "__main__":
    main()
