"""The three ways the engine evaluates many parameter points; all give the same numbers.

- ``loop``: one point at a time, copied into the engine's private copy of the model.
- ``affine``: for a line or plane on the CPU. The first parametrised layer sees the same
  input at every point and its output is linear in its parameters, so its output at point
  k is ``sum_m w[k, m] * layer(x; basis_m)``: M products replace K. The rest of the network
  runs per point.
- ``vmap``: ``torch.func.vmap`` over chunks of stacked points (the fast path on GPUs).

Each strategy is a generator of :class:`PointBatch`: the model's outputs (and the outputs of
any captured submodules) for some points on one data batch, with a leading point axis.
:func:`landscape.core.run_points` chooses the strategy and the caller reduces the batches.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from landscape.core._sources import Batch, Source
from landscape.core.batchnorm import fresh_bn_buffers, recompute_mode
from landscape.core.data import batch_slices
from landscape.core.errors import bad_argument
from landscape.core.family import AffineFamily, combine
from landscape.core.metrics import model_output_logits

__all__ = ["STRATEGIES", "Capture", "Job", "PointBatch", "find_first_layer", "first_layer_flop_share"]

STRATEGIES = ("auto", "loop", "affine", "vmap", "graph")
# Exact types only: a subclass may override forward with something not linear in the weights
# (weight standardisation, LoRA adapters, ...).
LINEAR_IN_PARAMETERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)
DEFAULT_BN_BATCH_SIZE = 1024


@dataclass
class PointBatch:
    """What the model computed at some parameter points on one batch of data.

    Attributes
    ----------
    points : list of int
        Indices of the points (into the run's family); the leading axis of every tensor below.
    split : str
        The data split the batch comes from.
    output : object
        The model's raw output with a leading point axis (a tensor, or a tuple/dict/Hugging Face
        output of tensors, each with that axis).
    targets : torch.Tensor or None
        The batch's targets (shared by all points), or None for unlabelled data.
    features : dict of str to torch.Tensor
        Outputs of the captured submodules, shape ``(len(points), n, ...)``.
    size : int
        Examples in the batch.
    rows : slice or list of int
        Which examples of the split the batch holds, in order (a list where batches reorder
        examples, as token batches sorted by length do): place per-example results with it.
    """

    points: list[int]
    split: str
    output: object
    targets: Tensor | None
    features: dict[str, Tensor] = field(default_factory=dict)
    size: int = 0
    rows: slice | list[int] | None = None

    @property
    def logits(self) -> Tensor:
        """The logits in ``output`` (a tensor, ``.logits``, or the first element of a tuple)."""
        return model_output_logits(self.output)


def _with_point_axis(value: object) -> object:
    if isinstance(value, Tensor):
        return value[None]
    return torch.utils._pytree.tree_map(lambda t: t[None] if isinstance(t, Tensor) else t, value)


class Capture:
    """Forward hooks that keep the outputs of named submodules of the engine's model.

    A module that returns a tuple contributes its first element (as a transformer block's
    hidden states). Each captured module must run exactly once per forward pass: a module that
    is reused (one activation applied twice) has no single output to return.
    """

    def __init__(self, model: nn.Module, names: Sequence[str], *, function: str) -> None:
        modules = dict(model.named_modules())
        unknown = [n for n in names if n not in modules]
        if unknown:
            raise bad_argument(
                function,
                "features",
                expected=f"names of submodules of the model, such as {[n for n in modules if n][:10]}",
                found=repr(unknown[0]),
            )
        if len(set(names)) != len(names):
            raise bad_argument(function, "features", expected="distinct module names", found=repr(list(names)))
        self.names = list(names)
        self.active = False
        self.values: dict[str, Tensor] = {}
        self.calls: dict[str, int] = {}
        self.function = function
        self.handles = [modules[n].register_forward_hook(self._hook(n)) for n in self.names]

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _args: object, output: object) -> None:
            if self.active:
                value = output[0] if isinstance(output, (tuple, list)) else output
                # A later in-place op (ReLU(inplace=True) after a BatchNorm) would change the value.
                self.values[name] = value.clone()
                self.calls[name] = self.calls.get(name, 0) + 1

        return hook

    def take(self) -> dict[str, Tensor]:
        """The values of the forward pass that just ran (and forget them)."""
        if not self.names:
            return {}
        for name in self.names:
            calls = self.calls.get(name, 0)
            if calls != 1:
                raise bad_argument(
                    self.function,
                    "features",
                    expected="modules that run once per forward pass",
                    found=f"{name!r}, which ran {calls} times in one forward pass",
                    fix="Capture a module that is not reused (e.g. give each activation its own module).",
                )
        values, self.values, self.calls = self.values, {}, {}
        return values

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


@dataclass
class Job:
    """Everything a strategy needs: a private copy of the model on the device, the points,
    the data already on the device, the BatchNorm plan, feature hooks and the precision."""

    model: nn.Module
    family: AffineFamily
    splits: dict[str, Source]
    batch_size: int
    device: torch.device
    bn_keys: list[str]
    bn_data: Source | None
    tick: Callable[[int], None]
    bn_batch_size: int = DEFAULT_BN_BATCH_SIZE
    capture: Capture | None = None
    precision: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    precision_name: str = "float32"

    def data_batches(self) -> Iterator[tuple[str, Batch]]:
        for name, source in self.splits.items():
            for batch in source.batches(self.batch_size):
                yield name, batch

    @property
    def streamed(self) -> bool:
        """Some data is read from a loader on every pass: read it once per chunk of points."""
        return any(s.streamed for s in self.splits.values())

    def bn_batches(self) -> Iterator[Batch]:
        """Batches for recomputing BN statistics; their size is fixed (not the evaluation
        batch size), so every strategy computes the same statistics."""
        assert self.bn_data is not None
        return self.bn_data.batches(self.bn_batch_size)

    def features(self) -> dict[str, Tensor]:
        return self.capture.take() if self.capture is not None else {}


def _call(model: nn.Module, params: Mapping[str, Tensor] | None, batch: Batch) -> object:
    if params is None:
        return model(*batch.args, **batch.kwargs)
    return functional_call(model, dict(params), batch.args, batch.kwargs)


class PointRunner:
    """Puts the job's model at one parameter point after another and runs it.

    The model is the engine's private copy, so a point is written straight into the model's
    own tensors (``functional_call`` instead re-binds every tensor on every call, which
    measured about 10% of a ViT evaluation on the CPU, and building the point first doubles
    the memory traffic). Points whose dtypes, shapes or devices differ from the model's fall
    back to ``functional_call``, which computes in the points' dtype.
    """

    def __init__(self, job: Job) -> None:
        self.job = job
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

    def forward(self, batch: Batch) -> object:
        with self.job.precision():
            return _call(self.model, None if self.in_place else self.params, batch)

    def keep(self, buffers: dict[str, Tensor]) -> None:
        """Copy the model's current values of ``buffers``' keys into them: BatchNorm updates its
        running statistics in the model's tensors (with ``functional_call``, in ``buffers``)."""
        if self.in_place:
            with torch.no_grad():
                for key, value in buffers.items():
                    value.copy_(self.slots[key])


