"""``landscape lmc``, ``plane``, ``surface`` and ``instability``."""

from __future__ import annotations

import argparse

from landscape.commands.common import (
    add_cluster_options,
    add_data_options,
    add_run_options,
    cluster_for,
    is_store,
    load_data,
    model_for,
    output_path,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    lmc = subparsers.add_parser("lmc", help="interpolate between two checkpoints: curve and barriers")
    lmc.add_argument("a", help="first checkpoint")
    lmc.add_argument("b", help="second checkpoint")
    lmc.add_argument("--alphas", type=int, default=25, help="points on the line, endpoints included")
    lmc.add_argument("--bn", default="keep", choices=("keep", "reset"))
    _common(lmc)
    add_cluster_options(lmc)
    lmc.set_defaults(handler=run_lmc)

    plane = subparsers.add_parser("plane", help="the loss surface on the plane through three checkpoints")
    plane.add_argument("a")
    plane.add_argument("b")
    plane.add_argument("c")
    plane.add_argument("--resolution", type=int, default=21)
    plane.add_argument("--margin", type=float, default=0.2)
    _common(plane)
    add_cluster_options(plane)
    plane.set_defaults(handler=run_plane)

    surface = subparsers.add_parser("surface", help="the loss surface around a checkpoint along random directions")
    surface.add_argument("a")
    surface.add_argument("--span", type=float, default=1.0)
    surface.add_argument("--resolution", type=int, default=21)
    surface.add_argument("--normalization", default="filter", choices=("filter", "layer", "model", "none"))
    surface.add_argument("--seed", type=int, default=0, help="seed of the random directions")
    _common(surface)
    add_cluster_options(surface)
    surface.set_defaults(handler=run_surface)

    inst = subparsers.add_parser(
        "instability", help="barrier between children trained from one state with different data orders"
    )
    inst.add_argument("checkpoints", nargs="*", help="start states; without them, train a parent and use --steps")
    inst.add_argument("--steps", default="0,10,50,200", help="checkpoint steps of the parent (no checkpoints given)")
    inst.add_argument("--seed", type=int, default=0, help="initialisation seed of the parent")
    inst.add_argument("--epochs", type=int, default=10, help="training epochs of each child (and of the parent)")
    inst.add_argument("--lr", type=float, default=0.05)
    inst.add_argument("--alphas", type=int, default=30)
    inst.add_argument("--threshold", type=float, default=0.02, help="error barrier below which a net is stable")
    _common(inst)
    inst.set_defaults(handler=run_instability)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="model spec (default: the one stored in the checkpoint)")
    add_data_options(parser)
    parser.add_argument(
        "--out",
        default=None,
        help="write the result to this netCDF file, or (lmc, plane, surface) to a zarr store (a path ending in .zarr) "
        "filled while the work runs and resumed by a re-run with the same settings",
    )
    parser.add_argument("--plot", default=None, help="write a figure to this file (.png, .pdf, .svg)")
    add_run_options(parser)


def _finish(args: argparse.Namespace, result, draw) -> None:
    import landscape as ls

    if is_store(args.out):
        print(f"wrote {args.out}")
    elif args.out:
        print(f"wrote {ls.save_result(result, output_path(args.out))}")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        axes = draw(result)
        first = axes[0] if isinstance(axes, list) else axes
        first.figure.savefig(output_path(args.plot), dpi=150)
        print(f"wrote {args.plot}")


def _states(args: argparse.Namespace, paths: list[str]):
    import landscape as ls

    states = [ls.load_state(p) for p in paths]
    data = load_data(args, states)
    return data, states, model_for(args.model, data, states)


def run_lmc(args: argparse.Namespace) -> int:
    from landscape import connectivity, plot

    data, (a, b), model = _states(args, [args.a, args.b])
    with cluster_for(args) as client:
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
            client=client,
            out=args.out if is_store(args.out) else None,
        )
    table = connectivity.barriers(curve).to_dataframe()
    table["error_barrier"] *= 100
    print("barriers (loss in nats, error in percentage points):")
    print(table.unstack("split").to_string(float_format=lambda v: f"{v:.3f}"))
    _finish(args, curve, plot.curve)
    return 0


def run_plane(args: argparse.Namespace) -> int:
    from landscape import connectivity, plot

    data, (a, b, c), model = _states(args, [args.a, args.b, args.c])
    with cluster_for(args) as client:
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
            client=client,
            out=args.out if is_store(args.out) else None,
        )
    print(result.anchor_alpha.to_series().to_string(), result.anchor_beta.to_series().to_string(), sep="\n")
    _finish(args, result, plot.surface)
    return 0


def run_surface(args: argparse.Namespace) -> int:
    from landscape import connectivity, plot

    data, (a,), model = _states(args, [args.a])
    normalization = None if args.normalization == "none" else args.normalization
    with cluster_for(args) as client:
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
            client=client,
            out=args.out if is_store(args.out) else None,
        )
    centre = result.loss.sel(alpha=0.0, beta=0.0, method="nearest")
    print(f"loss at the centre: {centre.to_series().to_dict()}; max on the grid: {float(result.loss.max()):.3f}")
    _finish(args, result, lambda ds: plot.surface(ds, log_levels=True))
    return 0


def run_instability(args: argparse.Namespace) -> int:
    import landscape as ls
    from landscape import connectivity, plot

    if is_store(args.out):
        from landscape.core.errors import bad_argument

        raise bad_argument(
            "landscape instability",
            "--out",
            expected="a netCDF file (.nc)",
            found=repr(args.out),
            fix="Zarr stores are written by lmc, plane and surface; use --out instability.nc here.",
        )
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
        steps = sorted({int(s) for s in args.steps.split(",")})
        parent = ls.train(
            model,
            data,
            epochs=args.epochs,
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
    print(table.to_string(float_format=lambda v: f"{v:.4f}"))
    _finish(args, result, plot.instability)
    return 0
