"""``landscape random-teacher``, ``landscape imp`` and ``landscape basins``."""

from __future__ import annotations

import argparse
from pathlib import Path

from landscape.commands.common import add_data_options, add_run_options, load_data, model_for


def register(subparsers: argparse._SubParsersAction) -> None:
    rt = subparsers.add_parser(
        "random-teacher",
        help="distil a student into a teacher frozen at random initialisation and probe both",
        description="Random-teacher self-distillation (Sarnthein et al. 2023): writes teacher.safetensors, "
        "student.safetensors, student-epochN.safetensors for --save-epochs, and history.nc to --out.",
    )
    rt.add_argument(
        "--model",
        default="cnn1d:norm=batch",
        help="zoo model spec of the encoder (default: %(default)s, BatchNorm like the paper's VGG/ResNet encoders)",
    )
    add_data_options(rt)
    rt.add_argument("--epochs", type=int, default=60, help="distillation epochs")
    rt.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default: %(default)s)")
    rt.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (default: %(default)s)")
    rt.add_argument("--train-batch-size", type=int, default=256, help="examples per optimiser step")
    rt.add_argument(
        "--alpha-init",
        type=float,
        default=None,
        help="student locality: 0 = the teacher, 1 = a fresh init (default: an exact copy of the teacher)",
    )
    rt.add_argument(
        "--head",
        default="reference",
        choices=("reference", "weight_normalized"),
        help="last head layer as the reference code runs it (default, not weight-normalised) or weight-normalised",
    )
    rt.add_argument("--seed", type=int, default=0, help="teacher initialisation seed")
    rt.add_argument("--probe-every", type=int, default=5, help="probe every N epochs (0: only at the end)")
    rt.add_argument("--save-epochs", type=int, nargs="*", default=[], help="also save the student after these epochs")
    rt.add_argument("--hidden-dim", type=int, default=None, help="width of the head's two hidden layers (default 512)")
    rt.add_argument("--bottleneck-dim", type=int, default=None, help="head bottleneck (default 64)")
    rt.add_argument("--out-dim", type=int, default=None, help="head outputs K (default 4096)")
    rt.add_argument(
        "--scalings",
        nargs="+",
        default=["standardized"],
        choices=("standardized", "raw"),
        help="probe read-outs (default: standardized)",
    )
    rt.add_argument(
        "--probe-solver",
        default="lbfgs",
        choices=("lbfgs", "adamw"),
        help="linear probe: deterministic L-BFGS (default) or the reference's AdamW",
    )
    rt.add_argument("--probe-epochs", type=int, default=100, help="epochs of the AdamW linear probe")
    rt.add_argument(
        "--transfer-seeds",
        type=int,
        nargs="*",
        default=[],
        help="also probe on the same dataset drawn (mnist1d) or split (digits) with these seeds",
    )
    rt.add_argument(
        "--gaussian-inputs", action="store_true", help="distil on Gaussian noise (the random-input control)"
    )
    rt.add_argument("--out", required=True, help="output folder")
    add_run_options(rt)
    rt.set_defaults(handler=run_random_teacher)

    imp = subparsers.add_parser(
        "imp",
        help="iterative magnitude pruning with rewinding, with re-init and random-mask controls",
        description="Lottery tickets by iterative magnitude pruning. Every round is written to --out as it "
        "finishes; re-running with the same --out resumes (more --rounds extends a finished run).",
    )
    imp.add_argument("--start", default=None, help="checkpoint to start from (e.g. rt/student.safetensors)")
    imp.add_argument("--model", default=None, help="model spec (default: the one stored in --start, else required)")
    add_data_options(imp)
    imp.add_argument("--rounds", type=int, default=8, help="pruning rounds (each removes --prune-rate of the rest)")
    imp.add_argument("--rewind-step", type=int, default=0, help="optimiser step to rewind to (0: the start)")
    imp.add_argument("--prune-rate", type=float, default=0.2, help="fraction of remaining weights pruned per round")
    imp.add_argument(
        "--scope",
        default="global",
        choices=("global", "layer"),
        help="rank weights by magnitude across all layers, or within each layer",
    )
    imp.add_argument(
        "--controls",
        nargs="*",
        default=["reinit", "random_mask"],
        choices=("reinit", "random_mask"),
        help="control branches: re-initialise with the same mask, a random mask with the same sparsity",
    )
    imp.add_argument(
        "--prune-output",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="prune the output layer (default: as open_lth for the model's family: ResNet yes, others no)",
    )
    imp.add_argument(
        "--prune-first",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="prune the first layer (default: yes, as open_lth)",
    )
    _add_train_options(imp)
    imp.add_argument("--out", required=True, help="output folder (results, masks, states)")
    add_run_options(imp)
    imp.set_defaults(handler=run_imp)

    basins = subparsers.add_parser(
        "basins",
        help="barriers between children trained from init, a student and early supervised checkpoints",
        description="Linear basins: train two children from each start with different data orders and "
        "report the barrier between them. Resumes per start from --out.",
    )
    basins.add_argument("--student", default=None, help="distilled student checkpoint")
    basins.add_argument(
        "--init", default=None, help="the random init (default: the teacher next to --student, else --seed)"
    )
    basins.add_argument("--model", default=None, help="model spec (default: the one stored in the checkpoints)")
    add_data_options(basins)
    basins.add_argument("--steps", type=int, nargs="*", default=[20, 100], help="supervised checkpoints to compare")
    basins.add_argument("--alphas", type=int, default=11, help="points on the line between two children")
    _add_train_options(basins)
    basins.add_argument("--out", required=True, help="output folder")
    add_run_options(basins)
    basins.set_defaults(handler=run_basins)


