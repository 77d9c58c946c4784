"""``landscape lmc``, ``plane``, ``surface`` and ``instability``."""

from __future__ import annotations

import argparse

from landscape.commands.common import add_data_options, add_run_options, load_data, model_for, output_path


def register(subparsers: argparse._SubParsersAction) -> None:
    lmc = subparsers.add_parser(
        "lmc",
        help="interpolate between two checkpoints: curve and barriers",
        description="Evaluate the straight line from checkpoint A (alpha 0) to B (alpha 1) and print the loss "
        "and error barriers in the three definitions in use (error in percentage points).",
    )
    lmc.add_argument("a", help="first checkpoint (alpha = 0)")
    lmc.add_argument("b", help="second checkpoint (alpha = 1)")
    lmc.add_argument("--alphas", type=int, default=25, help="evenly spaced points on the line, endpoints included")
    _bn_option(lmc)
    _common(lmc)
    lmc.set_defaults(handler=run_lmc)

    plane = subparsers.add_parser(
        "plane",
        help="the loss surface on the plane through three checkpoints",
        description="Evaluate the plane through checkpoints A, B and C (Garipov et al. 2018) on a grid; the "
        "three checkpoints are marked in the figure.",
    )
    plane.add_argument("a", help="first checkpoint (the plane's origin)")
    plane.add_argument("b", help="second checkpoint")
    plane.add_argument("c", help="third checkpoint")
    plane.add_argument("--resolution", type=int, default=21, help="grid points along each axis")
    plane.add_argument(
        "--margin", type=float, default=0.2, help="extra room around the three checkpoints, as a fraction of the span"
    )
    _common(plane)
    plane.set_defaults(handler=run_plane)

    surface = subparsers.add_parser(
        "surface",
        help="the loss surface around a checkpoint along random directions",
        description="Evaluate the plane through checkpoint A spanned by two random directions, normalised "
        "filter by filter as in Li et al. (2018).",
    )
    surface.add_argument("a", help="checkpoint at the centre of the surface")
    surface.add_argument(
        "--span", type=float, default=1.0, help="the grid runs from -span to +span along each direction"
    )
    surface.add_argument("--resolution", type=int, default=21, help="grid points along each axis")
    surface.add_argument(
        "--normalization",
        default="filter",
        choices=("filter", "layer", "model", "none"),
        help="scale the random directions to the norm of each filter, layer or the whole model",
    )
    surface.add_argument("--seed", type=int, default=0, help="seed of the random directions")
    _common(surface)
    surface.set_defaults(handler=run_surface)

    inst = subparsers.add_parser(
        "instability",
        help="barrier between children trained from one state with different data orders",
        description="Instability analysis (Frankle et al. 2020): for each start state, train two children "
        "with different data orders and measure the error barrier between them. Without checkpoints, a "
        "parent is trained up to the last of --steps and its checkpoints at --steps are the starts.",
    )
    inst.add_argument("checkpoints", nargs="*", help="start states; without them, train a parent and use --steps")
    inst.add_argument(
        "--steps",
        default="0,10,50,200",
        help="comma-separated steps of the parent to start children from (when no checkpoints are given)",
    )
    inst.add_argument("--seed", type=int, default=0, help="initialisation seed of the parent")
    inst.add_argument("--epochs", type=int, default=10, help="training epochs of each child")
    inst.add_argument("--lr", type=float, default=0.05, help="SGD learning rate of parent and children")
    inst.add_argument("--alphas", type=int, default=30, help="points on the line between the two children")
    inst.add_argument(
        "--threshold",
        type=float,
        default=0.02,
        help="error barrier (a fraction: 0.02 = 2 percentage points) below which a start counts as stable",
    )
    _common(inst)
    inst.set_defaults(handler=run_instability)


def _bn_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bn",
        default="keep",
        choices=("keep", "reset"),
        help="BatchNorm statistics at each point: keep the interpolated ones, or reset them on training batches",
    )


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="model spec (default: the one stored in the checkpoint)")
    add_data_options(parser)
    parser.add_argument("--out", default=None, help="write the result to this netCDF file")
    parser.add_argument("--plot", default=None, help="write a figure to this file (.png, .pdf, .svg)")
    add_run_options(parser)


def _finish(args: argparse.Namespace, result, draw) -> None:
    import landscape as ls

    if args.out:
        print(f"wrote {ls.save_result(result, output_path(args.out))}")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        axes = draw(result)
        first = axes[0] if isinstance(axes, list) else axes
        first.figure.savefig(output_path(args.plot), dpi=150, bbox_inches="tight")
        plt.close(first.figure)
        print(f"wrote {args.plot}")


