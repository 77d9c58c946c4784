"""Speed of concept probing and guidance on SmolLM2-135M-Instruct.

1. Hidden-state extraction throughput (tokens/s): ``landscape.concepts.hidden_states``
   against the ``steering-vectors`` package (``extract_activations``) reading the same layers
   (residual stream, last token) from the same rendered texts at the same batch size; the
   two results are also compared value by value.
2. Guidance overhead during generation: greedy generation inside ``guide(...)`` against the
   same generation without it.

Runs are interleaved and repeated; the median is reported. Usage::

    python benchmarks/concepts.py --out results/bench-concepts --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def _time(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n", type=int, default=128, help="examples (texts) extracted")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gen-repeats", type=int, default=9, help="repeats of the generation timing")
    parser.add_argument(
        "--tasks", nargs="+", choices=("extraction", "generation"), default=["extraction", "generation"]
    )
    parser.add_argument("--gen-prompts", type=int, default=8)
    parser.add_argument("--gen-tokens", type=int, default=48)
    parser.add_argument("--cache", default=None, help="folder keeping the dequantised GGUF (faster reloads)")
    parser.add_argument(
        "--model", default=None, help="model (default: SmolLM2-135M-Instruct; 'tiny' to try the script)"
    )
    args = parser.parse_args()

    import numpy as np
    import torch
    from steering_vectors import extract_activations

    import landscape.concepts as cg

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lm, tok = cg.load_lm(args.model, cache=args.cache)
    depth = len(cg.find_layers(lm))
    examples = cg.sentiment(args.n, seed=0)
    # The exact strings the model reads: the chat-rendered prompt followed by the completion.
    texts = [
        tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True) + c
        for p, c in zip(examples.prompts, examples.completions)
    ]
    n_tokens = sum(len(tok(t).input_ids) for t in texts)
    pairs = list(zip(texts[0::2], texts[1::2]))
    rows = []
    middle = list(range(depth // 4, (2 * depth) // 3 + 1))
    layer_sets = ((f"all {depth} layers", list(range(depth))), (f"layers {middle[0]}-{middle[-1]}", middle))
    for name, layers in layer_sets if "extraction" in args.tasks else ():

        def ours(layers=layers):
            return cg.hidden_states(
                lm, tok, examples, layers=layers, read="last", batch_size=args.batch_size, progress=False
            )

        def theirs(layers=layers):
            # steering-vectors runs the positive and the negative texts of a batch of pairs in
            # separate forward passes: batch_size pairs give forward passes of batch_size texts.
            return extract_activations(lm, tok, pairs, layers=layers, batch_size=args.batch_size)

        reps, (pos, neg) = ours(), theirs()  # warm-up, and the value check
        reference = np.stack(
            [torch.cat(pos[layer] if k == 0 else neg[layer]).float().numpy() for layer in layers for k in (0, 1)]
        )
        reference = (
            reference.reshape(len(layers), 2, len(pairs), -1).transpose(2, 1, 0, 3).reshape(len(texts), len(layers), -1)
        )
        max_diff = float(np.abs(reps.values - reference).max())
        times = {"landscape": [], "steering-vectors": []}
        for _ in range(args.repeats):  # interleaved, so that load on a shared machine hits both
            times["landscape"] += _time(ours, 1)
            times["steering-vectors"] += _time(theirs, 1)
        median = {k: statistics.median(v) for k, v in times.items()}
        rows.append(
            {
                "task": f"extraction, {name}",
                "tokens": n_tokens,
                "landscape_tok_s": n_tokens / median["landscape"],
                "steering_vectors_tok_s": n_tokens / median["steering-vectors"],
                "speedup": median["steering-vectors"] / median["landscape"],
                "max_abs_diff": max_diff,
                "times": times,
            }
        )
        print(json.dumps(rows[-1]), flush=True)

    if "generation" in args.tasks:
        rows.append(generation_overhead(lm, tok, examples, depth, args))
        print(json.dumps(rows[-1]), flush=True)
    (out / "concepts.json").write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=2))
    lines = [
        "| task | landscape | steering-vectors 0.12.2 | speedup | max abs diff |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        if "speedup" in row:
            lines.append(
                f"| {row['task']} ({row['tokens']} tokens) | {row['landscape_tok_s']:.0f} tok/s | "
                f"{row['steering_vectors_tok_s']:.0f} tok/s | {row['speedup']:.2f}x | {row['max_abs_diff']:.1e} |"
            )
    lines += ["", "| generation | plain | guided | overhead |", "|---|---|---|---|"]
    for row in rows:
        if "overhead" in row:
            lines.append(
                f"| {row['task']} | {row['plain_tok_s']:.1f} tok/s | {row['guided_tok_s']:.1f} tok/s | "
                f"{100 * row['overhead']:+.1f}% |"
            )
    (out / "concepts.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def generation_overhead(lm, tok, examples, depth: int, args: argparse.Namespace) -> dict:
    """Greedy generation inside ``guide`` against the same generation without it."""
    import landscape.concepts as cg

    probe = cg.fit_probe(cg.hidden_states(lm, tok, examples, progress=False), seed=0)
    prompts = list(dict.fromkeys(examples.prompts))[: args.gen_prompts]

    def plain():
        return cg.generate(lm, tok, prompts, max_new_tokens=args.gen_tokens, batch_size=len(prompts))

    def guided():
        with cg.guide(lm, probe, alpha=0.05, top_k=min(8, depth)) as state:
            guided.layers = state.layers
            return cg.generate(lm, tok, prompts, max_new_tokens=args.gen_tokens, batch_size=len(prompts))

    plain(), guided()
    times = {"plain": [], "guided": []}
    for _ in range(args.gen_repeats):  # interleaved, so that load on a shared machine hits both
        times["plain"] += _time(plain, 1)
        times["guided"] += _time(guided, 1)
    median = {k: statistics.median(v) for k, v in times.items()}
    generated = len(prompts) * args.gen_tokens
    return {
        "task": f"generation, {len(prompts)} prompts x {args.gen_tokens} tokens, guided layers {guided.layers}",
        "plain_tok_s": generated / median["plain"],
        "guided_tok_s": generated / median["guided"],
        "overhead": median["guided"] / median["plain"] - 1,
        "times": times,
    }


if __name__ == "__main__":
    main()
