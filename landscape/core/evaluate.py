"""Evaluate a model at many parameter points in one call, returning labelled xarray."""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn
from torch.func import functional_call

from landscape.core.batchnorm import bn_buffer_keys
from landscape.core.data import Splits, as_splits
from landscape.core.device import resolve_device
from landscape.core.errors import bad_argument
from landscape.core.family import AffineFamily, as_family
from landscape.core.io import checkpoint_record, provenance_attrs
from landscape.core.metrics import Metric, batch_sum, model_output_logits, resolve_metrics
from landscape.core.progress import progress_bar
from landscape.core.spec import spec_of
from landscape.core.state import check_compatible
from landscape.core.strategies import (
    DEFAULT_BN_BATCH_SIZE,
    STRATEGIES,
    Job,
    find_first_layer,
    first_layer_flop_share,
    run_affine,
    run_loop,
    run_vmap,
)
from landscape.core.tied import canonical_state, tied_groups

__all__ = ["evaluate"]

DEFAULT_BATCH_SIZE = 4096
# For the affine strategy on the CPU, batches whose widest activation fits in about 2 MiB stay
# in the L2 cache between layers; measured 1.3x faster than one batch of 1,000 for a
# 784-512-512-10 MLP. The zoo's convolutional models ran 0.7-0.9x as fast in such batches, so
# the other strategies keep one large batch.
CPU_ACTIVATION_BYTES = 2 * 2**20
MIN_CPU_BATCH = 256
MIN_FIRST_LAYER_SHARE = 0.15
BN_POLICIES = ("keep", "reset")


def _model_description(model: nn.Module) -> object:
    return spec_of(model) or type(model).__name__


