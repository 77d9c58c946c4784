"""Learned alignment: refine the maps by gradient descent on the loss of interpolated networks.

Closed-form matching makes ``b``'s weights (or activations) close to ``a``'s, which is not
the same as making the networks between them good. Following Theus et al. (2025, whose zero
barriers for transformers come from this step) and the straight-through estimator of
Ainsworth et al. (2023), the maps become parameters: permutations are the linear assignment
of a free matrix in the forward pass and the free matrix in the backward pass; orthogonal
maps the polar factor of a free matrix (keeping the all-ones vector, or a complex number per
rotary pair, where the group needs it); invertible maps are free matrices. Each step draws an
interpolation coefficient, builds ``(1 - t) a + t T(b)`` and takes a gradient step on the
training loss of that network.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from landscape.alignment._descent import GroupSpec
from landscape.core.data import batch_slices
from landscape.core.metrics import model_output_logits
from landscape.core.progress import progress_bar
from landscape.symmetry import LinearMap, PerHead, Permutation, SymmetryGraph, Transform, apply_maps
from landscape.symmetry.transforms import centered_basis, rotary_matrix

__all__ = ["learn_maps"]


class _Dense(Transform):
    """A map given as a (differentiable) matrix; ``"in"`` axes get its inverse transpose."""

    def __init__(self, m: Tensor, kind: str) -> None:
        self.m = m
        self.kind = kind

    @property
    def source_size(self) -> int:
        return int(self.m.shape[1])

    def matrix(self, variance: str = "out") -> Tensor:
        if variance == "in" and self.kind == "invertible":
            return torch.linalg.inv(self.m).T
        return self.m  # permutations and orthogonal maps are their own inverse transposes


class _Free:
    """The trainable form of one map: a free matrix for permutations (straight-through) and
    invertible maps; for orthogonal maps the starting map times the exponential of a
    skew-symmetric generator (exactly orthogonal, smooth gradients; in the complement of the
    all-ones vector when centered, one angle per pair for rotary groups)."""

    def __init__(self, start: Transform, spec: GroupSpec, device: torch.device) -> None:
        self.spec = spec
        self.base = start.matrix("out").detach().to(torch.float64).to(device)
        n = self.base.shape[0]
        if spec.kind == "permutation":
            self.param = self.base.clone().requires_grad_(True)
        elif spec.kind == "invertible" and not spec.centered:
            self.param = self.base.clone().requires_grad_(True)
        elif spec.rotary:
            self.param = torch.zeros(n // 2, dtype=torch.float64, device=device, requires_grad=True)
        else:
            m = n - 1 if spec.centered else n
            self.param = torch.zeros(m, m, dtype=torch.float64, device=device, requires_grad=True)

    def matrix(self, *, hard: bool) -> tuple[Tensor, str]:
        spec, p = self.spec, self.param
        if spec.kind == "permutation":
            from scipy.optimize import linear_sum_assignment

            rows, cols = linear_sum_assignment(p.detach().cpu().numpy(), maximize=True)
            perm = torch.zeros_like(p)
            perm[torch.as_tensor(rows), torch.as_tensor(cols)] = 1.0
            return (perm if hard else perm + p - p.detach()), "permutation"
        if spec.kind == "invertible" and not spec.centered:
            if spec.rotary:  # keep the learned map in the commutant of the rotations
                half = p.shape[0] // 2
                i = torch.arange(half)
                re = (p[i, i] + p[i + half, i + half]) / 2
                im = (p[i + half, i] - p[i, i + half]) / 2
                return rotary_matrix(torch.stack([re, im], 1)).to(p), "invertible"
            return p, "invertible"
        if spec.rotary:
            turn = rotary_matrix(torch.stack([torch.cos(p), torch.sin(p)], 1)).to(p)
            return self.base @ turn, "orthogonal"
        skew = torch.linalg.matrix_exp(p - p.T)
        if spec.centered:
            n = self.base.shape[0]
            basis = centered_basis(n).to(p)
            skew = torch.full((n, n), 1.0 / n, dtype=p.dtype, device=p.device) + basis @ skew @ basis.T
        return self.base @ skew, "orthogonal"


def _transforms(
    free: Mapping[str, _Free | list[_Free]], specs: Mapping[str, GroupSpec], *, hard: bool
) -> dict[str, Transform]:
    out: dict[str, Transform] = {}
    for g, f in free.items():
        if isinstance(f, list):
            out[g] = PerHead([_Dense(*x.matrix(hard=hard)) for x in f], specs[g].per)
        else:
            out[g] = _Dense(*f.matrix(hard=hard))
    return out


def _final(t: Transform) -> Transform:
    """A learned map as an ordinary transform (permutations as index arrays)."""
    if isinstance(t, PerHead):
        return PerHead([_final(m) for m in t.maps], t.over)
    m = t.matrix("out").detach().to(torch.float64).cpu()
    if t.kind == "permutation":
        return Permutation(m.argmax(dim=1))
    return LinearMap(m, t.kind)


def learn_maps(
    model: nn.Module,
    graph: SymmetryGraph,
    a: Mapping[str, Tensor],
    b: Mapping[str, Tensor],
    start: Mapping[str, Transform],
    specs: Mapping[str, GroupSpec],
    x: Tensor,
    y: Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    alphas: tuple[float, float],
    seed: int,
    device: torch.device,
    progress: bool,
) -> tuple[dict[str, Transform], list[float]]:
    """Maps of ``b`` onto ``a`` (both folded where the graph folds norms) that minimise the
    training loss of ``(1 - t) a + t T(b)`` for ``t`` drawn uniformly from ``alphas``; returns
    the maps and the loss of every step."""
    work = model.to(device).eval()
    a_dev = {k: v.detach().to(device) for k, v in a.items()}
    b_dev = {k: v.detach().to(device) for k, v in b.items()}
    free: dict[str, _Free | list[_Free]] = {}
    for g, t in start.items():
        if g not in specs:
            continue
        if isinstance(t, PerHead):
            free[g] = [_Free(m, specs[g], device) for m in t.maps]
        else:
            free[g] = _Free(t, specs[g], device)
    leaves = [f.param for fs in free.values() for f in (fs if isinstance(fs, list) else [fs])]
    optimizer = torch.optim.Adam(leaves, lr=lr)
    generator = torch.Generator().manual_seed(int(seed))
    sizes = graph.sizes_of(b, function="align")
    losses: list[float] = []
    steps = epochs * len(range(0, x.shape[0], batch_size))
    with progress_bar(total=steps, desc="align (learned)", unit="step", disable=not progress) as bar:
        for _ in range(epochs):
            order = torch.randperm(x.shape[0], generator=generator)
            for part in batch_slices(x.shape[0], batch_size):
                index = order[part]
                xb, yb = x[index].to(device), y[index].to(device)
                t = float(alphas[0] + (alphas[1] - alphas[0]) * torch.rand((), generator=generator))
                moved = apply_maps(graph, b_dev, _transforms(free, specs, hard=False), sizes)
                state = {
                    k: (1 - t) * a_dev[k] + t * moved[k] if a_dev[k].is_floating_point() else a_dev[k] for k in a_dev
                }
                logits = model_output_logits(torch.func.functional_call(work, state, (xb,)))
                loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), yb.reshape(-1))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.4g}")
    with torch.no_grad():
        learned = {g: _final(t) for g, t in _transforms(free, specs, hard=True).items()}
    return learned, losses
