"""The distillation loss around a student, as something ``evaluate`` and the landscape
functions can draw: the architecture, the student's point, data and the metric."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from landscape.core import Metric, as_splits, run_points
from landscape.core.errors import bad_argument
from landscape.core.state import State
from landscape.distillation._loss import distillation_metric
from landscape.distillation._result import DistillationResult

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
    data : dict
        Per split, ``((inputs,), teacher_outputs)``: the inputs, and as targets the teacher's
        outputs on them (centred if the run centred them), on the CPU.
    metrics : dict
        ``{"distillation_loss": metric}`` (see :func:`distillation_metric`).
    """

    model: nn.Module
    student: State
    teacher: State
    data: dict[str, tuple[tuple[Tensor], Tensor]] = field(default_factory=dict)
    metrics: dict[str, Metric] = field(default_factory=dict)


def _point(encoder: State, head: State, role: str) -> State:
    prefix = "features."
    state = State({f"encoder.{k[len(prefix) :]}": v.clone() for k, v in encoder.items() if k.startswith(prefix)})
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

    The teacher's outputs on every example are computed once, through the engine (in eval
    mode, centred with the run's final centre), and become the data's targets; the metric
    compares the student's head outputs with them at any parameter point of the distillation
    architecture. At the student's point the value is the loss of the finished run measured
    in eval mode (the history's ``loss`` is the mean over an epoch's training batches, in
    training mode, while the student moved).

    Parameters
    ----------
    result
        What :func:`distill_random_teacher` returned.
    data
        The inputs to measure the loss on: splits (labels are ignored) or an ``(x, y)`` pair.
    batch_size, device
        Forward passes of the teacher (``"auto"``: CUDA when present); the targets come back
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
    net = copy.deepcopy(result.net).cpu().eval()
    student = _point(result.student, result.student_head, "student")
    teacher = _point(result.final_teacher, result.final_teacher_head, "teacher")
    center = result.center if result.center is not None else torch.zeros(())
    inputs = {name: x for name, (x, _) in splits.items()}
    outputs: dict[str, list[Tensor]] = {name: [] for name in inputs}
    unlabelled = {name: ((x,), None) for name, x in inputs.items()}
    run = run_points(net, [teacher], unlabelled, batch_size=batch_size, device=device, function=fn)
    for out in run:
        outputs[out.split].append(out.logits[0].float().cpu())
    attrs = result.history.attrs
    metric = distillation_metric(
        student_temperature=float(attrs.get("student_temperature", 1.0)),
        teacher_temperature=float(attrs.get("teacher_temperature", 1.0)),
    )
    return DistillationProblem(
        model=net,
        student=student,
        teacher=teacher,
        data={name: ((x,), torch.cat(outputs[name]) - center) for name, x in inputs.items()},
        metrics={"distillation_loss": metric},
    )
