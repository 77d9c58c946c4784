"""Concept guidance: add concept directions to a model's activations, or project them out,
while it runs."""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from landscape.concepts.control_vectors import ControlVector
from landscape.concepts.hidden import runner
from landscape.concepts.models import hidden_size
from landscape.concepts.positions import PositionRule, position_rule, steer_mask
from landscape.concepts.probes import ConceptProbe, check_probe_for
from landscape.concepts.sites import SITES, find_layers, layer_point, register_edit
from landscape.core.errors import bad_argument

__all__ = ["OPERATIONS", "Guidance", "GuidancePart", "Steering", "default_layers", "guide"]

OPERATIONS = ("add", "ablate", "ablate_then_add")


@dataclass(frozen=True)
class Steering:
    """One concept to steer with, for ``guide(lm, [Steering(...), ...])``: each carries its
    own strength, layers, site and operation (see :func:`guide` for their meaning).

    Examples
    --------
    >>> from landscape.concepts import ControlVector
    >>> import numpy as np
    >>> Steering(ControlVector({1: np.ones(4)}), alpha=2.0).operation
    'add'
    """

    source: ConceptProbe | ControlVector
    alpha: float | None = None
    layers: int | Sequence[int] | None = None
    top_k: int | None = None
    site: str | None = None
    operation: str = "add"
    relative: bool | None = None


@dataclass(frozen=True)
class GuidancePart:
    """What one steering does: the layers, the absolute strength added at each (``alpha``
    times the layer's mean activation norm when relative), the site and the operation."""

    layers: list[int]
    strengths: dict[int, float]
    site: str
    operation: str
    alpha: float
    relative: bool


@dataclass
class Guidance:
    """What an active :func:`guide` context does: one :class:`GuidancePart` per steering, the
    positions and whether norms are preserved. ``layers`` is the union of steered layers;
    ``strengths``, ``site``, ``alpha``, ``relative`` and ``operation`` describe a context with
    one steering."""

    parts: list[GuidancePart]
    positions: str
    preserve_norm: bool
    _rule: PositionRule | None = field(default=None, repr=False)
    _mask: torch.Tensor | None = field(default=None, repr=False)

    @property
    def layers(self) -> list[int]:
        return sorted({layer for part in self.parts for layer in part.layers})

    def _single(self, name: str) -> GuidancePart:
        if len(self.parts) != 1:
            raise bad_argument(
                f"Guidance.{name}",
                "guidance",
                expected="a guide with one steering",
                found=f"{len(self.parts)} steerings",
                fix=f"Read guidance.parts[i].{name}.",
            )
        return self.parts[0]

    @property
    def strengths(self) -> dict[int, float]:
        return self._single("strengths").strengths

    @property
    def site(self) -> str:
        return self._single("site").site

    @property
    def alpha(self) -> float:
        return self._single("alpha").alpha

    @property
    def relative(self) -> bool:
        return self._single("relative").relative

    @property
    def operation(self) -> str:
        return self._single("operation").operation


def default_layers(probe: ConceptProbe, top_k: int | None = None) -> list[int]:
    """The ``top_k`` probed layers with the best validation accuracy (default: half of them,
    as in von Rütte et al., who guide the best 16 of 32 layers)."""
    k = max(1, math.ceil(len(probe.layers_) / 2)) if top_k is None else top_k
    return probe.top_layers(k)


