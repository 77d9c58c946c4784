"""Symmetry-aware alignment of networks: weight matching, activation matching, Procrustes
and least-squares maps, optimal transport, REPAIR and fusion.

Independently trained networks look far apart mostly because their hidden units are
ordered (and, in transformers, rotated and mixed) differently. :func:`align` finds the map of
``b``'s units onto ``a``'s that matches them best, group by group, with the solver of each
group's kind (permutations, orthogonal maps, invertible maps, transport plans), using the
symmetry groups that :func:`landscape.symmetry.symmetry_graph` finds by tracing the model, so
it works on any traceable model without a hand-written description. :func:`repair` corrects
the activation statistics of interpolated networks (``interpolate(..., correct=repair(...))``),
and :func:`fuse` averages aligned networks. :func:`neuron_interpolation` fuses by fitting each
layer to clusters of the parents' neurons, and :func:`zipit` merges features within and across
networks, optionally only up to a layer (a multi-head network).

Examples
--------
>>> import landscape as ls
>>> from landscape.alignment import align
>>> model = ls.models.create("mlp", width=16, depth=1, seed=0)
>>> b = ls.models.create("mlp", width=16, depth=1, seed=1)
>>> b_aligned = align(model, model, b, progress=False).apply(b)
"""

from landscape.alignment._align import KIND_CHOICES, METHODS, align
from landscape.alignment._fusion import fuse
from landscape.alignment._repair import Repair, correct_statistics, repair
from landscape.alignment._result import Alignment
from landscape.alignment.neuron_interpolation import (
    ATTRIBUTIONS,
    neuron_attribution,
    neuron_interpolation,
    weighted_kmeans,
)
from landscape.alignment.zipit import Zipped, ZippedModel, match_features, zipit

__all__ = [
    "ATTRIBUTIONS",
    "KIND_CHOICES",
    "METHODS",
    "Alignment",
    "Repair",
    "Zipped",
    "ZippedModel",
    "align",
    "correct_statistics",
    "fuse",
    "match_features",
    "neuron_attribution",
    "neuron_interpolation",
    "repair",
    "weighted_kmeans",
    "zipit",
]
