"""Probes of a representation: k-nearest neighbours and a trained linear classifier.

Both follow the probing of the random-teacher reference implementation (Sarnthein et al. 2023,
github.com/safelix/dinopl): k-NN with Euclidean distance and a majority vote over k = 20
neighbours, and an ``nn.Linear`` trained with AdamW for a fixed number of epochs; each on the
raw features and on features standardised with the training split's mean and standard
deviation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn

from landscape.core.device import resolve_device
from landscape.core.errors import bad_argument, describe
from landscape.core.io import provenance_attrs

__all__ = ["PROBES", "SCALINGS", "knn_probe", "linear_probe", "probe_features", "standardize"]

PROBES = ("linear", "knn")
SCALINGS = ("raw", "standardized")


def _check_pair(function: str, features: object, labels: object, names: tuple[str, str]) -> tuple[Tensor, Tensor]:
    if isinstance(features, np.ndarray):
        features = torch.from_numpy(features)
    if isinstance(labels, np.ndarray):
        labels = torch.from_numpy(labels)
    if not isinstance(features, Tensor) or features.dim() < 2:
        raise bad_argument(
            function,
            names[0],
            expected="a tensor of shape (examples, features)",
            found=features,
            fix="Flatten per-example features first, e.g. features.flatten(1).",
        )
    if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.shape[0] != features.shape[0]:
        raise bad_argument(
            function,
            names[1],
            expected=f"a 1-D tensor of {features.shape[0]} integer labels (one per row of {names[0]})",
            found=labels,
        )
    if labels.is_floating_point():
        if not torch.equal(labels, labels.round()):
            raise bad_argument(function, names[1], expected="integer class labels", found="non-integer floats")
    if features.shape[0] == 0:
        raise bad_argument(function, names[0], expected="at least one example", found="none")
    if not torch.isfinite(features).all():
        raise bad_argument(function, names[0], expected="finite features", found="NaN or Inf values")
    return features.flatten(1), labels.long()


def _check_both(
    function: str, features_train: object, y_train: object, features_test: object, y_test: object
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    xtr, ytr = _check_pair(function, features_train, y_train, ("features_train", "y_train"))
    xte, yte = _check_pair(function, features_test, y_test, ("features_test", "y_test"))
    if xtr.shape[1] != xte.shape[1]:
        raise bad_argument(
            function,
            "features_test",
            expected=f"{xtr.shape[1]} features per example, as in features_train",
            found=f"{xte.shape[1]}",
        )
    if (ytr < 0).any() or (yte < 0).any():
        raise bad_argument(function, "y_train", expected="non-negative class indices", found="negative labels")
    return xtr, ytr, xte, yte


def standardize(features_train: Tensor, features_test: Tensor) -> tuple[Tensor, Tensor]:
    """Both splits standardised with the training split's per-feature mean and standard deviation.

    The standard deviation is the unbiased one; features whose standard deviation is below
    ten machine epsilons are only centred (divided by 1), as in scikit-learn's StandardScaler
    and the reference implementation.

    Returns
    -------
    (Tensor, Tensor)
        The standardised training and test features (new tensors, float32 or float64).

    Examples
    --------
    >>> import torch
    >>> a, b = standardize(torch.tensor([[1.0], [3.0]]), torch.tensor([[2.0]]))
    >>> a.flatten().tolist(), b.flatten().tolist()
    ([-0.7071067690849304, 0.7071067690849304], [0.0])
    """
    train = features_train.flatten(1)
    test = features_test.flatten(1)
    dtype = torch.float64 if train.dtype == torch.float64 else torch.float32
    train64, test64 = train.double(), test.double()
    mean = train64.mean(dim=0)
    n = train64.shape[0]
    var = ((train64 - mean) ** 2).sum(dim=0) / max(n - 1, 1)
    std = var.sqrt()
    std = torch.where(std < 10 * torch.finfo(dtype).eps, torch.ones_like(std), std)
    return ((train64 - mean) / std).to(dtype), ((test64 - mean) / std).to(dtype)


def knn_predict(
    features_train: Tensor, y_train: Tensor, features_test: Tensor, *, k: int = 20, batch_size: int = 256
) -> Tensor:
    """Majority-vote predictions of the ``k`` nearest training examples (Euclidean distance).

    Neighbours at equal distance are taken in training-set order, and a tied vote goes to the
    smallest class index, so predictions are deterministic.
    """
    num_classes = int(y_train.max()) + 1
    train = features_train.double()
    predictions = []
    for start in range(0, features_test.shape[0], batch_size):
        chunk = features_test[start : start + batch_size].double()
        # Exact differences (no |a|^2 - 2ab + |b|^2 shortcut) so that distances, and therefore the
        # neighbour sets, match a direct computation.
        dist = torch.cdist(chunk, train, compute_mode="donot_use_mm_for_euclid_dist")
        order = torch.sort(dist, dim=1, stable=True).indices[:, :k]
        votes = torch.zeros(chunk.shape[0], num_classes, dtype=torch.long, device=chunk.device)
        votes.scatter_add_(1, y_train[order], torch.ones_like(order))
        predictions.append(votes.argmax(dim=1))  # argmax returns the first (smallest) class among ties
    return torch.cat(predictions)


def knn_probe(
    features_train: Tensor,
    y_train: Tensor,
    features_test: Tensor,
    y_test: Tensor,
    *,
    k: int = 20,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
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
        Test examples per distance computation (memory: ``batch_size * n_train`` doubles).
    device
        Where to compute distances.

    Returns
    -------
    float
        Fraction of test examples whose majority vote is the true label. Distances are
        Euclidean, computed exactly in float64; neighbours at equal distance are taken in
        training-set order and tied votes go to the smallest class index.

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([[0.0], [0.1], [5.0], [5.1]]); y = torch.tensor([0, 0, 1, 1])
    >>> knn_probe(x, y, torch.tensor([[0.05], [4.9]]), torch.tensor([0, 1]), k=1)
    1.0
    """
    xtr, ytr, xte, yte = _check_both("knn_probe", features_train, y_train, features_test, y_test)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= xtr.shape[0]:
        raise bad_argument(
            "knn_probe", "k", expected=f"an integer between 1 and the {xtr.shape[0]} training examples", found=repr(k)
        )
    if not isinstance(batch_size, int) or batch_size < 1:
        raise bad_argument("knn_probe", "batch_size", expected="a positive integer", found=describe(batch_size))
    dev = resolve_device(device, function="knn_probe")
    predictions = knn_predict(xtr.to(dev), ytr.to(dev), xte.to(dev), k=k, batch_size=batch_size)
    return float((predictions.cpu() == yte).double().mean())


