"""Random-teacher self-distillation (Sarnthein, Bachmann, Anagnostidis & Hofmann, ICML 2023).

A student is distilled into a teacher frozen at its random initialisation, on unlabelled
inputs, without augmentations: one view per example, the loss is the cross-entropy between the
teacher's softmax and the student's log-softmax over the outputs of a DINO head
(:class:`~landscape.distillation.DINOHead`). The defaults follow the reference implementation
(github.com/safelix/dinopl, ``configs/cifar10_distillation_v2.json``) except for the head's
sizes, which are scaled down for CPUs.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr
from torch import Tensor, nn

from landscape.core.batchnorm import has_batchnorm, recompute_mode
from landscape.core.data import Splits, as_splits
from landscape.core.device import resolve_device
from landscape.core.errors import bad_argument, describe
from landscape.core.io import checkpoint_record, provenance_attrs
from landscape.core.progress import progress_bar
from landscape.core.spec import spec_of
from landscape.core.state import State, as_state, is_norm_or_bias, state_of
from landscape.distillation.head import DINOHead, DistillationNet
from landscape.probes import PROBES, SCALINGS, probe_features

__all__ = [
    "DEFAULT_HEAD",
    "DistillationResult",
    "distill_random_teacher",
    "distillation_loss",
    "gaussian_inputs",
    "interpolated_init",
    "resolve_model",
]

#: Head sizes used by default: the paper's are hidden (2048, 2048), bottleneck 256, 65,536 outputs.
DEFAULT_HEAD: dict[str, Any] = {"hidden_dims": (512, 512), "bottleneck_dim": 64, "out_dim": 4096}


@dataclass
class DistillationResult:
    """What :func:`distill_random_teacher` returns.

    Attributes
    ----------
    model : nn.Module
        The architecture (a zoo model, ``Classifier(features, classifier)``).
    teacher : State
        The teacher at its random initialisation, as a state of ``model`` (features and
        classifier). Frozen, so it is also the teacher at the end unless ``teacher_momentum``
        was set (then see ``final_teacher``).
    student : State
        The student after the last epoch, as a state of ``model``: distilled features and the
        teacher's (untrained) classifier, so that it differs from ``teacher`` only in the
        encoder.
    students : dict of int to State
        Student states after the epochs requested in ``save_epochs`` (0 = the initialisation).
    history : xarray.Dataset
        ``loss`` over ``epoch`` (0 = before training) and ``accuracy`` over (``epoch``, ``net``,
        ``probe``, ``scaling``), NaN at epochs that were not probed.
    teacher_head, student_head : State
        The DINO heads' parameters (teacher's at initialisation; student's at the end).
    final_teacher : State
        The teacher after the last epoch (equal to ``teacher`` unless it was an EMA teacher).
    """

    model: nn.Module
    teacher: State
    student: State
    students: dict[int, State] = field(default_factory=dict)
    history: xr.Dataset = field(default_factory=xr.Dataset)
    teacher_head: State = field(default_factory=State)
    student_head: State = field(default_factory=State)
    final_teacher: State = field(default_factory=State)


def resolve_model(
    model_spec: object, data: Splits | None = None, *, function: str = "distill_random_teacher"
) -> nn.Module:
    """A zoo model from a module, a spec dict or a spec string (``"cnn1d:width=64"``).

    Specs get the data's input shape and class count unless they name their own.
    """
    from landscape.models import from_spec, parse_spec

    if isinstance(model_spec, nn.Module):
        model = model_spec
    elif isinstance(model_spec, (str, Mapping)):
        spec = parse_spec(model_spec) if isinstance(model_spec, str) else dict(model_spec)
        if "name" not in spec:
            raise bad_argument(function, "model_spec", expected="a spec with a 'name' entry", found=str(spec))
        if data is not None and spec["name"] != "gpt":
            spec.setdefault("input_shape", list(data.input_shape))
            if data.num_classes is not None:
                spec.setdefault("num_classes", data.num_classes)
        model = from_spec(spec)
    else:
        raise bad_argument(
            function,
            "model_spec",
            expected="a zoo model, a spec dict or a spec string such as 'cnn1d:width=32'",
            found=model_spec,
        )
    if not isinstance(getattr(model, "features", None), nn.Module):
        raise bad_argument(
            function,
            "model_spec",
            expected="a model with a `features` submodule (every zoo model is Classifier(features, classifier))",
            found=f"a {type(model).__name__} without one",
            fix="Wrap your network as landscape.models.layers.Classifier(encoder, nn.Linear(...)).",
        )
    return model


def _fresh_state(model: nn.Module, seed: int) -> State:
    from landscape.training import init_state

    return init_state(model, int(seed))


def interpolated_init(
    teacher: Mapping[str, Tensor],
    fresh: Mapping[str, Tensor],
    alpha: float,
    *,
    parameters: Iterable[str] | None = None,
    variance_preserving: bool = True,
) -> State:
    """The student's initialisation between the teacher and a fresh random initialisation.

    ``((1 - alpha) * teacher + alpha * fresh) / sqrt(alpha^2 + (1 - alpha)^2)``: for two
    independent zero-mean initialisations with equal variance the result has that variance
    again, for every ``alpha`` (the reference's ``s_init='interpolated'`` with
    ``s_init_var_preserving``). ``alpha = 0`` is the teacher, ``alpha = 1`` the fresh draw.
    The arithmetic is done in float64 and rounded once.

    Parameters
    ----------
    teacher, fresh
        States of the same architecture.
    alpha
        In [0, 1]; the "locality" of the student (small = close to the teacher).
    parameters
        Names of the entries to interpolate (the reference interpolates all parameters, not
        buffers); other entries are copied from ``teacher``. Default: every floating entry.
    variance_preserving
        Divide by ``sqrt(alpha^2 + (1 - alpha)^2)``.

    Returns
    -------
    State

    Examples
    --------
    >>> import torch
    >>> s = interpolated_init({"w": torch.tensor([1.0])}, {"w": torch.tensor([-1.0])}, 0.5)
    >>> round(float(s["w"]), 6)
    0.0
    """
    a = float(alpha)
    if not 0.0 <= a <= 1.0 or math.isnan(a):
        raise bad_argument(
            "interpolated_init", "alpha", expected="a number in [0, 1] (0 = the teacher)", found=repr(alpha)
        )
    teacher = as_state(teacher, function="interpolated_init", argument="teacher")
    fresh = as_state(fresh, function="interpolated_init", argument="fresh")
    from landscape.core.state import check_compatible

    check_compatible(teacher, fresh, function="interpolated_init", names=("teacher", "fresh"))
    names = set(parameters) if parameters is not None else {k for k, t in teacher.items() if t.is_floating_point()}
    factor = 1.0 / math.sqrt(a * a + (1.0 - a) ** 2) if variance_preserving else 1.0
    out = {}
    for k, t in teacher.items():
        if k in names and t.is_floating_point():
            mixed = ((1.0 - a) * t.double() + a * fresh[k].double()) * factor
            out[k] = mixed.to(t.dtype)
        else:
            out[k] = t.clone()
    return State(out, provenance={"derived": "interpolated_init", "alpha": a})


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    student_temperature: float = 1.0,
    teacher_temperature: float = 1.0,
) -> Tensor:
    """Mean over the batch of ``-sum softmax(teacher / tau_t) * log_softmax(student / tau_s)``.

    Examples
    --------
    >>> import torch
    >>> t = torch.zeros(1, 4)
    >>> round(float(distillation_loss(t, t)), 6) == round(float(torch.log(torch.tensor(4.0))), 6)
    True
    """
    targets = F.softmax(teacher_logits.detach().float() / teacher_temperature, dim=-1)
    log_predictions = F.log_softmax(student_logits.float() / student_temperature, dim=-1)
    return -(targets * log_predictions).sum(dim=-1).mean()


def gaussian_inputs(x: Tensor, *, seed: int = 0, n: int | None = None) -> Tensor:
    """Gaussian noise shaped like ``x`` with its per-position mean and standard deviation.

    The control of the paper's data-dependence experiment: distilling on such inputs keeps the
    input statistics' first two moments but none of the data's structure.

    Examples
    --------
    >>> import torch
    >>> gaussian_inputs(torch.randn(100, 40), seed=0).shape
    torch.Size([100, 40])
    """
    if not isinstance(x, Tensor) or x.dim() < 2:
        raise bad_argument("gaussian_inputs", "x", expected="a tensor of inputs (examples, ...)", found=x)
    n = int(x.shape[0] if n is None else n)
    mean = x.double().mean(dim=0)
    std = x.double().std(dim=0) if x.shape[0] > 1 else torch.ones_like(mean)
    gen = torch.Generator().manual_seed(int(seed))
    noise = torch.randn((n, *x.shape[1:]), generator=gen, dtype=torch.float64)
    return (mean + std * noise).to(x.dtype if x.is_floating_point() else torch.float32)


def _is_bias(name: str, tensor: Tensor) -> bool:
    # The reference excludes biases (and other 1-D parameters) from weight decay.
    is_bias, is_norm = is_norm_or_bias(name, tensor)
    return is_bias or is_norm


def distill_random_teacher(
    model_spec: object,
    data: object,
    *,
    epochs: int = 60,
    alpha_init: float = 1e-10,
    seed: int = 0,
    student_seed: int | None = None,
    data_seed: int | None = None,
    probe_every: int | None = 5,
    save_epochs: Iterable[int] = (),
    hidden_dims: Sequence[int] = DEFAULT_HEAD["hidden_dims"],
    bottleneck_dim: int = DEFAULT_HEAD["bottleneck_dim"],
    out_dim: int = DEFAULT_HEAD["out_dim"],
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    batch_size: int = 256,
    student_temperature: float = 1.0,
    teacher_temperature: float = 1.0,
    center_momentum: float | None = None,
    teacher_momentum: float | None = None,
    inputs: Tensor | None = None,
    calibrated_teacher: bool | None = None,
    probes: Sequence[str] = PROBES,
    scalings: Sequence[str] = SCALINGS,
    probe_options: Mapping[str, object] | None = None,
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
    epochs
        Passes over the training inputs.
    alpha_init
        Locality of the student's initialisation (see :func:`interpolated_init`): 0 starts
        at the teacher, 1 at an independent initialisation. The default, 1e-10, puts the
        student at the teacher up to float32 rounding (only weights smaller than about 1e-4
        change). Without BatchNorm the loss gradient there is rounding noise, which Adam turns
        into steps of size ``lr``; with BatchNorm the student's batch statistics differ from the
        eval-mode teacher's from the first step, as in the paper's VGG/ResNet encoders.
    seed
        Initialisation of the teacher (encoder: the zoo model created with this seed; head: a
        generator seeded with it).
    student_seed
        Initialisation of the fresh draw the student is interpolated towards (default
        ``seed + 1000``).
    data_seed
        Order of the training inputs (default ``seed``).
    probe_every
        Probe student and teacher encoders every this many epochs, and at epochs 0 and
        ``epochs``; None or 0 probes only at epochs 0 and ``epochs``.
    save_epochs
        Epochs after which to keep the student's state (0 = initialisation).
    hidden_dims, bottleneck_dim, out_dim
        The DINO head (reference: (2048, 2048), 256, 65,536; defaults scaled down for CPUs,
        see ``DEFAULT_HEAD``).
    lr, weight_decay, batch_size
        AdamW (betas 0.9, 0.999); weight decay applies to weights only, not to biases and
        norm parameters, as in the reference. The reference's learning rate 1e-3 is given for
        batch size 256 and scaled linearly with the batch size; here ``lr`` is used as given.
    student_temperature, teacher_temperature
        Softmax temperatures (reference distillation: 1 and 1).
    center_momentum
        Centre the teacher's outputs with an exponential moving average of their batch means
        (DINO's centering); None (default) disables it.
    teacher_momentum
        Make the teacher an exponential moving average of the student with this momentum
        (DINO's EMA teacher); None (default) keeps it frozen at initialisation.
    inputs
        Distil on these inputs instead of the training inputs (e.g. :func:`gaussian_inputs`
        for the random-input control); probes still use ``data``.
    calibrated_teacher
        Also probe the teacher with its BatchNorm running statistics re-estimated on the
        distillation inputs (net ``"teacher_calibrated"``). The teacher runs in eval mode with
        the statistics of its initialisation (mean 0, variance 1), while the student's are
        estimated from the data during training; this control separates that calibration from
        what distillation learns. Default: when the encoder has BatchNorm layers.
    probes, scalings, probe_options
        Which probes to run (``"linear"``, ``"knn"``) on which features (``"raw"``,
        ``"standardized"``), and keyword options for :func:`landscape.probes.probe_features`.
    device, progress
        Where to train; whether to show a progress bar.

    Returns
    -------
    DistillationResult
        ``teacher``, ``student``, ``students``, ``history`` (``loss`` over ``epoch``;
        ``accuracy`` over (``epoch``, ``net``, ``probe``, ``scaling``), ``net`` being
        ``"student"``, ``"teacher"`` and, see ``calibrated_teacher``, ``"teacher_calibrated"``)
        and the heads.

    Examples
    --------
    >>> import landscape as ls
    >>> data = ls.datasets.mnist1d(n_train=256, n_test=128)
    >>> result = ls.distillation.distill_random_teacher(
    ...     "cnn1d:width=8", data, epochs=2, hidden_dims=(16, 16), bottleneck_dim=8, out_dim=32,
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
    for name, value in {"epochs": epochs, "batch_size": batch_size, "out_dim": out_dim}.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise bad_argument(fn, name, expected="a positive integer", found=describe(value))
    if not lr > 0:
        raise bad_argument(fn, "lr", expected="a positive learning rate", found=repr(lr))
    if not 0.0 <= float(alpha_init) <= 1.0:
        raise bad_argument(
            fn, "alpha_init", expected="a number in [0, 1] (0 = start at the teacher)", found=repr(alpha_init)
        )
    for name, value in {"student_temperature": student_temperature, "teacher_temperature": teacher_temperature}.items():
        if not value > 0:
            raise bad_argument(fn, name, expected="a positive temperature", found=repr(value))
    for name, value in {"center_momentum": center_momentum, "teacher_momentum": teacher_momentum}.items():
        if value is not None and not 0.0 <= value < 1.0:
            raise bad_argument(fn, name, expected="None or a momentum in [0, 1)", found=repr(value))
    if probe_every is not None and (not isinstance(probe_every, int) or probe_every < 0):
        raise bad_argument(fn, "probe_every", expected="None or a non-negative integer", found=repr(probe_every))
    saved = sorted({int(e) for e in save_epochs})
    if saved and (saved[0] < 0 or saved[-1] > epochs):
        raise bad_argument(
            fn,
            "save_epochs",
            expected=f"epochs between 0 and {epochs}",
            found=repr(saved),
            fix="Train longer or ask for earlier epochs.",
        )
    x_train, y_train = splits["train"]
    x_test, y_test = splits["test"]
    if inputs is not None:
        if not isinstance(inputs, Tensor) or tuple(inputs.shape[1:]) != tuple(x_train.shape[1:]):
            raise bad_argument(
                fn,
                "inputs",
                expected=f"a tensor of inputs shaped (N, {', '.join(map(str, x_train.shape[1:]))}) like the data's",
                found=inputs,
            )
        distill_x = inputs.float() if inputs.dtype in (torch.float64, torch.float16, torch.bfloat16) else inputs
    else:
        distill_x = x_train
    student_seed = int(seed) + 1000 if student_seed is None else int(student_seed)
    data_seed = int(seed) if data_seed is None else int(data_seed)
    dev = resolve_device(device, function=fn)
    options = dict(probe_options or {})

    # Teacher: the zoo initialisation at `seed` plus a head from a generator seeded with `seed`.
    teacher_state = _fresh_state(model, seed)
    fresh_state = _fresh_state(model, student_seed)
    embed_dim = _embedding_size(model, splits)
    head_kwargs = {"hidden_dims": tuple(int(h) for h in hidden_dims), "bottleneck_dim": int(bottleneck_dim)}
    teacher_head = DINOHead(embed_dim, out_dim, seed=seed, **head_kwargs)
    fresh_head = DINOHead(embed_dim, out_dim, seed=student_seed, **head_kwargs)

    teacher_net = _net(model, teacher_state, teacher_head)
    fresh_net = _net(model, fresh_state, fresh_head)
    param_names = [n for n, _ in teacher_net.named_parameters()]
    student_net = copy.deepcopy(teacher_net)
    student_net.load_state_dict(
        interpolated_init(state_of(teacher_net), state_of(fresh_net), alpha_init, parameters=param_names)
    )
    teacher_net.requires_grad_(False)
    teacher_net.to(dev).eval()
    student_net.to(dev).train()
    teacher_start = {k: v.detach().clone() for k, v in teacher_net.state_dict().items()}

    params = list(student_net.named_parameters())
    decay = [p for n, p in params if not _is_bias(n, p)]
    no_decay = [p for n, p in params if _is_bias(n, p)]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(0.9, 0.999))
    center = torch.zeros(out_dim, device=dev)

    distill_x = distill_x.to(dev)
    n = distill_x.shape[0]
    order_gen = torch.Generator().manual_seed(data_seed)
    probe_epochs = _probe_epochs(epochs, probe_every)
    if calibrated_teacher is None:
        calibrated_teacher = has_batchnorm(teacher_net.encoder)
    net_names = ("student", "teacher", "teacher_calibrated") if calibrated_teacher else ("student", "teacher")
    calibrated_probe: np.ndarray | None = None
    probes_tuple = tuple([probes] if isinstance(probes, str) else probes)
    scalings_tuple = tuple([scalings] if isinstance(scalings, str) else scalings)
    for name, chosen, allowed in (("probes", probes_tuple, PROBES), ("scalings", scalings_tuple, SCALINGS)):
        if not chosen or len(set(chosen)) != len(chosen) or not set(chosen) <= set(allowed):
            raise bad_argument(fn, name, expected=f"distinct names from {allowed}", found=repr(chosen))
    accuracy = np.full((epochs + 1, len(net_names), len(probes_tuple), len(scalings_tuple)), np.nan)
    losses = np.full(epochs + 1, np.nan)
    students: dict[int, State] = {}
    teacher_probe: xr.DataArray | None = None

    def probe(net: DistillationNet) -> xr.DataArray:
        encoder = net.encoder
        was_training = encoder.training
        encoder.eval()
        with torch.no_grad():
            f_train = _encode(encoder, x_train, dev)
            f_test = _encode(encoder, x_test, dev)
        encoder.train(was_training)
        return probe_features(
            f_train,
            y_train,
            f_test,
            y_test,
            probes=probes_tuple,
            scalings=scalings_tuple,
            seed=seed,
            device="cpu" if dev.type == "cpu" else dev,
            **options,
        ).accuracy

    def model_state(net: DistillationNet, epoch: int, role: str) -> State:
        state = State({k: v.clone() for k, v in teacher_state.items()})
        for k, v in net.encoder.state_dict().items():
            state[f"features.{k}"] = v.detach().cpu().clone()
        state.provenance = {
            "format": "distilled",
            "source": "landscape.distillation.distill_random_teacher",
            "role": role,
            "epoch": epoch,
            "seed": int(seed),
            "alpha_init": float(alpha_init),
        }
        return state

    def calibrated(net: DistillationNet) -> DistillationNet:
        # The teacher with BatchNorm statistics averaged exactly over the distillation inputs.
        work = copy.deepcopy(net)
        with torch.no_grad():
            for module in work.encoder.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
                    module.reset_running_stats()
            work.encoder.eval()
            with recompute_mode(work.encoder):
                for start in range(0, n, batch_size):
                    work.encoder(distill_x[start : start + batch_size])
        return work.eval()

    def record_probes(epoch: int) -> None:
        nonlocal teacher_probe, calibrated_probe
        accuracy[epoch, 0] = probe(student_net).values
        fresh = teacher_probe is None or teacher_momentum is not None
        if fresh:
            teacher_probe = probe(teacher_net)
        accuracy[epoch, 1] = teacher_probe.values
        if calibrated_teacher:
            if fresh or calibrated_probe is None:
                calibrated_probe = probe(calibrated(teacher_net)).values
            accuracy[epoch, 2] = calibrated_probe

    def epoch_loss(*, train: bool) -> float:
        nonlocal center
        total, count = 0.0, 0
        order = torch.randperm(n, generator=order_gen).to(dev) if train else torch.arange(n, device=dev)
        for start in range(0, n, batch_size):
            xb = distill_x[order[start : start + batch_size]]
            with torch.no_grad():
                t_proj = teacher_net(xb)
            t_logits = t_proj - center if center_momentum is not None else t_proj
            with torch.set_grad_enabled(train):
                s_logits = student_net(xb)
                value = distillation_loss(
                    s_logits,
                    t_logits,
                    student_temperature=student_temperature,
                    teacher_temperature=teacher_temperature,
                )
            if train:
                opt.zero_grad(set_to_none=True)
                value.backward()
                opt.step()
                if center_momentum is not None:
                    center = center * center_momentum + t_proj.mean(dim=0) * (1 - center_momentum)
                if teacher_momentum is not None:
                    with torch.no_grad():
                        for p_t, p_s in zip(teacher_net.parameters(), student_net.parameters()):
                            p_t.mul_(teacher_momentum).add_(p_s.detach(), alpha=1 - teacher_momentum)
            total += float(value.detach()) * xb.shape[0]
            count += xb.shape[0]
        return total / count

    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(data_seed + 1)  # dropout, if the encoder has any
        # The loss at initialisation, in training mode like every later epoch; BatchNorm's
        # running statistics are restored afterwards so that this pass changes nothing.
        buffers = {k: v.clone() for k, v in student_net.named_buffers()}
        losses[0] = epoch_loss(train=False)
        with torch.no_grad():
            for k, v in student_net.named_buffers():
                v.copy_(buffers[k])
        if 0 in probe_epochs:
            record_probes(0)
        if 0 in saved:
            students[0] = model_state(student_net, 0, "student")
        with progress_bar(total=epochs, desc="distill", unit="epoch", disable=not progress) as bar:
            for epoch in range(1, epochs + 1):
                losses[epoch] = epoch_loss(train=True)
                if epoch in probe_epochs:
                    record_probes(epoch)
                if epoch in saved:
                    students[epoch] = model_state(student_net, epoch, "student")
                bar.update(1)
                bar.set_postfix(loss=f"{losses[epoch]:.4f}")

    student_net.eval()
    history = xr.Dataset(
        {
            "loss": (("epoch",), losses),
            "accuracy": (("epoch", "net", "probe", "scaling"), accuracy),
        },
        coords={
            "epoch": np.arange(epochs + 1),
            "net": list(net_names),
            "probe": list(probes_tuple),
            "scaling": list(scalings_tuple),
        },
    )
    history["loss"].attrs["description"] = "mean distillation cross-entropy over the inputs (epoch 0: before training)"
    history["accuracy"].attrs["description"] = "test accuracy of probes on the encoder's features; NaN where not probed"
    teacher_zoo = State(
        {k: v.clone() for k, v in teacher_state.items()},
        provenance={**model_state(teacher_net, 0, "teacher").provenance, "epoch": 0},
    )
    history.attrs = provenance_attrs(
        analysis="random_teacher_distillation",
        model=spec_of(model) or type(model).__name__,
        data=getattr(splits, "name", "data"),
        data_meta=getattr(splits, "meta", {}),
        inputs="data" if inputs is None else "custom",
        epochs=epochs,
        alpha_init=float(alpha_init),
        seed=int(seed),
        student_seed=student_seed,
        data_seed=data_seed,
        head={**head_kwargs, "out_dim": out_dim, "activation": "gelu", "init": "trunc_normal(0.02)"},
        lr=lr,
        weight_decay=weight_decay,
        batch_size=batch_size,
        optimizer="adamw",
        student_temperature=student_temperature,
        teacher_temperature=teacher_temperature,
        center_momentum=center_momentum,
        teacher_momentum=teacher_momentum,
        calibrated_teacher=bool(calibrated_teacher),
        probe_options=options,
        teacher_state=checkpoint_record(teacher_zoo),
    )
    final_teacher = model_state(teacher_net, epochs, "teacher")
    if teacher_momentum is None:
        changed = [k for k, v in teacher_net.state_dict().items() if not torch.equal(v, teacher_start[k])]
        assert not changed, f"the frozen teacher changed: {changed[:3]}"
    return DistillationResult(
        model=model,
        teacher=teacher_zoo,
        student=model_state(student_net, epochs, "student"),
        students=students,
        history=history,
        teacher_head=State({k: v.detach().cpu().clone() for k, v in teacher_head.state_dict().items()}),
        student_head=State({k: v.detach().cpu().clone() for k, v in student_net.head.state_dict().items()}),
        final_teacher=final_teacher,
    )


def _probe_epochs(epochs: int, probe_every: int | None) -> set[int]:
    if not probe_every:
        return {0, epochs}
    return {0, epochs, *range(0, epochs + 1, probe_every)}


def _net(model: nn.Module, state: State, head: nn.Module) -> DistillationNet:
    work = copy.deepcopy(model)
    work.load_state_dict(state)
    return DistillationNet(copy.deepcopy(work.features), head)


@torch.no_grad()
def _encode(encoder: nn.Module, x: Tensor, device: torch.device, batch_size: int = 1024) -> Tensor:
    parts = [
        encoder(x[s : s + batch_size].to(device)).flatten(1).float().cpu() for s in range(0, x.shape[0], batch_size)
    ]
    return torch.cat(parts)


@torch.no_grad()
def _embedding_size(model: nn.Module, splits: Splits) -> int:
    encoder = copy.deepcopy(model.features).eval()
    x = next(iter(splits.values()))[0][:2]
    return int(encoder(x).flatten(1).shape[1])
