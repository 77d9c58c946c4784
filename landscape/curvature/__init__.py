"""Curvature of the loss landscape: extreme eigenvalues and eigenvectors, the trace and the
spectral density of the loss Hessian or the generalised Gauss-Newton matrix, at one point or
at every point of a line, plane or list of states.

Only the model side is written here: products of the matrix with stacks of vectors, by
``torch.func`` (the vector-Jacobian product of the gradient, ``vmap``-ed over vectors), summed
exactly over data batches. The linear algebra is scipy's: ARPACK's Lanczos (``eigsh``) on a
``LinearOperator``, ``eigh_tridiagonal`` for the Gauss quadrature of stochastic Lanczos
quadrature. Curvature is taken with respect to the trainable floating-point parameters;
buffers (BatchNorm's running statistics and counters) are held fixed, and a tensor shared by
several keys (tied weights) is differentiated once.

Examples
--------
>>> import torch, landscape as ls
>>> from landscape.curvature import hessian_eigenvalues
>>> model = ls.models.create("mlp", width=8, depth=1, seed=0)
>>> data = (torch.randn(64, 40), torch.randint(0, 10, (64,)))
>>> float(hessian_eigenvalues(model, None, data, k=1, device="cpu", progress=False).eigenvalues[0]) > 0
True
"""

from landscape.curvature._api import (
    hessian_density,
    hessian_eigenpairs,
    hessian_eigenvalues,
    hessian_operator,
    hessian_trace,
)
from landscape.curvature._operators import CurvatureOperator
from landscape.curvature._points import STATISTICS, curvature
from landscape.curvature._setup import MATRICES
from landscape.curvature._spectrum import WHICH

__all__ = [
    "MATRICES",
    "STATISTICS",
    "WHICH",
    "CurvatureOperator",
    "curvature",
    "hessian_density",
    "hessian_eigenpairs",
    "hessian_eigenvalues",
    "hessian_operator",
    "hessian_trace",
]
