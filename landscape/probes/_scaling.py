"""Feature standardisation with the training split's statistics."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["SCALINGS", "scaled", "standardize"]

#: Read-outs of a representation: standardised features (the reference's headline) and raw ones.
SCALINGS = ("standardized", "raw")


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


def scaled(scaling: str, features_train: Tensor, features_test: Tensor) -> tuple[Tensor, Tensor]:
    """The two splits read out as ``scaling`` says (``"standardized"`` or ``"raw"``)."""
    if scaling == "standardized":
        return standardize(features_train, features_test)
    return features_train, features_test
