"""Concept directions and guidance against the peer packages steering-vectors and repeng, on
SmolLM2-135M-Instruct, measured in one run.

Same data (``cg.sentiment``: a positive and a negative completion of each prompt, rendered
with the chat template), same layers (the residual stream, i.e. block outputs, at the last
token), same batch size:

1. Extraction: tokens/s of reading the representations and fitting a direction, and the
   cosine between each peer's direction and landscape's (mean difference for
   steering-vectors, whose vector is a mean of differences; repeng's default ``pca_diff``
   against landscape's mean difference and its PCA).
2. Guided generation: tokens/s of greedy generation of the same prompts plain, inside
   ``landscape.concepts.guide``, inside steering-vectors' ``apply`` and with repeng's
   ``ControlModel``, each adding the same vector (strength x unit direction, no norm
   preservation) at the same layers.

Runs are interleaved (A B C A B C ...) and the median of the repeats is reported. The peer
packages are optional: a missing or broken one is reported with the reason and left out.
Usage::

    python benchmarks/concepts.py --out results/bench-concepts --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:  # pragma: no cover - imported but not installed as a distribution
        return "?"


def _peer(name: str):
    """Import a peer package; return (module, None) or (None, reason)."""
    try:
        if name == "repeng":
            import numpy as np

            # repeng 0.4.0 annotates with np.float_, removed in numpy 2: alias it for the import.
            if not hasattr(np, "float_"):
                setattr(np, "float_", np.float64)  # noqa: B010
            import repeng

            return repeng, None
        import steering_vectors

        return steering_vectors, None
    except Exception as err:  # any import failure of an optional peer is reported, not fatal
        return None, f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n", type=int, default=128, help="examples (texts) extracted")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--layers", default=None, help="comma-separated layers (default: the middle third)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gen-repeats", type=int, default=5)
    parser.add_argument("--gen-prompts", type=int, default=8)
    parser.add_argument("--gen-tokens", type=int, default=32)
    parser.add_argument("--alpha", type=float, default=0.05, help="strength x mean activation norm")
    parser.add_argument("--cache", default=None, help="folder keeping the dequantised GGUF (faster reloads)")
    parser.add_argument("--model", default=None, help="model (default: SmolLM2-135M-Instruct; 'tiny' to try it)")
    args = parser.parse_args()
    # LANDSCAPE_TINY=1 (as the command line honours it): a tiny random model, so that the
    # README's command runs as written in seconds; the numbers then mean nothing.
    if os.environ.get("LANDSCAPE_TINY") == "1":
        from landscape.cli import apply_tiny

        args.tiny = {
            "model": "tiny",
            "n": 16,
            "layers": "0,1",
            "repeats": 1,
            "gen_repeats": 1,
            "gen_prompts": 2,
            "gen_tokens": 3,
        }
        apply_tiny(args)

    import numpy as np
    import torch

    import landscape.concepts as cg

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lm, tok = cg.load_lm(args.model, cache=args.cache)
    depth = len(cg.find_layers(lm))
    layers = (
        [int(v) for v in args.layers.split(",")]
        if args.layers
        else list(range(max(1, depth // 3), max(2, (2 * depth) // 3)))
    )
    examples = cg.sentiment(args.n, seed=0)
    positive = [i for i, y in enumerate(examples.labels) if y == 1]
    negative = [i for i, y in enumerate(examples.labels) if y == 0]
    texts = [
        tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True) + c
        for p, c in zip(examples.prompts, examples.completions)
    ]
    pairs = list(zip([texts[i] for i in positive], [texts[i] for i in negative]))
    n_tokens = sum(len(tok(t, add_special_tokens=False).input_ids) for t in texts)
    report: dict = {"threads": args.threads, "layers": layers, "tokens": n_tokens, "peers": {}, "rows": []}
    peers = {name: _peer(name) for name in ("steering-vectors", "repeng")}
    for name, (_module, reason) in peers.items():
        report["peers"][name] = reason or f"version {_version(name)}"
        if reason:
            print(f"{name}: left out ({reason})", flush=True)

    # -- extraction and directions -----------------------------------------------------
    def ours():
        reps = cg.hidden_states(
            lm, tok, examples, layers=layers, site="residual", read="last", batch_size=args.batch_size, progress=False
        )
        return cg.fit_probe(reps, kind="mean_diff", val_fraction=0), cg.fit_probe(reps, kind="pca", val_fraction=0)

    runs = {"landscape": ours}
    if peers["steering-vectors"][0] is not None:
        sv = peers["steering-vectors"][0]
        runs["steering-vectors"] = lambda: sv.train_steering_vector(
            lm, tok, pairs, layers=layers, read_token_index=-1, batch_size=args.batch_size
        )
    if peers["repeng"][0] is not None:
        rp = peers["repeng"][0]
        dataset = [rp.DatasetEntry(positive=p, negative=q) for p, q in pairs]
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        runs["repeng"] = lambda: rp.ControlVector.train(
            lm, tok, dataset, hidden_layers=layers, batch_size=args.batch_size, method="pca_diff"
        )
    results, times = {}, {name: [] for name in runs}
    for name, run in list(runs.items()):
        try:
            results[name] = run()  # warm-up, and the directions compared
        except Exception as err:  # a peer that fails under these library versions is reported
            reason = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
            print(f"{name}: extraction failed ({reason})", flush=True)
            report["peers"][name] = f"failed: {reason}"
            runs.pop(name), times.pop(name)
    for _ in range(args.repeats):
        for name, run in runs.items():
            times[name].append(_time(run))
    mean_diff, pca = results["landscape"]

    def cosine(layer: int, vector) -> float:
        v = np.asarray(vector, dtype=np.float64).reshape(-1)
        d = mean_diff.direction(layer).astype(np.float64)
        return float(v @ d / np.linalg.norm(v) / np.linalg.norm(d))

    for name in runs:
        row = {"task": "extraction", "package": name, "tok_s": n_tokens / statistics.median(times[name])}
        if name == "steering-vectors":
            vectors = results[name].layer_activations
            row["cosine_to_mean_diff"] = [cosine(layer, vectors[layer].float().numpy()) for layer in layers]
        if name == "repeng":
            directions = results[name].directions
            row["cosine_to_mean_diff"] = [abs(cosine(layer, directions[layer])) for layer in layers]
            row["cosine_to_pca"] = [
                abs(float(np.dot(directions[layer], pca.direction(layer)) / np.linalg.norm(directions[layer])))
                for layer in layers
            ]
        report["rows"].append({**row, "times": times[name]})
        print(json.dumps(report["rows"][-1]), flush=True)

    # -- guided generation -------------------------------------------------------------
    prompts = list(dict.fromkeys(examples.prompts))[: args.gen_prompts]
    guided_layers = [layer for layer in mean_diff.top_layers(min(8, len(layers)))]
    strengths = {
        layer: args.alpha * float(mean_diff.mean_norm_[mean_diff.layers_.tolist().index(layer)])
        for layer in guided_layers
    }
    vectors = {layer: strengths[layer] * mean_diff.direction(layer).astype(np.float32) for layer in guided_layers}

    def generate():
        return cg.generate(lm, tok, prompts, max_new_tokens=args.gen_tokens, batch_size=len(prompts))

    def plain():
        return generate()

    def guided():
        with cg.guide(lm, cg.ControlVector(vectors), preserve_norm=False):
            return generate()

    generation = {"plain": plain, "landscape": guided}
    if "steering-vectors" in runs:
        sv = peers["steering-vectors"][0]
        steering = sv.SteeringVector({layer: torch.as_tensor(v) for layer, v in vectors.items()}, "decoder_block")

        def with_sv():
            with steering.apply(lm):
                return generate()

        generation["steering-vectors"] = with_sv
    control = None
    if "repeng" in runs:
        rp = peers["repeng"][0]
        control = rp.ControlModel(lm, guided_layers)  # wraps (mutates) lm's blocks until unwrap()
        vector = rp.ControlVector(model_type=lm.config.model_type, directions=vectors)

        def with_repeng():
            control.set_control(vector, coeff=1.0)
            try:
                return generate()
            finally:
                control.reset()

        generation["repeng"] = with_repeng
    try:
        texts_out = {}
        for name, run in list(generation.items()):
            try:
                texts_out[name] = run()
            except Exception as err:
                reason = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
                print(f"{name}: guided generation failed ({reason})", flush=True)
                report["peers"][name] = f"generation failed: {reason}"
                generation.pop(name)
        gen_times = {name: [] for name in generation}
        for _ in range(args.gen_repeats):
            for name, run in generation.items():
                gen_times[name].append(_time(run))
    finally:
        if control is not None:
            control.unwrap()
    generated = len(prompts) * args.gen_tokens
    for name in generation:
        row = {
            "task": f"generation, {len(prompts)} prompts x {args.gen_tokens} tokens, layers {guided_layers}",
            "package": name,
            "tok_s": generated / statistics.median(gen_times[name]),
            "same_text_as_landscape": texts_out[name] == texts_out["landscape"] if name != "plain" else None,
            "times": gen_times[name],
        }
        report["rows"].append(row)
        print(json.dumps(row), flush=True)
    report["command"] = " ".join(["python", *sys.argv])
    (out / "concepts.json").write_text(json.dumps(report, indent=2))
    lines = [
        f"`{report['command']}`; {n_tokens} tokens, layers {layers[0]}-{layers[-1]}, {args.threads} thread(s)",
        "",
        "| package | extraction tok/s | direction cosine to landscape | guided generation tok/s | same text |",
        "|---|---|---|---|---|",
    ]
    by = {(r["task"] == "extraction", r["package"]): r for r in report["rows"]}
    for name in ("plain", "landscape", "steering-vectors", "repeng"):
        ext, gen = by.get((True, name)), by.get((False, name))
        cos = "-"
        if ext and "cosine_to_mean_diff" in ext:
            cos = f"{min(ext['cosine_to_mean_diff']):.6f}-{max(ext['cosine_to_mean_diff']):.6f} (mean diff)"
            if "cosine_to_pca" in ext:
                cos += f"; {min(ext['cosine_to_pca']):.3f}-{max(ext['cosine_to_pca']):.3f} (PCA)"
        ext_text = f"{ext['tok_s']:.0f}" if ext else "-"
        gen_text = f"{gen['tok_s']:.1f}" if gen else "-"
        same = str(gen["same_text_as_landscape"]) if gen and name not in ("plain", "landscape") else "-"
        lines.append(f"| {name} | {ext_text} | {cos if name != 'landscape' else '1'} | {gen_text} | {same} |")
    for name, status in report["peers"].items():
        lines.append(f"\n{name}: {status}")
    (out / "concepts.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
