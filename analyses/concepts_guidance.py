"""Guidance curves and PNES per probe kind in SmolLM2-135M-Instruct.

For each concept and probe kind (probes from ``concepts_detection.py``), the model completes
the concept's prompts greedily at each guidance strength alpha (x the mean activation norm
of each guided layer; the default guided layers are the best half by validation accuracy).
The concept effect is scored with VADER's compound score (sentiment) or with a fixed judge
probe (humor: the logistic probe on the mean of the first 16 completion tokens, read from the
unguided model), and fluency is the guided model's perplexity on 32 neutral reference texts
(plain answers to everyday factual questions, ``neutral_texts``). PNES follows the released code of von Rütte et al. (2024).
Writes ``curves-{concept}.nc`` (dims kind, alpha, prompt), ``pnes.json``, ``summary.md`` and
``curves.png``; each (concept, kind) run resumes from ``runs/``. Public API only.

    python analyses/concepts_guidance.py results/concepts/guidance --probes results/concepts/probes --top-k 8 --threads 1

PNES depends on the alpha grid and the number of prompts: ``summary.md`` starts with the
command line, and the README table states the grid it was computed on.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

ALPHAS = [-0.2, -0.1, -0.05, -0.025, 0.0, 0.025, 0.05, 0.1, 0.2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", help="output folder")
    parser.add_argument("--probes", required=True, help="folder of probes written by concepts_detection.py")
    parser.add_argument("--concepts", nargs="+", default=["sentiment", "humor"])
    parser.add_argument("--kinds", nargs="+", default=["mean_diff", "logistic", "pca"])
    parser.add_argument("--read", default="last", help="read of the guiding probes (default: %(default)s)")
    parser.add_argument("--alphas", type=float, nargs="+", default=ALPHAS)
    parser.add_argument("--n-prompts", type=int, default=20)
    parser.add_argument("--n-reference", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--top-k", type=int, default=None, help="guided layers (default: half of them)")
    parser.add_argument("--batch-size", type=int, default=20, help="prompts generated together (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", default=None, help="folder keeping the dequantised GGUF (DIR/model)")
    parser.add_argument("--model", default=None, help="model (default: SmolLM2-135M-Instruct)")
    args = parser.parse_args()
    # LANDSCAPE_TINY=1 (as the command line honours it): a tiny random model, so that the
    # README's command runs as written in seconds; the numbers then mean nothing.
    if os.environ.get("LANDSCAPE_TINY") == "1":
        from landscape.cli import apply_tiny

        args.tiny = {"model": "tiny", "n_prompts": 2, "n_reference": 2, "max_new_tokens": 3, "top_k": 1}
        apply_tiny(args)

    import xarray as xr

    import landscape as ls
    import landscape.concepts as cg

    ls.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    probes = Path(args.probes)
    lm, tok = cg.load_lm(args.model, cache=Path(args.cache).expanduser() / "model" if args.cache else None)
    reference = cg.neutral_texts(args.n_reference)
    curves, fits, rows = [], {}, []
    for concept in args.concepts:
        examples = cg.concept_examples(concept, n=256)
        prompts = list(dict.fromkeys(examples.prompts))[: args.n_prompts]
        if concept == "sentiment":
            scorer, judge = "vader", "VADER compound"
        else:
            judge_probe = cg.load_probe(probes / f"{concept}-mean-logistic.safetensors")
            scorer = cg.probe_scorer(lm, tok, judge_probe, layers=cg.default_layers(judge_probe))
            judge = "judge probe (logistic, mean read) P(concept)"
        per_kind = []
        for kind in args.kinds:
            probe = cg.load_probe(probes / f"{concept}-{args.read}-{kind}.safetensors")
            curve = cg.guidance_curve(
                lm,
                tok,
                probe,
                prompts,
                alphas=args.alphas,
                scorer=scorer,
                reference_texts=reference,
                max_new_tokens=args.max_new_tokens,
                top_k=args.top_k,
                batch_size=args.batch_size,
                out=out / "runs" / f"{concept}-{kind}",
                progress=False,
            )
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                fit = cg.pnes(curve)
            fits[f"{concept}/{kind}"] = {
                "pnes": float(fit.pnes),
                "r_squared": float(fit.r_squared),
                "a": float(fit.a),
                "b": float(fit.b),
                "c": float(fit.c),
                "warnings": [str(w.message) for w in caught],
                "layers": json.loads(curve.attrs["layers"]),
                "judge": judge,
            }
            for alpha in curve.alpha.values:
                point = curve.sel(alpha=alpha)
                rows.append(
                    {
                        "concept": concept,
                        "kind": kind,
                        "alpha": float(alpha),
                        "effect": float(point.effect),
                        "effect_sem": float(point.effect_sem),
                        "perplexity": float(point.perplexity),
                        "example": str(point.completion.values[0]),
                    }
                )
            print(json.dumps({"concept": concept, "kind": kind, **fits[f"{concept}/{kind}"]}), flush=True)
            per_kind.append(curve.drop_vars("prompt_text").drop_attrs())
        combined = xr.concat(per_kind, dim=xr.Variable("kind", args.kinds))
        combined.attrs = ls.core.io.provenance_attrs(
            analysis="concepts_guidance", concept=concept, judge=judge, n_reference=args.n_reference
        )
        ls.save_result(combined, out / f"curves-{concept}.nc")
        curves.append(combined)
    (out / "pnes.json").write_text(json.dumps({"fits": fits, "points": rows}, indent=2))
    command = f"python {' '.join(sys.argv)}"
    grid = ", ".join(f"{a:g}" for a in sorted(args.alphas))
    lines = [
        f"`{command}`",
        "",
        f"alphas {grid}; {len(prompts)} prompts, {args.max_new_tokens} new tokens, greedy; "
        f"{args.n_reference} reference texts; guided layers: top {args.top_k or 'half'} by validation accuracy",
        "",
        "| concept | probe | alpha | effect (± sem) | perplexity |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['concept']} | {r['kind']} | {r['alpha']:+g} | {r['effect']:.3f} ± {r['effect_sem']:.3f} | {r['perplexity']:.1f} |"
        for r in rows
    ]
    lines += ["", "| concept | probe | PNES | r^2 | b | guided layers | warnings |", "|---|---|---|---|---|---|---|"]
    lines += [
        f"| {key.split('/')[0]} | {key.split('/')[1]} | {f['pnes']:.4f} | {f['r_squared']:.3f} | {f['b']:.3g} | "
        f"{f['layers']} | {'; '.join(f['warnings']) or '-'} |"
        for key, f in fits.items()
    ]
    # The README's table: effect (perplexity) at alpha 0 and the positive alphas, and PNES (r^2).
    shown = [a for a in sorted(args.alphas) if a >= 0]
    table = [
        "| concept, probe | " + " | ".join(f"alpha {a:+g}" if a else "alpha 0" for a in shown) + " | PNES (r^2) |",
        "|" + " --- |" * (len(shown) + 2),
    ]
    for key, f in fits.items():
        concept, kind = key.split("/")
        cells = []
        for a in shown:
            r = next(r for r in rows if r["concept"] == concept and r["kind"] == kind and r["alpha"] == a)
            cells.append(f"{r['effect']:.2f} ({r['perplexity']:.3g})")
        table.append(f"| {concept}, {kind} | " + " | ".join(cells) + f" | {f['pnes']:.2f} ({f['r_squared']:.2f}) |")
    lines += ["", *table]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from landscape.plot.concepts import guidance

    figure, axes = plt.subplots(
        len(args.concepts), len(args.kinds), figsize=(5 * len(args.kinds), 3.6 * len(args.concepts)), squeeze=False
    )
    for i, concept in enumerate(args.concepts):
        for j, kind in enumerate(args.kinds):
            curve = curves[i].sel(kind=kind)
            curve.attrs["relative"] = 1
            guidance(curve, ax=axes[i][j])
            axes[i][j].set_title(f"{concept}, {kind}: PNES {fits[f'{concept}/{kind}']['pnes']:.3f}")
    figure.tight_layout()
    figure.savefig(out / "curves.png", dpi=120)


if __name__ == "__main__":
    main()