@contextlib.contextmanager
def _statistics_pass(job: Job) -> Iterator[Callable[[int], None]]:
    """BatchNorm in statistics mode, feature capture off."""
    active = job.capture.active if job.capture is not None else False
    if job.capture is not None:
        job.capture.active = False
    try:
        with recompute_mode(job.model) as before_batch:
            yield before_batch
    finally:
        if job.capture is not None:
            job.capture.active = active


def recompute_point_bn(job: Job, runner: PointRunner, k: int) -> dict[str, Tensor]:
    """Running statistics of point ``k``, recomputed from the BN batches (size-weighted). The
    runner is left at the point with these statistics."""
    buffers = fresh_bn_buffers(job.family.state_on(k, job.device, job.bn_keys), job.bn_keys)
    runner.set_point(k, extra=buffers)
    with _statistics_pass(job) as before_batch:
        for batch in job.bn_batches():
            before_batch(batch.size)
            runner.forward(batch)
    runner.keep(buffers)
    return buffers


# -- loop ------------------------------------------------------------------------------
Forward = Callable[[str, Batch], tuple[object, dict[str, Tensor]]]


def run_loop(job: Job, forward: Callable[[PointRunner], Forward] | None = None) -> Iterator[PointBatch]:
    """One point at a time, written into the model in place. ``forward(runner)`` makes the
    function that runs one batch at the current point (default: the runner's forward pass)."""
    runner = PointRunner(job)
    if job.streamed:
        yield from _run_loop_streamed(job, runner)
        return
    run = forward(runner) if forward is not None else (lambda split, batch: (runner.forward(batch), job.features()))
    for k in range(len(job.family)):
        if job.bn_keys:
            recompute_point_bn(job, runner, k)
        else:
            runner.set_point(k)
        for split, batch in job.data_batches():
            yield _point_batch(job, k, split, *run(split, batch), batch)


