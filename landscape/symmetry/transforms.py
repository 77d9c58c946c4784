"""Transforms of one symmetry group: permutations, orthogonal and invertible maps, and the
soft maps (transport plans) of optimal-transport alignment.

A transform of a group with ``n`` units maps the units of one network onto ``m`` units (``m
= n`` except for soft maps between networks of different widths). It acts on every axis the
group touches in one of two ways:

- ``"out"`` axes transform like the activations (rows of a Linear weight, biases, norm
  parameters, running statistics): ``h' = M h``.
- ``"in"`` axes are contracted with the activations (columns of the next layer's weight):
  ``W' = W M^-1``, i.e. the axis is multiplied by ``M^-T``.

For a permutation both are the same reindexing ``t'[i] = t[index[i]]``. A :class:`PerHead`
transform holds one map per attention head; it reads the head of every unit from the axis
that carries the heads group.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from landscape.core.errors import bad_argument, describe

__all__ = [
    "KINDS",
    "LinearMap",
    "PerHead",
    "Permutation",
    "SoftMap",
    "Transform",
    "apply_transform",
    "as_transform",
    "random_transform",
    "rotary_matrix",
]

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

    def apply(
        self, tensor: Tensor, dim: int, variance: str = "out", siblings: Mapping[str, int] | None = None
    ) -> Tensor:
        """Transform axis ``dim`` of ``tensor`` (``siblings``: axes of the other factors of a
        product axis, by group; only per-head transforms read them)."""
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

    def apply(
        self, tensor: Tensor, dim: int, variance: str = "out", siblings: Mapping[str, int] | None = None
    ) -> Tensor:
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


class PerHead(Transform):
    """One transform per head: the units of head ``h`` are mapped by ``maps[h]``.

    Attention computes every head separately, so the coordinates of each head (queries and
    keys, values and outputs) may be mixed by a map of their own. On an axis laid out as a
    product of the heads group ``over`` and this group, head ``h`` is the index along the
    heads factor (after the heads' own permutation).
    """

    def __init__(self, maps: Sequence[Transform], over: str) -> None:
        if not maps:
            raise bad_argument("PerHead", "maps", expected="one transform per head", found="none")
        sizes = {m.source_size for m in maps}
        if len(sizes) != 1:
            raise bad_argument("PerHead", "maps", expected="maps of one size", found=sorted(sizes))
        self.maps = list(maps)
        self.over = over
        order = {k: i for i, k in enumerate(KINDS)}
        self.kind = max((m.kind for m in self.maps), key=lambda k: order[k])

    @property
    def source_size(self) -> int:
        return self.maps[0].source_size

    @property
    def heads(self) -> int:
        return len(self.maps)

    def matrix(self, variance: str = "out") -> Tensor:
        """The block-diagonal matrix over (head, unit), heads in order."""
        return torch.block_diag(*[m.matrix(variance) for m in self.maps])

    def apply(
        self, tensor: Tensor, dim: int, variance: str = "out", siblings: Mapping[str, int] | None = None
    ) -> Tensor:
        if not siblings or self.over not in siblings:
            raise bad_argument(
                "PerHead.apply",
                "siblings",
                expected=f"the axis that holds the heads group {self.over!r}",
                found=sorted(siblings or {}),
                fix="Per-head transforms act on axes laid out as (heads x head coordinates).",
            )
        head_dim = siblings[self.over]
        if tensor.shape[head_dim] != self.heads:
            raise bad_argument(
                "PerHead.apply",
                "tensor",
                expected=f"{self.heads} heads along axis {head_dim}",
                found=f"shape {tuple(tensor.shape)}",
            )
        moved = tensor.movedim((head_dim, dim), (0, -1))
        shape = moved.shape
        flat = moved.reshape(shape[0], -1, shape[-1])
        if all(isinstance(m, Permutation) for m in self.maps):
            index = torch.stack([m.index for m in self.maps]).to(tensor.device)
            out = flat.gather(2, index[:, None, :].expand(-1, flat.shape[1], -1))
        else:
            mats = torch.stack([m.matrix(variance) for m in self.maps]).to(device=tensor.device)
            work = flat if flat.is_floating_point() else flat.double()
            out = torch.bmm(work.to(mats.dtype), mats.transpose(1, 2)).to(work.dtype)
        out = out.reshape(*shape[:-1], out.shape[-1])
        return out.movedim((0, -1), (head_dim, dim))

    def __repr__(self) -> str:
        return f"PerHead({self.heads} x {self.maps[0]!r}, over={self.over!r})"


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


def as_transform(
    value: object, *, group: str, size: int, function: str = "apply", over: str | None = None
) -> Transform:
    """Coerce a permutation (1-D integers), a square matrix or a :class:`Transform`; for a
    per-head group (``over`` names its heads group) also one of those per head (a 2-D integer
    array or a 3-D stack of matrices)."""
    if isinstance(value, Transform):
        t = value
    else:
        arr = value.detach().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)
        if over is not None and (arr.ndim == 3 or (arr.ndim == 2 and np.issubdtype(arr.dtype, np.integer))):
            heads = [as_transform(a, group=group, size=size, function=function) for a in arr]
            return PerHead(heads, over)
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
    for p in t.maps if isinstance(t, PerHead) else [t]:
        if isinstance(p, Permutation) and sorted(p.index.tolist()) != list(range(size)):
            raise bad_argument(
                function,
                f"transforms[{group!r}]",
                expected=f"a permutation of 0..{size - 1}",
                found=f"indices {p.index[:8].tolist()}{'...' if size > 8 else ''}",
            )
    return t


def rotary_matrix(pairs: Tensor) -> Tensor:
    """The map that multiplies coordinate pair ``(i, i + d/2)`` by the complex number
    ``pairs[i]`` (given as ``(d/2, 2)`` real and imaginary parts): the maps that commute with
    rotary position embeddings (rotate-half convention)."""
    half = pairs.shape[0]
    a, b = pairs[:, 0].double(), pairs[:, 1].double()
    m = torch.zeros(2 * half, 2 * half, dtype=torch.float64)
    i = torch.arange(half)
    m[i, i] = a
    m[i + half, i + half] = a
    m[i, i + half] = -b
    m[i + half, i] = b
    return m


def random_transform(
    size: int, kind: str, generator: torch.Generator, *, centered: bool = False, rotary: bool = False
) -> Transform:
    """A random permutation, Haar-random orthogonal map, or well-conditioned invertible map.

    ``centered``: the map fixes the all-ones vector (orthogonal maps of a LayerNorm's stream);
    ``rotary``: the map commutes with rotary position embeddings (a complex number per pair of
    coordinates, of modulus 1 when orthogonal).
    """
    if rotary and kind != "permutation":
        angle = torch.rand(size // 2, generator=generator, dtype=torch.float64) * 2 * np.pi
        radius = torch.ones(size // 2, dtype=torch.float64)
        if kind == "invertible":
            radius = 0.5 + torch.rand(size // 2, generator=generator, dtype=torch.float64)
        pairs = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)
        return LinearMap(rotary_matrix(pairs), kind)
    if centered and kind != "permutation":
        # An orthogonal map of the complement of the all-ones direction, which it keeps.
        basis = centered_basis(size)
        inner = random_transform(size - 1, kind, generator)
        m = torch.full((size, size), 1.0 / size, dtype=torch.float64) + basis @ inner.matrix() @ basis.T
        return LinearMap(m, kind)
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


def centered_basis(size: int) -> Tensor:
    """An orthonormal basis (size x size-1) of the vectors orthogonal to the all-ones vector."""
    q, _ = torch.linalg.qr(
        torch.cat([torch.ones(size, 1, dtype=torch.float64), torch.eye(size, dtype=torch.float64)[:, : size - 1]], 1)
    )
    return q[:, 1:]


def apply_transform(
    transform: Transform, tensor: Tensor, dim: int, variance: str, siblings: Mapping[str, int]
) -> Tensor:
    """``transform.apply`` with the sibling axes only for per-head transforms (transforms written
    for the three-argument ``apply(tensor, dim, variance)`` keep working)."""
    if isinstance(transform, PerHead):
        return transform.apply(tensor, dim, variance, siblings)
    return transform.apply(tensor, dim, variance)
