"""The curvature matrix as a ``scipy.sparse.linalg.LinearOperator``, so that scipy's solvers
(ARPACK's Lanczos in ``eigsh``, ``cg``, ...) do the linear algebra. scipy's side is float64;
the products run in the model's dtype on the model's device."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator

from landscape.curvature._products import Products

__all__ = ["CurvatureOperator"]


class CurvatureOperator(LinearOperator):
    """The Hessian or GGN of the mean loss as a symmetric (dim x dim) LinearOperator.

    Vectors are flat over the differentiated parameters in the order of :attr:`keys`;
    ``products`` counts the matrix-vector products so far.

    Examples
    --------
    >>> import torch, landscape as ls
    >>> from landscape.curvature import hessian_operator
    >>> model = ls.models.create("mlp", width=4, depth=1, seed=0)
    >>> data = (torch.randn(16, 40), torch.randint(0, 10, (16,)))
    >>> op = hessian_operator(model, None, data, device="cpu")
    >>> op.shape == (op.shape[0], op.shape[0])
    True
    """

    def __init__(self, products: Products, on_product: Callable[[int], None] | None = None) -> None:
        self._products = products
        self._on_product = on_product
        super().__init__(dtype=np.float64, shape=(products.dim, products.dim))

    @property
    def keys(self) -> list[str]:
        """The parameter keys, in the order of the flat vectors."""
        return list(self._products.keys)

    @property
    def products(self) -> int:
        """Matrix-vector products computed so far."""
        return self._products.count

    def _matmat(self, x: np.ndarray) -> np.ndarray:
        vectors = torch.from_numpy(np.ascontiguousarray(np.asarray(x).T))
        out = self._products.matmat(vectors)
        if self._on_product is not None:
            self._on_product(vectors.shape[0])
        return out.to(dtype=torch.float64, device="cpu").numpy().T

    def _matvec(self, x: np.ndarray) -> np.ndarray:
        return self._matmat(np.asarray(x).reshape(-1, 1)).reshape(-1)

    def _adjoint(self) -> CurvatureOperator:
        return self  # symmetric
