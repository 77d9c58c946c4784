"""``landscape hessian``: curvature of the loss at a checkpoint, or along the line between two."""

from __future__ import annotations

import argparse

from landscape.commands.common import add_data_options, add_run_options, load_data, model_for, output_path
from landscape.core.errors import bad_argument


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "hessian",
        help="Hessian eigenvalues, trace and spectral density at a checkpoint, or along the line between two",
        description=(
            "With one checkpoint: the top eigenvalues of the loss Hessian (ARPACK Lanczos), and on request "
            "its trace (Hutchinson) and eigenvalue density (stochastic Lanczos quadrature). With two: the top "
            "eigenvalue (and trace) at every point of the line between them, beside the loss."
        ),
    )
    parser.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help="one checkpoint, or two for a line")
    parser.add_argument("--top-k", type=int, default=5, help="number of eigenvalues (default: %(default)s)")
    parser.add_argument(
        "--which",
        default="largest",
        choices=("largest", "smallest", "magnitude"),
        help="which end of the spectrum (default: %(default)s)",
    )
    parser.add_argument("--trace", action="store_true", help="also estimate the trace (Hutchinson)")
    parser.add_argument(
        "--density", action="store_true", help="also estimate the eigenvalue density (one checkpoint only)"
    )
    parser.add_argument(
        "--alphas", type=int, default=11, help="points on the line, endpoints included (default: %(default)s)"
    )
    parser.add_argument(
        "--matrix",
        default="hessian",
        choices=("hessian", "ggn"),
        help="the loss Hessian or the generalised Gauss-Newton matrix (default: %(default)s)",
    )
    parser.add_argument(
        "--split", default="train", help="the split whose loss is differentiated (default: %(default)s)"
    )
    parser.add_argument(
        "--per-layer",
        action="store_true",
        help="one diagonal block per module's parameters instead of the whole matrix",
    )
    parser.add_argument(
        "--probes", type=int, default=100, help="Hutchinson probe vectors for --trace (default: %(default)s)"
    )
    parser.add_argument(
        "--density-probes", type=int, default=4, help="start vectors for --density (default: %(default)s)"
    )
    parser.add_argument(
        "--lanczos-steps",
        type=int,
        default=80,
        help="Lanczos steps per start vector for --density (default: %(default)s)",
    )
    parser.add_argument(
        "--tol", type=float, default=1e-3, help="relative tolerance of the eigenvalues (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of start and probe vectors (default: %(default)s)")
    parser.add_argument(
        "--bn",
        default="keep",
        choices=("keep", "reset"),
        help="BatchNorm: the checkpoint's running statistics, or recomputed at each point (default: %(default)s)",
    )
    parser.add_argument("--model", default=None, help="model spec (default: the one stored in the checkpoint)")
    add_data_options(parser)
    parser.add_argument("--out", default=None, help="write the result to this netCDF file (default: none)")
    parser.add_argument(
        "--plot",
        default=None,
        help="write a figure (.png, .pdf, .svg): the density for one checkpoint, the curve for two (default: none)",
    )
    add_run_options(parser)
    parser.set_defaults(handler=run_hessian)


def _options(args: argparse.Namespace) -> dict[str, object]:
    return {
        "matrix": args.matrix,
        "split": args.split,
        "blocks": "layer" if args.per_layer else None,
        "batch_size": args.batch_size,
        "bn": args.bn,
        "seed": args.seed,
        "device": args.device,
        "progress": not args.quiet,
    }


def run_hessian(args: argparse.Namespace) -> int:
    import landscape as ls

    if len(args.checkpoints) > 2:
        raise bad_argument(
            "landscape hessian",
            "CHECKPOINT",
            expected="one checkpoint, or two for the line between them",
            found=f"{len(args.checkpoints)} paths",
        )
    states = [ls.load_state(p) for p in args.checkpoints]
    data = load_data(args, states)
    model = model_for(args.model, data, states)
    if len(states) == 1:
        return _at_checkpoint(args, model, states[0], data)
    if args.density:
        raise bad_argument(
            "landscape hessian",
            "--density",
            expected="one checkpoint (densities are computed at a point)",
            found="two checkpoints",
            fix="Run `landscape hessian CHECKPOINT --density` for each end.",
        )
    return _along_line(args, model, states, data)


def _at_checkpoint(args: argparse.Namespace, model, state, data) -> int:
    from landscape import curvature as C

    options = _options(args)
    results = {
        "eigenvalues": C.hessian_eigenvalues(
            model, state, data, k=args.top_k, which=args.which, tol=args.tol, **options
        )
    }
    eig = results["eigenvalues"].eigenvalues
    print(f"{args.which} eigenvalues of the {args.matrix} ({args.split} loss):")
    print(eig.to_pandas().to_string(float_format=lambda v: f"{v:.6g}"))
    if args.trace:
        results["trace"] = C.hessian_trace(model, state, data, probes=args.probes, **options)
        table = results["trace"][["trace", "trace_se"]].to_dataframe() if args.per_layer else None
        if table is not None:
            print(table.to_string(float_format=lambda v: f"{v:.6g}"))
        else:
            trace = results["trace"]
            print(
                f"trace: {float(trace.trace):.6g} ± {float(trace.trace_se):.2g} (standard error, {args.probes} probes)"
            )
    if args.density or args.plot:
        results["density"] = C.hessian_density(
            model, state, data, probes=args.density_probes, lanczos_steps=args.lanczos_steps, **options
        )
        density = results["density"]
        print(
            f"density: {args.density_probes} probes x {args.lanczos_steps} Lanczos steps, "
            f"Ritz values from {float(density.nodes.min()):.4g} to {float(density.nodes.max()):.4g}"
        )
    if args.out:
        print(f"wrote {_save(results, args.out)}")
    if args.plot:
        _save_figure(lambda plot: plot.eigenvalue_density(results["density"]), args.plot)
    return 0


def _along_line(args: argparse.Namespace, model, states, data) -> int:
    import landscape as ls
    from landscape import curvature as C

    line = ls.AffineFamily.line(states[0], states[1], alphas=args.alphas)
    statistics = ["top_eigenvalue", "loss"]
    if args.top_k > 1:
        statistics.append("eigenvalues")
    if args.trace:
        statistics.append("trace")
    result = C.curvature(
        model,
        line,
        data,
        statistics=tuple(statistics),
        k=args.top_k,
        which=args.which,
        probes=args.probes,
        tol=args.tol,
        **_options(args),
    )
    columns = [name for name in ("top_eigenvalue", "trace", "trace_se") if name in result]
    table = result[columns].to_dataframe()
    if args.per_layer:
        table = table.unstack("layer")
        table.columns = [f"{name} {layer}" for name, layer in table.columns]
    table.insert(0, "loss", result.loss.to_series())
    print(f"along the line ({args.split} loss, {args.matrix}):")
    print(table.to_string(float_format=lambda v: f"{v:.5g}"))
    if args.out:
        print(f"wrote {_save(result, args.out)}")
    if args.plot:
        shown = ("top_eigenvalue", "trace") if args.trace else ("top_eigenvalue",)
        layer = str(result.layer.values[0]) if args.per_layer else None
        _save_figure(lambda plot: plot.curvature_curve(result, statistics=shown, layer=layer)[0], args.plot)
    return 0


def _save(result, path: str):
    import landscape as ls

    return ls.save_result(result, output_path(path))


def _save_figure(draw, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from landscape import plot

    draw(plot).figure.savefig(output_path(path), dpi=150)
    print(f"wrote {path}")