def linear_probe(
    features_train: Tensor,
    y_train: Tensor,
    features_test: Tensor,
    y_test: Tensor,
    *,
    epochs: int = 100,
    lr: float = 1e-2,
    weight_decay: float = 1e-2,
    batch_size: int = 256,
    num_classes: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> float:
    """Test accuracy of an ``nn.Linear`` trained on fixed features with AdamW.

    Parameters
    ----------
    features_train, y_train, features_test, y_test
        Features (examples, features) and integer labels of both splits.
    epochs, lr, weight_decay, batch_size
        Training of the probe: AdamW with mini-batches in a seeded random order for a fixed
        number of epochs. The reference implementation trains 10 epochs at torch's AdamW
        defaults (``lr=1e-3``, ``weight_decay=1e-2``) on CIFAR-10, about 2,000 steps; on a few
        thousand examples that leaves the probe far from converged, so the defaults here are
        100 epochs at ``lr=1e-2`` (1,600 steps on 4,000 examples).
    num_classes
        Outputs of the probe (default: the largest label in either split plus one).
    seed
        Seed of the probe's initialisation and of the batch order.
    device
        Where to train.

    Returns
    -------
    float
        Fraction of test examples classified correctly after the last epoch.

    Examples
    --------
    >>> import torch
    >>> x = torch.cat([torch.randn(50, 2) - 3, torch.randn(50, 2) + 3]); y = torch.repeat_interleave(torch.tensor([0, 1]), 50)
    >>> linear_probe(x, y, x, y, batch_size=20)
    1.0
    """
    xtr, ytr, xte, yte = _check_both("linear_probe", features_train, y_train, features_test, y_test)
    for name, value in {"epochs": epochs, "batch_size": batch_size}.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise bad_argument("linear_probe", name, expected="a positive integer", found=describe(value))
    if not lr > 0:
        raise bad_argument("linear_probe", "lr", expected="a positive learning rate", found=repr(lr))
    classes = int(max(int(ytr.max()), int(yte.max()))) + 1
    if num_classes is not None:
        if num_classes < classes:
            raise bad_argument(
                "linear_probe",
                "num_classes",
                expected=f"at least {classes} (labels go up to {classes - 1})",
                found=repr(num_classes),
            )
        classes = int(num_classes)
    dev = resolve_device(device, function="linear_probe")
    xtr, ytr, xte = xtr.float().to(dev), ytr.to(dev), xte.float().to(dev)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        clf = nn.Linear(xtr.shape[1], classes)
    clf.to(dev)
    opt = torch.optim.AdamW(clf.parameters(), lr=lr, weight_decay=weight_decay)
    order_gen = torch.Generator().manual_seed(int(seed))
    n = xtr.shape[0]
    with torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(n, generator=order_gen).to(dev)
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                loss = nn.functional.cross_entropy(clf(xtr[idx]), ytr[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    with torch.no_grad():
        predictions = clf(xte).argmax(dim=1).cpu()
    return float((predictions == yte).double().mean())


def probe_features(
    features_train: Tensor,
    y_train: Tensor,
    features_test: Tensor,
    y_test: Tensor,
    *,
    probes: Sequence[str] = PROBES,
    scalings: Sequence[str] = SCALINGS,
    k: int = 20,
    epochs: int = 100,
    lr: float = 1e-2,
    weight_decay: float = 1e-2,
    batch_size: int = 256,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> xr.Dataset:
    """Every requested probe on raw and standardised features.

    Parameters
    ----------
    features_train, y_train, features_test, y_test
        Features (examples, features) and integer labels of both splits.
    probes
        Any of ``"linear"`` and ``"knn"``.
    scalings
        Any of ``"raw"`` and ``"standardized"`` (see :func:`standardize`).
    k
        Neighbours of the k-NN probe.
    epochs, lr, weight_decay, batch_size, seed
        Training of the linear probe (see :func:`linear_probe`).
    device
        Where to compute.

    Returns
    -------
    xarray.Dataset
        ``accuracy`` over (``probe``, ``scaling``).

    Examples
    --------
    >>> import torch
    >>> x = torch.randn(40, 3); y = (x[:, 0] > 0).long()
    >>> probe_features(x, y, x, y, k=1).accuracy.sel(probe="knn", scaling="raw").item()
    1.0
    """
    probes = _choose("probe_features", "probes", probes, PROBES)
    scalings = _choose("probe_features", "scalings", scalings, SCALINGS)
    xtr, ytr, xte, yte = _check_both("probe_features", features_train, y_train, features_test, y_test)
    values = np.full((len(probes), len(scalings)), np.nan)
    for j, scaling in enumerate(scalings):
        a, b = standardize(xtr, xte) if scaling == "standardized" else (xtr, xte)
        for i, name in enumerate(probes):
            if name == "knn":
                values[i, j] = knn_probe(a, ytr, b, yte, k=k, device=device)
            else:
                values[i, j] = linear_probe(
                    a,
                    ytr,
                    b,
                    yte,
                    epochs=epochs,
                    lr=lr,
                    weight_decay=weight_decay,
                    batch_size=batch_size,
                    seed=seed,
                    device=device,
                )
    result = xr.Dataset(
        {"accuracy": (("probe", "scaling"), values)}, coords={"probe": list(probes), "scaling": list(scalings)}
    )
    result.attrs = provenance_attrs(
        analysis="probe",
        k=k,
        linear_epochs=epochs,
        linear_lr=lr,
        linear_weight_decay=weight_decay,
        linear_batch_size=batch_size,
        seed=seed,
        n_train=int(xtr.shape[0]),
        n_test=int(xte.shape[0]),
    )
    return result


def _choose(function: str, argument: str, chosen: Sequence[str], allowed: Sequence[str]) -> tuple[str, ...]:
    if isinstance(chosen, str):
        chosen = (chosen,)
    chosen = tuple(chosen)
    unknown = [c for c in chosen if c not in allowed]
    if unknown or not chosen or len(set(chosen)) != len(chosen):
        raise bad_argument(function, argument, expected=f"distinct names from {tuple(allowed)}", found=repr(chosen))
    return chosen
