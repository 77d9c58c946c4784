"""Random-teacher self-distillation (Sarnthein et al., ICML 2023) on any zoo model, the
distillation loss as a landscape metric around the student, and the linear-basin analysis of
the student: where supervised training from the student, the random initialisation or early
supervised checkpoints becomes stable to SGD noise."""

from landscape.distillation._basins import basin_starts, linear_basins
from landscape.distillation._distill import DEFAULT_HEAD, DISTILLATION_TRAIN, TEACHER_BN, distill_random_teacher
from landscape.distillation._head import HEADS, DINOHead, DistillationNet, L2Bottleneck
from landscape.distillation._init import interpolated_init, resolve_model
from landscape.distillation._inputs import gaussian_inputs
from landscape.distillation._landscape import DistillationProblem, distillation_problem
from landscape.distillation._loss import distillation_loss, distillation_metric
from landscape.distillation._result import DistillationResult

__all__ = [
    "DEFAULT_HEAD",
    "DISTILLATION_TRAIN",
    "HEADS",
    "TEACHER_BN",
    "DINOHead",
    "DistillationNet",
    "DistillationProblem",
    "DistillationResult",
    "L2Bottleneck",
    "basin_starts",
    "distill_random_teacher",
    "distillation_loss",
    "distillation_metric",
    "distillation_problem",
    "gaussian_inputs",
    "interpolated_init",
    "linear_basins",
    "resolve_model",
]
