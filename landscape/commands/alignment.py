"""``landscape align`` and ``landscape fuse``."""

from __future__ import annotations

import argparse

from landscape.commands.common import add_data_options, add_run_options, load_data, model_for, output_path

METHODS = ("weights", "activations", "learned", "ot", "sinkhorn")
KINDS = ("permutation", "orthogonal", "invertible", "max")


def register(subparsers: argparse._SubParsersAction) -> None:
    align = subparsers.add_parser(
        "align",
        help="map B's hidden units onto A's (permutations, orthogonal and invertible maps, optimal transport)",
        description="Align checkpoint B to checkpoint A and save the aligned B. The model's symmetries are "
        "found by tracing it; no description of the architecture is needed.",
    )
    align.add_argument("a", help="reference checkpoint")
    align.add_argument("b", help="checkpoint to align to A")
    align.add_argument("--model", default=None, help="model spec (default: the one stored in the checkpoint)")
    align.add_argument(
        "--method",
        default="weights",
        choices=METHODS,
        help="weight matching, activation matching, learned (weight matching refined on the loss of the "
        "networks between A and B), exact or entropic (Sinkhorn) optimal transport",
    )
    align.add_argument(
        "--kinds",
        default=None,
        choices=KINDS,
        help="widest maps to solve for (default: max for matching, permutation for transport)",
    )
    align.add_argument("--epochs", type=int, default=3, help="epochs of the learned refinement")
    align.add_argument(
        "--on",
        default=None,
        choices=("weights", "activations"),
        help="what ot/sinkhorn compare (default: weights)",
    )
    align.add_argument("--reg", type=float, default=0.01, help="sinkhorn regularisation (relative to the mean cost)")
    align.add_argument(
        "--marginals",
        default="uniform",
        choices=("uniform", "importance"),
        help="mass of each unit in optimal transport: equal, or by the norm of its weights or activations",
    )
    align.add_argument("--seed", type=int, default=0, help="seed of the order the groups are visited in")
    align.add_argument("--max-iter", type=int, default=100, help="most rounds of coordinate descent")
    add_data_options(align)
    align.add_argument(
        "--curves",
        type=int,
        default=0,
        metavar="N",
        help="also print the test curves (N alphas) before/after, with REPAIR",
    )
    align.add_argument("--report", default=None, help="write the maps and objective history to this netCDF file")
    align.add_argument("--out", required=True, help="output .safetensors for the aligned B")
    add_run_options(align)
    align.set_defaults(handler=run_align)

    fuse = subparsers.add_parser(
        "fuse",
        help="fuse two or more checkpoints into one (OT fusion), optionally into a narrower model",
        description="Align every checkpoint to the anchor and average them (Singh & Jaggi 2020).",
    )
    fuse.add_argument("checkpoints", nargs="+", help="two or more checkpoints of one architecture")
    fuse.add_argument("--model", default=None, help="model spec (default: the one stored in the checkpoints)")
    fuse.add_argument("--method", default="ot", choices=METHODS, help="how the checkpoints are aligned to the anchor")
    fuse.add_argument("--anchor", type=int, default=0, help="index of the checkpoint the others are aligned to")
    fuse.add_argument("--target-width", type=int, default=None, help="fuse into this many units per group")
    fuse.add_argument("--repair", action="store_true", help="correct the fused statistics (needs --data)")
    fuse.add_argument("--reg", type=float, default=0.01, help="sinkhorn regularisation (relative to the mean cost)")
    fuse.add_argument("--seed", type=int, default=0, help="seed of the order the groups are visited in")
    add_data_options(fuse)
    fuse.add_argument("--evaluate", action="store_true", help="print test accuracy of parents, averages and ensemble")
    fuse.add_argument("--out", required=True, help="output .safetensors for the fused model")
    add_run_options(fuse)
    fuse.set_defaults(handler=run_fuse)