@dataclass
class _Edit:
    """Everything steered at one (layer, site): directions projected out and the sum of the
    vectors added, in float64 on the CPU; cast to each device and dtype on first use."""

    ablate: list[np.ndarray] = field(default_factory=list)
    add: np.ndarray | None = None
    _placed: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor | None, torch.Tensor | None]] = field(
        default_factory=dict
    )

    def placed(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        key = (device, dtype)
        if key not in self._placed:
            basis = None
            if self.ablate:
                # An orthonormal basis of the ablated directions: projecting out their span
                # leaves zero projection on each of them, whatever their order or overlap.
                q, r = np.linalg.qr(np.stack(self.ablate, axis=1))
                keep = np.abs(np.diag(r)) > 1e-10 * np.abs(np.diag(r)).max()
                basis = torch.as_tensor(q[:, keep].T.copy()).to(device=device, dtype=dtype)
            add = None
            if self.add is not None and np.any(self.add):
                add = torch.as_tensor(self.add).to(device=device, dtype=dtype)
            self._placed[key] = (basis, add)
        return self._placed[key]


def _apply(x: torch.Tensor, edit: _Edit, mask: torch.Tensor | None, preserve_norm: bool) -> torch.Tensor:
    # Half-precision activations are steered in float32 (their norms overflow or lose digits).
    work = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    basis, add = edit.placed(work.device, work.dtype)
    if basis is None and add is None:
        return x  # nothing to do (alpha = 0): bit-identical
    y = work
    if basis is not None:
        y = y - (y @ basis.T) @ basis
    if add is not None:
        y = y + add
    if preserve_norm:
        tiny = torch.finfo(work.dtype).tiny
        y = y * (work.norm(dim=-1, keepdim=True) / y.norm(dim=-1, keepdim=True).clamp_min(tiny))
    y = y.to(x.dtype)
    if mask is not None:
        mask = mask.to(x.device)
        if x.dim() == 2:  # OPT's MLP runs on (batch * length, hidden)
            mask = mask.reshape(-1)
        y = torch.where(mask[..., None], y, x)
    return y


def _steerings(
    lm: nn.Module,
    probe: Any,
    options: dict[str, Any],
    *,
    function: str,
) -> list[Steering]:
    if isinstance(probe, (ConceptProbe, ControlVector)):
        return [Steering(probe, **options)]
    if isinstance(probe, Steering):
        probe = [probe]
    if isinstance(probe, Sequence) and probe and all(isinstance(s, Steering) for s in probe):
        given = {k: v for k, v in options.items() if v != _DEFAULTS[k]}
        if given:
            raise bad_argument(
                function,
                ", ".join(sorted(given)),
                expected="per-steering options inside each Steering when several are given",
                found=f"{given} passed to guide",
                fix="Write guide(lm, [Steering(probe, alpha=..., layers=...), ...]).",
            )
        return list(probe)
    raise bad_argument(
        function,
        "probe",
        expected="a fitted ConceptProbe, a ControlVector, or a list of Steering",
        found=probe,
    )


_DEFAULTS: dict[str, Any] = {
    "alpha": None,
    "layers": None,
    "top_k": None,
    "site": None,
    "operation": "add",
    "relative": None,
}


def _resolve(
    lm: nn.Module, blocks: nn.ModuleList, steering: Steering, *, function: str
) -> tuple[GuidancePart, dict[int, tuple[np.ndarray, float]]]:
    """Layers, site and (unit direction, strength) per layer of one steering."""
    source, operation = steering.source, steering.operation
    if operation not in OPERATIONS:
        raise bad_argument(function, "operation", expected=f"one of {OPERATIONS}", found=repr(operation))
    alpha = steering.alpha
    if alpha is None:
        if operation == "ablate":
            alpha = 0.0
        elif isinstance(source, ControlVector):
            alpha = 1.0
        else:
            raise bad_argument(function, "alpha", expected=f"a strength for operation {operation!r}", found="None")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise bad_argument(function, "alpha", expected="a finite number", found=repr(alpha))
    if isinstance(source, ConceptProbe):
        source._check_fitted(function)
        check_probe_for(source, hidden_size(lm), len(blocks), function)
        known, recorded = source.layers_.tolist(), source.site_
        relative = True if steering.relative is None else bool(steering.relative)
    else:
        if source.hidden_size != hidden_size(lm):
            raise bad_argument(
                function,
                "probe",
                expected=f"vectors of this model's width {hidden_size(lm)}",
                found=f"a control vector of width {source.hidden_size}",
            )
        known, recorded = source.layers, source.site
        if steering.relative:
            raise bad_argument(
                function,
                "relative",
                expected="relative=False or None for a ControlVector (its vectors are absolute)",
                found="True",
            )
        relative = False
    site = steering.site or recorded
    if site is None:
        raise bad_argument(
            function, "site", expected=f"one of {SITES} (the probe does not record its site)", found=None
        )
    if site not in SITES:
        raise bad_argument(function, "site", expected=f"one of {SITES}", found=repr(site))
    if relative and recorded is not None and site != recorded:
        raise bad_argument(
            function,
            "site",
            expected=f"the probe's site {recorded!r} for a relative alpha (its norms were measured there)",
            found=repr(site),
            fix="Pass relative=False for an absolute alpha, or fit the probe at that site.",
        )
    if steering.layers is None:
        chosen = default_layers(source, steering.top_k) if isinstance(source, ConceptProbe) else list(known)
    else:
        raw = [steering.layers] if isinstance(steering.layers, int) else list(steering.layers)
        chosen = sorted({int(layer) for layer in raw})
        unknown = [layer for layer in chosen if layer not in known]
        if not chosen or unknown:
            raise bad_argument(
                function,
                "layers",
                expected=f"layers the probe was fit on ({known})",
                found=f"{unknown or 'none'}",
            )
    too_deep = [layer for layer in chosen if layer > len(blocks)]
    if too_deep:
        raise bad_argument(
            function, "layers", expected=f"layers of this model (0..{len(blocks)})", found=f"layers {too_deep}"
        )
    units: dict[int, tuple[np.ndarray, float]] = {}
    strengths: dict[int, float] = {}
    for layer in chosen:
        if isinstance(source, ConceptProbe):
            j = int(np.where(source.layers_ == layer)[0][0])
            vector = np.asarray(source.directions_[j], dtype=np.float64)
            scale = float(source.mean_norm_[j]) if relative else 1.0
        else:
            vector = np.asarray(source.vectors[layer], dtype=np.float64)
            scale = float(np.linalg.norm(vector))
        norm = float(np.linalg.norm(vector))
        if not math.isfinite(norm) or norm == 0:
            raise bad_argument(function, "probe", expected="non-zero directions", found=f"layer {layer}: norm {norm}")
        strength = float(alpha) * scale
        strengths[layer] = strength
        units[layer] = (vector / norm, strength)
    part = GuidancePart(chosen, strengths, site, operation, float(alpha), relative)
    return part, units


@contextmanager
def guide(
    lm: nn.Module,
    probe: ConceptProbe | ControlVector | Sequence[Steering],
    *,
    alpha: float | None = None,
    layers: int | Sequence[int] | None = None,
    top_k: int | None = None,
    site: str | None = None,
    operation: str = "add",
    relative: bool | None = None,
    preserve_norm: bool = True,
    positions: Any = "all",
    layer_path: str | None = None,
) -> Iterator[Guidance]:
    """Steer a model along concept directions while it runs: add ``alpha`` times the unit
    direction, project the direction out, or both, at chosen layers and positions.

    Inside the context every forward pass of ``lm`` is guided (``lm(...)``,
    ``lm.generate(...)``, the scoring functions of this package); leaving it removes the
    hooks, restoring the model bit for bit.

    Parameters
    ----------
    lm
        The model the probe was fit on (a probe of another width or depth is refused).
    probe
        A fitted :class:`ConceptProbe` (``-probe`` guides towards the opposite concept), a
        :class:`ControlVector` (absolute per-layer vectors, e.g. from
        :func:`load_control_vector`), or a list of :class:`Steering`, each with its own
        strength, layers, site and operation (then pass those options only inside each
        Steering). Steerings at the same layer and site compose: every ablated direction is
        projected out (their span, so each keeps zero projection), then every added vector is
        added, then the norm is restored once when ``preserve_norm``.
    alpha
        Strength; with ``relative`` (default for probes) in units of the mean activation norm
        of each layer (``probe.mean_norm_``), else absolute; for a control vector a scale of
        its vectors (default 1). Negative values suppress the concept. Not used by
        ``operation="ablate"``.
    layers, top_k
        Layers to steer; default: the ``top_k`` layers by validation accuracy (half of the
        probed layers when ``top_k`` is None), every layer of a control vector.
    site
        Where to steer (default: the site the probe was fit at; see :func:`hidden_states`).
    operation
        ``"add"``: ``x + alpha * s * u``; ``"ablate"``: ``x - (x . u) u``, the component along
        the unit direction ``u`` removed; ``"ablate_then_add"``: ablate, then add.
    relative
        Whether ``alpha`` is relative to the layer's mean activation norm (default True for
        a probe; a control vector is always absolute).
    preserve_norm
        Rescale each steered activation to its original norm (as von Rütte et al. do). Without
        it an added change is exactly ``alpha * s * u`` and linear in ``alpha``.
    positions
        ``"all"``: every position, prompt included; ``"new"``: only the positions the model
        generates from: the last prompt token (so the first generated token is steered too)
        and every generated token, with or without the KV cache; non-negative token indices
        (an int or a list), a ``slice`` of non-negative bounds (``slice(5, None)``: from the
        sixth token on, generated ones included), or a boolean mask ``(length,)`` or
        ``(batch, length)``. Positions count each sequence's tokens from its first
        non-padding one; padding is never steered.
    layer_path
        Dotted path to the decoder blocks for unusual models.

    Yields
    ------
    Guidance
        The steered layers and absolute strengths of each steering.

    Examples
    --------
    >>> from landscape.concepts import load_lm, hidden_states, fit_probe, guide
    >>> lm, tok = load_lm("tiny")
    >>> data = [("Hi", "Great!", 1), ("Hi", "Awful.", 0), ("Yo", "Lovely.", 1), ("Yo", "Bad.", 0)]
    >>> probe = fit_probe(hidden_states(lm, tok, data, progress=False), val_fraction=0)
    >>> with guide(lm, probe, alpha=0.1) as g:
    ...     _ = lm(**tok("Hello", return_tensors="pt"))
    >>> g.layers
    [1]
    """
    function = "guide"
    options = {"alpha": alpha, "layers": layers, "top_k": top_k, "site": site, "operation": operation}
    options["relative"] = relative
    steerings = _steerings(lm, probe, options, function=function)
    rule = position_rule(positions, function=function)
    first = steerings[0].source
    path = layer_path or (first.layer_path_ if isinstance(first, ConceptProbe) else None)
    blocks = find_layers(lm, path, function=function)
    parts: list[GuidancePart] = []
    edits: dict[tuple[int, str], _Edit] = {}
    for steering in steerings:
        part, units = _resolve(lm, blocks, steering, function=function)
        parts.append(part)
        for layer, (unit, strength) in units.items():
            edit = edits.setdefault((layer, part.site), _Edit())
            if part.operation in ("ablate", "ablate_then_add"):
                edit.ablate.append(unit)
            if part.operation in ("add", "ablate_then_add"):
                edit.add = (0.0 if edit.add is None else edit.add) + strength * unit
    points = {key: layer_point(lm, blocks, key[0], key[1], function=function) for key in edits}
    state = Guidance(parts, rule.describe(), bool(preserve_norm), rule)

    call = runner(lm, blocks)
    signature = inspect.signature(call.forward)

    def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        try:
            arguments = signature.bind_partial(*args, **kwargs).arguments
        except TypeError:
            arguments = dict(kwargs)
        if "kwargs" in arguments and isinstance(arguments["kwargs"], dict):
            arguments = {**arguments["kwargs"], **arguments}
        state._mask = steer_mask(rule, arguments)

    def make_edit(edit: _Edit):
        return lambda x: _apply(x, edit, state._mask, state.preserve_norm)

    handles = [call.register_forward_pre_hook(pre_hook, with_kwargs=True)]
    try:
        for key, edit in edits.items():
            handles.append(register_edit(points[key], make_edit(edit)))
        yield state
    finally:
        for handle in handles:
            handle.remove()
        state._mask = None
        rule.reset()
