"""Lottery tickets: pruning masks as States of booleans, global or layer-wise magnitude pruning,
random-mask controls, and iterative magnitude pruning with rewinding (``imp``) that writes every
round to disk and resumes. Masked training is ``landscape.train(..., mask=mask)``."""

from landscape.pruning.iterative import BRANCHES, DEFAULT_TRAIN, imp
from landscape.pruning.masks import (
    SCOPES,
    apply_mask,
    check_mask,
    density,
    full_mask,
    layer_density,
    magnitude_prune,
    prunable_parameters,
    random_mask,
    sparsity,
)

__all__ = [
    "BRANCHES",
    "DEFAULT_TRAIN",
    "SCOPES",
    "apply_mask",
    "check_mask",
    "density",
    "full_mask",
    "imp",
    "layer_density",
    "magnitude_prune",
    "prunable_parameters",
    "random_mask",
    "sparsity",
]