def _input_dtype(family: AffineFamily) -> torch.dtype:
    for t in family.basis[0].values():
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def _points_per_chunk(family: AffineFamily, device: torch.device, requested: int | None) -> int:
    if requested is not None:
        if not isinstance(requested, int) or requested < 1:
            raise bad_argument("evaluate", "points_per_chunk", expected="a positive integer", found=repr(requested))
        return requested
    bytes_per_point = sum(t.numel() * t.element_size() for t in family.basis[0].values())
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = free // 8
    else:
        budget = 256 * 2**20
    return int(max(1, min(len(family), 64, budget // max(bytes_per_point, 1))))


def _choose_strategy(requested: str, job: Job, sample: Tensor) -> tuple[str, object]:
    """The strategy to run and its extra argument (the first layer for ``affine``)."""
    if requested not in STRATEGIES:
        raise bad_argument("evaluate", "strategy", expected=f"one of {STRATEGIES}", found=repr(requested))
    if requested in ("loop", "vmap"):
        return requested, None
    if requested == "auto" and job.device.type == "cpu" and job.family.is_structured:
        # Sharing the first layer across points saves at most its share of the work, and the
        # strategy's checks and per-point mixing cost about as much as a small first layer:
        # measured slower than the loop for the zoo's CNNs, ResNet, ViT and GPT (shares 0-6%).
        if first_layer_flop_share(job.model, job.family, sample) < MIN_FIRST_LAYER_SHARE:
            return "loop", None
    if requested == "affine" or (job.device.type == "cpu" and job.family.is_structured):
        first = find_first_layer(job.model, job.family, sample)
        if isinstance(first, str):
            if requested == "affine":
                raise bad_argument(
                    "evaluate",
                    "strategy",
                    expected="a model whose first layer allows strategy='affine'",
                    found=f"'affine', but {first}",
                    fix="Use strategy='auto' or 'loop'.",
                )
            return "loop", None
        return "affine", first
    if job.device.type == "cuda":
        return "vmap", None
    return "loop", None


def evaluate(
    model: nn.Module,
    points: object,
    data: object,
    *,
    metrics: str | Metric | Sequence[str | Metric] | Mapping[str, Metric] = ("loss", "accuracy"),
    batch_size: int | None = None,
    bn: str = "keep",
    bn_data: object = None,
    bn_batch_size: int = DEFAULT_BN_BATCH_SIZE,
    device: str | torch.device = "auto",
    strategy: str = "auto",
    points_per_chunk: int | None = None,
    progress: bool = True,
    client: object = None,
    out: str | os.PathLike | None = None,
) -> xr.Dataset:
    """Evaluate ``model`` at every parameter point of ``points`` on ``data``.

    The engine picks the fastest strategy that gives the same numbers as a plain loop over
    points: ``vmap`` over chunks of points on CUDA; on the CPU, for lines and planes whose
    first layer is a Linear/Conv/Embedding layer, the ``affine`` strategy that computes that
    layer once per basis state instead of once per point; a ``loop`` otherwise. Data is
    moved and cast once for all points, and the caller's model is never modified.

    Parameters
    ----------
    model
        The architecture; its own weights are not used, only its structure.
    points
        A State, a list of States, a dict of named States, or an :class:`AffineFamily`
        (lines and planes, given lazily).
    data
        An ``(x, y)`` pair, a dict of such pairs by split name, a DataLoader, or
        :class:`~landscape.core.data.Splits` such as ``landscape.datasets.mnist1d()``.
    metrics
        Names (``"loss"``: mean cross-entropy, ``"accuracy"``, ``"error"``) or callables
        ``metric(logits, targets)`` returning per-example values (or a batch mean).
    batch_size
        Examples per forward pass (default 4096; for the ``affine`` strategy, what keeps the
        widest activation in the CPU's L2 cache).
    bn
        ``"keep"`` uses the running statistics stored at each point (interpolated along a
        line); ``"reset"`` recomputes every BatchNorm layer's statistics at every point from
        ``bn_data`` (default: the ``train`` split of ``data``) as an exact average over
        batches of ``batch_size``.
    bn_data
        Inputs (or an ``(x, y)`` pair) for ``bn="reset"``.
    bn_batch_size
        Batch size of the statistics pass of ``bn="reset"``: BatchNorm normalises each batch
        with its own statistics, so the result depends on it (not on ``batch_size``). The
        running statistics are the example-weighted averages of the batch statistics.
    device
        ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
    strategy
        ``"auto"``, or force ``"loop"``, ``"affine"`` or ``"vmap"``.
    points_per_chunk
        Points per vmap call (default: what fits in an eighth of free memory, at most 64).
    progress
        Show a progress bar.
    client
        Run the points in pieces as tasks on a Dask cluster: a ``distributed.Client``, a
        cluster (:func:`landscape.distributed.local_cluster`) or a scheduler address; the
        values are the same. See :func:`landscape.distributed.evaluate_sharded`.
    out
        A zarr store (``"surface.zarr"``) that the result is written into piece by piece as
        it is computed, and that a re-run with the same settings resumes from.

    Returns
    -------
    xarray.Dataset
        One variable per metric, with the point set's dims (``point``, ``alpha``, or
        ``alpha`` and ``beta``) and ``split`` when ``data`` has named splits. ``attrs`` hold
        provenance: checkpoint hashes, model spec, strategy, BN policy, versions.

    Examples
    --------
    >>> import torch, landscape as ls
    >>> model = ls.models.create("mlp", width=8, depth=1, seed=0)
    >>> a, b = ls.state_of(model), ls.state_of(ls.models.create("mlp", width=8, depth=1, seed=1))
    >>> data = (torch.randn(32, 40), torch.randint(0, 10, (32,)))
    >>> ds = ls.evaluate(model, ls.AffineFamily.line(a, b, alphas=5), data, progress=False)
    >>> ds.loss.dims
    ('alpha',)
    """
    # -- scale-out (issue 19): pieces on a Dask cluster and/or into a resumable zarr store ----
    if client is not None or out is not None:
        from landscape.distributed import evaluate_sharded

        return evaluate_sharded(
            model,
            points,
            data,
            metrics=metrics,
            batch_size=batch_size,
            bn=bn,
            bn_data=bn_data,
            bn_batch_size=bn_batch_size,
            device=device,
            strategy=strategy,
            points_per_chunk=points_per_chunk,
            progress=progress,
            client=client,
            out=out,
        )
    # -- end of scale-out ------------------------------------------------------------------
    if not isinstance(model, nn.Module):
        raise bad_argument(
            "evaluate",
            "model",
            expected="an nn.Module",
            found=model,
            fix="Build one with landscape.models.create(...) or pass your own module.",
        )
    # Tied weights: keep one key per group, so checkpoints that store one of them (Hugging
    # Face does) fit, and functional_call gets one value per shared tensor.
    groups = tied_groups(model)
    family = as_family(
        points,
        function="evaluate",
        argument="points",
        prepare=(lambda s: canonical_state(s, groups)) if groups else None,
    )
    splits, single = as_splits(data, function="evaluate", argument="data")
    metric_fns = resolve_metrics(metrics, function="evaluate")
    if bn not in BN_POLICIES:
        raise bad_argument("evaluate", "bn", expected="'keep' or 'reset'", found=repr(bn))
    for name, value in (("batch_size", batch_size), ("bn_batch_size", bn_batch_size)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise bad_argument("evaluate", name, expected="a positive integer", found=repr(value))
    device = resolve_device(device, function="evaluate")

    check_compatible(
        canonical_state(model.state_dict(), groups), family.basis[0], function="evaluate", names=("model", "points")
    )
    work = copy.deepcopy(model).to(device).eval()
    dtype = _input_dtype(family)
    on_device = {
        name: (x.to(device=device, dtype=dtype) if x.is_floating_point() else x.to(device), y.to(device))
        for name, (x, y) in splits.items()
    }
    memory_format = "contiguous"
    if device.type == "cpu" and _prefers_channels_last(work, on_device):
        # oneDNN's 2-D convolutions run in channels-last order; converting once here saves the
        # reorders on every call (measured 1.2x on the zoo ResNet, 1.7x on the zoo CNN).
        memory_format = "channels_last"
        work = work.to(memory_format=torch.channels_last)
        on_device = {name: (x.contiguous(memory_format=torch.channels_last), y) for name, (x, y) in on_device.items()}

    bn_keys: list[str] = []
    bn_inputs: Tensor | None = None
    bn_note = None
    if bn == "reset":
        bn_keys = bn_buffer_keys(work)
        if not bn_keys:
            bn_note = "model has no BatchNorm layer; bn='reset' changed nothing"
            warnings.warn(f"evaluate(bn='reset'): {bn_note}.", stacklevel=2)
        else:
            bn_inputs = _bn_inputs(bn_data, splits, device, dtype)
            if memory_format == "channels_last" and bn_inputs.dim() == 4:
                bn_inputs = bn_inputs.contiguous(memory_format=torch.channels_last)

    job = Job(
        work,
        family,
        on_device,
        batch_size or DEFAULT_BATCH_SIZE,
        device,
        bn_keys,
        bn_inputs,
        lambda n: None,
        bn_batch_size,
    )
    sample = next(iter(on_device.values()))[0][:2]
    _check_data_fits(work, family, sample)
    chosen, extra = _choose_strategy(strategy, job, sample)
    if batch_size is None and chosen == "affine":
        job.batch_size = _cache_sized_batch(work, family, on_device, device)
    n_batches = sum(-(-x.shape[0] // job.batch_size) for x, _ in on_device.values())
    with progress_bar(total=len(family) * n_batches, desc="evaluate", unit="pt·batch", disable=not progress) as bar:
        job.tick = bar.update
        sums = {name: torch.zeros(len(family), len(splits), dtype=torch.float64, device=device) for name in metric_fns}
        split_index = {name: i for i, name in enumerate(splits)}

        def consume(idx: Sequence[int], split: str, logits: Tensor, targets: Tensor) -> None:
            s = split_index[split]
            for j, k in enumerate(idx):
                for name, fn in metric_fns.items():
                    sums[name][k, s].add_(batch_sum(fn, name, logits[j], targets))

        with torch.no_grad():
            if chosen == "affine":
                run_affine(job, consume, extra)
            elif chosen == "vmap":
                run_vmap(job, consume, _points_per_chunk(family, device, points_per_chunk))
            else:
                run_loop(job, consume)

    counts = np.array([y.shape[0] for _, y in splits.values()], dtype=np.float64)
    variables = {}
    for name, total in sums.items():
        values = total.cpu().numpy() / counts
        values = values.reshape(*family.shape, len(splits))
        dims = (*family.dims, "split")
        if single:
            values, dims = values[..., 0], family.dims
        variables[name] = (dims, values)
    coords: dict[str, object] = dict(family.coords)
    if not single:
        coords["split"] = list(splits)
    attrs = provenance_attrs(
        model=_model_description(model),
        checkpoints=[checkpoint_record(s) for s in family.basis if s.provenance],
        data=_data_description(splits),
        metrics=list(metric_fns),
        strategy=chosen,
        device=str(device),
        bn=bn,
        bn_note=bn_note,
        bn_examples=int(bn_inputs.shape[0]) if bn_inputs is not None else None,
        bn_batch_size=bn_batch_size if bn_inputs is not None else None,
        batch_size=job.batch_size,
        memory_format=memory_format,
    )
    return xr.Dataset(variables, coords=coords, attrs=attrs)


def _prefers_channels_last(model: nn.Module, splits: dict[str, tuple[Tensor, Tensor]]) -> bool:
    """Image batches into a model with 2-D convolutions."""
    images = all(x.dim() == 4 and x.is_floating_point() for x, _ in splits.values())
    return images and any(isinstance(m, nn.Conv2d) for m in model.modules())


def _check_data_fits(model: nn.Module, family: AffineFamily, sample: Tensor) -> None:
    """One forward pass on two examples, so that data of the wrong shape fails with a message
    that names the data rather than a layer deep inside the model."""
    try:
        with torch.no_grad():
            model_output_logits(functional_call(model, family.state_on(0, sample.device), (sample,)))
    except (RuntimeError, ValueError, IndexError, TypeError) as err:
        raise bad_argument(
            "evaluate",
            "data",
            expected="inputs the model accepts",
            found=f"inputs of shape {tuple(sample.shape[1:])} per example, on which the model fails "
            f"({type(err).__name__}: {str(err).splitlines()[0]})",
            fix="Check that the data is the dataset the model was built for.",
        ) from err


def _cache_sized_batch(
    model: nn.Module, family: AffineFamily, splits: dict[str, tuple[Tensor, Tensor]], device: torch.device
) -> int:
    """Batches whose widest activation fits in the L2 cache (at least MIN_CPU_BATCH examples),
    split evenly: 1,000 examples in chunks of at most 668 become two of 500."""
    hooks = [m.register_forward_hook(lambda _m, _i, out: _widest(out)) for m in model.modules()]
    sizes: list[int] = []

    def _widest(out: object) -> None:
        if isinstance(out, Tensor) and out.dim() > 0:
            sizes.append(out[0].numel() * out.element_size())  # per example

    try:
        with torch.no_grad():
            # Two examples: BatchNorm without running statistics cannot normalise one.
            functional_call(model, family.state_on(0, device), (next(iter(splits.values()))[0][:2],))
    finally:
        for h in hooks:
            h.remove()
    widest = max(sizes, default=1)
    target = int(min(DEFAULT_BATCH_SIZE, max(MIN_CPU_BATCH, CPU_ACTIVATION_BYTES // widest)))
    largest = max(x.shape[0] for x, _ in splits.values())
    chunks = -(-largest // target)
    return -(-largest // chunks)


def _bn_inputs(bn_data: object, splits: Splits, device: torch.device, dtype: torch.dtype) -> Tensor:
    if bn_data is None:
        if "train" not in splits:
            raise bad_argument(
                "evaluate",
                "bn_data",
                expected="training inputs for bn='reset'",
                found=f"None, and data has no 'train' split (splits: {list(splits)})",
                fix="Pass bn_data=(x_train, y_train) or data with a 'train' split.",
            )
        x = splits["train"][0]
    elif isinstance(bn_data, Tensor):
        x = bn_data
    else:
        x = as_splits(bn_data, function="evaluate", argument="bn_data")[0].splits
        x = next(iter(x.values()))[0]
    return x.to(device=device, dtype=dtype) if x.is_floating_point() else x.to(device)


def _data_description(splits: Splits) -> dict[str, object]:
    sizes = {name: int(y.shape[0]) for name, (_, y) in splits.items()}
    return {"name": splits.name, "sizes": sizes, **({"meta": splits.meta} if splits.meta else {})}
