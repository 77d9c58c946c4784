"""The distillation loss around a student, as something ``evaluate`` and the landscape
functions can draw: the architecture, the student's point, data and the metric."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from landscape.core.data import Splits, as_splits
from landscape.core.device import resolve_device
from landscape.core.errors import bad_argument
from landscape.core.metrics import Metric
from landscape.core.state import State
from landscape.distillation._loss import distillation_metric
from landscape.distillation._result import DistillationResult
from landscape.probes import features_at

__all__ = ["DistillationProblem", "distillation_problem"]


@dataclass
class DistillationProblem:
    """The distillation loss of a run as an ``evaluate`` problem.

    Attributes
    ----------
    model : nn.Module
        The distillation architecture ``head(features(x))`` (a :class:`DistillationNet`).
    student, teacher : State
        Points of ``model``: the student after the run (encoder and head), and the teacher
        whose outputs are the targets (the final one, for an EMA teacher).
    data : Splits
        The inputs of each split with, as targets, example indices into the teacher's output
        table (``evaluate`` passes them to the metric).
    metrics : dict
        ``{"distillation_loss": metric}`` (see :func:`distillation_metric`).
    teacher_logits : Tensor
        The table: the teacher's outputs for every example of every split, in split order,
        centred if the run centred them.
    """

    model: nn.Module
    student: State
    teacher: State
    data: Splits
    metrics: dict[str, Metric] = field(default_factory=dict)
    teacher_logits: Tensor | None = None


def _point(encoder: Mapping[str, Tensor], head: Mapping[str, Tensor], role: str) -> State:
    state = State(
        {f"encoder.{k[len('features.') :]}": v.clone() for k, v in encoder.items() if k.startswith("features.")}
    )
    state.update({f"head.{k}": v.clone() for k, v in head.items()})
    state.provenance = {"derived": "distillation point", "role": role}
    return state


def distillation_problem(
    result: DistillationResult,
    data: object,
    *,
    batch_size: int = 1024,
    device: str | torch.device = "auto",
) -> DistillationProblem:
    """The distillation loss around a student, ready for ``evaluate`` and the landscape functions.

    The teacher's outputs on every example are computed once (in eval mode, centred with the
    run's final centre); the metric compares the student's head outputs with them, at any
    parameter point of the distillation architecture. The value at the student is the loss
    of the run's last epoch measured in eval mode (the history's ``loss`` is the mean over
    the epoch's training batches, in training mode).

    Parameters
    ----------
    result
        What :func:`distill_random_teacher` returned.
    data
        The inputs to measure the loss on: splits (labels are ignored) or an ``(x, y)`` pair.
    batch_size, device
        Forward passes of the teacher (``"auto"``: CUDA when present); the table comes back
        on the CPU.

    Returns
    -------
    DistillationProblem

    Examples
    --------
    >>> import landscape as ls
    >>> data = ls.datasets.mnist1d(n_train=128, n_test=64)
    >>> run = ls.distillation.distill_random_teacher("cnn1d:width=4", data, train={"epochs": 1},
    ...     hidden_dims=(8,), bottleneck_dim=4, out_dim=16, probes=["knn"], progress=False)
    >>> problem = ls.distillation.distillation_problem(run, data)
    >>> curve = ls.connectivity.random_line(problem.model, problem.student, problem.data,
    ...     metrics=problem.metrics, resolution=5, progress=False)
    >>> curve.distillation_loss.dims
    ('alpha', 'split')
    """
    fn = "distillation_problem"
    if not isinstance(result, DistillationResult) or result.net is None:
        raise bad_argument(fn, "result", expected="what distill_random_teacher returned", found=result)
    splits, _ = as_splits(data, function=fn)
    dev = resolve_device(device, function=fn)
    net = copy.deepcopy(result.net).cpu().eval()
    student = _point(result.student, result.student_head, "student")
    teacher = _point(result.final_teacher, result.final_teacher_head, "teacher")
    center = result.center if result.center is not None else torch.zeros(())
    tables, indexed, offset = [], {}, 0
    for name, (x, _) in splits.items():
        outputs = features_at(net, teacher, x, layers="head", batch_size=batch_size, device=dev)["head"]
        tables.append(outputs - center)
        indexed[name] = (x, torch.arange(offset, offset + x.shape[0]))
        offset += x.shape[0]
    table = torch.cat(tables)
    attrs = result.history.attrs
    metric = distillation_metric(
        table,
        student_temperature=float(attrs.get("student_temperature", 1.0)),
        teacher_temperature=float(attrs.get("teacher_temperature", 1.0)),
    )
    indexed_splits = Splits(
        indexed, name=getattr(splits, "name", "data"), num_classes=offset, meta={"targets": "example indices"}
    )
    return DistillationProblem(
        model=net,
        student=student,
        teacher=teacher,
        data=indexed_splits,
        metrics={"distillation_loss": metric},
        teacher_logits=table,
    )
