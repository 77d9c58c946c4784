"""Lottery tickets: pruning masks as States of booleans, global or layer-wise magnitude pruning,
random-mask controls, and iterative magnitude pruning with rewinding (``imp``) that writes every
round to disk and resumes. Masked training is ``landscape.train(..., mask=mask)``."""

from landscape.pruning._imp import BRANCHES, imp
from landscape.pruning._masks import (
    OPEN_LTH_PRUNES_OUTPUT,
    SCOPES,
    apply_mask,
    check_mask,
    density,
    full_mask,
    layer_density,
    magnitude_prune,
    prunable_parameters,
    prunes_output_by_default,
    random_mask,
    sparsity,
)

__all__ = [
    "BRANCHES",
    "OPEN_LTH_PRUNES_OUTPUT",
    "SCOPES",
    "apply_mask",
    "check_mask",
    "density",
    "full_mask",
    "imp",
    "layer_density",
    "magnitude_prune",
    "prunable_parameters",
    "prunes_output_by_default",
    "random_mask",
    "sparsity",
]
