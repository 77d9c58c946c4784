"""Validation shared by the probes: features and labels of two splits, and option names."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from landscape.core.errors import bad_argument


def check_pair(function: str, features: object, labels: object, names: tuple[str, str]) -> tuple[Tensor, Tensor]:
    """``(features, labels)`` as a 2-D tensor and 1-D int64 labels, or an error naming ``function``."""
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
    if labels.is_floating_point() and not torch.equal(labels, labels.round()):
        raise bad_argument(function, names[1], expected="integer class labels", found="non-integer floats")
    if features.shape[0] == 0:
        raise bad_argument(function, names[0], expected="at least one example", found="none")
    if not torch.isfinite(features).all():
        raise bad_argument(function, names[0], expected="finite features", found="NaN or Inf values")
    return features.flatten(1), labels.long()


def check_both(
    function: str, features_train: object, y_train: object, features_test: object, y_test: object
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Both splits checked, with the same number of features and non-negative labels."""
    xtr, ytr = check_pair(function, features_train, y_train, ("features_train", "y_train"))
    xte, yte = check_pair(function, features_test, y_test, ("features_test", "y_test"))
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


def choose(function: str, argument: str, chosen: Sequence[str] | str, allowed: Sequence[str]) -> tuple[str, ...]:
    """Distinct names out of ``allowed`` (a single string is one name)."""
    if isinstance(chosen, str):
        chosen = (chosen,)
    chosen = tuple(chosen)
    unknown = [c for c in chosen if c not in allowed]
    if unknown or not chosen or len(set(chosen)) != len(chosen):
        raise bad_argument(function, argument, expected=f"distinct names from {tuple(allowed)}", found=repr(chosen))
    return chosen
