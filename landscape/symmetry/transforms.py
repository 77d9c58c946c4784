"""Transforms of one symmetry group: permutations, orthogonal and invertible maps, and the
soft maps (transport plans) of optimal-transport alignment.

A transform of a group with ``n`` units maps the units of one network onto ``m`` units (``m
= n`` except for soft maps between networks of different widths). It acts on every axis the
group touches in one of two ways:

- ``"out"`` axes transform like the activations (rows of a Linear weight, biases, norm
  parameters, running statistics): ``h' = M h``.
- ``"in"`` axes are contracted with the activations (columns of the next layer's weight):
  ``W' = W M^-1``, i.e. the axis is multiplied by ``M^-T``.

For a permutation both are the same reindexing ``t'[i] = t[index[i]]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from landscape.core.errors import bad_argument, describe

__all__ = ["KINDS", "LinearMap", "Permutation", "SoftMap", "Transform", "as_transform", "random_transform"]

KINDS = ("permutation", "orthogonal", "invertible")


def _along(tensor: Tensor, dim: int, matrix: Tensor) -> Tensor:
    """``matrix`` (m x n) applied to axis ``dim`` (length n) of ``tensor``."""
    m = matrix.to(device=tensor.device, dtype=tensor.dtype if tensor.is_floating_point() else torch.float64)
    return (tensor.movedim(dim, -1).to(m.dtype) @ m.T).movedim(-1, dim)


class Transform:
    """Base class: a map from ``source_size`` units onto ``target_size`` units."""

    kind: str = "permutation"

    @property
    def source_size(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def target_size(self) -> int:
        return self.source_size

    def matrix(self, variance: str = "out") -> Tensor:  # pragma: no cover - abstract
        """The dense (target x source) matrix acting on an axis of the given variance."""
        raise NotImplementedError

    def apply(self, tensor: Tensor, dim: int, variance: str = "out") -> Tensor:
        return _along(tensor, dim, self.matrix(variance))


class Permutation(Transform):
    """Unit ``i`` of the result is unit ``index[i]`` of the input.

    Examples
    --------
    >>> import torch
    >>> Permutation([2, 0, 1]).apply(torch.tensor([10, 11, 12]), 0)
    tensor([12, 10, 11])
    """

    kind = "permutation"

    def __init__(self, index: Sequence[int] | np.ndarray | Tensor) -> None:
        self.index = torch.as_tensor(np.asarray(index), dtype=torch.long).reshape(-1)

    @property
    def source_size(self) -> int:
        return int(self.index.numel())

    def matrix(self, variance: str = "out") -> Tensor:
        n = self.source_size
        m = torch.zeros(n, n, dtype=torch.float64)
        m[torch.arange(n), self.index] = 1.0
        return m

    def apply(self, tensor: Tensor, dim: int, variance: str = "out") -> Tensor:
        return tensor.index_select(dim, self.index.to(tensor.device))

    def inverse(self) -> Permutation:
        return Permutation(torch.argsort(self.index))

    def is_identity(self) -> bool:
        return bool(torch.equal(self.index, torch.arange(self.source_size)))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Permutation) and torch.equal(self.index, other.index)

    def __hash__(self) -> int:
        return hash(tuple(self.index.tolist()))

    def __repr__(self) -> str:
        shown = self.index[:8].tolist()
        return f"Permutation({shown}{'...' if self.source_size > 8 else ''})"


class LinearMap(Transform):
    """An orthogonal or general invertible map ``M`` (n x n) of the group's units:
    activations become ``M h``; ``"in"`` axes get ``M^-T``."""

    def __init__(self, matrix: Tensor | np.ndarray, kind: str = "invertible") -> None:
        if kind not in ("orthogonal", "invertible"):
            raise bad_argument("LinearMap", "kind", expected="'orthogonal' or 'invertible'", found=repr(kind))
        self.kind = kind
        self.m = torch.as_tensor(np.asarray(matrix), dtype=torch.float64)
        self._inv_t: Tensor | None = None

    @property
    def source_size(self) -> int:
        return int(self.m.shape[1])

    def matrix(self, variance: str = "out") -> Tensor:
        if variance == "in":
            if self._inv_t is None:
                # M^-T; for an orthogonal M that is M itself.
                self._inv_t = self.m if self.kind == "orthogonal" else torch.linalg.inv(self.m).T
            return self._inv_t
        return self.m

    def __repr__(self) -> str:
        return f"LinearMap({self.kind}, {tuple(self.m.shape)})"


class SoftMap(Transform):
    """A transport plan ``T`` (m x n) between the m units of a reference and the n units of
    another network, applied by barycentric projection (Singh & Jaggi 2020).

    ``"out"`` axes: unit ``i`` becomes the ``T``-weighted average of the units it receives
    mass from, ``diag(1/a) T`` with ``a = T 1``. ``"in"`` axes: each source unit's column is
    split among the target units in proportion to the mass it sends, ``T diag(1/b)`` with
    ``b = T^T 1``, so that merging identical units sums their outgoing weights and keeps the
    function. For ``T = P / n`` with a permutation matrix ``P`` both equal ``P``.
    """

    kind = "permutation"

    def __init__(self, plan: Tensor | np.ndarray) -> None:
        self.plan = torch.as_tensor(np.asarray(plan), dtype=torch.float64)
        a = self.plan.sum(dim=1, keepdim=True)
        b = self.plan.sum(dim=0, keepdim=True)
        self._out = torch.where(a > 0, self.plan / a.clamp_min(1e-300), torch.zeros_like(self.plan))
        self._in = torch.where(b > 0, self.plan / b.clamp_min(1e-300), torch.zeros_like(self.plan))

    @property
    def source_size(self) -> int:
        return int(self.plan.shape[1])

    @property
    def target_size(self) -> int:
        return int(self.plan.shape[0])

    def matrix(self, variance: str = "out") -> Tensor:
        return self._in if variance == "in" else self._out

    def as_permutation(self) -> Permutation | None:
        """The permutation when the plan is a scaled permutation matrix, else None."""
        if self.target_size != self.source_size:
            return None
        nonzero = self.plan > self.plan.max() * 1e-9
        if not (torch.all(nonzero.sum(dim=1) == 1) and torch.all(nonzero.sum(dim=0) == 1)):
            return None
        return Permutation(nonzero.to(torch.int8).argmax(dim=1))

    def __repr__(self) -> str:
        return f"SoftMap({self.target_size} x {self.source_size})"


def as_transform(value: object, *, group: str, size: int, function: str = "apply") -> Transform:
    """Coerce a permutation (1-D integers), a square matrix or a :class:`Transform`."""
    if isinstance(value, Transform):
        t = value
    else:
        arr = value.detach().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)
        if arr.ndim == 1:
            t = Permutation(arr.astype(np.int64))
        elif arr.ndim == 2 and arr.shape[0] == arr.shape[1]:
            m = torch.as_tensor(arr, dtype=torch.float64)
            eye = torch.eye(m.shape[0], dtype=torch.float64)
            kind = "orthogonal" if torch.allclose(m.T @ m, eye, atol=1e-8) else "invertible"
            t = LinearMap(m, kind)
        else:
            raise bad_argument(
                function,
                f"transforms[{group!r}]",
                expected="a permutation (1-D integers), a square matrix or a Transform",
                found=describe(value),
            )
    if t.source_size != size:
        raise bad_argument(
            function,
            f"transforms[{group!r}]",
            expected=f"a transform of the group's {size} units",
            found=f"one of {t.source_size} units",
        )
    if isinstance(t, Permutation):
        if sorted(t.index.tolist()) != list(range(size)):
            raise bad_argument(
                function,
                f"transforms[{group!r}]",
                expected=f"a permutation of 0..{size - 1}",
                found=f"indices {t.index[:8].tolist()}{'...' if size > 8 else ''}",
            )
    return t


def random_transform(size: int, kind: str, generator: torch.Generator) -> Transform:
    """A random permutation, Haar-random orthogonal map, or well-conditioned invertible map."""
    if kind == "permutation":
        return Permutation(torch.randperm(size, generator=generator))
    g = torch.randn(size, size, generator=generator, dtype=torch.float64)
    if kind == "orthogonal":
        q, r = torch.linalg.qr(g)
        q = q * torch.sign(torch.diagonal(r))[None, :]
        return LinearMap(q, "orthogonal")
    if kind == "invertible":
        return LinearMap(torch.eye(size, dtype=torch.float64) + 0.5 * g / size**0.5, "invertible")
    raise bad_argument("random_transform", "kind", expected=f"one of {KINDS}", found=repr(kind))
