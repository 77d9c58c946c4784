"""Spectral estimates from matrix-vector products: extreme eigenpairs by ARPACK's Lanczos
(``scipy.sparse.linalg.eigsh``), the trace by Hutchinson's estimator, and the spectral density
by stochastic Lanczos quadrature (Lanczos with full reorthogonalisation, Gauss nodes and weights
from ``scipy.linalg.eigh_tridiagonal``, Gaussian broadening as PyHessian does)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal
from scipy.sparse.linalg import ArpackNoConvergence, eigsh
from torch import Tensor

from landscape.core.data import batch_slices
from landscape.core.errors import LandscapeError
from landscape.curvature._operators import CurvatureOperator
from landscape.curvature._products import Products

__all__ = [
    "WHICH",
    "default_sigma",
    "density_grid",
    "extreme_eigenpairs",
    "gauss_quadrature",
    "gaussian_density",
    "hutchinson",
    "lanczos",
    "rademacher",
]

WHICH = {"largest": "LA", "smallest": "SA", "magnitude": "LM"}
# Vectors per call when building a small matrix column by column.
DENSE_CHUNK = 64
# Bytes of Lanczos basis vectors kept at once (probes are run in groups that fit).
LANCZOS_BUDGET_BYTES = 2**30

Tick = Callable[[int], None]


def _order(values: np.ndarray, which: str) -> np.ndarray:
    if which == "largest":
        return np.argsort(-values, kind="stable")
    if which == "smallest":
        return np.argsort(values, kind="stable")
    return np.argsort(-np.abs(values), kind="stable")


def lanczos_vectors(k: int, dim: int) -> int:
    """ARPACK's number of Lanczos vectors: at least 2k + 1 and at least 8 (for k = 1, more
    vectors per restart cost more products than they save when the top eigenvalue is well
    separated, as it is for trained networks)."""
    return min(dim, max(2 * k + 1, 8))


def extreme_eigenpairs(
    products: Products, k: int, *, which: str, tol: float, seed: int, maxiter: int | None, tick: Tick
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` extreme eigenvalues (sorted: largest first, smallest first, or largest
    magnitude first) and their unit eigenvectors as columns, float64. A matrix no larger than
    ARPACK's Lanczos basis is built densely from ``dim`` products and solved exactly."""
    dim = products.dim
    k = min(k, dim)
    ncv = lanczos_vectors(k, dim)
    if dim <= ncv:
        matrix = dense_matrix(products, tick)
        values, vectors = np.linalg.eigh(matrix)
    else:
        operator = CurvatureOperator(products, tick)
        v0 = np.random.default_rng(seed).standard_normal(dim)
        try:
            values, vectors = eigsh(operator, k=k, which=WHICH[which], tol=tol, v0=v0, ncv=ncv, maxiter=maxiter)
        except ArpackNoConvergence as err:
            raise LandscapeError(
                f"eigsh did not converge to tol={tol} within maxiter={maxiter} restarts "
                f"({len(err.eigenvalues)} of {k} eigenvalues converged). Raise maxiter or tol."
            ) from err
    order = _order(values, which)[:k]
    return values[order], vectors[:, order]


def dense_matrix(products: Products, tick: Tick) -> np.ndarray:
    """The whole (dim x dim) matrix from products with the unit vectors, symmetrised, float64."""
    dim = products.dim
    columns = []
    for chunk in batch_slices(dim, DENSE_CHUNK):
        start, stop = chunk.start, chunk.stop
        eye = torch.zeros(stop - start, dim, dtype=products.dtype, device=products.device)
        eye[torch.arange(stop - start), torch.arange(start, stop)] = 1
        columns.append(products.matmat(eye).double().cpu())
        tick(stop - start)
    matrix = torch.cat(columns).numpy()
    return (matrix + matrix.T) / 2


def rademacher(seed: int, index: int, dim: int) -> np.ndarray:
    """Probe ``index`` of a run with ``seed``: independent of how probes are grouped, and the
    same on every device."""
    return np.random.default_rng([seed, index]).integers(0, 2, dim, dtype=np.int8) * 2 - 1


def _probes(seed: int, indices: Sequence[int], products: Products) -> Tensor:
    rows = np.stack([rademacher(seed, i, products.dim) for i in indices])
    return torch.from_numpy(rows).to(device=products.device, dtype=products.dtype)


def hutchinson(
    products: Products, probes: int, *, seed: int, blocks: dict[str, Tensor] | None, tick: Tick
) -> dict[str, np.ndarray]:
    """``v^T M v`` for ``probes`` Rademacher vectors: one value per probe for the whole
    matrix (key ``""``) and, per block of indices, ``v_b^T (M v)_b``, whose mean is the
    trace of the block's diagonal block (the cross terms have mean zero)."""
    samples: dict[str, list[float]] = {"": []}
    for name in blocks or {}:
        samples[name] = []
    step = products.vectors_per_call
    for chunk in batch_slices(probes, step):
        v = _probes(seed, range(chunk.start, chunk.stop), products)
        mv = products.matmat(v)
        both = (v.double() * mv.double()).cpu()
        samples[""] += both.sum(dim=1).tolist()
        for name, index in (blocks or {}).items():
            samples[name] += both[:, index.cpu()].sum(dim=1).tolist()
        tick(v.shape[0])
    return {name: np.asarray(values) for name, values in samples.items()}


