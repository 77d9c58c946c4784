"""The three ways the engine evaluates many parameter points; all give the same numbers.

- ``loop``: one point at a time with ``torch.func.functional_call`` (no copies of the model).
- ``affine``: for a line or plane on the CPU. The first parametrised layer sees the same
  input at every point and its output is linear in its parameters, so its output at point
  k is ``sum_m w[k, m] * layer(x; basis_m)``: M products replace K. The rest of the network
  runs per point.
- ``vmap``: ``torch.func.vmap`` over chunks of stacked points (the fast path on GPUs).

Each strategy calls ``consume(points, split, logits, targets)`` with logits of shape
(len(points), n, ...), and the caller accumulates metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from landscape.core.batchnorm import fresh_bn_buffers, recompute_mode
from landscape.core.data import batches
from landscape.core.family import AffineFamily
from landscape.core.metrics import model_output_logits

__all__ = ["STRATEGIES", "Job", "find_first_layer"]

STRATEGIES = ("auto", "loop", "affine", "vmap")
PARAMETER_CACHE_BYTES = 512 * 2**20
LINEAR_IN_PARAMETERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)

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

    def data_batches(self) -> Iterator[tuple[str, Tensor, Tensor]]:
        for name, (x, y) in self.splits.items():
            for xb, yb in batches(x, y, self.batch_size):
                yield name, xb, yb

    def bn_batches(self) -> Iterator[Tensor]:
        assert self.bn_data is not None
        for start in range(0, self.bn_data.shape[0], self.batch_size):
            yield self.bn_data[start : start + self.batch_size]


def _forward(model: nn.Module, params: dict[str, Tensor], x: Tensor) -> Tensor:
    return model_output_logits(functional_call(model, params, (x,)))


def _recompute_bn(
    job: Job, params: dict[str, Tensor], run: Callable[[dict[str, Tensor], Tensor], object]
) -> dict[str, Tensor]:
    """Running statistics of one point, recomputed from the BN batches as an exact average."""
    buffers = fresh_bn_buffers(params, job.bn_keys)
    merged = {**params, **buffers}
    with recompute_mode(job.model):
        for xb in job.bn_batches():
            run(merged, xb)
    return buffers


# -- loop ------------------------------------------------------------------------------
def run_loop(job: Job, consume: Consume) -> None:
    for k in range(len(job.family)):
        params = job.family.state_on(k, job.device)
        if job.bn_keys:
            params = {**params, **_recompute_bn(job, params, lambda p, x: _forward(job.model, p, x))}
        for split, xb, yb in job.data_batches():
            consume([k], split, _forward(job.model, params, xb)[None], yb)
            job.tick(1)


# -- vmap ------------------------------------------------------------------------------
def run_vmap(job: Job, consume: Consume, points_per_chunk: int) -> None:
    batched = vmap(lambda p, x: _forward(job.model, p, x), in_dims=(0, None))
    k_total = len(job.family)
    bn_buffers: list[dict[str, Tensor]] = []
    if job.bn_keys:
        # In-place running-statistic updates cannot run under vmap: recompute them point by point.
        for k in range(k_total):
            params = job.family.state_on(k, job.device)
            bn_buffers.append(_recompute_bn(job, params, lambda p, x: _forward(job.model, p, x)))

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
    """Raised by a hook to end a forward pass once the first layer's input is known."""


@dataclass
class FirstLayer:
    name: str
    module: nn.Module
    keys: dict[str, str]  # full state key -> the module's own parameter name


class _Injected(nn.Module):
    """Stands in for the first layer: captures its input, or returns a precomputed output."""

    def __init__(self, original: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "original", original)  # not a child: its keys leave the state
        self.capture = True
        self.value: Tensor | None = None
        self.captured: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.capture:
            self.captured = x
            raise _Stop
        assert self.value is not None
        return self.value


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, leaf, module)


