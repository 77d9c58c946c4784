"""Symmetry-aware alignment of networks: weight matching, activation matching, optimal
transport, REPAIR and fusion.

Independently trained networks look far apart mostly because their hidden units are
ordered differently. :func:`align` finds the permutation (or transport plan) of one
network's units that best matches another's, using the symmetry groups that
:func:`landscape.symmetry.symmetry_graph` finds by tracing the model, so it works on any
traceable model without a hand-written description. :func:`repair` corrects the activation
statistics of interpolated networks (``interpolate(..., correct=repair(...))``), and
:func:`fuse` averages aligned networks.

Examples
--------
>>> import landscape as ls
>>> from landscape.alignment import align
>>> model = ls.models.create("mlp", width=16, depth=1, seed=0)
>>> b = ls.models.create("mlp", width=16, depth=1, seed=1)
>>> b_aligned = align(model, model, b, progress=False).apply(b)
"""

from landscape.alignment.alignment import METHODS, Alignment, align
from landscape.alignment.fusion import fuse
from landscape.alignment.repair import Repair, correct_statistics, repair

__all__ = ["METHODS", "Alignment", "Repair", "align", "correct_statistics", "fuse", "repair"]
