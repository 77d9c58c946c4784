"""The three ways the engine evaluates many parameter points; all give the same numbers.

- ``loop``: one point at a time, copied into the engine's private copy of the model.
- ``affine``: for a line or plane on the CPU. The first parametrised layer sees the same
  input at every point and its output is linear in its parameters, so its output at point
  k is ``sum_m w[k, m] * layer(x; basis_m)``: M products replace K. The rest of the network
  runs per point.
- ``vmap``: ``torch.func.vmap`` over chunks of stacked points (the fast path on GPUs).

Each strategy calls ``consume(points, split, logits, targets)`` with logits of shape
(len(points), n, ...), and the caller accumulates metrics.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from landscape.core.batchnorm import fresh_bn_buffers, recompute_mode
from landscape.core.data import batches
from landscape.core.family import AffineFamily, combine
from landscape.core.metrics import model_output_logits

__all__ = ["STRATEGIES", "Job", "find_first_layer", "first_layer_flop_share"]

STRATEGIES = ("auto", "loop", "affine", "vmap")
# Exact types only: a subclass may override forward with something not linear in the weights
# (weight standardisation, LoRA adapters, ...).
LINEAR_IN_PARAMETERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)
DEFAULT_BN_BATCH_SIZE = 1024

Consume = Callable[[Sequence[int], str, Tensor, Tensor], None]


@dataclass
class Job:
    """Everything a strategy needs: a private copy of the model on the device, the points,
    the data already on the device, and the BatchNorm plan."""

    model: nn.Module
    family: AffineFamily
    splits: dict[str, tuple[Tensor, Tensor]]
    batch_size: int
    device: torch.device
    bn_keys: list[str]
    bn_data: Tensor | None
    tick: Callable[[int], None]
    bn_batch_size: int = DEFAULT_BN_BATCH_SIZE

    def data_batches(self) -> Iterator[tuple[str, Tensor, Tensor]]:
        for name, (x, y) in self.splits.items():
            for xb, yb in batches(x, y, self.batch_size):
                yield name, xb, yb

    def bn_batches(self) -> Iterator[Tensor]:
        """Batches for recomputing BN statistics; their size is fixed (not the evaluation
        batch size), so every strategy computes the same statistics."""
        assert self.bn_data is not None
        for start in range(0, self.bn_data.shape[0], self.bn_batch_size):
            yield self.bn_data[start : start + self.bn_batch_size]


def _forward(model: nn.Module, params: dict[str, Tensor], x: Tensor) -> Tensor:
    return model_output_logits(functional_call(model, params, (x,)))


class PointRunner:
    """Puts the job's model at one parameter point after another and runs it.

    The model is the engine's private copy, so a point is written straight into the model's
    own tensors (``functional_call`` instead re-binds every tensor on every call, which
    measured about 10% of a ViT evaluation on the CPU, and building the point first doubles
    the memory traffic). Points whose dtypes, shapes or devices differ from the model's fall
    back to ``functional_call``, which computes in the points' dtype.
    """

    def __init__(self, job: Job) -> None:
        self.model = job.model
        self.family = job.family
        self.device = job.device
        self.slots = {
            **dict(job.model.named_parameters(remove_duplicate=False)),
            **dict(job.model.named_buffers(remove_duplicate=False)),
        }
        self.basis = job.family.device_basis(job.device)
        self.in_place = all(
            key in self.slots
            and self.slots[key].shape == value.shape[1:]
            and self.slots[key].dtype == value.dtype
            and self.slots[key].device == value.device
            for key, value in self.basis.items()
        )
        self.params: dict[str, Tensor] = {}

    def set_point(self, k: int, keys: Sequence[str] | None = None, extra: dict[str, Tensor] | None = None) -> None:
        """Point ``k`` (only the entries ``keys``), then ``extra`` entries on top."""
        if not self.in_place:
            self.params = {**self.family.state_on(k, self.device, keys), **(extra or {})}
            return
        row = self.family.weights[k].tolist()
        anchor = self.family.anchor_of(row)
        with torch.no_grad():
            for key in keys if keys is not None else self.basis:
                stacked, slot = self.basis[key], self.slots[key]
                if stacked.is_floating_point() or stacked.is_complex():
                    combine(stacked, row, out=slot)
                else:
                    slot.copy_(stacked[anchor])
            for key, value in (extra or {}).items():
                self.slots[key].copy_(value)

    def forward(self, x: Tensor) -> Tensor:
        if self.in_place:
            return model_output_logits(self.model(x))
        return _forward(self.model, self.params, x)

    def keep(self, buffers: dict[str, Tensor]) -> None:
        """Copy the model's current values of ``buffers``' keys into them: BatchNorm updates its
        running statistics in the model's tensors (with ``functional_call``, in ``buffers``)."""
        if self.in_place:
            with torch.no_grad():
                for key, value in buffers.items():
                    value.copy_(self.slots[key])


