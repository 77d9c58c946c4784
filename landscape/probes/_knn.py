"""k-nearest-neighbour probe: exact neighbours, found with float32 distances and a partial top-k.

Distances are first computed in float32 with one matrix product per batch of queries
(``|q|^2 - 2 q.t + |t|^2`` on features centred with the training mean) and the ``k + extra``
nearest candidates taken with ``torch.topk``. A rounding-error bound on those float32 distances
decides, per query, whether any training example outside the candidates could be among the
true ``k`` nearest; when none can, the candidates' distances are recomputed exactly in float64
(differences, no product shortcut) and the ``k`` nearest chosen from them, so the neighbours
are those of an exact float64 computation. Queries the bound cannot settle (near-ties at the
``k``-th neighbour) take the exact float64 path over all training examples.
"""

from __future__ import annotations

import torch
from torch import Tensor

from landscape.core.data import batch_slices
from landscape.core.device import resolve_device
from landscape.core.errors import bad_argument, describe
from landscape.probes._checks import check_both

__all__ = ["knn_predict", "knn_probe"]

# Unit roundoff of the float32 matrix product: 2^-24 at full precision; TF32 (10-bit mantissa)
# or bfloat16 (7 bits) when CUDA is allowed to use them for float32 products.
_FLOAT32_ROUNDOFF = 2.0**-24
_REDUCED_ROUNDOFF = 2.0**-8


def _roundoff(device: torch.device) -> float:
    if device.type == "cuda" and (
        torch.backends.cuda.matmul.allow_tf32 or torch.get_float32_matmul_precision() != "highest"
    ):
        return _REDUCED_ROUNDOFF
    return _FLOAT32_ROUNDOFF


def _vote(neighbour_labels: Tensor, num_classes: int) -> Tensor:
    votes = torch.zeros(neighbour_labels.shape[0], num_classes, dtype=torch.long, device=neighbour_labels.device)
    votes.scatter_add_(1, neighbour_labels, torch.ones_like(neighbour_labels))
    return votes.argmax(dim=1)  # the first (smallest) class among tied votes


def _exact_neighbours(train64: Tensor, queries64: Tensor, k: int) -> Tensor:
    # Exact differences (no |a|^2 - 2ab + |b|^2 shortcut) and a stable sort: ties by training order.
    dist = torch.cdist(queries64, train64, compute_mode="donot_use_mm_for_euclid_dist")
    return torch.sort(dist, dim=1, stable=True).indices[:, :k]


def _candidate_neighbours(train64: Tensor, queries64: Tensor, candidates: Tensor, k: int) -> Tensor:
    # Candidates in training order, then a stable sort by exact distance: ties by training order.
    candidates = torch.sort(candidates, dim=1).values
    diff = train64[candidates] - queries64[:, None, :]
    dist = diff.square().sum(dim=-1).sqrt()
    order = torch.sort(dist, dim=1, stable=True).indices[:, :k]
    return torch.gather(candidates, 1, order)


def knn_predict(
    features_train: Tensor,
    y_train: Tensor,
    features_test: Tensor,
    *,
    k: int = 20,
    batch_size: int = 1024,
    extra: int | None = None,
) -> Tensor:
    """Majority-vote predictions of the ``k`` nearest training examples (Euclidean distance).

    The neighbours are those of an exact float64 computation (see the module docstring for how
    float32 distances find them); neighbours at equal distance are taken in training-set order,
    and a tied vote goes to the smallest class index, so predictions are deterministic.

    Parameters
    ----------
    extra
        Candidates beyond ``k`` kept from the float32 pass (default ``max(k, 8)``); more makes
        the exact fallback rarer and the candidate pass dearer.
    """
    n_train, dim = features_train.shape
    num_classes = int(y_train.max()) + 1
    extra = max(k, 8) if extra is None else int(extra)
    m = min(n_train, k + extra)
    train64 = features_train.double()
    center = train64.mean(dim=0)
    train32 = (train64 - center).float()
    train_sq = train32.square().sum(dim=1)
    # |fl(q.t) - q.t| <= dim * u * |q| |t| for any summation order; the squared norms, the
    # centring and the cast to float32 add a few u (|q| + |t|)^2 more. Twice that, to be safe.
    factor = 2.0 * (dim + 8) * _roundoff(features_train.device)
    train_norm_max = float(train32.double().square().sum(dim=1).max().sqrt())
    predictions = []
    for rows in batch_slices(features_test.shape[0], batch_size):
        queries64 = features_test[rows].double()
        queries32 = (queries64 - center).float()
        dist32 = torch.addmm(train_sq[None, :], queries32, train32.T, alpha=-2.0)
        dist32.add_(queries32.square().sum(dim=1, keepdim=True))
        values, candidates = torch.topk(dist32, m, dim=1, largest=False, sorted=True)
        bound = factor * (queries32.double().square().sum(dim=1).sqrt() + train_norm_max).square()
        gap = values[:, m - 1].double() - values[:, k - 1].double()
        settled = gap > 2.0 * bound if m < n_train else torch.ones_like(gap, dtype=torch.bool)
        neighbours = torch.empty(queries64.shape[0], k, dtype=torch.long, device=queries64.device)
        if settled.any():
            neighbours[settled] = _candidate_neighbours(train64, queries64[settled], candidates[settled], k)
        if not settled.all():
            neighbours[~settled] = _exact_neighbours(train64, queries64[~settled], k)
        predictions.append(_vote(y_train[neighbours], num_classes))
    return torch.cat(predictions)


def knn_probe(
    features_train: Tensor,
    y_train: Tensor,
    features_test: Tensor,
    y_test: Tensor,
    *,
    k: int = 20,
    batch_size: int = 1024,
    device: str | torch.device = "auto",
) -> float:
    """Test accuracy of a k-nearest-neighbour classifier on fixed features.

    Parameters
    ----------
    features_train, y_train
        Training features (examples, features) and integer labels.
    features_test, y_test
        Test features and labels.
    k
        Number of neighbours (the reference implementation's default is 20).
    batch_size
        Test examples per distance computation (memory: ``batch_size * n_train`` floats).
    device
        Where to compute distances (``"auto"``: CUDA when present); features move there once.

    Returns
    -------
    float
        Fraction of test examples whose majority vote is the true label. The neighbours are
        those of exact float64 Euclidean distances; neighbours at equal distance are taken in
        training-set order and tied votes go to the smallest class index.

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([[0.0], [0.1], [5.0], [5.1]]); y = torch.tensor([0, 0, 1, 1])
    >>> knn_probe(x, y, torch.tensor([[0.05], [4.9]]), torch.tensor([0, 1]), k=1)
    1.0
    """
    xtr, ytr, xte, yte = check_both("knn_probe", features_train, y_train, features_test, y_test)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= xtr.shape[0]:
        raise bad_argument(
            "knn_probe", "k", expected=f"an integer between 1 and the {xtr.shape[0]} training examples", found=repr(k)
        )
    if not isinstance(batch_size, int) or batch_size < 1:
        raise bad_argument("knn_probe", "batch_size", expected="a positive integer", found=describe(batch_size))
    dev = resolve_device(device, function="knn_probe")
    predictions = knn_predict(xtr.to(dev), ytr.to(dev), xte.to(dev), k=k, batch_size=batch_size)
    return float((predictions.cpu() == yte).double().mean())
