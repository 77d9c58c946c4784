"""The distillation loss, per batch (for training) and per example (as an ``evaluate`` metric)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from landscape.core.errors import bad_argument

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


def distillation_metric(teacher_logits: Tensor, *, student_temperature: float = 1.0, teacher_temperature: float = 1.0):
    """The distillation loss as a metric of :func:`landscape.evaluate`: ``metric(logits, targets)``.

    An ``evaluate`` metric sees the model's logits and the data's integer targets, never a
    second network. So the frozen teacher's outputs are computed once, beforehand, for every
    example (``teacher_logits``, one row per example), and the data's targets are example
    indices into that table: the metric returns, per example, the cross-entropy of the
    student's softmax against the teacher's row. :func:`distillation_problem` builds the
    table, the indexed data and the student's point from a distillation result.

    Parameters
    ----------
    teacher_logits
        (examples, outputs): the teacher's head outputs (centred, if the run centred them).
    student_temperature, teacher_temperature
        Softmax temperatures of the run.

    Returns
    -------
    callable
        ``metric(logits, targets) -> Tensor`` of shape (batch,).

    Examples
    --------
    >>> import torch
    >>> metric = distillation_metric(torch.zeros(3, 4))
    >>> metric(torch.zeros(2, 4), torch.tensor([0, 2])).tolist() == [float(torch.log(torch.tensor(4.0)))] * 2
    True
    """
    if not isinstance(teacher_logits, Tensor) or teacher_logits.dim() != 2:
        raise bad_argument(
            "distillation_metric", "teacher_logits", expected="a (examples, outputs) tensor", found=teacher_logits
        )
    table = teacher_logits.detach()
    on_device: dict[torch.device, Tensor] = {}

    def distillation_loss(logits: Tensor, targets: Tensor) -> Tensor:
        rows = on_device.setdefault(logits.device, table.to(logits.device))  # moved once per device
        return per_example_loss(
            logits,
            rows[targets],
            student_temperature=student_temperature,
            teacher_temperature=teacher_temperature,
        )

    return distillation_loss
