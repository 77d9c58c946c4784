"""The engine's one primitive: run a model at many parameter points on data, in batches.

Every analysis that needs a model's outputs, metrics or intermediate features at one or many
parameter points goes through :func:`run_points`; it owns the batching over points and data,
the device, tied weights, BatchNorm statistics, memory format and precision, and picks the
fastest strategy that gives the numbers of a plain loop.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from landscape.core._choice import measured_choice
from landscape.core._graphs import graph_unavailable, run_graph
from landscape.core._sources import Batch, Source, as_sources, for_model
from landscape.core._strategies import (
    DEFAULT_BN_BATCH_SIZE,
    STRATEGIES,
    Capture,
    Job,
    PointBatch,
    PointRunner,
    find_first_layer,
    first_layer_flop_share,
    recompute_point_bn,
    run_affine,
    run_loop,
    run_vmap,
)
from landscape.core.batchnorm import bn_buffer_keys
from landscape.core.checkpoints import fit_to_model
from landscape.core.device import resolve_device
from landscape.core.errors import bad_argument
from landscape.core.family import AffineFamily, as_family
from landscape.core.io import checkpoint_record
from landscape.core.progress import progress_bar
from landscape.core.spec import spec_of
from landscape.core.state import State, as_state, check_compatible
from landscape.core.tied import canonical_state, tied_groups

__all__ = ["PRECISIONS", "PointBatch", "PointRun", "recompute_bn", "run_points"]

DEFAULT_BATCH_SIZE = 4096
# For the affine strategy on the CPU, batches whose widest activation fits in about 2 MiB stay
# in the L2 cache between layers; measured 1.3x faster than one batch of 1,000 for a
# 784-512-512-10 MLP. The zoo's convolutional models ran 0.7-0.9x as fast in such batches, so
# the other strategies keep one large batch.
CPU_ACTIVATION_BYTES = 2 * 2**20
MIN_CPU_BATCH = 256
MIN_FIRST_LAYER_SHARE = 0.15
BN_POLICIES = ("keep", "reset")
PRECISIONS = ("float32", "tf32", "bfloat16")


def _input_dtype(family: AffineFamily) -> torch.dtype:
    for t in family.basis[0].values():
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def _prefers_channels_last(model: nn.Module, sample: Batch) -> bool:
    """Image batches into a model with 2-D convolutions."""
    images = len(sample.args) == 1 and not sample.kwargs and sample.args[0].dim() == 4
    return images and sample.args[0].is_floating_point() and any(isinstance(m, nn.Conv2d) for m in model.modules())


@contextlib.contextmanager
def precision_scope(precision: str, device: torch.device) -> Iterator[None]:
    """Run the block in ``precision`` (one of :data:`PRECISIONS`) on ``device``; autograd is
    left as it is, so training uses it too.

    On CUDA, float32 turns TF32 off for matrix products and convolutions (cuDNN allows TF32
    convolutions by default, which changes results in the fourth digit), and tf32 turns it on;
    bfloat16 is autocast (reductions such as losses stay in float32).
    """
    with contextlib.ExitStack() as stack:
        if precision == "bfloat16":
            stack.enter_context(torch.autocast(device.type, dtype=torch.bfloat16))
        if device.type == "cuda":
            allow = precision == "tf32"
            saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allow
            stack.callback(_restore_tf32, saved)
        yield


def _precision_context(precision: str, device: torch.device):
    """A factory of the context every forward pass runs in: no autograd, and the precision."""

    @contextlib.contextmanager
    def context() -> Iterator[None]:
        with torch.no_grad(), precision_scope(precision, device):
            yield

    return context


def _restore_tf32(saved: tuple[bool, bool]) -> None:
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class PointRun:
    """A prepared run of a model at the points of a family; iterate it to run it.

    Built by :func:`run_points`, which validates everything before any work is done.
    Iterating yields one :class:`~landscape.core._strategies.PointBatch` per (chunk of
    points, data batch); iterating again runs the model again.

    Attributes
    ----------
    family : AffineFamily
        The points (tied keys merged into one canonical key per group).
    splits : list of str
        The data's split names, in iteration order.
    single : bool
        True when the data was one unnamed split (results need no ``split`` dim).
    device : torch.device
    strategy : str
        ``"loop"``, ``"affine"`` or ``"vmap"``.
    batch_size : int
        Examples per forward pass.
    memory_format : str
        ``"contiguous"`` or ``"channels_last"``.
    attrs : dict
        Provenance of the run (model, checkpoints, data, strategy, device, BN policy,
        precision, ...), ready for :func:`~landscape.core.io.provenance_attrs`.
    sample_output : object
        The model's output on two examples at the first point (computed to check the data).
    """

    sample_output: object = None

    def __init__(
        self,
        job: Job,
        *,
        strategy: str,
        first_layer: object,
        points_per_chunk: int,
        single: bool,
        attrs: dict[str, object],
        progress: bool,
        description: str,
    ) -> None:
        self._job = job
        self._first_layer = first_layer
        self._points_per_chunk = points_per_chunk
        self._progress = progress
        self._description = description
        self.family = job.family
        self.splits = list(job.splits)
        self.single = single
        self.device = job.device
        self.strategy = strategy
        self.batch_size = job.batch_size
        self.memory_format = attrs["memory_format"]
        self.attrs = attrs

    @property
    def sources(self) -> dict[str, Source]:
        """Each split's data source (on the device)."""
        return dict(self._job.splits)

    def __len__(self) -> int:
        """Forward passes over (point, batch) pairs: the progress bar's total (0 when a
        streamed loader's length is not known yet)."""
        sizes = [_size(s) for s in self._job.splits.values()]
        if any(n is None for n in sizes):
            return 0
        return len(self.family) * sum(-(-n // self.batch_size) for n in sizes)  # type: ignore[operator]

    def __iter__(self) -> Iterator[PointBatch]:
        job = self._job
        total = len(self) or None
        with progress_bar(total=total, desc=self._description, unit="pt·batch", disable=not self._progress) as bar:
            job.tick = bar.update
            if job.capture is not None:
                job.capture.active = True
            try:
                if self.strategy == "affine":
                    yield from run_affine(job, self._first_layer)
                elif self.strategy == "graph":
                    yield from run_graph(job)
                elif self.strategy == "vmap":
                    yield from run_vmap(job, self._points_per_chunk)
                else:
                    yield from run_loop(job)
            finally:
                if job.capture is not None:
                    job.capture.active = False
                job.tick = _no_tick

    def close(self) -> None:
        """Remove the feature hooks from the engine's private model copy."""
        if self._job.capture is not None:
            self._job.capture.remove()


def _no_tick(n: int) -> None:
    pass


def run_points(
    model: nn.Module,
    points: object,
    data: object,
    *,
    features: Sequence[str] = (),
    batch_size: int | None = None,
    bn: str = "keep",
    bn_data: object = None,
    bn_batch_size: int = DEFAULT_BN_BATCH_SIZE,
    device: str | torch.device = "auto",
    strategy: str = "auto",
    precision: str = "float32",
    points_per_chunk: int | None = None,
    progress: bool = False,
    function: str = "run_points",
) -> PointRun:
    """Run ``model`` at every parameter point of ``points`` on ``data``, in batches.

    The one way the library runs a model at parameter points: evaluation, activation
    statistics, features for probes and distillation all iterate what this returns and
    reduce it. The caller's model is never modified; the engine works on a private copy on
    ``device``, moves and casts the data once, and runs without autograd.

    Parameters
    ----------
    model
        The architecture; its own weights are not used, only its structure.
    points
        A State, a module, a list of them, a dict of named ones, or an
        :class:`~landscape.core.family.AffineFamily` (lines and planes, given lazily).
    data
        Inputs (a tensor: unlabelled), an ``(x, y)`` pair, a dict of such pairs by split
        name, a DataLoader of ``(x, y)`` batches, or :class:`~landscape.core.data.Splits`.
    features
        Names of submodules (``model.named_modules()``) whose outputs to return with every
        batch (a module returning a tuple gives its first element).
    batch_size
        Examples per forward pass (default 4096; for the ``affine`` strategy, what keeps the
        widest activation in the CPU's L2 cache).
    bn
        ``"keep"`` uses the running statistics stored at each point; ``"reset"`` recomputes
        every BatchNorm layer's statistics at every point from ``bn_data`` (default: the
        ``train`` split of ``data``) as the example-weighted average of the statistics of
        batches of ``bn_batch_size``.
    bn_data
        Inputs (or an ``(x, y)`` pair) for ``bn="reset"``.
    bn_batch_size
        Batch size of the statistics pass of ``bn="reset"`` (BatchNorm normalises each batch
        with its own statistics, so the result depends on it, not on ``batch_size``).
    device
        ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
    strategy
        ``"auto"``, or force ``"loop"``, ``"affine"`` or ``"vmap"``.
    precision
        ``"float32"`` (default: matches a plain loop), ``"tf32"`` (TF32 matrix products on
        CUDA; no effect elsewhere, noted in ``attrs``) or ``"bfloat16"`` (autocast).
    points_per_chunk
        Points per vmap call (default: what fits in an eighth of free memory, at most 64).
    progress
        Show a progress bar.
    function
        The public function to name in error messages.

    Returns
    -------
    PointRun
        Iterate it for :class:`PointBatch` objects (``points``, ``split``, ``output``,
        ``logits``, ``targets``, ``features``, ``size``); ``attrs`` holds the provenance.

    Examples
    --------
    >>> import torch, landscape as ls
    >>> model = ls.models.create("mlp", width=8, depth=1, seed=0)
    >>> other = ls.models.create("mlp", width=8, depth=1, seed=1)
    >>> line = ls.AffineFamily.line(ls.state_of(model), ls.state_of(other), alphas=3)
    >>> run = run_points(model, line, torch.randn(5, 40), features=["features"])
    >>> [(out.points, tuple(out.logits.shape), tuple(out.features["features"].shape)) for out in run][:1]
    [([0], (1, 5, 10), (1, 5, 8))]
    """
    if not isinstance(model, nn.Module):
        raise bad_argument(
            function,
            "model",
            expected="an nn.Module",
            found=model,
            fix="Build one with landscape.models.create(...) or pass your own module.",
        )
    # Every point in the model's own layout: wrapper prefixes (DDP, torch.compile, EMA/SWA,
    # Lightning) undone as for files, and one key per tied group (checkpoints that store one of
    # them, as Hugging Face's do, fit; functional_call gets one value per shared tensor).
    groups = tied_groups(model)
    family = as_family(
        points,
        function=function,
        argument="points",
        prepare=lambda s: fit_to_model(s, model, function=function, argument="points"),
    )
    sources, single, data_name, data_meta = as_sources(data, function=function, argument="data")
    sources = {name: for_model(source, model) for name, source in sources.items()}
    if bn not in BN_POLICIES:
        raise bad_argument(function, "bn", expected="'keep' or 'reset'", found=repr(bn))
    if precision not in PRECISIONS:
        raise bad_argument(function, "precision", expected=f"one of {PRECISIONS}", found=repr(precision))
    if strategy not in STRATEGIES:
        raise bad_argument(function, "strategy", expected=f"one of {STRATEGIES}", found=repr(strategy))
    for name, value in (("batch_size", batch_size), ("bn_batch_size", bn_batch_size)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise bad_argument(function, name, expected="a positive integer", found=repr(value))
    if isinstance(features, str):
        features = (features,)
    device = resolve_device(device, function=function)

    check_compatible(
        canonical_state(model.state_dict(), groups), family.basis[0], function=function, names=("model", "points")
    )
    work = copy.deepcopy(model).to(device).eval()
    dtype = _input_dtype(family)
    # oneDNN's 2-D convolutions run in channels-last order; converting once here saves the
    # reorders on every call (measured 1.2x on the zoo ResNet, 1.7x on the zoo CNN).
    channels_last = device.type == "cpu" and _prefers_channels_last(work, next(iter(sources.values())).head(1))
    memory_format = "channels_last" if channels_last else "contiguous"
    if channels_last:
        work = work.to(memory_format=torch.channels_last)
    on_device = {name: source.to(device, dtype, channels_last) for name, source in sources.items()}

    bn_keys: list[str] = []
    bn_inputs: Source | None = None
    bn_note = None
    if bn == "reset":
        bn_keys = bn_buffer_keys(work)
        if not bn_keys:
            bn_note = "model has no BatchNorm layer; bn='reset' changed nothing"
            warnings.warn(f"{function}(bn='reset'): {bn_note}.", stacklevel=3)
        else:
            bn_inputs = _bn_inputs(bn_data, sources, function=function).to(device, dtype, channels_last)
    precision_note = None
    if precision == "tf32" and device.type != "cuda":
        precision_note = f"tf32 has no effect on {device.type}; computed in float32"
        warnings.warn(f"{function}(precision='tf32'): {precision_note}.", stacklevel=3)

    capture = Capture(work, list(features), function=function) if features else None
    job = Job(
        work,
        family,
        on_device,
        batch_size or DEFAULT_BATCH_SIZE,
        device,
        bn_keys,
        bn_inputs,
        _no_tick,
        bn_batch_size,
        capture,
        _precision_context(precision, device),
        precision,
    )
    sample = next(iter(on_device.values())).head(2)
    sample_output = _check_data_fits(job, sample, function=function)
    chunk = _points_per_chunk(family, device, points_per_chunk, function=function)
    chosen, first_layer, reason = _choose_strategy(strategy, job, sample, chunk, function=function)
    if batch_size is None and chosen == "affine":
        job.batch_size = _cache_sized_batch(job, sample)
    attrs: dict[str, object] = {
        "model": spec_of(model) or type(model).__name__,
        "checkpoints": [checkpoint_record(s) for s in family.basis if s.provenance],
        "data": {"name": data_name, "sizes": {n: _size(src) for n, src in sources.items()}, **data_meta},
        "strategy": chosen,
        "strategy_reason": reason,
        "device": str(device),
        "precision": precision,
        "precision_note": precision_note,
        "bn": bn,
        "bn_note": bn_note,
        "bn_examples": _size(bn_inputs) if bn_inputs is not None else None,
        "bn_batch_size": bn_batch_size if bn_inputs is not None else None,
        "batch_size": job.batch_size,
        "memory_format": memory_format,
    }
    if features:
        attrs["features"] = list(features)
    run = PointRun(
        job,
        strategy=chosen,
        first_layer=first_layer,
        points_per_chunk=chunk,
        single=single,
        attrs=attrs,
        progress=progress,
        description=function,
    )
    run.sample_output = sample_output
    return run


def _choose_strategy(
    requested: str, job: Job, sample: Batch, points_per_chunk: int, *, function: str
) -> tuple[str, object, str]:
    """The strategy to run, its extra argument (the first layer for ``affine``), and why."""
    if requested == "graph":
        why_not = graph_unavailable(job)
        if why_not is not None:
            raise bad_argument(
                function, "strategy", expected="a job the graph strategy can run", found=f"'graph', but {why_not}"
            )
        return "graph", None, "requested"
    if requested in ("loop", "vmap"):
        return requested, None, "requested"
    if requested == "auto" and job.device.type == "cuda":
        chosen, reason = measured_choice(job, points_per_chunk)
        return chosen, None, reason
    if requested == "auto" and job.device.type == "cpu" and job.family.is_structured:
        # Sharing the first layer across points saves at most its share of the work, and the
        # strategy's checks and per-point mixing cost about as much as a small first layer:
        # measured slower than the loop for the zoo's CNNs, ResNet, ViT and GPT (shares 0-6%).
        share = first_layer_flop_share(job.model, job.family, sample)
        if share < MIN_FIRST_LAYER_SHARE:
            return (
                "loop",
                None,
                f"rule: the first layer carries {share:.0%} of the FLOPs (< {MIN_FIRST_LAYER_SHARE:.0%})",
            )
    if requested == "affine" or (job.device.type == "cpu" and job.family.is_structured):
        first = find_first_layer(job.model, job.family, sample)
        if isinstance(first, str):
            if requested == "affine":
                raise bad_argument(
                    function,
                    "strategy",
                    expected="a model whose first layer allows strategy='affine'",
                    found=f"'affine', but {first}",
                    fix="Use strategy='auto' or 'loop'.",
                )
            return "loop", None, f"rule: affine not possible ({first})"
        return "affine", first, "requested" if requested == "affine" else "rule: a line or plane on the CPU"
    return "loop", None, "rule: a list of points on the CPU" if not job.family.is_structured else "rule"


def _points_per_chunk(family: AffineFamily, device: torch.device, requested: int | None, *, function: str) -> int:
    if requested is not None:
        if not isinstance(requested, int) or isinstance(requested, bool) or requested < 1:
            raise bad_argument(function, "points_per_chunk", expected="a positive integer", found=repr(requested))
        return requested
    bytes_per_point = sum(t.numel() * t.element_size() for t in family.basis[0].values())
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = free // 8
    else:
        budget = 256 * 2**20
    return int(max(1, min(len(family), 64, budget // max(bytes_per_point, 1))))


def _check_data_fits(job: Job, sample: Batch, *, function: str) -> object:
    """One forward pass on two examples, so that data of the wrong shape fails with a message
    that names the data rather than a layer deep inside the model. Returns the output."""
    from torch.func import functional_call

    try:
        with torch.no_grad():
            return functional_call(job.model, job.family.state_on(0, job.device), sample.args, sample.kwargs)
    except (RuntimeError, ValueError, IndexError, TypeError) as err:
        shape = tuple(sample.first.shape[1:])
        raise bad_argument(
            function,
            "data",
            expected="inputs the model accepts",
            found=f"inputs of shape {shape} per example, on which the model fails "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})",
            fix="Check that the data is the dataset the model was built for.",
        ) from err


def _cache_sized_batch(job: Job, sample: Batch) -> int:
    """Batches whose widest activation fits in the L2 cache (at least MIN_CPU_BATCH examples),
    split evenly: 1,000 examples in chunks of at most 668 become two of 500."""
    from torch.func import functional_call

    sizes: list[int] = []

    def widest(_m: nn.Module, _i: object, out: object) -> None:
        if isinstance(out, Tensor) and out.dim() > 0:
            sizes.append(out[0].numel() * out.element_size())  # per example

    hooks = [m.register_forward_hook(widest) for m in job.model.modules()]
    try:
        with torch.no_grad():
            # Two examples: BatchNorm without running statistics cannot normalise one.
            functional_call(job.model, job.family.state_on(0, job.device), sample.args, sample.kwargs)
    finally:
        for h in hooks:
            h.remove()
    target = int(min(DEFAULT_BATCH_SIZE, max(MIN_CPU_BATCH, CPU_ACTIVATION_BYTES // max(sizes, default=1))))
    largest = max(_size(s) or 1 for s in job.splits.values())
    chunks = -(-largest // target)
    return -(-largest // chunks)


def _bn_inputs(bn_data: object, sources: Mapping[str, Source], *, function: str) -> Source:
    if bn_data is None:
        if "train" not in sources:
            raise bad_argument(
                function,
                "bn_data",
                expected="training inputs for bn='reset'",
                found=f"None, and data has no 'train' split (splits: {list(sources)})",
                fix="Pass bn_data=(x_train, y_train) or data with a 'train' split.",
            )
        return sources["train"].inputs_only()
    chosen, _, _, _ = as_sources(bn_data, function=function, argument="bn_data")
    return next(iter(chosen.values())).inputs_only()


def _size(source: Source) -> int | None:
    """Examples of a source (None for a streamed loader not yet read to its end)."""
    return None if source.streamed and getattr(source, "_size", None) is None else source.size


def recompute_bn(
    model: nn.Module,
    state: object,
    data: object,
    *,
    batch_size: int = DEFAULT_BN_BATCH_SIZE,
    device: str | torch.device = "auto",
) -> State:
    """``state`` with every BatchNorm layer's running statistics recomputed on ``data``.

    The one BatchNorm-statistics path of the library (``evaluate(bn="reset")`` uses it at
    every point): the model runs in train mode on batches of ``batch_size`` inputs, and each
    running mean and variance becomes the example-weighted average of the batch means and
    unbiased batch variances, exactly, whatever the size of the last batch.

    Parameters
    ----------
    model
        The architecture (not modified).
    state
        The weights (a State, a mapping of tensors or a module).
    data
        Inputs, an ``(x, y)`` pair (the labels are not used) or data with a ``train`` split.
    batch_size
        Examples per statistics batch (BatchNorm's result depends on it).
    device
        Where to run the model.

    Returns
    -------
    State
        A copy of ``state`` (on the CPU) with new ``running_mean``, ``running_var`` and
        ``num_batches_tracked`` (zero); unchanged when the model has no BatchNorm layer.

    Examples
    --------
    >>> import torch, landscape as ls
    >>> model = ls.models.create("mlp", width=8, depth=1, norm="batch", seed=0)
    >>> fresh = recompute_bn(model, ls.state_of(model), torch.randn(100, 40), batch_size=32)
    >>> bool((fresh["features.norm1.running_var"] != 1).any())
    True
    """
    original = as_state(state, function="recompute_bn", argument="state")
    if not bn_buffer_keys(model):
        return original.copy()
    sources, _, _, _ = as_sources(data, function="recompute_bn", argument="data")
    train = (sources["train"] if "train" in sources else next(iter(sources.values()))).inputs_only()
    run = run_points(
        model,
        [original],
        {"train": train},
        bn="reset",
        bn_batch_size=batch_size,
        device=device,
        strategy="loop",
        function="recompute_bn",
    )
    job = run._job
    buffers = recompute_point_bn(job, PointRunner(job), 0)
    kept = {k: v for k, v in original.provenance.items() if k in ("format", "source")}
    out = State(dict(original), provenance={**kept, "derived": "recompute_bn"})
    for key, value in buffers.items():
        if key in out:
            out[key] = value.detach().to(device="cpu", dtype=out[key].dtype)
    return out