def _point_batch(job: Job, k: int, split: str, output: object, features: dict[str, Tensor], batch: Batch) -> PointBatch:
    job.tick(1)
    features = {n: v[None] for n, v in features.items()}
    return PointBatch([k], split, _with_point_axis(output), batch.targets, features, batch.size, batch.rows)


def _run_loop_streamed(job: Job, runner: PointRunner) -> Iterator[PointBatch]:
    """Data read once for all points: every point runs on each batch as it arrives."""
    bn_buffers = [recompute_point_bn(job, runner, k) for k in range(len(job.family))] if job.bn_keys else []
    for split, batch in job.data_batches():
        for k in range(len(job.family)):
            runner.set_point(k, extra=bn_buffers[k] if bn_buffers else None)
            yield _point_batch(job, k, split, runner.forward(batch), job.features(), batch)


# -- vmap ------------------------------------------------------------------------------
def run_vmap(job: Job, points_per_chunk: int) -> Iterator[PointBatch]:
    def one_point(params: dict[str, Tensor], args: tuple, kwargs: dict) -> tuple[object, dict[str, Tensor]]:
        with job.precision():
            output = functional_call(job.model, params, args, kwargs)
        return output, job.features()

    batched = vmap(one_point, in_dims=(0, None, None))
    k_total = len(job.family)
    bn_buffers: list[dict[str, Tensor]] = []
    if job.bn_keys:
        # In-place running-statistic updates cannot run under vmap: recompute them point by point.
        runner = PointRunner(job)
        for k in range(k_total):
            bn_buffers.append(recompute_point_bn(job, runner, k))

    def chunk(idx: list[int]) -> dict[str, Tensor]:
        stacked = dict(job.family.stacked(idx, job.device))
        for key in job.bn_keys if bn_buffers else ():
            stacked[key] = torch.stack([bn_buffers[k][key] for k in idx])
        return stacked

    points_per_chunk = _largest_fitting_chunk(job, batched, chunk, points_per_chunk)
    for s in batch_slices(k_total, points_per_chunk):
        idx = list(range(s.start, s.stop))
        stacked = chunk(idx)
        for split, batch in job.data_batches():
            output, features = batched(stacked, batch.args, batch.kwargs)
            yield PointBatch(idx, split, output, batch.targets, features, batch.size, batch.rows)
            job.tick(len(idx))


def _largest_fitting_chunk(job: Job, batched, chunk, points_per_chunk: int) -> int:
    """Halve the number of points per vmap call until one call on the largest data batch fits
    in GPU memory (tried before any result is accumulated, so nothing is counted twice)."""
    if job.device.type != "cuda":
        return points_per_chunk
    _, batch = next(job.data_batches())
    while True:
        try:
            batched(chunk(list(range(min(points_per_chunk, len(job.family))))), batch.args, batch.kwargs)
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


def _as_batch(sample: Tensor | Batch) -> Batch:
    return sample if isinstance(sample, Batch) else Batch((sample,), {}, None, sample.shape[0])


def find_first_layer(model: nn.Module, family: AffineFamily, sample: Tensor | Batch) -> FirstLayer | str:
    """The first Linear/Conv/Embedding layer to run, if the ``affine`` strategy can use it;
    else the reason why not.

    The layer qualifies when it is exactly one of those types (no subclass, parametrisation
    or hook), runs once per forward pass on one tensor, and that tensor is the same at every
    basis state, at real points of the family and with every parameter set to NaN: nothing
    before it depends on the parameters (checked, not assumed).
    """
    sample = _as_batch(sample)
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
        for params in _probe_points(family, sample.first.device):
            calls.clear()
            with torch.no_grad():
                try:
                    _call(model, params, sample)
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


# Flop shares by model structure and input shapes: counting runs a forward pass under a
# FlopCounterMode (several ms), which a small evaluation called in a loop would pay every time.
_FLOP_SHARES: dict[tuple[object, ...], float] = {}
_FLOP_SHARES_MAX = 256