def _add_train_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="seed of the default start, re-init and data order")
    parser.add_argument("--epochs", type=int, default=10, help="epochs of every supervised run")
    parser.add_argument("--optimizer", default="sgd", choices=("sgd", "adam", "adamw"), help="optimiser")
    parser.add_argument("--lr", type=float, default=0.05, help="learning rate")
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    parser.add_argument("--weight-decay", type=float, default=0.0, help="weight decay")
    parser.add_argument("--train-batch-size", type=int, default=128, help="examples per optimiser step")


def _train_options(args: argparse.Namespace):
    from landscape.training import TrainConfig

    return TrainConfig(
        epochs=args.epochs,
        optimizer=args.optimizer,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        batch_size=args.train_batch_size,
    )


def _transfer_sets(args: argparse.Namespace, data) -> dict[str, object]:
    """The run's dataset drawn (mnist1d) or split (digits) with each of ``--transfer-seeds``."""
    import copy

    sets = {}
    for seed in args.transfer_seeds:
        other = copy.copy(args)
        other.data, other.data_seed = data.name, seed
        sets[f"{data.name}-seed{seed}"] = load_data(other)
    return sets


def run_random_teacher(args: argparse.Namespace) -> int:
    import landscape as ls
    from landscape.distillation import DEFAULT_HEAD, DISTILLATION_TRAIN, distill_random_teacher, gaussian_inputs
    from landscape.models import spec_of

    data = load_data(args)
    model = model_for(args.model, data)
    hidden = args.hidden_dim or DEFAULT_HEAD["hidden_dims"][0]
    config = DISTILLATION_TRAIN.replace(
        epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay, batch_size=args.train_batch_size
    )
    result = distill_random_teacher(
        model,
        data,
        train=config,
        alpha_init=args.alpha_init,
        head=args.head,
        seed=args.seed,
        probe_every=args.probe_every,
        save_epochs=args.save_epochs,
        hidden_dims=(hidden, hidden),
        bottleneck_dim=args.bottleneck_dim or DEFAULT_HEAD["bottleneck_dim"],
        out_dim=args.out_dim or DEFAULT_HEAD["out_dim"],
        inputs=gaussian_inputs(data.train[0], seed=args.seed) if args.gaussian_inputs else None,
        scalings=args.scalings,
        probe_options={"solver": args.probe_solver, "epochs": args.probe_epochs},
        transfer=_transfer_sets(args, data),
        device=args.device,
        progress=not args.quiet,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "model_spec": spec_of(model),
        "seed": args.seed,
        "data": data.name,
        "data_seed": args.data_seed,
        "alpha_init": args.alpha_init,
        "epochs": args.epochs,
    }
    ls.save_state(result.teacher, out / "teacher.safetensors", model=model, metadata={**meta, "role": "teacher"})
    ls.save_state(result.student, out / "student.safetensors", model=model, metadata={**meta, "role": "student"})
    for epoch, state in sorted(result.students.items()):
        ls.save_state(
            state,
            out / f"student-epoch{epoch}.safetensors",
            model=model,
            metadata={**meta, "role": "student", "epoch": epoch},
        )
    ls.save_state(result.student_head, out / "student-head.safetensors", metadata={**meta, "role": "student head"})
    ls.save_state(result.teacher_head, out / "teacher-head.safetensors", metadata={**meta, "role": "teacher head"})
    ls.save_result(result.history, out / "history.nc")
    print(_probe_table(result.history))
    print(f"wrote {out}/teacher.safetensors, student.safetensors and history.nc")
    return 0


