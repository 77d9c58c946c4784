"""Options and helpers shared by the subcommands."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads in the handlers, never while the parser is built
    import torch

    from landscape.core.errors import LandscapeError

DATASETS = ("mnist1d", "digits", "docstrings")


def bad_argument(function: str, argument: str, **details: object) -> LandscapeError:
    """:func:`landscape.core.errors.bad_argument`, imported when an error is built: importing
    ``landscape.core`` loads torch, which building the parser (``landscape --help``) must not."""
    from landscape.core.errors import bad_argument as build

    return build(function, argument, **details)


def add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        default=None,
        choices=DATASETS,
        help="offline dataset (default: the one stored in the checkpoint, else mnist1d)",
    )
    parser.add_argument(
        "--data-seed",
        type=int,
        default=None,
        help="seed of the dataset's draw and split (default: the checkpoint's, else 0)",
    )
    parser.add_argument(
        "--n-train",
        type=int,
        default=None,
        help="training examples of mnist1d or docstrings (default: the checkpoint's, else 4,000 for mnist1d, 2,000 for docstrings)",
    )
    parser.add_argument(
        "--n-test",
        type=int,
        default=None,
        help="test examples of mnist1d or docstrings (default: the checkpoint's, else 1,000 for mnist1d, 500 for docstrings)",
    )


def add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", default="auto", help="where to compute: auto (CUDA when present, else the CPU), cpu, cuda, cuda:N"
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="examples per forward pass (default: the engine's choice)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def load_data(args: argparse.Namespace, states: Sequence = ()):
    """The dataset named by ``--data``, else the one the first checkpoint was trained on
    (``landscape train`` stores it), else mnist1d; sizes and seed likewise."""
    from landscape import datasets

    stored: dict = {}
    for state in states:
        meta = state.provenance.get("metadata", {}) if state.provenance else {}
        if meta.get("data") in DATASETS:
            stored = {"name": meta["data"], **(meta.get("data_meta") or {})}
            break
    name = args.data or stored.get("name", "mnist1d")
    seed = args.data_seed if args.data_seed is not None else int(stored.get("seed", 0))
    sizes = {}
    for key in ("n_train", "n_test"):
        value = getattr(args, key)
        if value is None and name == stored.get("name") and key in stored:
            value = int(stored[key])
        if value is not None:
            sizes[key] = value
    if name == "mnist1d":
        return datasets.mnist1d(seed=seed, **sizes)
    if name == "digits":
        if args.n_train is not None or args.n_test is not None:
            raise bad_argument(
                "landscape",
                "--n-train/--n-test",
                expected="no sizes for digits (fixed at 1,797)",
                found=str(sizes),
                fix="Leave --n-train and --n-test out for digits.",
            )
        return datasets.digits(seed=seed)
    return datasets.docstrings(seed=seed, **sizes)


def model_for(spec: str | None, data, states: Sequence = ()) -> torch.nn.Module:
    """The model from ``--model SPEC``, else from the spec stored in the first checkpoint;
    input shape and class count default to the data's.

    A spec is checked against the first checkpoint's tensors before the model is allocated
    (:func:`landscape.core.validate.build_checked`: a dry build on the ``meta`` device, a
    size budget, then the keys and shapes), so a small file whose metadata describes a
    huge model fails at once with a named error.
    """
    from landscape.core.validate import build_checked
    from landscape.models import from_spec, parse_spec

    if spec is None:
        for state in states:
            stored = state.provenance.get("metadata", {}).get("model_spec") if state.provenance else None
            if stored:
                where = repr(str(state.provenance.get("source", "the checkpoint")))
                return build_checked(
                    lambda spec=stored: from_spec(spec),
                    state,
                    function="landscape",
                    argument="checkpoint",
                    source=where,
                )
        raise bad_argument(
            "landscape",
            "--model",
            expected="a model spec such as mlp:width=128,depth=2",
            found="none given, and the checkpoint stores no model spec",
            fix="Pass --model, or save checkpoints with `landscape train` / landscape.save_state(..., metadata={'model_spec': ...}).",
        )
    parsed = parse_spec(spec)
    if parsed["name"] == "gpt":
        parsed.setdefault("vocab_size", data.num_classes)
        parsed.setdefault("context", int(data.input_shape[0]))
    else:
        parsed.setdefault("input_shape", list(data.input_shape))
        parsed.setdefault("num_classes", data.num_classes)
    if states:
        return build_checked(
            lambda: from_spec(parsed), states[0], function="landscape", argument="--model", source="--model"
        )
    return from_spec(parsed)


def output_path(path: str | None) -> Path | None:
    if path is None:
        return None
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    return out
