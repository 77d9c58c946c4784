"""Random-teacher self-distillation (Sarnthein et al., ICML 2023) on any zoo model, and the
linear-basin analysis of its student: where supervised training from the student, the random
initialisation or early supervised checkpoints becomes stable to SGD noise."""

from landscape.distillation.basins import basin_starts, linear_basins
from landscape.distillation.distill import (
    DEFAULT_HEAD,
    DistillationResult,
    distill_random_teacher,
    distillation_loss,
    gaussian_inputs,
    interpolated_init,
    resolve_model,
)
from landscape.distillation.head import DINOHead, DistillationNet, L2Bottleneck

__all__ = [
    "DEFAULT_HEAD",
    "DINOHead",
    "DistillationNet",
    "DistillationResult",
    "L2Bottleneck",
    "basin_starts",
    "distill_random_teacher",
    "distillation_loss",
    "gaussian_inputs",
    "interpolated_init",
    "linear_basins",
    "resolve_model",
]
