"""Every requested probe on every requested read-out of one pair of feature splits."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from landscape.core.device import resolve_device
from landscape.core.errors import bad_argument
from landscape.core.io import provenance_attrs
from landscape.probes._checks import check_both, choose
from landscape.probes._knn import knn_probe
from landscape.probes._linear import linear_probe
from landscape.probes._scaling import SCALINGS, scaled

__all__ = ["DEFAULT_SCALINGS", "PROBES", "probe_features"]

PROBES = ("linear", "knn")
#: The default read-out: standardised features, the reference's headline numbers.
DEFAULT_SCALINGS = ("standardized",)
_KNN_OPTIONS = ("k",)
_LINEAR_OPTIONS = ("solver", "C", "tol", "max_iter", "epochs", "lr", "weight_decay", "batch_size", "seed")


def check_probe_options(function: str, options: Mapping[str, object] | None) -> dict[str, object]:
    """Keyword options for :func:`probe_features`, with unknown names refused."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(_KNN_OPTIONS) - set(_LINEAR_OPTIONS))
    if unknown:
        raise bad_argument(
            function,
            "probe_options",
            expected=f"options of the probes: {[*_KNN_OPTIONS, *_LINEAR_OPTIONS]}",
            found=repr(unknown[0]),
        )
    return options


def probe_features(
    features_train: Tensor,
    y_train: Tensor,
    features_test: Tensor,
    y_test: Tensor,
    *,
    probes: Sequence[str] = PROBES,
    scalings: Sequence[str] = DEFAULT_SCALINGS,
    k: int = 20,
    solver: str = "lbfgs",
    C: float = 1.0,
    tol: float = 1e-4,
    max_iter: int = 1000,
    epochs: int = 100,
    lr: float = 1e-2,
    weight_decay: float = 1e-2,
    batch_size: int = 256,
    seed: int = 0,
    device: str | torch.device = "auto",
) -> xr.Dataset:
    """Every requested probe on each requested read-out of the features.

    Parameters
    ----------
    features_train, y_train, features_test, y_test
        Features (examples, features) and integer labels of both splits.
    probes
        Any of ``"linear"`` and ``"knn"``.
    scalings
        Any of ``"standardized"`` (default; see :func:`standardize`) and ``"raw"``.
    k
        Neighbours of the k-NN probe.
    solver, C, tol, max_iter, epochs, lr, weight_decay, batch_size, seed
        The linear probe (see :func:`linear_probe`; ``batch_size`` is the AdamW solver's).
    device
        Where to compute (``"auto"``: CUDA when present).

    Returns
    -------
    xarray.Dataset
        ``accuracy`` (fractions) over (``probe``, ``scaling``).

    Examples
    --------
    >>> import torch
    >>> x = torch.randn(40, 3); y = (x[:, 0] > 0).long()
    >>> probe_features(x, y, x, y, k=1, scalings=["raw"]).accuracy.sel(probe="knn", scaling="raw").item()
    1.0
    """
    fn = "probe_features"
    probes = choose(fn, "probes", probes, PROBES)
    scalings = choose(fn, "scalings", scalings, SCALINGS)
    xtr, ytr, xte, yte = check_both(fn, features_train, y_train, features_test, y_test)
    dev = resolve_device(device, function=fn)
    xtr, ytr, xte, yte = xtr.to(dev), ytr.to(dev), xte.to(dev), yte.to(dev)
    values = np.full((len(probes), len(scalings)), np.nan)
    for j, scaling in enumerate(scalings):
        a, b = scaled(scaling, xtr, xte)
        for i, name in enumerate(probes):
            if name == "knn":
                values[i, j] = knn_probe(a, ytr, b, yte, k=k, device=dev)
            else:
                values[i, j] = linear_probe(
                    a,
                    ytr,
                    b,
                    yte,
                    solver=solver,
                    C=C,
                    tol=tol,
                    max_iter=max_iter,
                    epochs=epochs,
                    lr=lr,
                    weight_decay=weight_decay,
                    batch_size=batch_size,
                    seed=seed,
                    device=dev,
                )
    result = xr.Dataset(
        {"accuracy": (("probe", "scaling"), values)}, coords={"probe": list(probes), "scaling": list(scalings)}
    )
    linear = {"solver": solver, "C": C, "tol": tol, "max_iter": max_iter}
    if solver == "adamw":
        linear = {"solver": solver, "epochs": epochs, "lr": lr, "weight_decay": weight_decay, "batch_size": batch_size}
        linear["seed"] = seed
    result.attrs = provenance_attrs(
        analysis="probe", k=k, linear=linear, n_train=int(xtr.shape[0]), n_test=int(xte.shape[0])
    )
    return result
