"""Figure: is a short fine-tune of a language model linearly connected to its base? The
next-token loss along the line from SmolLM2-135M-Instruct to a fine-tune of it on the
docstrings of Python's standard library (offline text), and a filter-normalised random plane
around the base, with the time each part takes.

    python analyses/lm_connectivity.py --out results/lm [--steps 40] [--alphas 11] [--resolution 7] [--threads 2]
    python analyses/lm_connectivity.py --quick    # a tiny random Llama, seconds

Everything runs through the engine: ``landscape.train`` for the fine-tune (next-token
cross-entropy on token windows), ``connectivity.interpolate`` and ``connectivity.random_plane``
with ``TokenData`` and the metrics ``lm_loss`` and ``perplexity``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

import landscape as ls
from landscape import connectivity, plot
from landscape.concepts import load_lm
from landscape.core import TokenData


def windows(texts: list[str], tokenizer: object, length: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Training pairs for next-token prediction: ``n`` windows of ``length + 1`` tokens cut
    from the concatenated texts; targets are the inputs shifted by one."""
    ids = tokenizer("\n\n".join(texts))["input_ids"]
    rows = [ids[s : s + length + 1] for s in range(0, len(ids) - length - 1, length)][:n]
    block = torch.tensor(rows, dtype=torch.long)
    return block[:, :-1].contiguous(), block[:, 1:].contiguous()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results/lm")
    parser.add_argument("--model", default="smollm2", help="smollm2, tiny, or a save_pretrained directory")
    parser.add_argument("--steps", type=int, default=40, help="fine-tuning steps (AdamW)")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=8, help="fine-tuning windows per step")
    parser.add_argument("--context", type=int, default=64, help="tokens per window and per evaluated text")
    parser.add_argument("--n-eval", type=int, default=64, help="held-out docstrings evaluated at every point")
    parser.add_argument("--alphas", type=int, default=11)
    parser.add_argument("--resolution", type=int, default=7)
    parser.add_argument("--span", type=float, default=0.1, help="random-plane half-width (filter-normalised units)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.model, args.steps, args.n_eval, args.alphas, args.resolution, args.context = "tiny", 4, 8, 3, 3, 16
    ls.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    start = time.perf_counter()
    lm, tokenizer = load_lm(args.model)
    timings["load"] = time.perf_counter() - start
    base = ls.state_of(lm)

    train_pairs = windows(ls.datasets.docstring_texts("train"), tokenizer, args.context, args.steps * args.batch_size)
    start = time.perf_counter()
    tuned = ls.train(
        lm,
        train_pairs,
        steps=args.steps,
        batch_size=args.batch_size,
        optimizer="adamw",
        lr=args.lr,
        schedule="cosine",
        init_seed=0,
        data_seed=0,
        start=base,
        progress=not args.quick,
    ).state
    timings["fine-tune"] = time.perf_counter() - start

    held_out = [t for t in ls.datasets.docstring_texts("test") if t.strip()][: args.n_eval]
    data = TokenData.from_texts({"test": held_out}, tokenizer, max_length=args.context, name="docstrings")
    metrics = ["lm_loss", "perplexity"]

    start = time.perf_counter()
    curve = connectivity.interpolate(lm, base, tuned, data, alphas=args.alphas, metrics=metrics, batch_size=16)
    timings["line"] = time.perf_counter() - start
    start = time.perf_counter()
    surface = connectivity.random_plane(
        lm, base, data, span=args.span, resolution=args.resolution, metrics=metrics, batch_size=16, seed=0
    )
    timings["plane"] = time.perf_counter() - start

    curve.attrs["seconds"] = timings["line"]
    surface.attrs["seconds"] = timings["plane"]
    ls.save_result({"line": curve, "plane": surface}, out / "lm_connectivity.nc")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    line = curve.lm_loss.sel(split="test")
    axes[0].plot(line.alpha, line, marker="o")
    axes[0].set_xlabel("alpha (0 = base, 1 = fine-tuned)")
    axes[0].set_ylabel("next-token loss on held-out docstrings (nats)")
    axes[0].set_title("base to fine-tune", fontsize="medium")
    plot.surface(surface, axes[1], metric="lm_loss", split="test")
    axes[1].set_title("random filter-normalised plane around the base", fontsize="medium")
    fig.savefig(out / "lm_connectivity.png", dpi=150)

    tokens = data.n_tokens["test"]
    print(f"{args.model}: {len(held_out)} held-out texts, {tokens} predicted tokens per point")
    print(f"{'alpha':>6} {'loss':>8} {'perplexity':>11}")
    for alpha, loss, ppl in zip(line.alpha.values, line.values, curve.perplexity.sel(split="test").values):
        print(f"{alpha:6.2f} {loss:8.3f} {ppl:11.2f}")
    test = curve.sel(split="test")
    above_chord = float(connectivity.barrier(test, metric="lm_loss", kind="linear"))
    above_mean = float(connectivity.barrier(test, metric="lm_loss", kind="max_minus_mean"))
    # A curve that falls from base to fine-tune has its maximum at the base: max minus the mean
    # of the ends is then half the drop, not a barrier; the height above the chord is the barrier.
    print(f"loss barrier above the straight line between the ends: {above_chord:.4f} nats")
    print(f"max minus mean of the ends: {above_mean:.4f} nats")
    print(
        "seconds: "
        + ", ".join(f"{k} {v:.1f}" for k, v in timings.items())
        + f" ({args.alphas} line points, {args.resolution**2} plane points, {torch.get_num_threads()} threads)"
    )


if __name__ == "__main__":
    main()
