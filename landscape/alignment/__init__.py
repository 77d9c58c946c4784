"""Symmetry-aware alignment of networks: weight matching, activation matching, Procrustes
and least-squares maps, optimal transport, REPAIR and fusion.

Independently trained networks look far apart mostly because their hidden units are
ordered (and, in transformers, rotated and mixed) differently. :func:`align` finds the map of
``b``'s units onto ``a``'s that matches them best, group by group, with the solver of each
group's kind (permutations, orthogonal maps, invertible maps, transport plans), using the
symmetry groups that :func:`landscape.symmetry.symmetry_graph` finds by tracing the model, so
it works on any traceable model without a hand-written description. :func:`repair` corrects
the activation statistics of interpolated networks (``interpolate(..., correct=repair(...))``),
and :func:`fuse` averages aligned networks.

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

__all__ = ["KIND_CHOICES", "METHODS", "Alignment", "Repair", "align", "correct_statistics", "fuse", "repair"]
