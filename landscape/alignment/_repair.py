"""REPAIR (Jordan et al. 2023): give an interpolated network the activation statistics that
its endpoints have, by rescaling the last per-channel affine layer before every nonlinearity."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn

from landscape.alignment._activations import inputs_from, statistics
from landscape.alignment._align import build_graph
from landscape.alignment._result import load
from landscape.core.device import resolve_device
from landscape.core.errors import bad_argument
from landscape.core.state import State, check_compatible
from landscape.symmetry import RepairSite, SymmetryGraph

__all__ = ["Repair", "correct_statistics", "repair"]


def correct_statistics(
    graph: SymmetryGraph,
    state: Mapping[str, Tensor],
    x: Tensor,
    targets: Mapping[str, tuple[Tensor, Tensor]],
    *,
    sites: Sequence[RepairSite] | None = None,
    batch_size: int = 1024,
    eps: float = 1e-5,
    device: str | torch.device = "auto",
) -> State:
    """Rescale every site so that its units' mean and standard deviation on ``x`` equal
    ``targets[site.node]``.

    Sites are corrected in the order the network computes them, each measured after the
    earlier ones are corrected, so the statistics hold exactly for the returned state. A unit
    whose standard deviation is below ``eps`` is only shifted.

    Parameters
    ----------
    graph
        The model's symmetry graph (its REPAIR sites and traced module).
    state
        The state to correct.
    x
        Inputs to measure the statistics on.
    targets
        ``{site node: (mean, std)}`` per unit.
    sites
        The sites to correct (default: all of the graph's).
    batch_size
        Examples per forward pass.
    eps
        Units with a smaller standard deviation are only shifted.
    device
        Where the forward passes run (``"auto"``: CUDA when present); the state comes back
        on the CPU.

    Returns
    -------
    State
    """
    dev = resolve_device(device, function="correct_statistics")
    out = State({k: v.clone() if v.is_floating_point() else v for k, v in state.items()})
    for site in sites if sites is not None else graph.repair_sites:
        (mean, std) = statistics(graph, out, x, [(site.node, site.axis)], batch_size=batch_size, device=dev)[
            (site.node, site.axis)
        ]
        t_mean, t_std = targets[site.node]
        scale = torch.where(std > eps, t_std / std.clamp_min(eps), torch.ones_like(std))
        w, b = out[site.weight], out[site.bias]
        shape = (-1, *([1] * (w.dim() - 1)))
        out[site.weight] = (w.double() * scale.reshape(shape)).to(w.dtype)
        out[site.bias] = ((b.double() - mean) * scale + t_mean).to(b.dtype)
    return out


class Repair:
    """A correction for :func:`landscape.connectivity.interpolate`: ``repair(model, state, alpha)``
    returns ``state`` with REPAIR's statistics, the ``(1 - alpha), alpha`` mix of the
    endpoints' means and standard deviations at every site.

    Build it with :func:`repair`.

    Attributes
    ----------
    name : str
        ``"repair"`` (recorded by ``interpolate`` in the curve's attrs).
    sites : list of RepairSite
        The corrected layers.
    endpoint_statistics : dict
        ``{node: ((mean_a, std_a), (mean_b, std_b))}``.
    """

    name = "repair"

    def __init__(
        self,
        model: nn.Module,
        graph: SymmetryGraph,
        a: State,
        b: State,
        x: Tensor,
        *,
        batch_size: int,
        eps: float,
        include_output: bool = True,
        device: torch.device | str = "cpu",
    ) -> None:
        self.model = model
        self.graph = graph
        self.a, self.b = a, b
        self.x = x
        self.batch_size = batch_size
        self.eps = eps
        self.device = torch.device(device)
        self.sites = [s for s in graph.repair_sites if include_output or not s.output]
        keys = [(s.node, s.axis) for s in self.sites]
        stats_a = statistics(graph, a, x, keys, batch_size=batch_size, device=self.device)
        stats_b = statistics(graph, b, x, keys, batch_size=batch_size, device=self.device)
        self.endpoint_statistics = {s.node: (stats_a[(s.node, s.axis)], stats_b[(s.node, s.axis)]) for s in self.sites}

    def targets(self, alpha: float) -> dict[str, tuple[Tensor, Tensor]]:
        """The target mean and standard deviation of every site at ``alpha``."""
        out = {}
        for node, ((ma, sa), (mb, sb)) in self.endpoint_statistics.items():
            out[node] = ((1 - alpha) * ma + alpha * mb, (1 - alpha) * sa + alpha * sb)
        return out

    def __call__(self, model: nn.Module, state: Mapping[str, Tensor], alpha: float) -> State:
        return correct_statistics(
            self.graph,
            state,
            self.x,
            self.targets(float(alpha)),
            sites=self.sites,
            batch_size=self.batch_size,
            eps=self.eps,
            device=self.device,
        )

    def curve(self, data: object, *, alphas: int | Sequence[float] | np.ndarray = 25, **kwargs: object) -> xr.Dataset:
        """The REPAIRed interpolation curve in one call:
        ``interpolate(model, a, b, data, alphas=alphas, correct=self, **kwargs)``."""
        from landscape.connectivity import interpolate

        return interpolate(self.model, self.a, self.b, data, alphas=alphas, correct=self, **kwargs)

    def __repr__(self) -> str:
        return f"Repair({len(self.sites)} sites: {', '.join(s.module for s in self.sites[:4])}{'...' if len(self.sites) > 4 else ''})"


def repair(
    model: nn.Module,
    a: Mapping[str, Tensor] | nn.Module | str,
    b_aligned: Mapping[str, Tensor] | nn.Module | str,
    data: object,
    *,
    n_examples: int | None = None,
    batch_size: int = 1024,
    graph: SymmetryGraph | None = None,
    eps: float = 1e-5,
    include_output: bool = True,
    device: str | torch.device = "auto",
) -> Repair:
    """REPAIR's correction of interpolated networks (Jordan et al. 2023), for ``interpolate``.

    Before every nonlinearity, and before the output, the network's last per-channel affine
    layer (a Linear or Conv with bias, or the affine part of a BatchNorm/LayerNorm/GroupNorm)
    is a *site*; the output layer is included as in Jordan et al.'s MLP code. At
    ``alpha`` each site's units get the mean ``(1 - alpha) mu_a + alpha mu_b`` and standard
    deviation ``(1 - alpha) sigma_a + alpha sigma_b`` of the endpoints, measured on ``data``,
    by rescaling the site's weight rows and bias. The endpoints' statistics are measured once
    here; every call measures the interpolated network's, site by site.

    Parameters
    ----------
    model
        The architecture.
    a, b_aligned
        The endpoints, ``b_aligned`` aligned to ``a`` (e.g. ``align(model, a, b).apply(b)``).
    data
        Splits (the ``train`` split is used), an ``(x, y)`` pair or inputs.
    n_examples
        Use the first ``n_examples`` inputs (default all).
    batch_size
        Examples per forward pass.
    graph
        A symmetry graph of ``model`` to reuse.
    eps
        Units with a smaller standard deviation are only shifted.
    include_output
        Also correct the output layer's statistics (the logits).
    device
        Where the forward passes run (``"auto"``: CUDA when present); corrected states come
        back on the CPU.

    Returns
    -------
    Repair
        A callable ``correct(model, state, alpha) -> state`` with ``name = "repair"``;
        ``.curve(data, alphas=...)`` computes the REPAIRed curve in one call.

    Examples
    --------
    >>> import torch, landscape as ls
    >>> from landscape.connectivity import interpolate
    >>> model = ls.models.create("mlp", width=8, depth=1, seed=0)
    >>> a, b = ls.state_of(model), ls.state_of(ls.models.create("mlp", width=8, depth=1, seed=1))
    >>> data = (torch.randn(64, 40), torch.randint(0, 10, (64,)))
    >>> fix = repair(model, a, b, data)
    >>> curve = interpolate(model, a, b, data, alphas=3, correct=fix, progress=False)
    >>> curve.attrs["correction"]
    'repair'
    """
    if not isinstance(model, nn.Module):
        raise bad_argument("repair", "model", expected="an nn.Module (the architecture)", found=model)
    sa = load(a, function="repair", argument="a")
    sb = load(b_aligned, function="repair", argument="b_aligned")
    check_compatible(model.state_dict(), sa, function="repair", names=("model", "a"))
    check_compatible(sa, sb, function="repair", names=("a", "b_aligned"))
    x = inputs_from(data, function="repair", n_examples=n_examples)
    graph = build_graph(model, graph, None, data, function="repair")
    if graph.module is None:
        raise bad_argument("repair", "graph", expected="a traced symmetry graph", found="one built from a manual spec")
    if not any(include_output or not s.output for s in graph.repair_sites):
        raise bad_argument(
            "repair",
            "model",
            expected="a layer REPAIR can rescale before some nonlinearity (a Linear/Conv with bias, or a norm "
            "layer with affine parameters)",
            found="none (e.g. bias-free convolutions without normalisation)",
            fix="Use interpolate(..., bn='reset') for BatchNorm networks, or a model with biases.",
        )
    if not isinstance(batch_size, int) or batch_size < 1:
        raise bad_argument("repair", "batch_size", expected="a positive integer", found=repr(batch_size))
    dev = resolve_device(device, function="repair")
    return Repair(model, graph, sa, sb, x, batch_size=batch_size, eps=eps, include_output=include_output, device=dev)
