"""How accurate and how fast are the curvature estimates?

    python benchmarks/curvature.py [--repeats 5] [--threads 2] [--skip-accuracy] [--skip-speed] [--plain-allocator]

1. Accuracy: the top-5 Hessian eigenvalues of the zoo ResNet (``base_width=4``: 5,142
   parameters, BatchNorm in eval mode) trained for 20 epochs on sklearn's digits, on the
   first 256 training examples, from ``hessian_eigenvalues`` (float32 products, default
   tolerance) against ``numpy.linalg.eigvalsh`` of the dense float64 Hessian, built row by row
   with plain autograd (double backward, ``is_grads_batched``): an independent computation.
   The dense matrix is 5,142 x 5,142 (212 MB); wider ResNets do not fit a dense reference.
2. Speed: the top eigenvalue of an MLP 64-1024-1024-10 (1,126,410 parameters, trained for 3
   epochs) on 1,000 digits examples, ``hessian_eigenvalues(k=1)`` against PyHessian's
   ``hessian(model, criterion, data=(x, y)).eigenvalues()`` (power iteration, its defaults:
   at most 100 iterations, relative tolerance 1e-3) on the same model and data, both timed
   end to end (PyHessian's set-up pass included), interleaved A B A B, median of
   ``--repeats``; each repeat draws a new start vector for both. PyHessian's defaults stop
   when the eigenvalue changes by less than 1e-3 between iterations, which leaves it a few
   1e-3 below the eigenvalue; a third row runs it to a change of 1e-6 (matched accuracy).
   Errors are against ARPACK run to a residual bound of 1e-9.

Both sides run in this one process with glibc's allocator tuned (``ls.tune_cpu_allocator()``,
as the command line does) unless ``--plain-allocator`` is given.

PyHessian is optional (``pip install pyhessian``): without it, part 2 is skipped with a
message. Its ``density`` uses ``torch.eig``, which recent torch removed, so only its
``eigenvalues`` is compared.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch

import landscape as ls
from landscape.curvature import hessian_eigenvalues


def dense_hessian(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 256) -> np.ndarray:
    """The Hessian of the mean cross-entropy in every parameter, float64, by plain autograd."""
    model = model.double().eval()
    params = [p for p in model.parameters() if p.requires_grad]
    loss = torch.nn.functional.cross_entropy(model(x.double()), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    flat = torch.cat([g.reshape(-1) for g in grads])
    dim = flat.numel()
    rows = []
    for start in range(0, dim, chunk):
        stop = min(start + chunk, dim)
        basis = torch.zeros(stop - start, dim, dtype=torch.float64)
        basis[torch.arange(stop - start), torch.arange(start, stop)] = 1
        block = torch.autograd.grad(flat, params, grad_outputs=basis, retain_graph=True, is_grads_batched=True)
        rows.append(torch.cat([b.reshape(stop - start, -1) for b in block], dim=1))
    matrix = torch.cat(rows).numpy()
    return (matrix + matrix.T) / 2


def accuracy(threads: int) -> None:
    data = ls.datasets.digits()
    model = ls.models.create("resnet", base_width=4, seed=0)
    state = ls.train(model, data, epochs=20, init_seed=0, data_seed=0, progress=False).state
    x, y = data.train[0][:256], data.train[1][:256]
    model.load_state_dict(state)
    n_params = sum(p.numel() for p in model.parameters())
    start = time.perf_counter()
    reference = np.linalg.eigvalsh(dense_hessian(model, x, y))[::-1][:5]
    dense_time = time.perf_counter() - start
    start = time.perf_counter()
    ours = hessian_eigenvalues(model.float(), state, (x, y), k=5, device="cpu", progress=False)
    ours_time = time.perf_counter() - start
    values = ours.eigenvalues.values
    print(
        f"\n1. zoo ResNet (base_width=4, {n_params:,} parameters, BatchNorm) on 256 digits examples, "
        f"{threads} thread(s)"
    )
    print(
        f"   dense float64 Hessian + eigvalsh: {dense_time:.1f} s; hessian_eigenvalues(k=5): {ours_time:.2f} s, "
        f"{ours.attrs['products']} products"
    )
    print("   | k | dense (eigvalsh) | hessian_eigenvalues | relative error |")
    print("   | --- | --- | --- | --- |")
    for k, (ref, got) in enumerate(zip(reference, values), start=1):
        print(f"   | {k} | {ref:.6f} | {got:.6f} | {abs(got - ref) / abs(ref):.1e} |")
    worst = float(np.max(np.abs(values - reference) / np.abs(reference)))
    print(f"   largest relative error {worst:.1e} ({'within' if worst <= 0.01 else 'NOT within'} 1%)")


def speed(repeats: int, threads: int) -> None:
    try:
        import pyhessian
    except Exception as err:  # optional peer package
        print(f"\n2. skipped: PyHessian is not importable ({type(err).__name__}: {err}); pip install pyhessian")
        return
    data = ls.datasets.digits()
    model = ls.models.create("mlp", width=1024, depth=2, input_shape=(1, 8, 8), seed=0)
    state = ls.train(model, data, epochs=3, init_seed=0, data_seed=0, progress=False).state
    model.load_state_dict(state)
    model.eval()
    x, y = data.train[0][:1000], data.train[1][:1000]
    n_params = sum(p.numel() for p in model.parameters())
    # `pyhessian.hessian` is the class; its module holds the product function to count.
    pyhessian_module = sys.modules["pyhessian.hessian"]
    counted = {"products": 0}
    original = pyhessian_module.hessian_vector_product

    def counting(*args, **kwargs):
        counted["products"] += 1
        return original(*args, **kwargs)

    pyhessian_module.hessian_vector_product = counting
    criterion = torch.nn.CrossEntropyLoss()

    def run_pyhessian(seed: int, **options: object) -> tuple[float, int]:
        torch.manual_seed(seed)
        counted["products"] = 0
        values, _ = pyhessian.hessian(model, criterion, data=(x, y), cuda=False).eigenvalues(top_n=1, **options)
        return float(values[0]), counted["products"]

    def run_pyhessian_matched(seed: int) -> tuple[float, int]:
        # Power iteration stopped at a relative change of 1e-6: about the accuracy ARPACK's
        # residual bound gives (its defaults stop at 1e-3 change, a few 1e-3 from the eigenvalue).
        return run_pyhessian(seed, maxIter=1000, tol=1e-6)

    def run_landscape(seed: int) -> tuple[float, int]:
        ds = hessian_eigenvalues(model, state, (x, y), k=1, seed=seed, device="cpu", progress=False)
        return float(ds.eigenvalues[0]), int(ds.attrs["products"])

    run_landscape(0)  # warm-up: the first torch.func call imports torch._dynamo
    run_pyhessian(0)
    runs = {"landscape": run_landscape, "pyhessian": run_pyhessian, "pyhessian_matched": run_pyhessian_matched}
    times: dict[str, list[float]] = {name: [] for name in runs}
    results: dict[str, list[tuple[float, int]]] = {name: [] for name in runs}
    for r in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            results[name].append(fn(r + 1))
            times[name].append(time.perf_counter() - start)
    print(
        f"\n2. top eigenvalue, MLP 64-1024-1024-10 ({n_params:,} parameters), 1,000 digits examples, {threads} thread(s)"
    )
    print(f"   median of {repeats} interleaved repeats")
    # The reference: ARPACK at a residual bound of 1e-9 (eigenvalue converged to float32 rounding).
    exact = float(hessian_eigenvalues(model, state, (x, y), k=1, tol=1e-9, device="cpu", progress=False).eigenvalues[0])
    print(f"   reference top eigenvalue (ARPACK, tol=1e-9): {exact:.6f}")
    print("   | | time | products | top eigenvalue (median) | largest relative error |")
    print("   | --- | --- | --- | --- | --- |")
    labels = {
        "landscape": "`hessian_eigenvalues(k=1)` (default tol=1e-3)",
        "pyhessian": "PyHessian `eigenvalues()` (defaults: tol=1e-3, maxIter=100)",
        "pyhessian_matched": "PyHessian `eigenvalues(tol=1e-6, maxIter=1000)`",
    }
    for name, label in labels.items():
        values = [v for v, _ in results[name]]
        products = [p for _, p in results[name]]
        worst = max(abs(v - exact) / abs(exact) for v in values)
        print(
            f"   | {label} | {statistics.median(times[name]):.2f} s | {statistics.median(products):.0f} "
            f"({min(products)}-{max(products)}) | {statistics.median(values):.6f} | {worst:.1e} |"
        )
    ours = statistics.median(times["landscape"])
    print(
        f"   speedup over PyHessian: {statistics.median(times['pyhessian']) / ours:.2f}x at its defaults, "
        f"{statistics.median(times['pyhessian_matched']) / ours:.2f}x at matched accuracy"
    )
    pyhessian_module.hessian_vector_product = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument(
        "--plain-allocator",
        action="store_true",
        help="leave glibc's malloc at its defaults (by default the process calls ls.tune_cpu_allocator(), "
        "as the command line does; both sides of every comparison run in this one process)",
    )
    args = parser.parse_args()
    ls.set_num_threads(args.threads)
    if not args.plain_allocator:
        ls.tune_cpu_allocator()
    print(f"glibc allocator tuned: {not args.plain_allocator}")
    if not args.skip_accuracy:
        accuracy(args.threads)
    if not args.skip_speed:
        speed(args.repeats, args.threads)


if __name__ == "__main__":
    main()
