"""Evaluate a model at many parameter points in one call, returning labelled xarray."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import xarray as xr
from torch import nn

from landscape.core._run import run_points
from landscape.core._strategies import DEFAULT_BN_BATCH_SIZE
from landscape.core.errors import bad_argument
from landscape.core.io import provenance_attrs
from landscape.core.metrics import BUILTIN, Metric, batch_sum, resolve_metrics

__all__ = ["evaluate"]


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
    precision: str = "float32",
    points_per_chunk: int | None = None,
    progress: bool = True,
) -> xr.Dataset:
    """Evaluate ``model`` at every parameter point of ``points`` on ``data``.

    A reduction over :func:`~landscape.core.run_points`, the engine's primitive: it picks the
    fastest strategy that gives the same numbers as a plain loop over points (``vmap`` over
    chunks of points on CUDA; on the CPU, for lines and planes whose first layer is a
    Linear/Conv/Embedding layer carrying enough of the work, the ``affine`` strategy that
    computes that layer once per basis state instead of once per point; a ``loop``
    otherwise). Data is moved and cast once for all points, and the caller's model is never
    modified.

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
        batches of ``bn_batch_size`` (see :func:`~landscape.core.recompute_bn`).
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
    precision
        ``"float32"`` (default), ``"tf32"`` (CUDA) or ``"bfloat16"`` (autocast; metrics are
        accumulated in float64 either way).
    points_per_chunk
        Points per vmap call (default: what fits in an eighth of free memory, at most 64).
    progress
        Show a progress bar.

    Returns
    -------
    xarray.Dataset
        One variable per metric, with the point set's dims (``point``, ``alpha``, or
        ``alpha`` and ``beta``) and ``split`` when ``data`` has named splits. ``attrs`` hold
        provenance: checkpoint hashes, model spec, strategy, BN policy, precision, versions.

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
    metric_fns = resolve_metrics(metrics, function="evaluate")
    run = run_points(
        model,
        points,
        data,
        batch_size=batch_size,
        bn=bn,
        bn_data=bn_data,
        bn_batch_size=bn_batch_size,
        device=device,
        strategy=strategy,
        precision=precision,
        points_per_chunk=points_per_chunk,
        progress=progress,
        function="evaluate",
    )
    family, splits = run.family, run.splits
    split_index = {name: i for i, name in enumerate(splits)}

    def zeros() -> torch.Tensor:
        return torch.zeros(len(family), len(splits), dtype=torch.float64, device=run.device)

    sums = {name: zeros() for name in metric_fns}
    weights = {name: zeros() for name in metric_fns}
    _check_targets(run, metric_fns)
    for out in run:
        logits, s = out.logits, split_index[out.split]
        for j, k in enumerate(out.points):
            for name, fn in metric_fns.items():
                total, weight = batch_sum(fn, name, logits[j], out.targets)
                sums[name][k, s].add_(total)
                weights[name][k, s].add_(weight)

    variables = {}
    for name, total in sums.items():
        values = total.cpu().numpy() / weights[name].cpu().numpy()
        finalize = getattr(metric_fns[name], "finalize", None)
        if finalize is not None:
            values = finalize(values)
        values = values.reshape(*family.shape, len(splits))
        dims = (*family.dims, "split")
        if run.single:
            values, dims = values[..., 0], family.dims
        variables[name] = (dims, values)
    coords: dict[str, object] = dict(family.coords)
    if not run.single:
        coords["split"] = splits
    attrs = provenance_attrs(**{**run.attrs, "metrics": list(metric_fns)})
    return xr.Dataset(variables, coords=coords, attrs=attrs)


def _check_targets(run, metrics: Mapping[str, Metric]) -> None:
    """Targets the metrics can use: present, class indices below the number of logits, and
    next-token targets only for the next-token metrics."""
    from landscape.core.metrics import TOKEN_METRICS, model_output_logits

    classes = model_output_logits(run.sample_output).shape[-1]
    for split, source in run.sources.items():
        if not source.labelled():
            raise bad_argument(
                "evaluate",
                "data",
                expected="labelled data: an (x, y) pair, a dict of such pairs, Splits or TokenData",
                found="inputs without labels",
                fix="Pass (inputs, labels); use landscape.core.run_points for unlabelled inputs.",
            )
        token_metrics = [name for name, fn in metrics.items() if fn in [BUILTIN[t] for t in TOKEN_METRICS]]
        if token_metrics and not source.tokens:
            raise bad_argument(
                "evaluate",
                "metrics",
                expected="class metrics ('loss', 'accuracy', 'error') for classification data",
                found=f"{token_metrics!r} on split {split!r}, which holds no token sequences",
                fix="Next-token metrics need language-model data: landscape.core.TokenData, or batches with input_ids.",
            )
        if source.tokens:
            wrong = [
                name for name, fn in metrics.items() if fn in (BUILTIN["loss"], BUILTIN["accuracy"], BUILTIN["error"])
            ]
            if wrong:
                raise bad_argument(
                    "evaluate",
                    "metrics",
                    expected=f"next-token metrics for language-model data ({sorted(TOKEN_METRICS)})",
                    found=repr(wrong),
                    fix="Use metrics=('lm_loss', 'perplexity'): position t of a causal LM predicts token t + 1.",
                )
        largest = source.largest_target()
        if largest is not None and largest >= classes:
            raise bad_argument(
                "evaluate",
                "data",
                expected=f"class labels below the model's {classes} outputs",
                found=f"a label {largest} in split {split!r}",
                fix="Check that the labels and the model's number of classes belong together.",
            )
