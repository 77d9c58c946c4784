"""``landscape train``, ``landscape evaluate`` and ``landscape demo``."""

from __future__ import annotations

import argparse
from pathlib import Path

from landscape.commands.common import add_data_options, add_run_options, load_data, model_for, output_path


def register(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="the one-minute tour: train two models and map the landscape between them",
        description="Train two MLPs on mnist1d, interpolate between them, print the barrier table, align the "
        "second to the first (weight matching, activation matching, optimal transport; with and without "
        "REPAIR), and write demo.nc and demo.png to --out.",
    )
    demo.add_argument("--out", default="landscape-demo", help="output folder")
    demo.add_argument("--quick", action="store_true", help="tiny settings (a few seconds; for tests)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the first model (the second uses seed+1)")
    demo.set_defaults(handler=run_demo, tiny={"quick": True})

    train = subparsers.add_parser(
        "train",
        help="train a zoo model and save it as safetensors",
        description="Train a zoo model on an offline dataset; the checkpoint stores the model spec and the "
        "dataset, so that later commands rebuild both without options.",
    )
    train.add_argument("--model", required=True, help="model spec, e.g. mlp:width=128,depth=2 (or mlp --width 128)")
    train.add_argument("--width", type=int, default=None, help="shorthand for the spec's width")
    train.add_argument("--depth", type=int, default=None, help="shorthand for the spec's depth")
    add_data_options(train)
    train.add_argument("--seed", type=int, default=0, help="initialisation seed")
    train.add_argument("--data-order-seed", type=int, default=None, help="seed of the data order (default: --seed)")
    train.add_argument("--epochs", type=int, default=20, help="passes over the training split")
    train.add_argument("--optimizer", default="sgd", choices=("sgd", "adam", "adamw"), help="optimiser")
    train.add_argument("--lr", type=float, default=0.05, help="learning rate")
    train.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    train.add_argument("--weight-decay", type=float, default=0.0, help="weight decay")
    train.add_argument(
        "--schedule", default="constant", choices=("constant", "cosine", "linear"), help="learning-rate schedule"
    )
    train.add_argument("--train-batch-size", type=int, default=128, help="examples per optimiser step")
    train.add_argument("--out", required=True, help="output .safetensors file")
    add_run_options(train)
    train.set_defaults(handler=run_train)

    evaluate = subparsers.add_parser(
        "evaluate",
        help="evaluate checkpoints on a dataset and print a table",
        description="Loss and accuracy (fractions) of each checkpoint on every split of the dataset.",
    )
    evaluate.add_argument("checkpoints", nargs="+", help="checkpoint files (.safetensors, .pt, HF directories)")
    evaluate.add_argument("--model", default=None, help="model spec (default: the one stored in the checkpoint)")
    add_data_options(evaluate)
    evaluate.add_argument(
        "--bn",
        default="keep",
        choices=("keep", "reset"),
        help="BatchNorm statistics: keep the checkpoint's, or reset them on training batches",
    )
    evaluate.add_argument("--out", default=None, help="write the result to this netCDF file")
    add_run_options(evaluate)
    evaluate.set_defaults(handler=run_evaluate)


def _spec_text(args: argparse.Namespace) -> str:
    spec = args.model
    extras = [f"{k}={v}" for k, v in (("width", args.width), ("depth", args.depth)) if v is not None]
    if extras:
        spec += (":" if ":" not in spec else ",") + ",".join(extras)
    return spec


def run_train(args: argparse.Namespace) -> int:
    import landscape as ls
    from landscape.models import spec_of

    data = load_data(args)
    model = model_for(_spec_text(args), data)
    result = ls.train(
        model,
        data,
        epochs=args.epochs,
        optimizer=args.optimizer,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        batch_size=args.train_batch_size,
        init_seed=args.seed,
        data_seed=args.seed if args.data_order_seed is None else args.data_order_seed,
        device=args.device,
        progress=not args.quiet,
    )
    history = result.history
    test_acc = float(history.test_accuracy[-1]) if "test_accuracy" in history else None
    path = output_path(args.out)
    ls.save_state(
        result.state,
        path,
        model=model,
        metadata={
            "model_spec": spec_of(model),
            "seed": args.seed,
            "data": data.name,
            "data_seed": args.data_seed,
            "epochs": args.epochs,
            "step": int(history.sizes["step"]),
            "test_accuracy": test_acc,
        },
    )
    accuracy = f", test accuracy {test_acc:.3f}" if test_acc is not None else ""
    print(f"trained {spec_of(model)['name']} for {int(history.sizes['step'])} steps{accuracy}; wrote {path}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    import landscape as ls

    states = [ls.load_state(p) for p in args.checkpoints]
    data = load_data(args, states)
    model = model_for(args.model, data, states)
    points = {Path(p).name: s for p, s in zip(args.checkpoints, states)}
    result = ls.evaluate(
        model, points, data, bn=args.bn, device=args.device, batch_size=args.batch_size, progress=not args.quiet
    )
    print(format_table(result))
    if args.out:
        print(f"wrote {ls.save_result(result, output_path(args.out))}")
    return 0


def format_table(result) -> str:
    """A plain-text table of a result over ``point`` and ``split``: accuracy and error in
    percent, the loss in nats, each said in its column header (the saved result holds fractions)."""
    frame = result.to_dataframe()
    columns, formats = {}, {}
    for name in frame.columns:
        if name in ("accuracy", "error"):
            frame[name] = frame[name] * 100
            columns[name] = f"{name} (%)"
            formats[columns[name]] = "{:.2f}".format
        elif name == "loss":
            columns[name] = "loss (nats)"
            formats[columns[name]] = "{:.4f}".format
    return frame.rename(columns=columns).to_string(formatters=formats, float_format=lambda v: f"{v:.4f}")


def run_demo(args: argparse.Namespace) -> int:
    from landscape.demo import run

    run(Path(args.out), seed=args.seed, quick=args.quick, progress=True)
    return 0