def _recompute_bn(job: Job, runner: PointRunner, k: int) -> dict[str, Tensor]:
    """Running statistics of point ``k``, recomputed from the BN batches (size-weighted). The
    runner is left at the point with these statistics."""
    buffers = fresh_bn_buffers(job.family.state_on(k, job.device, job.bn_keys), job.bn_keys)
    runner.set_point(k, extra=buffers)
    with recompute_mode(job.model) as before_batch:
        for xb in job.bn_batches():
            before_batch(xb.shape[0])
            runner.forward(xb)
    runner.keep(buffers)
    return buffers


# -- loop ------------------------------------------------------------------------------
def run_loop(job: Job, consume: Consume) -> None:
    runner = PointRunner(job)
    for k in range(len(job.family)):
        if job.bn_keys:
            _recompute_bn(job, runner, k)
        else:
            runner.set_point(k)
        for split, xb, yb in job.data_batches():
            consume([k], split, runner.forward(xb)[None], yb)
            job.tick(1)


# -- vmap ------------------------------------------------------------------------------
def run_vmap(job: Job, consume: Consume, points_per_chunk: int) -> None:
    batched = vmap(lambda p, x: _forward(job.model, p, x), in_dims=(0, None))
    k_total = len(job.family)
    bn_buffers: list[dict[str, Tensor]] = []
    if job.bn_keys:
        # In-place running-statistic updates cannot run under vmap: recompute them point by point.
        runner = PointRunner(job)
        for k in range(k_total):
            bn_buffers.append(_recompute_bn(job, runner, k))

    def chunk(idx: list[int]) -> dict[str, Tensor]:
        stacked = dict(job.family.stacked(idx, job.device))
        for key in job.bn_keys if bn_buffers else ():
            stacked[key] = torch.stack([bn_buffers[k][key] for k in idx])
        return stacked

    points_per_chunk = _largest_fitting_chunk(job, batched, chunk, points_per_chunk)
    for start in range(0, k_total, points_per_chunk):
        idx = list(range(start, min(start + points_per_chunk, k_total)))
        stacked = chunk(idx)
        for split, xb, yb in job.data_batches():
            consume(idx, split, batched(stacked, xb), yb)
            job.tick(len(idx))


