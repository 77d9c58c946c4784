"""The distillation loss, per batch (for training) and per example (as an ``evaluate`` metric)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from landscape.core.errors import bad_argument
from landscape.core.metrics import Metric

__all__ = ["distillation_loss", "distillation_metric", "per_example_loss"]


def per_example_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    student_temperature: float = 1.0,
    teacher_temperature: float = 1.0,
) -> Tensor:
    """``-sum softmax(teacher / tau_t) * log_softmax(student / tau_s)`` for every example."""
    targets = F.softmax(teacher_logits.detach().float() / teacher_temperature, dim=-1)
    log_predictions = F.log_softmax(student_logits.float() / student_temperature, dim=-1)
    return -(targets * log_predictions).sum(dim=-1)


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
    return per_example_loss(
        student_logits,
        teacher_logits,
        student_temperature=student_temperature,
        teacher_temperature=teacher_temperature,
    ).mean()


def distillation_metric(*, student_temperature: float = 1.0, teacher_temperature: float = 1.0) -> Metric:
    """The distillation loss as a metric of :func:`landscape.evaluate`: ``metric(logits, targets)``.

    An ``evaluate`` metric sees the model's logits and the data's targets, never a second
    network. So the frozen teacher's outputs are computed once, beforehand, and given as the
    data's targets: one row of outputs per example, in ``((inputs,), teacher_outputs)``
    pairs, which the engine passes through as they are (a plain ``(x, y)`` pair must hold
    class labels). The metric returns, per example, the cross-entropy of the student's
    softmax against the teacher's. :func:`distillation_problem` builds such data, the
    student's point and the architecture from a distillation result.

    Parameters
    ----------
    student_temperature, teacher_temperature
        Softmax temperatures of the run.

    Returns
    -------
    callable
        ``metric(logits, teacher_outputs) -> Tensor`` of shape (batch,).

    Examples
    --------
    >>> import torch
    >>> metric = distillation_metric()
    >>> [round(v, 4) for v in metric(torch.zeros(2, 4), torch.randn(2, 4)).tolist()]  # uniform student: log 4
    [1.3863, 1.3863]
    """
    for name, value in {"student_temperature": student_temperature, "teacher_temperature": teacher_temperature}.items():
        if not value > 0:
            raise bad_argument("distillation_metric", name, expected="a positive temperature", found=repr(value))

    def distillation_loss(logits: Tensor, targets: Tensor) -> Tensor:
        if not targets.is_floating_point() or targets.shape != logits.shape:
            raise bad_argument(
                "distillation_metric",
                "targets",
                expected=f"the teacher's outputs, shaped like the student's logits {tuple(logits.shape)}",
                found=targets,
                fix="Build the data with landscape.distillation.distillation_problem(result, data).",
            )
        return per_example_loss(
            logits, targets, student_temperature=student_temperature, teacher_temperature=teacher_temperature
        )

    return distillation_loss
