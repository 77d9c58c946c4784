"""Symmetries of a network's parameters, found by tracing the model.

Hidden units can be permuted (and, where the graph allows it, mixed by orthogonal or
invertible maps) without changing what the network computes. :func:`symmetry_graph` traces
a model (torch.fx, or torch.export for models fx cannot trace, such as Hugging Face
transformers) and finds which parameter axes must share one transform; the result applies
transforms to states and checks that they keep the function.

Examples
--------
>>> import landscape as ls
>>> model = ls.models.create("resnet", norm="batch", seed=0)
>>> graph = ls.symmetry.symmetry_graph(model)
>>> _ = graph.check(model)
"""

from landscape.symmetry._apply import apply_maps
from landscape.symmetry._build import example_input_for, symmetry_graph
from landscape.symmetry._graph import AxisRef, Group, RepairSite, SymmetryCheckError, SymmetryGraph
from landscape.symmetry._patterns import Fold
from landscape.symmetry._trace import UnsupportedOperationError
from landscape.symmetry.layout import Atom, Fixed, Layout, Prod, Sum

# Imported last: it builds on the names above.
from landscape.symmetry.surgery import (
    AFFINE_LAYERS,
    FoldedNorm,
    channel_statistics,
    fold_batchnorm,
    layout_size,
    map_units,
    resize_model,
    unfold_batchnorm,
    unit_rows,
)
from landscape.symmetry.transforms import (
    KINDS,
    LinearMap,
    PerHead,
    Permutation,
    SoftMap,
    Transform,
    random_transform,
)

__all__ = [
    "AFFINE_LAYERS",
    "KINDS",
    "Atom",
    "AxisRef",
    "Fixed",
    "Fold",
    "FoldedNorm",
    "Group",
    "Layout",
    "LinearMap",
    "PerHead",
    "Permutation",
    "Prod",
    "RepairSite",
    "SoftMap",
    "Sum",
    "SymmetryCheckError",
    "SymmetryGraph",
    "Transform",
    "UnsupportedOperationError",
    "apply",
    "apply_maps",
    "channel_statistics",
    "example_input_for",
    "fold_batchnorm",
    "layout_size",
    "map_units",
    "random_transform",
    "resize_model",
    "symmetry_graph",
    "unfold_batchnorm",
    "unit_rows",
]


def apply(graph: SymmetryGraph, state, transforms, *, validate: bool = True):
    """``graph.apply(state, transforms)``: transform a state by one transform per group.

    See :meth:`SymmetryGraph.apply`.
    """
    return graph.apply(state, transforms, validate=validate)