def _largest_fitting_chunk(job: Job, batched, chunk, points_per_chunk: int) -> int:
    """Halve the number of points per vmap call until one call on the largest data batch fits
    in GPU memory (tried before any result is accumulated, so nothing is counted twice)."""
    if job.device.type != "cuda":
        return points_per_chunk
    _, xb, _ = next(job.data_batches())
    while True:
        try:
            batched(chunk(list(range(min(points_per_chunk, len(job.family))))), xb)
            return points_per_chunk
        except torch.cuda.OutOfMemoryError:
            if points_per_chunk == 1:
                raise
            points_per_chunk = max(1, points_per_chunk // 2)
            torch.cuda.empty_cache()


# -- affine ----------------------------------------------------------------------------
class _Stop(Exception):
    """Raised to end a forward pass once the first layer's input is known."""


@dataclass
class FirstLayer:
    name: str
    module: nn.Module
    keys: dict[str, str]  # full state key -> the module's own parameter name
    tied: bool  # its parameters are shared with another module


def _basis_params(family: AffineFamily, m: int, device: torch.device) -> dict[str, Tensor]:
    return {key: stacked[m] for key, stacked in family.device_basis(device).items()}


def _probe_points(family: AffineFamily, device: torch.device) -> list[dict[str, Tensor]]:
    """Parameter sets under which the first layer's input must not change: every basis state,
    three real points of the family, and the origin with every entry set to NaN."""
    rows = sorted({0, len(family) // 2, len(family) - 1})
    # A point that is a basis state (a line's ends) would repeat a probe already made.
    rows = [k for k in rows if sorted(w for w in family.weights[k].tolist() if w != 0.0) != [1.0]]
    points = [_basis_params(family, m, device) for m in range(len(family.basis))]
    points += [family.state_on(k, device) for k in rows]
    nan = {k: torch.full_like(t, float("nan")) if t.is_floating_point() else t for k, t in points[0].items()}
    return [*points, nan]


def find_first_layer(model: nn.Module, family: AffineFamily, sample: Tensor) -> FirstLayer | str:
    """The first Linear/Conv/Embedding layer to run, if the ``affine`` strategy can use it;
    else the reason why not.

    The layer qualifies when it is exactly one of those types (no subclass, parametrisation
    or hook), runs once per forward pass on one tensor, and that tensor is the same at every
    basis state, at real points of the family and with every parameter set to NaN: nothing
    before it depends on the parameters (checked, not assumed).
    """
    calls: list[tuple[str, nn.Module, tuple, dict]] = []
    hooks = []
    for name, module in model.named_modules():
        if type(module) in LINEAR_IN_PARAMETERS:

            def hook(mod, args, kwargs, name=name):
                calls.append((name, mod, args, kwargs))

            hooks.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    first: tuple[str, nn.Module] | None = None
    inputs: list[Tensor] = []
    try:
        for params in _probe_points(family, sample.device):
            calls.clear()
            with torch.no_grad():
                try:
                    _forward(model, params, sample)
                except Exception as err:
                    # NaN weights may break a later layer; only the first layer's input matters.
                    if not calls:
                        return f"a probe forward pass failed ({type(err).__name__}: {err})"
            if not calls:
                return "the model has no Linear, Conv or Embedding layer"
            name, module, args, kwargs = calls[0]
            if first is None:
                first = (name, module)
                if sum(1 for c in calls if c[0] == name) != 1:
                    return f"the first layer {name!r} is called more than once per forward pass"
            elif name != first[0]:
                return "which layer runs first depends on the parameters"
            if len(args) != 1 or kwargs or not isinstance(args[0], Tensor):
                return f"the first layer {name!r} is not called with one tensor"
            inputs.append(args[0].clone())
    finally:
        for h in hooks:
            h.remove()
    assert first is not None
    name, module = first
    if torch.nn.utils.parametrize.is_parametrized(module):
        return f"the first layer {name!r} is parametrised"
    if module._forward_hooks or module._forward_pre_hooks or module._backward_hooks:
        return f"the first layer {name!r} has hooks"
    if isinstance(module, nn.Embedding) and module.max_norm is not None:
        return f"the first layer {name!r} renormalises its weights (max_norm)"
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and module.padding_mode != "zeros":
        return f"the first layer {name!r} pads with {module.padding_mode!r}, not zeros"
    reference = inputs[0]
    if reference.is_floating_point() and torch.isnan(reference).any():
        return "the data contains NaN"
    if any(not torch.equal(reference, other) for other in inputs[1:]):
        return f"the input of the first layer {name!r} depends on the parameters"
    prefix = f"{name}." if name else ""
    keys = {prefix + local: local for local, _ in module.named_parameters(recurse=False)}
    shared = {id(p) for p in module.parameters(recurse=False)}
    tied = any(
        id(p) in shared and not full.startswith(prefix) for full, p in model.named_parameters(remove_duplicate=False)
    )
    return FirstLayer(name=name, module=module, keys=keys, tied=tied)


def first_layer_flop_share(model: nn.Module, family: AffineFamily, sample: Tensor) -> float:
    """The share of a forward pass's floating-point operations spent in the first
    Linear/Conv layer (0 for an Embedding, a lookup), counted on ``sample``."""
    from torch.utils.flop_counter import FlopCounterMode

    first: list[tuple[nn.Module, Tensor]] = []

    def hook(module: nn.Module, args: tuple, output: object) -> None:
        if not first and isinstance(output, Tensor):
            first.append((module, output))

    hooks = [m.register_forward_hook(hook) for m in model.modules() if type(m) in LINEAR_IN_PARAMETERS]
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.no_grad():
            _forward(model, _basis_params(family, 0, sample.device), sample)
    except Exception:
        return 0.0  # let the strategies report the failure
    finally:
        for h in hooks:
            h.remove()
    total = counter.get_total_flops()
    if not first or not total:
        return 0.0
    module, output = first[0]
    if isinstance(module, nn.Embedding):
        return 0.0
    # A Linear or Conv costs two operations per weight per output position.
    per_output = module.weight[0].numel()
    return min(1.0, 2 * output.numel() * per_output / total)


@contextlib.contextmanager
def _overridden_forward(module: nn.Module, forward: Callable[..., Tensor]) -> Iterator[None]:
    """Replace ``module.forward`` on this instance only. The module stays in place, so code that
    reads its attributes (``self.fc1.weight.dtype``, ``in_features``, ...) still works."""
    module.forward = forward  # type: ignore[method-assign]
    try:
        yield
    finally:
        del module.forward


def run_affine(job: Job, consume: Consume, first: FirstLayer) -> None:
    family = job.family
    basis = family.device_basis(job.device)
    # The first layer's own parameters need not be set per point unless another module shares
    # them: its forward is replaced by the mix of the basis outputs.
    per_point_keys = list(basis) if first.tied else [k for k in basis if k not in first.keys]
    weights = family.weights.tolist()
    state = {"mode": "capture", "value": None, "captured": None}
    runner = PointRunner(job)

    layer_forward = type(first.module).forward

    def forward(x: Tensor) -> Tensor:
        if state["mode"] == "capture":
            state["captured"] = x
            raise _Stop
        if state["mode"] == "original":
            return layer_forward(first.module, x)
        return state["value"]

    def layer_outputs(x_in: Tensor) -> Tensor:
        """The first layer's output for every basis state, shape (M, n, ...)."""
        return torch.stack(
            [
                functional_call(first.module, {local: basis[key][m] for key, local in first.keys.items()}, (x_in,))
                for m in range(len(family.basis))
            ]
        )

    def basis_outputs(xb: Tensor) -> Tensor:
        state["mode"] = "capture"
        try:
            # Nothing before the first layer depends on the parameters (find_first_layer
            # checked), so whichever point the model holds gives its input.
            if runner.in_place:
                job.model(xb)
            else:
                _forward(job.model, _basis_params(family, 0, job.device), xb)
        except _Stop:
            pass
        x_in, state["captured"] = state["captured"], None
        state["mode"] = "original"
        return layer_outputs(x_in)

    bn_buffers = (
        [fresh_bn_buffers(family.state_on(k, job.device, job.bn_keys), job.bn_keys) for k in range(len(family))]
        if job.bn_keys
        else []
    )

    def run_point(k: int, outputs: Tensor, xb: Tensor) -> Tensor:
        runner.set_point(k, per_point_keys, extra=bn_buffers[k] if bn_buffers else None)
        state["mode"], state["value"] = "inject", combine(outputs, weights[k])
        return runner.forward(xb)

    if first.name == "":  # the whole model is the linear layer
        for split, xb, yb in job.data_batches():
            outputs = layer_outputs(xb)
            for k in range(len(family)):
                consume([k], split, model_output_logits(combine(outputs, weights[k]))[None], yb)
                job.tick(1)
        return
    with _overridden_forward(first.module, forward):
        if bn_buffers:
            with recompute_mode(job.model) as before_batch:
                for xb in job.bn_batches():
                    before_batch(xb.shape[0])
                    outputs = basis_outputs(xb)
                    for k in range(len(family)):
                        run_point(k, outputs, xb)
                        runner.keep(bn_buffers[k])
        for split, xb, yb in job.data_batches():
            outputs = basis_outputs(xb)
            for k in range(len(family)):
                consume([k], split, run_point(k, outputs, xb)[None], yb)
                job.tick(1)
    state["value"] = None
