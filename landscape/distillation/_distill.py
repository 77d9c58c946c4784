"""Random-teacher self-distillation (Sarnthein, Bachmann, Anagnostidis & Hofmann, ICML 2023).

A student is distilled into a teacher frozen at its random initialisation, on unlabelled
inputs, without augmentations: one view per example, the loss is the cross-entropy between the
teacher's softmax and the student's log-softmax over the outputs of a DINO head
(:class:`~landscape.distillation.DINOHead`). The defaults follow the reference implementation
as it runs (github.com/safelix/dinopl, ``configs/cifar10_distillation_v2.json``) except for
the head's sizes, which are scaled down for CPUs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from landscape.core import recompute_bn
from landscape.core.batchnorm import has_batchnorm
from landscape.core.data import Splits, as_splits
from landscape.core.device import resolve_device
from landscape.core.errors import bad_argument, describe
from landscape.core.io import checkpoint_record, provenance_attrs
from landscape.core.spec import spec_of
from landscape.core.state import State
from landscape.distillation._head import HEADS
from landscape.distillation._init import resolve_model
from landscape.distillation._loop import Distiller, run_epochs
from landscape.distillation._nets import build_pair, head_state, zoo_state
from landscape.distillation._probing import ProbeHistory, Prober
from landscape.distillation._result import DistillationResult, history_dataset
from landscape.probes import DEFAULT_SCALINGS, PROBES, SCALINGS, check_probe_options, features_at
from landscape.training import TrainConfig

__all__ = ["DEFAULT_HEAD", "DISTILLATION_TRAIN", "TEACHER_BN", "distill_random_teacher"]

#: Head sizes used by default: the paper's are hidden (2048, 2048), bottleneck 256, 65,536 outputs.
DEFAULT_HEAD: dict[str, Any] = {"hidden_dims": (512, 512), "bottleneck_dim": 64, "out_dim": 4096}
#: The reference's distillation recipe: 60 epochs here (100 in the paper), AdamW at a constant
#: learning rate of 1e-3 without weight decay, batches of 256.
DISTILLATION_TRAIN = TrainConfig(epochs=60, optimizer="adamw", lr=1e-3, weight_decay=0.0, batch_size=256)
#: Where an updated teacher's BatchNorm statistics come from (the reference's ``t_bn_mode``).
TEACHER_BN = ("from_data", "from_student")


def _check_options(
    fn: str,
    *,
    config: TrainConfig,
    alpha_init: float | None,
    head: str,
    teacher_bn: str,
    teacher_momentum: float | None,
    center_momentum: float | None,
    student_temperature: float,
    teacher_temperature: float,
    out_dim: int,
    probe_every: int | None,
    saved: list[int],
) -> None:
    if config.steps is not None or config.eval_every is not None:
        raise bad_argument(
            fn,
            "train",
            expected="a recipe counted in epochs, without steps or eval_every",
            found=f"steps={config.steps!r}, eval_every={config.eval_every!r}",
            fix="Distillation probes by epoch: set epochs (and probe_every).",
        )
    if not isinstance(out_dim, int) or isinstance(out_dim, bool) or out_dim < 1:
        raise bad_argument(fn, "out_dim", expected="a positive integer", found=describe(out_dim))
    if alpha_init is not None and not 0.0 <= float(alpha_init) <= 1.0:
        raise bad_argument(
            fn, "alpha_init", expected="None (a copy of the teacher) or a number in [0, 1]", found=repr(alpha_init)
        )
    if head not in HEADS:
        raise bad_argument(fn, "head", expected=f"one of {HEADS}", found=repr(head))
    if teacher_bn not in TEACHER_BN:
        raise bad_argument(fn, "teacher_bn", expected=f"one of {TEACHER_BN}", found=repr(teacher_bn))
    if teacher_bn == "from_student" and teacher_momentum is None:
        raise bad_argument(
            fn,
            "teacher_bn",
            expected="'from_data' for a frozen teacher",
            found="'from_student' with teacher_momentum=None",
            fix="The reference copies the student's statistics only when it updates the teacher "
            "(its 'no_update' teacher never changes); set teacher_momentum= for an EMA teacher.",
        )
    for name, value in {"student_temperature": student_temperature, "teacher_temperature": teacher_temperature}.items():
        if not value > 0:
            raise bad_argument(fn, name, expected="a positive temperature", found=repr(value))
    for name, value in {"center_momentum": center_momentum, "teacher_momentum": teacher_momentum}.items():
        if value is not None and not 0.0 <= value < 1.0:
            raise bad_argument(fn, name, expected="None or a momentum in [0, 1)", found=repr(value))
    if probe_every is not None and (not isinstance(probe_every, int) or probe_every < 0):
        raise bad_argument(fn, "probe_every", expected="None or a non-negative integer", found=repr(probe_every))
    if saved and (saved[0] < 0 or saved[-1] > config.epochs):
        raise bad_argument(
            fn,
            "save_epochs",
            expected=f"epochs between 0 and {config.epochs}",
            found=repr(saved),
            fix="Train longer or ask for earlier epochs.",
        )


def _probe_data(fn: str, splits: Splits, transfer: Mapping[str, object] | None) -> dict[str, Splits]:
    """The distillation data under its own name, then each transfer data set."""
    datasets = {getattr(splits, "name", "data"): splits}
    for name, value in dict(transfer or {}).items():
        other, single = as_splits(value, function=fn, argument=f"transfer[{name!r}]")
        if single or "train" not in other or "test" not in other:
            raise bad_argument(
                fn, f"transfer[{name!r}]", expected="'train' and 'test' splits", found=f"splits {list(other)}"
            )
        if other.input_shape != splits.input_shape:
            raise bad_argument(
                fn,
                f"transfer[{name!r}]",
                expected=f"inputs shaped {splits.input_shape} like the distillation data's",
                found=f"{other.input_shape}",
            )
        if str(name) in datasets:
            raise bad_argument(fn, "transfer", expected="names other than the data's own", found=repr(name))
        datasets[str(name)] = other
    return datasets


def _distillation_inputs(fn: str, inputs: Tensor | None, x_train: Tensor) -> Tensor:
    if inputs is None:
        return x_train
    if not isinstance(inputs, Tensor) or tuple(inputs.shape[1:]) != tuple(x_train.shape[1:]):
        raise bad_argument(
            fn,
            "inputs",
            expected=f"a tensor of inputs shaped (N, {', '.join(map(str, x_train.shape[1:]))}) like the data's",
            found=inputs,
        )
    return inputs.float() if inputs.dtype in (torch.float64, torch.float16, torch.bfloat16) else inputs


def _probe_epochs(epochs: int, probe_every: int | None) -> set[int]:
    if not probe_every:
        return {0, epochs}
    return {0, epochs, *range(0, epochs + 1, probe_every)}


def _embedding_size(model: nn.Module, splits: Splits) -> int:
    x = next(iter(splits.values()))[0][:2]
    return int(features_at(model, None, x, layers="features", device="cpu")["features"].shape[1])


def distill_random_teacher(
    model_spec: object,
    data: object,
    *,
    train: TrainConfig | Mapping[str, object] | None = None,
    alpha_init: float | None = None,
    seed: int = 0,
    student_seed: int | None = None,
    head: str = "reference",
    hidden_dims: Sequence[int] = DEFAULT_HEAD["hidden_dims"],
    bottleneck_dim: int = DEFAULT_HEAD["bottleneck_dim"],
    out_dim: int = DEFAULT_HEAD["out_dim"],
    student_temperature: float = 1.0,
    teacher_temperature: float = 1.0,
    center_momentum: float | None = None,
    teacher_momentum: float | None = None,
    teacher_bn: str = "from_data",
    inputs: Tensor | None = None,
    probe_every: int | None = 5,
    save_epochs: Iterable[int] = (),
    calibrated_teacher: bool | None = None,
    probes: Sequence[str] = PROBES,
    scalings: Sequence[str] = DEFAULT_SCALINGS,
    probe_options: Mapping[str, object] | None = None,
    transfer: Mapping[str, object] | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> DistillationResult:
    """Distil a student into a teacher frozen at random initialisation, and probe both.

    Parameters
    ----------
    model_spec
        The encoder's architecture: a zoo model, a spec dict, or a spec string such as
        ``"cnn1d"`` or ``"resnet:width_multiplier=2"`` (input shape and class count default to
        the data's). Its ``features`` submodule is the encoder. A module's own weights are not
        used: the teacher is always the initialisation at ``seed``.
    data
        :class:`~landscape.core.data.Splits` (or a dict) with ``train`` and ``test`` splits. The
        student sees only the training inputs, never labels; labels are used by the probes.
    train
        The recipe, a :class:`~landscape.training.TrainConfig` (or a dict of fields changed
        from the default): default ``DISTILLATION_TRAIN``, the reference's AdamW at a constant
        learning rate of 1e-3 without weight decay, batches of 256, here for 60 epochs. The
        reference's configuration says its learning rate is "specified wrt batch size 256 and
        linearly scaled", but the scaling code is commented out, so it is used as given, and
        so it is here. Weight decay never applies to biases and norm parameters, as in the
        reference; ``schedule`` and ``warmup`` apply per step; ``data_seed`` (default
        ``seed``) orders the inputs; ``steps`` and ``eval_every`` are refused (distillation
        counts epochs).
    alpha_init
        The student's initialisation: None (default) starts it as an exact copy of the teacher,
        parameters and buffers (the reference's default ``s_init='teacher'``, which its
        distillation configurations use); a number in [0, 1] starts it at the
        variance-preserving interpolation between the teacher and a fresh initialisation (see
        :func:`interpolated_init`; 0 is the copy again, 1 an independent initialisation).
        Without BatchNorm the copy's loss gradient is rounding noise, which Adam turns into
        steps of size ``lr``; with BatchNorm the student's batch statistics differ from the
        eval-mode teacher's from the first step, as in the paper's VGG/ResNet encoders.
    seed
        Initialisation of the teacher (encoder: the zoo model created with this seed; head: a
        generator seeded with it).
    student_seed
        Initialisation of the fresh draw the student is interpolated towards (default
        ``seed + 1000``).
    head
        ``"reference"`` (default): the head as the reference code runs, whose last layer is
        not weight-normalised (its ``Linear.forward`` ignores the normalised weight); or
        ``"weight_normalized"``: unit-norm output weights, as the reference's configuration
        and DINO specify (see :mod:`landscape.distillation._head`).
    hidden_dims, bottleneck_dim, out_dim
        The DINO head (reference: (2048, 2048), 256, 65,536; defaults scaled down for CPUs,
        see ``DEFAULT_HEAD``).
    student_temperature, teacher_temperature
        Softmax temperatures (reference distillation: 1 and 1).
    center_momentum
        Centre the teacher's outputs with an exponential moving average of their batch means
        (DINO's centering); None (default) disables it.
    teacher_momentum
        Make the teacher an exponential moving average of the student with this momentum
        (DINO's EMA teacher); None (default) keeps it frozen at initialisation.
    teacher_bn
        Where an EMA teacher's BatchNorm statistics come from: ``"from_data"`` (default; the
        teacher runs in eval mode, so they stay at its initialisation) or ``"from_student"``
        (the running statistics follow the student's with ``teacher_momentum``, the
        reference's ``t_bn_mode='from_student'``). A frozen teacher allows only
        ``"from_data"``: the reference copies statistics only when it updates the teacher.
    inputs
        Distil on these inputs instead of the training inputs (e.g. :func:`gaussian_inputs`
        for the random-input control); probes still use ``data``.
    probe_every
        Probe student and teacher encoders every this many epochs, and at epochs 0 and the
        last; None or 0 probes only at those two.
    save_epochs
        Epochs after which to keep the student's state (0 = initialisation).
    calibrated_teacher
        Also probe the teacher with its BatchNorm running statistics re-estimated on the
        distillation inputs (net ``"teacher_calibrated"``). The teacher runs in eval mode with
        the statistics of its initialisation (mean 0, variance 1), while the student's are
        estimated from the data during training; this control separates that calibration from
        what distillation learns. Default: when the encoder has BatchNorm layers.
    probes, scalings, probe_options
        Which probes to run (``"linear"``, ``"knn"``) on which read-outs (default
        ``"standardized"``, the reference's headline; ``"raw"`` too on request), and keyword
        options of :func:`landscape.probes.probe_features` (default: the deterministic L-BFGS
        linear probe and k-NN with k = 20).
    transfer
        Other data sets to probe the same encoders on (name to splits with ``train`` and
        ``test``, inputs shaped like the data's): probes fit on their ``train`` and score on
        their ``test`` split, so the paper's transfer claim can be tested offline (e.g.
        distil on one mnist1d draw and probe on another). Results in ``transfer_accuracy``.
    device, progress
        Where to train and probe (``"auto"``: CUDA when present; results come back on the
        CPU); whether to show a progress bar.

    Returns
    -------
    DistillationResult
        ``teacher``, ``student``, ``students``, ``history`` (``loss`` over ``epoch``;
        ``accuracy`` over (``epoch``, ``net``, ``probe``, ``scaling``), ``net`` being
        ``"student"``, ``"teacher"`` and, see ``calibrated_teacher``, ``"teacher_calibrated"``;
        ``transfer_accuracy`` over (``transfer``, ``epoch``, ``net``, ``probe``, ``scaling``)
        with ``transfer``) and the heads.

    Examples
    --------
    >>> import landscape as ls
    >>> data = ls.datasets.mnist1d(n_train=256, n_test=128)
    >>> result = ls.distillation.distill_random_teacher(
    ...     "cnn1d:width=8", data, train={"epochs": 2}, hidden_dims=(16, 16), bottleneck_dim=8, out_dim=32,
    ...     probes=["knn"], progress=False)
    >>> result.history.accuracy.dims
    ('epoch', 'net', 'probe', 'scaling')
    """
    fn = "distill_random_teacher"
    splits, single = as_splits(data, function=fn)
    if single or "train" not in splits or "test" not in splits:
        raise bad_argument(
            fn, "data", expected="'train' and 'test' splits (the probes need both)", found=f"splits {list(splits)}"
        )
    model = resolve_model(model_spec, splits, function=fn)
    config = TrainConfig.coerce(train, function=fn, default=DISTILLATION_TRAIN)
    saved = sorted({int(e) for e in save_epochs})
    _check_options(
        fn,
        config=config,
        alpha_init=alpha_init,
        head=head,
        teacher_bn=teacher_bn,
        teacher_momentum=teacher_momentum,
        center_momentum=center_momentum,
        student_temperature=student_temperature,
        teacher_temperature=teacher_temperature,
        out_dim=out_dim,
        probe_every=probe_every,
        saved=saved,
    )
    epochs = config.epochs
    x_train = splits["train"][0]
    distill_x = _distillation_inputs(fn, inputs, x_train)
    datasets = _probe_data(fn, splits, transfer)
    student_seed = int(seed) + 1000 if student_seed is None else int(student_seed)
    data_seed = int(seed) if config.data_seed is None else int(config.data_seed)
    dev = resolve_device(device, function=fn)
    options = check_probe_options(fn, probe_options)
    probes_tuple = tuple([probes] if isinstance(probes, str) else probes)
    scalings_tuple = tuple([scalings] if isinstance(scalings, str) else scalings)
    for name, chosen, allowed in (("probes", probes_tuple, PROBES), ("scalings", scalings_tuple, SCALINGS)):
        if not chosen or len(set(chosen)) != len(chosen) or not set(chosen) <= set(allowed):
            raise bad_argument(fn, name, expected=f"distinct names from {allowed}", found=repr(chosen))

    embed_dim = _embedding_size(model, splits)
    head_kwargs = {"hidden_dims": tuple(int(h) for h in hidden_dims), "bottleneck_dim": int(bottleneck_dim)}
    teacher_net, student_net, teacher_state, teacher_head_start = build_pair(
        model,
        embed_dim=embed_dim,
        out_dim=out_dim,
        head=head,
        head_kwargs=head_kwargs,
        seed=int(seed),
        student_seed=student_seed,
        alpha_init=alpha_init,
    )
    teacher_net.requires_grad_(False)
    teacher_net.to(dev).eval()
    student_net.to(dev).train()
    teacher_start = {k: v.detach().clone() for k, v in teacher_net.state_dict().items()}
    distill_x = distill_x.to(dev)
    distiller = Distiller(
        teacher_net,
        student_net,
        config,
        total_steps=config.total_steps(distill_x.shape[0]),
        student_temperature=student_temperature,
        teacher_temperature=teacher_temperature,
        center_momentum=center_momentum,
        teacher_momentum=teacher_momentum,
        teacher_bn=teacher_bn,
        out_dim=out_dim,
        device=dev,
    )
    if calibrated_teacher is None:
        calibrated_teacher = has_batchnorm(teacher_net.encoder)

    def calibrate(teacher: State) -> State:
        # BatchNorm statistics from the distillation inputs in batches of the run's size, as
        # the student's are estimated (the engine's exact example-weighted average).
        return recompute_bn(model, teacher, distill_x, batch_size=config.batch_size, device=dev)

    prober = Prober(model, datasets, probes=probes_tuple, scalings=scalings_tuple, options=options, device=dev)
    probed = ProbeHistory(
        prober,
        epochs=epochs,
        calibrate=calibrate if calibrated_teacher else None,
        teacher_fixed=teacher_momentum is None,
    )
    students: dict[int, State] = {}
    provenance = {"format": "distilled", "source": "landscape.distillation.distill_random_teacher"}
    provenance |= {"seed": int(seed), "alpha_init": alpha_init, "head": head}

    def state_at(net: nn.Module, epoch: int, role: str) -> State:
        return zoo_state(net.encoder, teacher_state, {**provenance, "role": role, "epoch": epoch})

    probe_epochs = _probe_epochs(epochs, probe_every)

    def after_epoch(epoch: int) -> None:
        if epoch in probe_epochs:
            probed.record(
                epoch, state_at(student_net, epoch, "student"), lambda: state_at(teacher_net, epoch, "teacher")
            )
        if epoch in saved:
            students[epoch] = state_at(student_net, epoch, "student")

    losses = run_epochs(
        distiller, distill_x, epochs=epochs, data_seed=data_seed, after_epoch=after_epoch, progress=progress
    )
    student_net.eval().cpu()
    history = history_dataset(
        losses, probed.values, nets=probed.nets, probes=probes_tuple, scalings=scalings_tuple, datasets=list(datasets)
    )
    teacher_zoo = State(
        {k: v.clone() for k, v in teacher_state.items()}, provenance={**provenance, "role": "teacher", "epoch": 0}
    )
    history.attrs = provenance_attrs(
        analysis="random_teacher_distillation",
        model=spec_of(model) or type(model).__name__,
        data=getattr(splits, "name", "data"),
        data_meta=getattr(splits, "meta", {}),
        transfer={k: getattr(v, "meta", {}) for k, v in list(datasets.items())[1:]},
        inputs="data" if inputs is None else "custom",
        train=config.as_dict(),
        epochs=epochs,
        alpha_init="copy" if alpha_init is None else float(alpha_init),
        seed=int(seed),
        student_seed=student_seed,
        data_seed=data_seed,
        head={**head_kwargs, "out_dim": out_dim, "kind": head, "activation": "gelu", "init": "trunc_normal(0.02)"},
        student_temperature=student_temperature,
        teacher_temperature=teacher_temperature,
        center_momentum=center_momentum,
        teacher_momentum=teacher_momentum,
        teacher_bn=teacher_bn,
        calibrated_teacher=bool(calibrated_teacher),
        probe_options=options,
        probe_seconds=round(prober.seconds, 3),
        teacher_state=checkpoint_record(teacher_zoo),
    )
    if teacher_momentum is None:
        changed = [k for k, v in teacher_net.state_dict().items() if not torch.equal(v, teacher_start[k])]
        assert not changed, f"the frozen teacher changed: {changed[:3]}"
    return DistillationResult(
        model=model,
        teacher=teacher_zoo,
        student=state_at(student_net, epochs, "student"),
        students=students,
        history=history,
        teacher_head=teacher_head_start,
        student_head=head_state(student_net.head),
        final_teacher=state_at(teacher_net, epochs, "teacher"),
        final_teacher_head=head_state(teacher_net.head),
        center=distiller.center.detach().cpu().clone(),
        net=student_net,
    )