def find_first_layer(model: nn.Module, family: AffineFamily, sample: Tensor) -> FirstLayer | str:
    """The first Linear/Conv/Embedding layer to run, if the ``affine`` strategy can use it;
    else the reason why not.

    The layer qualifies when it runs once per forward pass, on one tensor, and that tensor
    is the same under every basis state (so nothing before it depends on the parameters:
    checked, not assumed).
    """
    calls: list[tuple[str, nn.Module, tuple, dict]] = []
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, LINEAR_IN_PARAMETERS):

            def hook(mod, args, kwargs, name=name):
                calls.append((name, mod, args, kwargs))

            hooks.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    first: tuple[str, nn.Module] | None = None
    inputs: list[Tensor] = []
    try:
        for m in range(len(family.basis)):
            calls.clear()
            with torch.no_grad():
                _forward(model, _basis_params(family, m, sample.device), sample)
            if not calls:
                return "the model has no Linear, Conv or Embedding layer"
            name, module, args, kwargs = calls[0]
            if first is None:
                first = (name, module)
                if sum(1 for c in calls if c[0] == name) != 1:
                    return f"the first layer {name!r} is called more than once per forward pass"
            elif name != first[0]:
                return "the first layer to run depends on the parameters"
            if len(args) != 1 or kwargs or not isinstance(args[0], Tensor):
                return f"the first layer {name!r} is not called with one tensor"
            inputs.append(args[0].clone())
    finally:
        for h in hooks:
            h.remove()
    assert first is not None
    name, module = first
    if isinstance(module, nn.Embedding) and module.max_norm is not None:
        return f"the first layer {name!r} renormalises its weights (max_norm)"
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and module.padding_mode != "zeros":
        return f"the first layer {name!r} pads with {module.padding_mode!r}, not zeros"
    if any(not torch.equal(inputs[0], other) for other in inputs[1:]):
        return f"the input of the first layer {name!r} depends on the parameters"
    prefix = f"{name}." if name else ""
    keys = {prefix + local: local for local, _ in module.named_parameters(recurse=False)}
    return FirstLayer(name=name, module=module, keys=keys)


def _basis_params(family: AffineFamily, m: int, device: torch.device) -> dict[str, Tensor]:
    basis = family.device_basis(device)
    return {key: stacked[m] for key, stacked in basis.items()}


def _combine(outputs: Tensor, row: Sequence[float]) -> Tensor:
    """``sum_m row[m] * outputs[m]`` as fused multiply-adds (a (1 x M) @ (M x n) matrix
    product is a poor kernel for this on the CPU: measured 10x slower)."""
    if len(row) == 2:
        # (1 - t) a + t b for a line: torch.lerp is one pass and exact at t = 0 and t = 1.
        w0, w1 = row
        if w0 + w1 == 1.0:
            return torch.lerp(outputs[0], outputs[1], w1)
    acc = outputs[0] * row[0]
    for m in range(1, len(row)):
        if row[m] != 0.0:
            acc.add_(outputs[m], alpha=row[m])
    return acc


def run_affine(job: Job, consume: Consume, first: FirstLayer) -> None:
    family = job.family
    basis = family.device_basis(job.device)
    rest_keys = [k for k in basis if k not in first.keys]
    injected = _Injected(first.module)
    root_is_first = first.name == ""
    if not root_is_first:
        _set_submodule(job.model, first.name, injected)
    weights = family.weights.tolist()

    def basis_outputs(xb: Tensor) -> Tensor:
        """The first layer's output for every basis state, shape (M, n, ...)."""
        if root_is_first:
            x_in = xb
        else:
            injected.capture = True
            try:
                functional_call(job.model, {k: basis[k][0] for k in rest_keys}, (xb,))
            except _Stop:
                pass
            x_in = injected.captured
            injected.captured = None
        outs = [
            functional_call(first.module, {local: basis[key][m] for key, local in first.keys.items()}, (x_in,))
            for m in range(len(family.basis))
        ]
        return torch.stack(outs)

    def run_point(k: int, outputs: Tensor, params: dict[str, Tensor], xb: Tensor) -> Tensor:
        combined = _combine(outputs, weights[k])
        if root_is_first:
            return combined
        injected.capture = False
        injected.value = combined
        return _forward(job.model, params, xb)

    bn_buffers = (
        [fresh_bn_buffers(family.state_on(k, job.device, job.bn_keys), job.bn_keys) for k in range(len(family))]
        if job.bn_keys
        else []
    )
    # Materialise each point's remaining parameters once for all data batches when they fit.
    rest_bytes = sum(basis[k][0].numel() * basis[k].element_size() for k in rest_keys)
    cache: dict[int, dict[str, Tensor]] | None = {} if len(family) * rest_bytes <= PARAMETER_CACHE_BYTES else None

    def rest_params(k: int) -> dict[str, Tensor]:
        if cache is not None and k in cache:
            return cache[k]
        params = family.state_on(k, job.device, rest_keys)
        if bn_buffers:
            params.update(bn_buffers[k])  # updated in place by the statistics pass
        if cache is not None:
            cache[k] = params
        return params

    try:
        if bn_buffers:
            with recompute_mode(job.model):
                for xb in job.bn_batches():
                    outputs = basis_outputs(xb)
                    for k in range(len(family)):
                        run_point(k, outputs, rest_params(k), xb)
        for split, xb, yb in job.data_batches():
            outputs = basis_outputs(xb)
            for k in range(len(family)):
                consume([k], split, run_point(k, outputs, rest_params(k), xb)[None], yb)
                job.tick(1)
    finally:
        injected.value = None
        if not root_is_first:
            _set_submodule(job.model, first.name, first.module)
