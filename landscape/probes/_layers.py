"""Features at named layers (through the engine), and probes of every layer of one or more networks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import xarray as xr
from torch import Tensor, nn

from landscape.core import run_points
from landscape.core.data import as_splits
from landscape.core.device import resolve_device
from landscape.core.errors import bad_argument
from landscape.core.io import checkpoint_record, provenance_attrs
from landscape.core.spec import spec_of
from landscape.core.state import State, as_state, state_of
from landscape.probes._probe import DEFAULT_SCALINGS, PROBES, check_probe_options, probe_features

__all__ = ["features_at", "layerwise_probe"]


def _check_layers(model: nn.Module, layers: Sequence[str] | str | None, function: str) -> tuple[str, ...]:
    modules = dict(model.named_modules())
    if layers is None:
        if "features" not in modules:
            raise bad_argument(
                function,
                "layers",
                expected="names of submodules (the default 'features' needs a zoo-shaped model)",
                found=f"a {type(model).__name__} without a 'features' child",
                fix=f"Pass layers=..., e.g. one of {[n for n in modules if n][:8]}.",
            )
        return ("features",)
    if isinstance(layers, str):
        layers = (layers,)
    layers = tuple(layers)
    unknown = [name for name in layers if name not in modules]
    if unknown or not layers:
        raise bad_argument(
            function,
            "layers",
            expected=f"names of submodules of the model, such as {[n for n in modules if n][:10]}",
            found=repr(unknown[0] if unknown else layers),
        )
    if len(set(layers)) != len(layers):
        raise bad_argument(function, "layers", expected="distinct layer names", found=repr(layers))
    return layers


def _collect(
    model: nn.Module,
    points: Mapping[str, State],
    data: Mapping[str, Tensor],
    names: Sequence[str],
    *,
    batch_size: int,
    device: str | torch.device,
    function: str,
) -> dict[str, dict[str, dict[str, Tensor]]]:
    """Features at ``names`` of every point on every split, by the engine: {point: {split:
    {layer: (examples, features) float tensor on the CPU}}}."""
    labels = list(points)
    unlabelled = {split: ((x,), None) for split, x in data.items()}
    parts = {label: {split: {name: [] for name in names} for split in data} for label in labels}
    run = run_points(
        model,
        dict(points),
        unlabelled,
        features=list(names),
        batch_size=batch_size,
        device=device,
        function=function,
    )
    try:
        for out in run:
            for p, index in enumerate(out.points):
                for name in names:
                    parts[labels[index]][out.split][name].append(out.features[name][p].flatten(1).float().cpu())
    finally:
        run.close()
    return {
        label: {split: {name: torch.cat(chunks) for name, chunks in layers.items()} for split, layers in splits.items()}
        for label, splits in parts.items()
    }


def features_at(
    model: nn.Module,
    state: Mapping[str, Tensor] | None,
    x: Tensor,
    *,
    layers: Sequence[str] | str | None = None,
    batch_size: int = 1024,
    device: str | torch.device = "auto",
) -> dict[str, Tensor]:
    """Outputs of named submodules for inputs ``x``, in eval mode, flattened per example.

    Runs through the engine (:func:`landscape.core.run_points` with ``features=``).

    Parameters
    ----------
    model
        The architecture (not modified).
    state
        Weights to load (None: the model's own).
    x
        Inputs, examples on the first axis.
    layers
        Names from ``model.named_modules()``; default ``"features"`` (the representation of a
        zoo model, i.e. the input of its linear classifier).
    batch_size
        Examples per forward pass.
    device
        Where to run the model (``"auto"``: CUDA when present).

    Returns
    -------
    dict of str to Tensor
        One (examples, features) float tensor per layer, on the CPU.

    Examples
    --------
    >>> import torch, landscape as ls
    >>> model = ls.models.create("mlp", width=8, depth=2, seed=0)
    >>> feats = features_at(model, None, torch.randn(5, 40), layers=["features.act1", "features"])
    >>> {k: tuple(v.shape) for k, v in feats.items()}
    {'features.act1': (5, 8), 'features': (5, 8)}
    """
    names = _check_layers(model, layers, "features_at")
    point = state_of(model) if state is None else as_state(state, function="features_at")
    found = _collect(
        model, {"net": point}, {"data": x}, names, batch_size=batch_size, device=device, function="features_at"
    )
    return found["net"]["data"]


def layerwise_probe(
    model: nn.Module,
    state: Mapping[str, Tensor] | Mapping[str, Mapping[str, Tensor]] | None,
    data: object,
    *,
    layers: Sequence[str] | str | None = None,
    probes: Sequence[str] = PROBES,
    scalings: Sequence[str] = DEFAULT_SCALINGS,
    probe_options: Mapping[str, object] | None = None,
    batch_size: int = 1024,
    device: str | torch.device = "auto",
) -> xr.Dataset:
    """Probe the features of one network, or several, at named layers.

    Features are collected with forward hooks on the ``train`` split (to fit the probes) and
    the ``test`` split (to score them); see :func:`~landscape.probes.probe_features`.

    Parameters
    ----------
    model
        The architecture.
    state
        A State; or a mapping from network names to States (e.g. ``{"teacher": t,
        "student": s}``), which adds a ``net`` dimension; or None for the model's own weights.
    data
        :class:`~landscape.core.data.Splits` or a dict with ``train`` and ``test`` splits.
    layers
        Submodule names; default ``"features"``.
    probes, scalings
        As in :func:`~landscape.probes.probe_features` (default: both probes on standardised
        features).
    probe_options
        Keyword options of :func:`~landscape.probes.probe_features` (``k``, ``solver``,
        ``C``, ``tol``, ``max_iter``, ``epochs``, ``lr``, ``weight_decay``, ``batch_size``,
        ``seed``).
    batch_size
        Examples per forward pass.
    device
        Where to run the model and the probes (``"auto"``: CUDA when present); results come
        back on the CPU.

    Returns
    -------
    xarray.Dataset
        ``accuracy`` (fractions) over (``net``, ``layer``, ``probe``, ``scaling``); no ``net``
        when a single State (or None) is given.

    Examples
    --------
    >>> import landscape as ls
    >>> data = ls.datasets.mnist1d(n_train=200, n_test=100)
    >>> model = ls.models.create("cnn1d", width=8, seed=0)
    >>> result = layerwise_probe(model, None, data, layers=["features.act1", "features"], probes=["knn"])
    >>> result.accuracy.dims
    ('layer', 'probe', 'scaling')
    """
    fn = "layerwise_probe"
    splits, single = as_splits(data, function=fn)
    if single or "train" not in splits or "test" not in splits:
        raise bad_argument(
            fn,
            "data",
            expected="'train' and 'test' splits (probes are fit on one and scored on the other)",
            found=f"splits {list(splits)}",
        )
    names = _check_layers(model, layers, fn)
    options = check_probe_options(fn, probe_options)
    dev = resolve_device(device, function=fn)
    nets: dict[str, State | None]
    if state is None:
        nets, named = {"net": None}, False
    elif isinstance(state, Mapping) and state and all(isinstance(v, Mapping) for v in state.values()):
        nets = {str(k): as_state(v, function=fn, argument=f"state[{k!r}]") for k, v in state.items()}
        named = True
    else:
        nets, named = {"net": as_state(state, function=fn)}, False
    (x_train, y_train), (x_test, y_test) = splits["train"], splits["test"]
    points = {k: state_of(model) if v is None else v for k, v in nets.items()}
    found = _collect(
        model, points, {"train": x_train, "test": x_test}, names, batch_size=batch_size, device=dev, function=fn
    )
    per_net = []
    for label in nets:
        rows = [
            probe_features(
                found[label]["train"][name],
                y_train,
                found[label]["test"][name],
                y_test,
                probes=probes,
                scalings=scalings,
                device=dev,
                **options,
            ).accuracy
            for name in names
        ]
        per_net.append(xr.concat(rows, dim="layer").assign_coords(layer=list(names)))
    accuracy = per_net[0] if not named else xr.concat(per_net, dim="net").assign_coords(net=list(nets))
    result = xr.Dataset({"accuracy": accuracy})
    result.attrs = provenance_attrs(
        analysis="layerwise_probe",
        model=spec_of(model) or type(model).__name__,
        states={k: checkpoint_record(v) for k, v in nets.items() if v is not None},
        data=getattr(splits, "name", "data"),
        probe_options=options,
    )
    return result
