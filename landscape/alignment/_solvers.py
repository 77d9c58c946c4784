"""One solver per kind of map: linear assignment for permutations, Procrustes for orthogonal
maps, least squares for invertible maps, optimal transport for soft maps.

Every solver takes the statistics of one group (:class:`~landscape.alignment._terms.Stats`)
and returns the map of ``b``'s units onto ``a``'s that is best given the other groups'
maps. Structured groups get structured solutions: maps that fix the all-ones vector
(LayerNorm streams), maps that commute with rotary embeddings (a complex number per pair of
coordinates), one map per head for the coordinates of attention heads.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import Tensor

from landscape.core.errors import bad_argument
from landscape.symmetry import LinearMap, PerHead, Permutation, SoftMap, Transform
from landscape.symmetry.transforms import centered_basis, rotary_matrix

__all__ = [
    "best_value",
    "map_value",
    "solve_assignment",
    "solve_block_assignment",
    "solve_invertible",
    "solve_map",
    "solve_orthogonal",
    "solve_transport",
]


def solve_assignment(similarity: Tensor) -> Permutation:
    """The permutation maximising ``sum_i S[i, index[i]]`` (scipy's linear_sum_assignment)."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(similarity.double().numpy(), maximize=True)
    index = np.empty(similarity.shape[0], dtype=np.int64)
    index[rows] = cols
    return Permutation(index)


def _procrustes(s: Tensor) -> Tensor:
    """The orthogonal ``M`` maximising ``<M, S>``: ``U V^T`` for ``S = U diag(sigma) V^T``."""
    u, _, vh = torch.linalg.svd(s.double())
    return u @ vh


def solve_orthogonal(s: Tensor, *, centered: bool = False, rotary: bool = False) -> LinearMap:
    """The orthogonal map maximising ``<M, S>`` (orthogonal Procrustes), fixing the all-ones
    vector when ``centered``, commuting with rotary embeddings when ``rotary``."""
    s = s.double()
    n = s.shape[0]
    if rotary:
        half = n // 2
        i = torch.arange(half)
        # <[[a, -b], [b, a]], S_pair> = a (S_ii + S_jj) + b (S_ji - S_ij): a unit complex number.
        re = s[i, i] + s[i + half, i + half]
        im = s[i + half, i] - s[i, i + half]
        norm = torch.sqrt(re**2 + im**2)
        safe = norm > 0
        a = torch.where(safe, re / norm.clamp_min(1e-300), torch.ones_like(re))
        b = torch.where(safe, im / norm.clamp_min(1e-300), torch.zeros_like(im))
        return LinearMap(rotary_matrix(torch.stack([a, b], 1)), "orthogonal")
    if centered:
        basis = centered_basis(n)
        inner = _procrustes(basis.T @ s @ basis)
        return LinearMap(torch.full((n, n), 1.0 / n, dtype=torch.float64) + basis @ inner @ basis.T, "orthogonal")
    return LinearMap(_procrustes(s), "orthogonal")


def solve_invertible(
    s: Tensor, goo: Tensor | None, grr: Tensor | None, *, rotary: bool = False, ridge: float = 1e-6
) -> LinearMap:
    """The least-squares invertible map: ``M`` minimising ``sum_out ||M b - a||^2 +
    sum_in ||M^T a - b||^2`` over the places the group acts (the second sum is the inverse
    transpose's condition ``M^-T b = a`` made linear), plus ``ridge`` times the scale of the
    Gram matrices times ``||M - I||^2``: the Sylvester equation
    ``(G_a + r) M + M (G_b + r) = S + 2 r I``. ``rotary``: ``M`` a complex number per pair of
    coordinates."""
    import scipy.linalg

    n = s.shape[0]
    s = s.double()
    goo = torch.zeros(n, n, dtype=torch.float64) if goo is None else goo.double()
    grr = torch.zeros(n, n, dtype=torch.float64) if grr is None else grr.double()
    scale = float((torch.trace(goo) + torch.trace(grr)) / max(1, 2 * n))
    r = ridge * max(scale, 1e-12)
    eye = torch.eye(n, dtype=torch.float64)
    a, b, q = grr + r * eye, goo + r * eye, s + 2 * r * eye
    if rotary:
        half = n // 2
        basis = []
        for p in range(half):
            re = torch.zeros(n, n, dtype=torch.float64)
            re[p, p] = re[p + half, p + half] = 1.0
            im = torch.zeros(n, n, dtype=torch.float64)
            im[p + half, p], im[p, p + half] = 1.0, -1.0
            basis += [re, im]
        basis_t = torch.stack(basis)  # (n, n, n): n coefficients
        applied = torch.einsum("ij,kjl->kil", a, basis_t) + torch.einsum("kij,jl->kil", basis_t, b)
        gram = torch.einsum("kij,lij->kl", basis_t, applied)
        rhs = torch.einsum("kij,ij->k", basis_t, q)
        coef = torch.linalg.solve(gram, rhs)
        m = torch.einsum("k,kij->ij", coef, basis_t)
        return LinearMap(m, "invertible")
    m = scipy.linalg.solve_sylvester(a.numpy(), b.numpy(), q.numpy())
    return LinearMap(torch.as_tensor(m), "invertible")


def solve_map(
    kind: str, s: Tensor, goo: Tensor | None = None, grr: Tensor | None = None, *, centered: bool, rotary: bool
) -> Transform:
    """The best map of one kind (one head, or a group without heads)."""
    if kind == "permutation":
        return solve_assignment(s)
    if kind == "orthogonal":
        return solve_orthogonal(s, centered=centered, rotary=rotary)
    if kind == "invertible":
        if centered:
            return solve_orthogonal(s, centered=True, rotary=rotary)
        return solve_invertible(s, goo, grr, rotary=rotary)
    raise bad_argument("align", "kinds", expected="'permutation', 'orthogonal' or 'invertible'", found=repr(kind))


def map_value(m: Transform, s: Tensor) -> float:
    """``<M, S>``."""
    if isinstance(m, Permutation):
        return float(s[torch.arange(s.shape[0]), m.index].sum())
    return float((m.matrix("out") * s.double()).sum())


def best_value(kind: str, s: Tensor, goo: Tensor | None, grr: Tensor | None, *, centered: bool, rotary: bool) -> float:
    """The value of the best map for one pair of heads (how well they can be matched)."""
    if kind == "orthogonal" and not (centered or rotary):
        return float(torch.linalg.svdvals(s.double()).sum())
    m = solve_map(kind, s, goo, grr, centered=centered, rotary=rotary)
    return map_value(m, s)


def solve_block_assignment(block: Tensor) -> Permutation:
    """The permutation of the outer factor maximising ``max over the inner permutation`` of the
    block similarity: each pair of outer units is scored by the best matching of their inner
    units, then the outer units are matched. Exact for planted Kronecker permutations."""
    from scipy.optimize import linear_sum_assignment

    n = block.shape[0]
    scores = torch.zeros(n, n, dtype=torch.float64)
    for a in range(n):
        for c in range(n):
            sub = block[a, :, c, :].numpy()
            rows, cols = linear_sum_assignment(sub, maximize=True)
            scores[a, c] = float(sub[rows, cols].sum())
    return solve_assignment(scores)


def per_head(maps: list[Transform], over: str) -> Transform:
    return PerHead(maps, over)


def solve_transport(
    cost: Tensor, a: np.ndarray, b: np.ndarray, *, reg: float | None, num_iter: int = 10_000_000
) -> Transform:
    """Exact (``reg=None``, ``ot.emd``) or entropic (``ot.sinkhorn``, stabilised) transport.

    The cost is divided by its mean first, so that ``reg`` is relative to a typical cost.
    A plan that is a scaled permutation matrix comes back as a :class:`Permutation`.
    """
    import ot

    c = cost.numpy().astype(np.float64)
    c = c - c.min()
    scale = c.mean()
    if scale > 0:
        c = c / scale
    if reg is None:
        plan = ot.emd(a, b, c, numItermax=num_iter)
        soft = SoftMap(plan)
        return soft.as_permutation() or soft
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # The stabilised (log-absorbing) iterations give the log domain's plan ~20x faster. The
        # marginal error allowed (1e-5 in norm) is ~0.1% of a unit's mass for 512 units.
        plan = ot.sinkhorn(a, b, c, reg, method="sinkhorn_stabilized", numItermax=2_000, stopThr=1e-5)
        if not np.all(np.isfinite(plan)):  # very small reg: fall back to the log domain
            plan = ot.sinkhorn(a, b, c, reg, method="sinkhorn_log", numItermax=2_000, stopThr=1e-5)
    if not np.all(np.isfinite(plan)):
        raise bad_argument(
            "align",
            "reg",
            expected="a regularisation Sinkhorn can reach",
            found=f"{reg} (the plan overflowed)",
            fix="Use a larger reg, or method='ot' for the exact plan.",
        )
    soft = SoftMap(plan)
    soft.converged = not any("converge" in str(w.message) for w in caught)
    return soft