def run_align(args: argparse.Namespace) -> int:
    import landscape as ls
    from landscape.alignment import align, repair
    from landscape.connectivity import barrier, interpolate
    from landscape.models import spec_of

    data = load_data(args)
    a, b = ls.load_state(args.a), ls.load_state(args.b)
    model = model_for(args.model, data, [a, b])
    result = align(
        model,
        a,
        b,
        method=args.method,
        kinds=args.kinds,
        epochs=args.epochs,
        data=data,
        on=args.on,
        reg=args.reg,
        marginals=args.marginals,
        seed=args.seed,
        max_iter=args.max_iter,
        batch_size=args.batch_size or 1024,
        device=args.device,
        progress=not args.quiet,
    )
    aligned = result.apply(b)
    path = output_path(args.out)
    metadata = {
        k: v for k, v in (b.provenance.get("metadata") or {}).items() if k not in ("format", "landscape_version")
    }
    metadata.update({"aligned_to": a.provenance.get("sha256"), "alignment_method": args.method})
    ls.save_state(aligned, path, model=model, metadata={"model_spec": spec_of(model), **metadata})
    print(result)
    report = result.to_dataset()
    for g, grp in result.graph.groups.items():
        moved = report["moved"].sel(group=g).item()
        solved = report["solved"].sel(group=g).item()
        print(f"  {g:40s} {grp.size:5d} units, allows {grp.kind:12s} map {solved:12s} moved {moved:g}")
    if args.report:
        print(f"wrote {ls.save_result(report, output_path(args.report))}")
    if args.curves:
        test = {"test": data.test}
        options = {"alphas": args.curves, "device": args.device, "progress": not args.quiet}
        rows = {
            "vanilla": interpolate(model, a, b, test, **options),
            args.method: interpolate(model, a, aligned, test, **options),
            f"{args.method}+repair": interpolate(
                model, a, aligned, test, correct=repair(model, a, aligned, data), **options
            ),
        }
        print(f"{'curve':24s} {'acc(0)':>8s} {'acc(.5)':>8s} {'acc(1)':>8s} {'loss barrier':>13s}")
        for name, curve in rows.items():
            acc = curve.accuracy.sel(split="test")
            mid = acc.sel(alpha=0.5, method="nearest").item()
            height = barrier(curve, metric="loss").sel(split="test").item()
            print(
                f"{name:24s} {acc.isel(alpha=0).item():8.4f} {mid:8.4f} {acc.isel(alpha=-1).item():8.4f} {height:13.4f}"
            )
    print(f"wrote {path}")
    return 0


def run_fuse(args: argparse.Namespace) -> int:
    import torch

    import landscape as ls
    from landscape.alignment import fuse
    from landscape.core import model_output_logits, run_points
    from landscape.core.errors import LandscapeError, bad_argument
    from landscape.core.state import lerp
    from landscape.models import from_spec, spec_of

    if len(args.checkpoints) < 2:
        raise bad_argument(
            "landscape fuse", "checkpoints", expected="two or more checkpoints", found=str(args.checkpoints)
        )
    data = load_data(args)
    states = [ls.load_state(p) for p in args.checkpoints]
    model = model_for(args.model, data, states)
    target_model = None
    if args.target_width is not None:
        spec = spec_of(model)
        try:
            target_model = from_spec({**(spec or {}), "width": args.target_width})
        except (LandscapeError, KeyError) as err:
            raise bad_argument(
                "landscape fuse",
                "--target-width",
                expected="a zoo model with a width argument (mlp, cnn1d, cnn2d)",
                found=str(spec),
            ) from err
    fused = fuse(
        model,
        states,
        method=args.method,
        anchor=args.anchor,
        target_model=target_model,
        data=data if (args.repair or args.method == "activations") else None,
        repair=args.repair,
        reg=args.reg,
        seed=args.seed,
        progress=not args.quiet,
    )
    out_model = target_model or model
    path = output_path(args.out)
    ls.save_state(
        fused, path, model=out_model, metadata={"model_spec": spec_of(out_model), "fused_from": args.checkpoints}
    )
    if args.evaluate:
        test = data.test
        named = {f"parent {i}": s for i, s in enumerate(states)}
        if target_model is None:
            average = states[0]
            for i, s in enumerate(states[1:], start=2):
                average = lerp(average, s, 1.0 / i)
            named["vanilla average"] = average
        accuracy = ls.evaluate(model, named, test, metrics="accuracy", device=args.device, progress=False).accuracy
        rows = [(str(name), float(acc)) for name, acc in zip(accuracy.point.values, accuracy.values)]
        fused_accuracy = ls.evaluate(
            out_model, [fused], test, metrics="accuracy", device=args.device, progress=False
        ).accuracy
        rows.append((f"fused ({args.method}{', repair' if args.repair else ''})", float(fused_accuracy[0])))
        # The ensemble averages the parents' probabilities example by example.
        x, y = test
        probs = torch.zeros(len(y), int(model_output_logits(model(x[:1])).shape[-1]))
        for out in run_points(model, states, x, device=args.device, function="landscape fuse"):
            probs[out.rows] += torch.softmax(out.logits[0].float(), -1).cpu()
        rows.append(("ensemble", float((probs.argmax(-1) == y).float().mean())))
        print(f"{'':32s} test accuracy (%)")
        for name, acc in rows:
            print(f"{name:32s} {100 * acc:17.2f}")
    print(f"wrote {path}")
    return 0