def _states(args: argparse.Namespace, paths: list[str]):
    import landscape as ls

    states = [ls.load_state(p) for p in paths]
    data = load_data(args, states)
    return data, states, model_for(args.model, data, states)


def run_lmc(args: argparse.Namespace) -> int:
    from landscape import connectivity, plot

    data, (a, b), model = _states(args, [args.a, args.b])
    curve = connectivity.interpolate(
        model,
        a,
        b,
        data,
        alphas=args.alphas,
        bn=args.bn,
        device=args.device,
        batch_size=args.batch_size,
        progress=not args.quiet,
    )
    table = connectivity.barriers(curve).to_dataframe()
    table["error_barrier"] *= 100
    print("barriers (loss in nats, error in percentage points; the --out file holds fractions):")
    print(table.unstack("split").to_string(float_format=lambda v: f"{v:.3f}"))
    _finish(args, curve, plot.curve)
    return 0


def run_plane(args: argparse.Namespace) -> int:
    from landscape import connectivity, plot

    data, (a, b, c), model = _states(args, [args.a, args.b, args.c])
    result = connectivity.plane(
        model,
        a,
        b,
        c,
        data,
        resolution=args.resolution,
        margin=args.margin,
        device=args.device,
        batch_size=args.batch_size,
        progress=not args.quiet,
    )
    print(result.anchor_alpha.to_series().to_string(), result.anchor_beta.to_series().to_string(), sep="\n")
    _finish(args, result, plot.surface)
    return 0


def run_surface(args: argparse.Namespace) -> int:
    from landscape import connectivity, plot

    data, (a,), model = _states(args, [args.a])
    normalization = None if args.normalization == "none" else args.normalization
    result = connectivity.random_plane(
        model,
        a,
        data,
        span=args.span,
        resolution=args.resolution,
        normalization=normalization,
        seed=args.seed,
        device=args.device,
        batch_size=args.batch_size,
        progress=not args.quiet,
    )
    centre = result.loss.sel(alpha=0.0, beta=0.0, method="nearest")
    print(f"loss at the centre: {centre.to_series().to_dict()}; max on the grid: {float(result.loss.max()):.3f}")
    _finish(args, result, lambda ds: plot.surface(ds, log_levels=True))
    return 0


def run_instability(args: argparse.Namespace) -> int:
    import landscape as ls
    from landscape import connectivity, plot

    options = {"epochs": args.epochs, "lr": args.lr}
    if args.checkpoints:
        states = [ls.load_state(p) for p in args.checkpoints]
        data = load_data(args, states)
        model = model_for(args.model, data, states)
        # The step a checkpoint was saved at labels it; files without one are numbered in order.
        steps = [s.provenance.get("metadata", {}).get("step") for s in states]
        if None in steps or len(set(steps)) != len(steps):
            steps = list(range(len(states)))
            print(
                "steps label the checkpoints in the order given: "
                + ", ".join(f"{i} = {p}" for i, p in enumerate(args.checkpoints))
            )
        starts = dict(zip(steps, states))
    else:
        data = load_data(args)
        model = model_for(args.model or "mlp:width=128,depth=2", data)
        steps = _steps(args.steps)
        # The parent trains exactly as far as its last requested checkpoint.
        parent = ls.train(
            model,
            data,
            steps=max(steps[-1], 1),
            lr=args.lr,
            init_seed=args.seed,
            checkpoint_steps=steps,
            device=args.device,
            progress=not args.quiet,
        )
        starts = parent.checkpoints
    result = connectivity.instability_sweep(
        model,
        starts,
        data,
        train=options,
        alphas=args.alphas,
        threshold=args.threshold,
        device=args.device,
        progress=not args.quiet,
    )
    table = result[["error_barrier", "loss_barrier", "stable"]].to_dataframe()
    table["error_barrier"] *= 100
    table = table.rename(columns={"error_barrier": "error barrier (pp)", "loss_barrier": "loss barrier (nats)"})
    print(
        f"instability: barrier between two children per start step (error in percentage points; stable below "
        f"{100 * args.threshold:g} points; the --out file holds fractions):"
    )
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    _finish(args, result, plot.instability)
    return 0


def _steps(text: str) -> list[int]:
    from landscape.core.errors import bad_argument

    try:
        steps = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        steps = []
    if not steps or steps[0] < 0:
        raise bad_argument(
            "landscape instability",
            "--steps",
            expected="comma-separated non-negative steps such as 0,10,50",
            found=repr(text),
        )
    return steps
