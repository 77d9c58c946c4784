"""Features at named layers (forward hooks), and probes of every layer of one or more networks."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
import xarray as xr
from torch import Tensor, nn

from landscape.core.data import as_splits
from landscape.core.device import resolve_device
from landscape.core.errors import bad_argument
from landscape.core.io import checkpoint_record, provenance_attrs
from landscape.core.spec import spec_of
from landscape.core.state import State, as_state, check_compatible
from landscape.probes.probes import PROBES, SCALINGS, probe_features

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
            # a copy: an in-place module after this one (ReLU(inplace=True)) would change the value
            collected[name].append(out.detach().flatten(1).to(device="cpu", dtype=torch.float32, copy=True))

        hooks.append(modules[name].register_forward_hook(hook))
    batches = 0
    try:
        for start in range(0, x.shape[0], batch_size):
            work(x[start : start + batch_size].to(dev))
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
    scalings: Sequence[str] = SCALINGS,
    k: int = 20,
    epochs: int = 100,
    lr: float = 1e-2,
    weight_decay: float = 1e-2,
    probe_batch_size: int = 256,
    seed: int = 0,
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
    probes, scalings, k, epochs, lr, weight_decay, probe_batch_size, seed
        As in :func:`~landscape.probes.probe_features` (``probe_batch_size`` is the linear
        probe's batch size).
    batch_size, device
        Forward passes.

    Returns
    -------
    xarray.Dataset
        ``accuracy`` over (``net``, ``layer``, ``probe``, ``scaling``); no ``net`` when a single
        State (or None) is given.

    Examples
    --------
    >>> import landscape as ls
    >>> data = ls.datasets.mnist1d(n_train=200, n_test=100)
    >>> model = ls.models.create("cnn1d", width=8, seed=0)
    >>> result = layerwise_probe(model, None, data, layers=["features.act1", "features"], probes=["knn"])
    >>> result.accuracy.dims
    ('layer', 'probe', 'scaling')
    """
    splits, single = as_splits(data, function="layerwise_probe")
    if single or "train" not in splits or "test" not in splits:
        raise bad_argument(
            "layerwise_probe",
            "data",
            expected="'train' and 'test' splits (probes are fit on one and scored on the other)",
            found=f"splits {list(splits)}",
        )
    names = _check_layers(model, layers, "layerwise_probe")
    nets: dict[str, State | None]
    if state is None:
        nets, named = {"net": None}, False
    elif isinstance(state, Mapping) and state and all(isinstance(v, Mapping) for v in state.values()):
        nets = {str(k): as_state(v, function="layerwise_probe", argument=f"state[{k!r}]") for k, v in state.items()}
        named = True
    else:
        nets, named = {"net": as_state(state, function="layerwise_probe")}, False
    x_train, y_train = splits["train"]
    x_test, y_test = splits["test"]
    per_net = []
    for net_state in nets.values():
        train_feats = features_at(model, net_state, x_train, layers=names, batch_size=batch_size, device=device)
        test_feats = features_at(model, net_state, x_test, layers=names, batch_size=batch_size, device=device)
        rows = [
            probe_features(
                train_feats[name],
                y_train,
                test_feats[name],
                y_test,
                probes=probes,
                scalings=scalings,
                k=k,
                epochs=epochs,
                lr=lr,
                weight_decay=weight_decay,
                batch_size=probe_batch_size,
                seed=seed,
                device="cpu" if resolve_device(device).type == "cpu" else device,
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
        k=k,
        linear_epochs=epochs,
        linear_lr=lr,
        linear_weight_decay=weight_decay,
        seed=seed,
    )
    return result
