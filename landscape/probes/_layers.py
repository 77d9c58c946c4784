"""Features at named layers (forward hooks), and probes of every layer of one or more networks."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
import xarray as xr
from torch import Tensor, nn

from landscape.core.data import as_splits, batch_slices
from landscape.core.device import resolve_device
from landscape.core.errors import bad_argument
from landscape.core.io import checkpoint_record, provenance_attrs
from landscape.core.spec import spec_of
from landscape.core.state import State, as_state, check_compatible
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


@torch.no_grad()
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
        Where to run the model.

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
    dev = resolve_device(device, function="features_at")
    work = copy.deepcopy(model)
    if state is not None:
        state = as_state(state, function="features_at")
        check_compatible(work.state_dict(), state, function="features_at", names=("model", "state"))
        work.load_state_dict(state)
    work.to(dev).eval()
    modules = dict(work.named_modules())
    collected: dict[str, list[Tensor]] = {name: [] for name in names}
    hooks = []
    for name in names:

        def hook(_module: nn.Module, _inputs: object, output: object, name: str = name) -> None:
            out = output[0] if isinstance(output, (tuple, list)) else output
            collected[name].append(out.detach().flatten(1).float().cpu())

        hooks.append(modules[name].register_forward_hook(hook))
    batches = 0
    try:
        for rows in batch_slices(x.shape[0], batch_size):
            work(x[rows].to(dev))
            batches += 1
    finally:
        for h in hooks:
            h.remove()
    for name, parts in collected.items():
        if len(parts) != batches:
            raise bad_argument(
                "features_at",
                "layers",
                expected="modules that run once per forward pass",
                found=f"{name!r}, which ran {len(parts)} times in {batches} forward passes",
                fix="Hook a module that is not reused (e.g. give each activation its own module).",
            )
    return {name: torch.cat(parts) for name, parts in collected.items()}


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
    x_train, y_train = splits["train"]
    x_test, y_test = splits["test"]
    per_net = []
    for net_state in nets.values():
        train_feats = features_at(model, net_state, x_train, layers=names, batch_size=batch_size, device=dev)
        test_feats = features_at(model, net_state, x_test, layers=names, batch_size=batch_size, device=dev)
        rows = [
            probe_features(
                train_feats[name],
                y_train,
                test_feats[name],
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