def _probe_table(history) -> str:
    """Final probe accuracies (fractions) of every net, on the data and each transfer set."""
    tables = [("data", history.accuracy.isel(epoch=-1))]
    if "transfer_accuracy" in history:
        last = history.transfer_accuracy.isel(epoch=-1)
        tables += [(f"transfer {name}", last.sel(transfer=name)) for name in last.transfer.values]
    nets = list(history.net.values)
    lines = [f"probe accuracy after {int(history.epoch[-1])} epochs (test split, fractions):"]
    for label, last in tables:
        for probe in last.probe.values:
            for scaling in last.scaling.values:
                cell = last.sel(probe=probe, scaling=scaling)
                values = "  ".join(f"{net} {float(cell.sel(net=net)):.3f}" for net in nets)
                gains = "  ".join(
                    f"gain over {net} {float(cell.sel(net='student')) - float(cell.sel(net=net)):+.3f}"
                    for net in nets
                    if net != "student"
                )
                lines.append(f"  {label:<8} {probe:>6} {scaling:<12}  {values}  {gains}")
    return "\n".join(lines)


def run_imp(args: argparse.Namespace) -> int:
    import landscape as ls
    from landscape.pruning import imp

    data = load_data(args)
    start = ls.load_state(args.start) if args.start else None
    model = model_for(args.model, data, [start] if start is not None else [])
    result = imp(
        model,
        data,
        rounds=args.rounds,
        rewind_step=args.rewind_step,
        start=start,
        train=_train_options(args).replace(data_seed=args.seed),
        prune_rate=args.prune_rate,
        scope=args.scope,
        prune_first=args.prune_first,
        prune_output=args.prune_output,
        controls=tuple(args.controls),
        seed=args.seed,
        out=args.out,
        device=args.device,
        progress=not args.quiet,
    )
    table = result.test_accuracy.to_pandas()
    table.index = [f"{100 * float(s):5.1f}%" for s in result.sparsity.values]
    table.index.name = "sparsity"
    print("test accuracy by sparsity and branch:")
    print(table.to_string(float_format=lambda v: f"{v:.4f}"))
    ls.save_result(result, Path(args.out) / "imp.nc")
    print(f"wrote {args.out}/imp.nc")
    return 0


def run_basins(args: argparse.Namespace) -> int:
    import landscape as ls
    from landscape.distillation import basin_starts, linear_basins

    data = load_data(args)
    student = ls.load_state(args.student) if args.student else None
    init_path = args.init
    if init_path is None and args.student is not None:
        sibling = Path(args.student).with_name("teacher.safetensors")
        init_path = str(sibling) if sibling.exists() else None
    init = ls.load_state(init_path) if init_path else None
    model = model_for(args.model, data, [s for s in (student, init) if s is not None])
    options = _train_options(args)
    starts = basin_starts(
        model,
        data,
        student=student,
        init=init,
        steps=args.steps,
        seed=args.seed,
        train=options,
        device=args.device,
        progress=not args.quiet,
    )
    result = linear_basins(
        model,
        starts,
        data,
        train=options,
        alphas=args.alphas,
        out=args.out,
        device=args.device,
        progress=not args.quiet,
    )
    split = "test" if "test" in result.split.values else result.split.values[0]
    print(f"error barrier between two children ({split} split):")
    for label in result.start.values:
        barrier = float(result.error_barrier.sel(start=label, split=split))
        stable = bool(result.stable.sel(start=label, split=split))
        print(f"  {label:<20} {100 * barrier:6.2f} points  {'stable' if stable else 'unstable'}")
    ls.save_result(result, Path(args.out) / "basins.nc")
    print(f"wrote {args.out}/basins.nc")
    return 0