def lanczos(products: Products, start: Tensor, steps: int, tick: Tick) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lanczos with full reorthogonalisation from each row of ``start`` (m probes at once).

    Returns
    -------
    alphas : (m, steps), betas : (m, steps - 1), lengths : (m,)
        The tridiagonal matrices (float64); probe ``i`` uses the first ``lengths[i]`` alphas
        and ``lengths[i] - 1`` betas. A probe stops early when its Krylov space is exhausted
        (the next beta vanishes), as happens when ``steps`` reaches the matrix's rank.
    """
    m, dim = start.shape
    steps = min(steps, dim)
    dtype, device = products.dtype, products.device
    basis = torch.zeros(steps, m, dim, dtype=dtype, device=device)
    alphas = np.zeros((m, steps))
    betas = np.zeros((m, max(steps - 1, 0)))
    lengths = np.full(m, steps)
    active = np.ones(m, dtype=bool)
    q = start.to(device=device, dtype=dtype)
    q = q / q.norm(dim=1, keepdim=True)
    previous = torch.zeros_like(q)
    beta_previous = torch.zeros(m, dtype=dtype, device=device)
    scale = np.zeros(m)
    eps = float(torch.finfo(dtype).eps)
    for j in range(steps):
        basis[j] = q
        rows = torch.from_numpy(np.flatnonzero(active)).to(device)
        w = torch.zeros_like(q)
        w[rows] = products.matmat(q[rows])
        tick(len(rows))
        alpha = (q * w).sum(dim=1)
        w = w - alpha[:, None] * q - beta_previous[:, None] * previous
        # Full reorthogonalisation against every basis vector so far, twice ("twice is
        # enough", Parlett): without it, rounding brings back copies of converged Ritz values.
        for _ in range(2):
            coefficients = torch.einsum("jmd,md->jm", basis[: j + 1], w)
            w = w - torch.einsum("jm,jmd->md", coefficients, basis[: j + 1])
        beta = w.norm(dim=1)
        alphas[active, j] = alpha.double().cpu().numpy()[active]
        if j == steps - 1:
            break
        beta_np = beta.double().cpu().numpy()
        scale = np.maximum(scale, np.maximum(np.abs(alphas[:, j]), beta_np))
        ended = active & (beta_np <= 100 * eps * np.maximum(scale, np.finfo(np.float64).tiny))
        lengths[ended] = j + 1
        active &= ~ended
        if not active.any():
            break
        betas[active, j] = beta_np[active]
        keep = torch.from_numpy(active).to(device)[:, None]
        previous, beta_previous = q, torch.where(keep[:, 0], beta, torch.zeros_like(beta))
        q = torch.where(keep, w / torch.where(keep[:, 0], beta, torch.ones_like(beta))[:, None], torch.zeros_like(w))
    return alphas, betas, lengths


def gauss_quadrature(alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nodes (the Ritz values) and weights (squared first components of the eigenvectors of
    the tridiagonal matrix): ``sum_j w_j f(theta_j)`` approximates ``q^T f(M) q`` for the
    unit start vector ``q``, exactly for polynomials of degree below ``2 len(alpha)``."""
    if len(alpha) == 1:
        return alpha.copy(), np.ones(1)
    nodes, vectors = eigh_tridiagonal(alpha, beta)
    return nodes, vectors[0] ** 2


def default_sigma(width: float) -> float:
    """PyHessian's broadening: variance ``1e-5 * max(1, width of the spectrum)``."""
    return float(np.sqrt(1e-5 * max(1.0, width)))


def density_grid(lo: float, hi: float, sigma: float, points: int | None) -> np.ndarray:
    """Evenly spaced eigenvalues from ``lo - 6 sigma`` to ``hi + 6 sigma``: ``points`` of them,
    or (None) a third of ``sigma`` apart, between 1,000 and 100,000 points, so that every
    Gaussian is resolved and the density integrates to 1."""
    lo, hi = lo - 6 * sigma, hi + 6 * sigma
    if points is None:
        points = int(np.clip(np.ceil((hi - lo) / (sigma / 3)) + 1, 1000, 100_000))
    return np.linspace(lo, hi, points)


def gaussian_density(nodes: np.ndarray, weights: np.ndarray, grid: np.ndarray, sigma: float) -> np.ndarray:
    """``sum_i weights_i N(t; nodes_i, sigma^2)`` on the grid (NaN nodes are ignored)."""
    keep = np.isfinite(nodes) & (weights > 0)
    nodes, weights = nodes[keep], weights[keep]
    out = np.zeros(len(grid))
    norm = 1.0 / (sigma * np.sqrt(2 * np.pi))
    for chunk in batch_slices(len(grid), 4096):
        t = grid[chunk, None]
        out[chunk] = (np.exp(-0.5 * ((t - nodes[None]) / sigma) ** 2) * weights[None]).sum(1) * norm
    return out
