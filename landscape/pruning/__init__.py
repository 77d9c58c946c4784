"""Pruning. Lottery tickets: masks as States of booleans, global or layer-wise magnitude pruning,
random-mask controls, and iterative magnitude pruning with rewinding (``imp``) that writes every
round to disk and resumes (masked training is ``landscape.train(..., mask=mask)``). Structured
pruning: whole units of every symmetry group removed, fused into the kept ones by optimal
transport (``intra_fusion``, Theus et al. 2024) or discarded."""

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
from landscape.pruning.structured import (
    IMPORTANCES,
    MARGINALS,
    PRUNE_METHODS,
    Pruned,
    intra_fusion,
    plain_groups,
    unit_importance,
)

__all__ = [
    "BRANCHES",
    "IMPORTANCES",
    "MARGINALS",
    "OPEN_LTH_PRUNES_OUTPUT",
    "PRUNE_METHODS",
    "SCOPES",
    "Pruned",
    "apply_mask",
    "check_mask",
    "density",
    "full_mask",
    "imp",
    "intra_fusion",
    "layer_density",
    "magnitude_prune",
    "plain_groups",
    "prunable_parameters",
    "prunes_output_by_default",
    "random_mask",
    "sparsity",
    "unit_importance",
]