def _structure_key(model: nn.Module, sample: Batch) -> tuple[object, ...]:
    # repr holds every module's type and hyper-parameters (sizes, strides, padding); the
    # parameter shapes and the inputs' shapes and dtypes fix the rest of the FLOP count.
    shapes = tuple((name, tuple(p.shape)) for name, p in model.named_parameters())
    inputs = tuple(
        (tuple(t.shape), t.dtype) if isinstance(t, Tensor) else repr(t) for t in (*sample.args, *sample.kwargs.values())
    )
    return (type(model), repr(model), shapes, inputs, tuple(sample.kwargs))


def first_layer_flop_share(model: nn.Module, family: AffineFamily, sample: Tensor | Batch) -> float:
    """The share of a forward pass's floating-point operations spent in the first
    Linear/Conv layer (0 for an Embedding, a lookup), counted on ``sample`` (cached by the
    model's structure and the sample's shapes)."""
    sample = _as_batch(sample)
    key = _structure_key(model, sample)
    if key not in _FLOP_SHARES:
        if len(_FLOP_SHARES) >= _FLOP_SHARES_MAX:
            _FLOP_SHARES.pop(next(iter(_FLOP_SHARES)))
        _FLOP_SHARES[key] = _count_first_layer_share(model, family, sample)
    return _FLOP_SHARES[key]


def _count_first_layer_share(model: nn.Module, family: AffineFamily, sample: Batch) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    first: list[tuple[nn.Module, Tensor]] = []

    def hook(module: nn.Module, args: tuple, output: object) -> None:
        if not first and isinstance(output, Tensor):
            first.append((module, output))

    hooks = [m.register_forward_hook(hook) for m in model.modules() if type(m) in LINEAR_IN_PARAMETERS]
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.no_grad():
            _call(model, _basis_params(family, 0, sample.first.device), sample)
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


def run_affine(job: Job, first: FirstLayer) -> Iterator[PointBatch]:
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
        with job.precision():
            return torch.stack(
                [
                    functional_call(first.module, {local: basis[key][m] for key, local in first.keys.items()}, (x_in,))
                    for m in range(len(family.basis))
                ]
            )

    def basis_outputs(batch: Batch) -> Tensor:
        state["mode"] = "capture"
        active = job.capture.active if job.capture is not None else False
        if job.capture is not None:
            job.capture.active = False
        try:
            # Nothing before the first layer depends on the parameters (find_first_layer
            # checked), so whichever point the model holds gives its input.
            _call(job.model, None if runner.in_place else _basis_params(family, 0, job.device), batch)
        except _Stop:
            pass
        finally:
            if job.capture is not None:
                job.capture.active = active
        x_in, state["captured"] = state["captured"], None
        state["mode"] = "original"
        return layer_outputs(x_in)

    bn_buffers = (
        [fresh_bn_buffers(family.state_on(k, job.device, job.bn_keys), job.bn_keys) for k in range(len(family))]
        if job.bn_keys
        else []
    )

    def run_point(k: int, outputs: Tensor, batch: Batch) -> object:
        runner.set_point(k, per_point_keys, extra=bn_buffers[k] if bn_buffers else None)
        state["mode"], state["value"] = "inject", combine(outputs, weights[k])
        return runner.forward(batch)

    if first.name == "":  # the whole model is the linear layer
        for split, batch in job.data_batches():
            outputs = layer_outputs(batch.first)
            for k in range(len(family)):
                output = combine(outputs, weights[k])[None]
                yield PointBatch([k], split, output, batch.targets, {}, batch.size, batch.rows)
                job.tick(1)
        return
    with _overridden_forward(first.module, forward):
        if bn_buffers:
            with _statistics_pass(job) as before_batch:
                for batch in job.bn_batches():
                    before_batch(batch.size)
                    outputs = basis_outputs(batch)
                    for k in range(len(family)):
                        run_point(k, outputs, batch)
                        runner.keep(bn_buffers[k])
        for split, batch in job.data_batches():
            outputs = basis_outputs(batch)
            for k in range(len(family)):
                output = run_point(k, outputs, batch)
                features = {n: v[None] for n, v in job.features().items()}
                output = _with_point_axis(output)
                yield PointBatch([k], split, output, batch.targets, features, batch.size, batch.rows)
                job.tick(1)
    state["value"] = None
