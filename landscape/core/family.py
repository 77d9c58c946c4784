"""Lazy sets of parameter points: lines, planes and lists of states.

A family of K points is stored as M basis states and a K x M weight matrix, point k being
``sum_m weights[k, m] * basis[m]``. The affine form of the issue, ``origin + sum_i c_i *
direction_i``, is the special case ``basis = (origin, *directions)`` and ``weights = [1 | C]``;
a line between ``a`` and ``b`` uses ``basis = (a, b)`` and weights ``(1 - alpha, alpha)``, so
its endpoints are ``a`` and ``b`` exactly. Nothing of size K x (number of parameters) is ever
built: points are materialised one at a time or in chunks, and the evaluator can use the
weights directly (a first layer that is linear in its parameters needs M products, not K).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from landscape.core.errors import bad_argument, describe
from landscape.core.state import State, as_state, check_compatible, sub

__all__ = ["AffineFamily", "as_family", "combine"]


class AffineFamily:
    """K parameter points given lazily as linear combinations of M basis states.

    Build one with :meth:`line`, :meth:`grid`, :meth:`points`, or the affine constructor
    ``AffineFamily(origin, directions, coefficients)`` (K x D coefficients).

    Attributes
    ----------
    basis : tuple of State
        The M states the points are combined from.
    weights : torch.Tensor
        float64 tensor of shape (K, M).
    dims : tuple of str
        Names of the result dimensions (``("alpha",)``, ``("alpha", "beta")`` or ``("point",)``).
    coords : dict
        One coordinate array per dim; the product of their lengths is K, in C order.

    Examples
    --------
    >>> import torch
    >>> a, b = {"w": torch.zeros(3)}, {"w": torch.ones(3)}
    >>> line = AffineFamily.line(a, b, alphas=5)
    >>> len(line), line.dims, line.state(4)["w"]
    (5, ('alpha',), tensor([1., 1., 1.]))
    """

    def __init__(
        self,
        origin: Mapping[str, Tensor],
        directions: Sequence[Mapping[str, Tensor]],
        coefficients: Tensor | np.ndarray | Sequence[Sequence[float]],
        *,
        dims: tuple[str, ...] = ("point",),
        coords: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        origin = as_state(origin, function="AffineFamily", argument="origin")
        dirs = tuple(as_state(d, function="AffineFamily", argument="directions") for d in directions)
        coef = torch.as_tensor(np.asarray(coefficients, dtype=np.float64))
        if coef.dim() == 1 and len(dirs) == 1:
            coef = coef[:, None]
        if coef.dim() != 2 or coef.shape[1] != len(dirs):
            raise bad_argument(
                "AffineFamily",
                "coefficients",
                expected=f"a K x {len(dirs)} matrix (one column per direction)",
                found=coef,
            )
        weights = torch.cat([torch.ones(coef.shape[0], 1, dtype=torch.float64), coef], dim=1)
        self._init((origin, *dirs), weights, dims, coords, anchors=(0,), coefficients=coef)

    def _init(
        self,
        basis: tuple[State, ...],
        weights: Tensor,
        dims: tuple[str, ...],
        coords: Mapping[str, np.ndarray] | None,
        *,
        anchors: tuple[int, ...],
        coefficients: Tensor | None,
    ) -> None:
        for i, s in enumerate(basis[1:], start=1):
            check_compatible(basis[0], s, function="AffineFamily", names=("basis[0]", f"basis[{i}]"))
        if not torch.isfinite(weights).all():
            raise bad_argument("AffineFamily", "coefficients", expected="finite numbers", found="NaN or Inf")
        self.basis = basis
        self.weights = weights
        self.dims = tuple(dims)
        k = weights.shape[0]
        if coords is None:
            coords = {dims[0]: np.arange(k)} if len(dims) == 1 else None
        if coords is None or set(coords) != set(self.dims):
            raise bad_argument("AffineFamily", "coords", expected=f"one array per dim {self.dims}", found=coords)
        self.coords = {d: np.asarray(coords[d]) for d in self.dims}
        if int(np.prod([len(c) for c in self.coords.values()])) != k:
            raise bad_argument(
                "AffineFamily",
                "coords",
                expected=f"coordinate lengths whose product is the number of points ({k})",
                found=str({d: len(c) for d, c in self.coords.items()}),
            )
        self.anchors = anchors
        self._coefficients = coefficients
        self._device_basis: dict[torch.device, dict[str, Tensor]] = {}

    # -- constructors -------------------------------------------------------------------
    @classmethod
    def _from_basis(
        cls,
        basis: tuple[State, ...],
        weights: Tensor,
        dims: tuple[str, ...],
        coords: Mapping[str, np.ndarray] | None,
        *,
        anchors: tuple[int, ...],
        coefficients: Tensor | None = None,
    ) -> AffineFamily:
        family = cls.__new__(cls)
        family._init(basis, weights, dims, coords, anchors=anchors, coefficients=coefficients)
        return family

    @classmethod
    def line(
        cls,
        a: Mapping[str, Tensor],
        b: Mapping[str, Tensor],
        alphas: int | Sequence[float] | np.ndarray = 25,
    ) -> AffineFamily:
        """Points ``(1 - alpha) * a + alpha * b``; ``alphas`` is a count (evenly spaced in
        [0, 1], endpoints included) or explicit values (extrapolation allowed)."""
        values = alpha_values(alphas, function="AffineFamily.line")
        a = as_state(a, function="AffineFamily.line", argument="a")
        b = as_state(b, function="AffineFamily.line", argument="b")
        check_compatible(a, b, function="AffineFamily.line")
        t = torch.as_tensor(values, dtype=torch.float64)
        weights = torch.stack([1 - t, t], dim=1)
        return cls._from_basis((a, b), weights, ("alpha",), {"alpha": values}, anchors=(0, 1), coefficients=t[:, None])

    @classmethod
    def grid(
        cls,
        origin: Mapping[str, Tensor],
        directions: Sequence[Mapping[str, Tensor]],
        alphas: Sequence[float] | np.ndarray,
        betas: Sequence[float] | np.ndarray,
    ) -> AffineFamily:
        """The grid ``origin + alpha * directions[0] + beta * directions[1]`` over all pairs,
        ``alpha`` varying slowest (dims ``("alpha", "beta")``)."""
        if len(directions) != 2:
            raise bad_argument("AffineFamily.grid", "directions", expected="two directions", found=directions)
        al = np.asarray(alphas, dtype=np.float64)
        be = np.asarray(betas, dtype=np.float64)
        aa, bb = np.meshgrid(al, be, indexing="ij")
        coef = np.stack([aa.reshape(-1), bb.reshape(-1)], axis=1)
        return cls(origin, directions, coef, dims=("alpha", "beta"), coords={"alpha": al, "beta": be})

    @classmethod
    def points(cls, states: Sequence[Mapping[str, Tensor]], labels: Sequence[object] | None = None) -> AffineFamily:
        """A plain list of states (dim ``point``); each point is one basis state."""
        if len(states) == 0:
            raise bad_argument("AffineFamily.points", "states", expected="at least one state", found="none")
        basis = tuple(as_state(s, function="AffineFamily.points", argument="states") for s in states)
        k = len(basis)
        coords = {"point": np.asarray(labels if labels is not None else np.arange(k))}
        if len(coords["point"]) != k:
            raise bad_argument("AffineFamily.points", "labels", expected=f"{k} labels", found=labels)
        return cls._from_basis(basis, torch.eye(k, dtype=torch.float64), ("point",), coords, anchors=tuple(range(k)))

    def with_basis(self, basis: Sequence[State]) -> AffineFamily:
        """The same points over transformed basis states (e.g. with tied keys merged)."""
        return AffineFamily._from_basis(
            tuple(basis), self.weights, self.dims, self.coords, anchors=self.anchors, coefficients=self._coefficients
        )

    # -- views ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.weights.shape[0])

    def __repr__(self) -> str:
        sizes = ", ".join(f"{d}={len(c)}" for d, c in self.coords.items())
        return f"AffineFamily({sizes}; {len(self.basis)} basis states)"

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(self.coords[d]) for d in self.dims)

    @property
    def origin(self) -> State:
        """The first basis state (``a`` for a line, the origin of a grid)."""
        return self.basis[0]

    @property
    def directions(self) -> tuple[State, ...]:
        """The directions of the affine form (for a line, ``b - a``)."""
        if self.anchors == (0,):
            return self.basis[1:]
        return tuple(sub(s, self.basis[0]) for s in self.basis[1:])

    @property
    def coefficients(self) -> Tensor:
        """The K x D coefficient matrix of the affine form."""
        if self._coefficients is not None:
            return self._coefficients
        return self.weights[:, 1:]

    @property
    def is_structured(self) -> bool:
        """True when there are fewer basis states than points, so linearity saves work."""
        return len(self.basis) < len(self)

    def state(self, k: int) -> State:
        """Materialise point ``k`` as a State on the CPU (see :meth:`state_on` for devices)."""
        if not 0 <= k < len(self):
            raise IndexError(f"AffineFamily.state(k=...): expected 0 <= k < {len(self)}; found {k}.")
        return State(self.state_on(k, self.basis[0][next(iter(self.basis[0]))].device))

    def device_basis(self, device: torch.device | str) -> dict[str, Tensor]:
        """Basis tensors stacked per key, shape (M, ...), moved to ``device`` once and cached."""
        device = torch.device(device)
        if device not in self._device_basis:
            self._device_basis[device] = {
                key: torch.stack([s[key] for s in self.basis]).to(device) for key in self.basis[0]
            }
        return self._device_basis[device]

    def state_on(self, k: int, device: torch.device | str, keys: Sequence[str] | None = None) -> dict[str, Tensor]:
        """Point ``k`` built directly on ``device`` (only the entries ``keys`` when given).

        Costs one multiply-add per basis state with a non-zero weight, so a point that is a
        basis state is a lookup and a line point takes one ``torch.lerp``.
        """
        basis = self.device_basis(device)
        row = self.weights[k].tolist()
        anchor = self.anchor_of(row)
        out: dict[str, Tensor] = {}
        for key in keys if keys is not None else basis:
            stacked = basis[key]
            out[key] = combine(stacked, row) if stacked.is_floating_point() or stacked.is_complex() else stacked[anchor]
        return out

    def anchor_of(self, row: Sequence[float]) -> int:
        """The basis state that integer entries come from: the anchor with the largest
        weight, the later one on a tie (so alpha = 0.5 on a line takes ``b``, as ``lerp``)."""
        return max(reversed(self.anchors), key=lambda m: row[m])

    def stacked(self, indices: Sequence[int], device: torch.device | str = "cpu") -> State:
        """Points ``indices`` as one State with a leading point axis, built on ``device``.

        Each point equals :meth:`state_on`'s: a point whose weights select one basis state is
        that state exactly, whatever NaN or Inf the other basis states hold (a stacked
        product would give ``0 * NaN = NaN`` there).
        """
        device = torch.device(device)
        basis = self.device_basis(device)
        idx = list(indices)
        rows = self.weights[idx]
        selects = ((rows == 0) | (rows == 1)).all(dim=1) & (rows.sum(dim=1) == 1)
        one_hot = bool(selects.all())
        picks = rows.argmax(dim=1).to(device)
        anchors = torch.tensor([self.anchor_of(r) for r in rows.tolist()], device=device)
        is_line = rows.shape[1] == 2 and bool((rows.sum(dim=1) == 1).all())
        exact = [j for j in range(len(idx)) if selects[j]] if not one_hot else []
        out: dict[str, Tensor] = {}
        for key, stacked_basis in basis.items():
            if not (stacked_basis.is_floating_point() or stacked_basis.is_complex()):
                out[key] = stacked_basis.index_select(0, anchors)
                continue
            if one_hot:
                out[key] = stacked_basis.index_select(0, picks)
                continue
            if is_line:
                shape = (len(idx),) + (1,) * (stacked_basis.dim() - 1)
                t = rows[:, 1].to(device=device, dtype=stacked_basis.dtype).reshape(shape)
                value = torch.lerp(stacked_basis[0].expand_as(stacked_basis[:1]), stacked_basis[1:2], t)
            else:
                w = rows.to(device=device, dtype=stacked_basis.dtype)
                value = torch.tensordot(w, stacked_basis, dims=([1], [0]))
            for j in exact:
                value[j] = stacked_basis[int(picks[j])]
            out[key] = value
        return State(out)


def combine(stacked: Tensor, row: Sequence[float], out: Tensor | None = None) -> Tensor:
    """``sum_m row[m] * stacked[m]`` for a stack of M tensors, as fused multiply-adds.

    A basis state is returned as is; two weights that sum to 1 use ``torch.lerp``, which is
    exact at both ends and returns ``x`` when ``x == y`` (a model interpolated with itself
    stays bit-identical, so its barrier is exactly 0). A (1 x M) @ (M x n) matrix product
    would be a poor kernel for this on the CPU (measured 10x slower). With ``out``, the
    same operations write into it (same bits, no new tensor).
    """
    nonzero = [m for m, w in enumerate(row) if w != 0.0]
    if not nonzero:
        return torch.zeros_like(stacked[0]) if out is None else out.zero_()
    if len(nonzero) == 1 and row[nonzero[0]] == 1.0:
        return stacked[nonzero[0]] if out is None else out.copy_(stacked[nonzero[0]])
    if len(nonzero) == 2 and row[nonzero[0]] + row[nonzero[1]] == 1.0:
        return torch.lerp(stacked[nonzero[0]], stacked[nonzero[1]], row[nonzero[1]], out=out)
    acc = torch.mul(stacked[nonzero[0]], row[nonzero[0]], out=out)
    for m in nonzero[1:]:
        acc.add_(stacked[m], alpha=row[m])
    return acc


def alpha_values(alphas: int | Sequence[float] | np.ndarray, *, function: str) -> np.ndarray:
    """Turn ``alphas`` (a count, or explicit values) into a float64 array of at least 2 values."""
    if isinstance(alphas, (int, np.integer)) and not isinstance(alphas, bool):
        if alphas < 2:
            raise bad_argument(
                function, "alphas", expected="at least 2 points (the two endpoints)", found=repr(int(alphas))
            )
        return np.linspace(0.0, 1.0, int(alphas))
    values = np.asarray(alphas, dtype=np.float64).reshape(-1)
    if values.size < 2:
        raise bad_argument(function, "alphas", expected="at least 2 values", found=describe(alphas))
    if not np.all(np.isfinite(values)):
        raise bad_argument(function, "alphas", expected="finite values", found="NaN or Inf")
    return values


def as_family(
    points: object,
    *,
    function: str = "evaluate",
    argument: str = "points",
    prepare: Callable[[State], State] | None = None,
) -> AffineFamily:
    """Coerce what users pass as a point set into an :class:`AffineFamily`.

    Accepted: an AffineFamily; one State, mapping of tensors or ``nn.Module`` (one point);
    a list or tuple of them (dim ``point``); a mapping from labels to states (dim ``point``
    labelled by the keys). ``prepare`` is applied to every state first (the engine uses it to
    merge tied keys).
    """
    if isinstance(points, AffineFamily):
        return points.with_basis([prepare(s) for s in points.basis]) if prepare else points

    def state(value: object, where: str) -> State:
        s = as_state(value, function=function, argument=where)
        return prepare(s) if prepare else s

    if isinstance(points, torch.nn.Module):
        return AffineFamily.points([state(points, argument)])
    if isinstance(points, Mapping):
        values = list(points.values())
        if values and all(isinstance(v, Tensor) for v in values):
            return AffineFamily.points([state(points, argument)])
        if values and all(isinstance(v, (Mapping, torch.nn.Module)) for v in values):
            states = [state(v, f"{argument}[{k!r}]") for k, v in points.items()]
            return AffineFamily.points(states, labels=[str(k) for k in points])
    if isinstance(points, (list, tuple)) and points:
        return AffineFamily.points([state(p, f"{argument}[{i}]") for i, p in enumerate(points)])
    raise bad_argument(
        function,
        argument,
        expected="a State, a list of States, a dict of named States, or an AffineFamily",
        found=points,
        fix="Build lines and planes with AffineFamily.line / AffineFamily.grid.",
    )
