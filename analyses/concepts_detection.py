"""Concept detection per layer in SmolLM2-135M-Instruct, for each probe kind and concept.

For each concept (sentiment, humor) and each read of the completion (last token, mean of
the first 16 tokens), every layer is probed at ``--site`` (default ``pre_attn``, the
library's and the paper's default: what attention reads) with a difference of means, a
logistic regression and PCA; validation accuracy is measured on prompts held out
of training. Writes ``accuracy.nc`` (dims concept, read, kind, layer), ``summary.md``,
``summary.json`` and the fitted probes (``probes/{concept}-{read}-{kind}.safetensors``,
used by ``concepts_guidance.py``) under the output folder. Public API only.

    python analyses/concepts_detection.py results/concepts --threads 1 --cache ~/.cache/landscape-lm

``--cache DIR`` keeps the dequantised model (``DIR/model``) and the hidden states
(``DIR/hidden``), so that a re-run skips both the GGUF dequantisation and the extraction.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", help="output folder")
    parser.add_argument("--concepts", nargs="+", default=["sentiment", "humor"])
    parser.add_argument("--reads", nargs="+", default=["last", "mean"])
    parser.add_argument("--n", type=int, default=256, help="examples per concept")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--late", type=int, default=20, help="first layer counted as late in the summary")
    parser.add_argument("--site", default="pre_attn", help="where to read (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", default=None, help="folder keeping the dequantised GGUF and the hidden states")
    parser.add_argument("--model", default=None, help="model (default: SmolLM2-135M-Instruct)")
    args = parser.parse_args()
    # LANDSCAPE_TINY=1 (as the command line honours it): a tiny random model, so that the
    # README's command runs as written in seconds; the numbers then mean nothing.
    if os.environ.get("LANDSCAPE_TINY") == "1":
        from landscape.cli import apply_tiny

        args.tiny = {"model": "tiny", "n": 24, "late": 1}
        apply_tiny(args)

    import numpy as np
    import xarray as xr

    import landscape as ls
    import landscape.concepts as cg

    ls.set_num_threads(args.threads)
    out = Path(args.out)
    (out / "probes").mkdir(parents=True, exist_ok=True)
    cache = Path(args.cache).expanduser() if args.cache else None
    lm, tok = cg.load_lm(args.model, cache=cache / "model" if cache else None)
    results = []
    summary = []
    for concept in args.concepts:
        examples = cg.concept_examples(concept, n=args.n, seed=args.seed)
        per_read = []
        for read in args.reads:
            start = time.perf_counter()
            reps = cg.hidden_states(
                lm, tok, examples, site=args.site, read=read, n_tokens=16, batch_size=16,
                cache=cache / "hidden" if cache else None, progress=False,
            )  # fmt: skip
            seconds = time.perf_counter() - start
            per_kind = []
            for kind in cg.KINDS:
                probe = cg.fit_probe(reps, kind=kind, seed=args.seed)
                probe.save(out / "probes" / f"{concept}-{read}-{kind}.safetensors")
                acc = probe.accuracy
                per_kind.append(acc[["train_accuracy", "val_accuracy"]])
                val = acc.val_accuracy
                late = val.sel(layer=val.layer >= args.late)
                row = {
                    "concept": concept,
                    "read": read,
                    "kind": kind,
                    "best_layer": int(val.idxmax()),
                    "best_val_accuracy": float(val.max()),
                    "late_mean_val_accuracy": float(late.mean()),
                    "late_range": [float(late.min()), float(late.max())],
                    "all_layers_mean": float(val.mean()),
                    "n_train": probe.n_train_,
                    "n_val": probe.n_val_,
                    "extract_seconds": seconds,
                    "val_accuracy": np.round(val.values, 4).tolist(),
                }
                summary.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "val_accuracy"}), flush=True)
            per_read.append(xr.concat(per_kind, dim=xr.Variable("kind", list(cg.KINDS))))
        results.append(xr.concat(per_read, dim=xr.Variable("read", args.reads)))
    accuracy = xr.concat(results, dim=xr.Variable("concept", args.concepts))
    accuracy.attrs = ls.core.io.provenance_attrs(
        analysis="concepts_detection",
        model=cg.DEFAULT_MODEL if args.model is None else args.model,
        n=args.n,
        seed=args.seed,
        site=args.site,
        n_tokens=16,
    )
    ls.save_result(accuracy, out / "accuracy.nc")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    lines = [
        f"`python {' '.join(sys.argv)}`",
        "",
        f"Validation accuracy (held-out prompts), site {args.site}, {args.n} examples per concept.",
        "",
        f"| concept | read | probe | best layer | best acc | mean acc, layers >= {args.late} (min-max) | mean acc, all layers |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in summary:
        lo, hi = row["late_range"]
        lines.append(
            f"| {row['concept']} | {row['read']} | {row['kind']} | {row['best_layer']} | {row['best_val_accuracy']:.3f} | "
            f"{row['late_mean_val_accuracy']:.3f} ({lo:.2f}-{hi:.2f}) | {row['all_layers_mean']:.3f} |"
        )
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from landscape.plot.concepts import detection

    figure, axes = plt.subplots(
        len(args.concepts), len(args.reads), figsize=(5 * len(args.reads), 3.5 * len(args.concepts)), squeeze=False
    )
    for i, concept in enumerate(args.concepts):
        for j, read in enumerate(args.reads):
            detection(accuracy.sel(concept=concept, read=read), ax=axes[i][j], train=False)
            axes[i][j].set_title(f"{concept}, read={read}")
    figure.tight_layout()
    figure.savefig(out / "accuracy.png", dpi=120)


if __name__ == "__main__":
    main()
