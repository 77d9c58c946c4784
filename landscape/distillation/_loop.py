"""One distillation step and one epoch: the student against its teacher's outputs."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from landscape.core.data import batch_slices
from landscape.core.progress import progress_bar
from landscape.distillation._head import DistillationNet
from landscape.distillation._loss import distillation_loss
from landscape.distillation._nets import no_decay
from landscape.training import TrainConfig, lr_at, optimizer_for

__all__ = ["Distiller", "run_epochs"]


class Distiller:
    """The student, its teacher and the optimiser, stepped batch by batch.

    The teacher runs in eval mode and gets no gradient. With ``teacher_momentum`` it becomes
    an exponential moving average of the student after every step (DINO's EMA teacher); with
    ``teacher_bn="from_student"`` its BatchNorm running statistics then follow the student's
    with the same momentum (the reference's ``t_bn_mode='from_student'``). With
    ``center_momentum`` the teacher's outputs are centred with a moving average of their batch
    means, updated after it is applied (DINO's centering).
    """

    def __init__(
        self,
        teacher: DistillationNet,
        student: DistillationNet,
        config: TrainConfig,
        *,
        total_steps: int,
        student_temperature: float,
        teacher_temperature: float,
        center_momentum: float | None,
        teacher_momentum: float | None,
        teacher_bn: str,
        out_dim: int,
        device: torch.device,
    ) -> None:
        self.teacher, self.student, self.config = teacher, student, config
        self.total_steps = total_steps
        self.temperatures = {"student_temperature": student_temperature, "teacher_temperature": teacher_temperature}
        self.center_momentum, self.teacher_momentum, self.teacher_bn = center_momentum, teacher_momentum, teacher_bn
        self.center = torch.zeros(out_dim, device=device)
        self.step = 0
        params = list(student.named_parameters())
        groups = [
            {"params": [p for n, p in params if not no_decay(n, p)]},
            {"params": [p for n, p in params if no_decay(n, p)], "weight_decay": 0.0},
        ]
        self.optimizer = optimizer_for(config, [g for g in groups if g["params"]])

    def _target(self, xb: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            projections = self.teacher(xb)
        logits = projections - self.center if self.center_momentum is not None else projections
        return projections, logits

    def loss(self, xb: Tensor) -> Tensor:
        """The batch's loss without a step (the student in whatever mode it is in)."""
        _, targets = self._target(xb)
        with torch.no_grad():
            return distillation_loss(self.student(xb), targets, **self.temperatures)

    def train_step(self, xb: Tensor) -> Tensor:
        """One optimiser step on a batch; returns the batch's loss before the step."""
        projections, targets = self._target(xb)
        rate = lr_at(
            self.step, self.total_steps, lr=self.config.lr, schedule=self.config.schedule, warmup=self.config.warmup
        )
        for group in self.optimizer.param_groups:
            group["lr"] = rate
        with torch.enable_grad():
            value = distillation_loss(self.student(xb), targets, **self.temperatures)
            self.optimizer.zero_grad(set_to_none=True)
            value.backward()
        self.optimizer.step()
        self.step += 1
        if self.center_momentum is not None:
            m = self.center_momentum
            self.center = self.center * m + projections.mean(dim=0) * (1 - m)
        if self.teacher_momentum is not None:
            self._update_teacher(self.teacher_momentum)
        return value.detach()

    @torch.no_grad()
    def _update_teacher(self, m: float) -> None:
        for p_t, p_s in zip(self.teacher.parameters(), self.student.parameters()):
            p_t.mul_(m).add_(p_s.detach(), alpha=1 - m)
        if self.teacher_bn == "from_student":
            students = dict(self.student.named_modules())
            for name, module in self.teacher.named_modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
                    source = students[name]
                    module.running_mean.mul_(m).add_(source.running_mean, alpha=1 - m)
                    module.running_var.mul_(m).add_(source.running_var, alpha=1 - m)

    def epoch(self, x: Tensor, order: Tensor, *, train: bool) -> float:
        """Mean loss over ``x`` taken in ``order`` (example-weighted); steps when ``train``."""
        total = torch.zeros((), dtype=torch.float64, device=x.device)
        for rows in batch_slices(x.shape[0], self.config.batch_size):
            xb = x[order[rows]]
            value = self.train_step(xb) if train else self.loss(xb)
            total += value.double() * xb.shape[0]
        return float(total) / x.shape[0]


def run_epochs(
    distiller: Distiller,
    x: Tensor,
    *,
    epochs: int,
    data_seed: int,
    after_epoch: Callable[[int], None],
    progress: bool,
) -> np.ndarray:
    """The loss at initialisation and after every epoch of training on ``x`` (epochs + 1
    values); ``after_epoch(e)`` runs after each, from e = 0 (before training)."""
    device = x.device
    n = x.shape[0]
    losses = np.full(epochs + 1, np.nan)
    order_gen = torch.Generator().manual_seed(data_seed)
    student = distiller.student
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(data_seed + 1)  # dropout, if the encoder has any
        # The loss at initialisation, in training mode like every later epoch; BatchNorm's
        # running statistics are restored afterwards so that this pass changes nothing.
        buffers = {k: v.clone() for k, v in student.named_buffers()}
        losses[0] = distiller.epoch(x, torch.arange(n, device=device), train=False)
        with torch.no_grad():
            for k, v in student.named_buffers():
                v.copy_(buffers[k])
        after_epoch(0)
        with progress_bar(total=epochs, desc="distill", unit="epoch", disable=not progress) as bar:
            for epoch in range(1, epochs + 1):
                order = torch.randperm(n, generator=order_gen).to(device)
                losses[epoch] = distiller.epoch(x, order, train=True)
                after_epoch(epoch)
                bar.update(1)
                bar.set_postfix(loss=f"{losses[epoch]:.4f}")
    return losses
