"""Choosing a strategy by measurement where the device makes the choice uncertain (CUDA).

Which strategy is fastest on a GPU depends on the model, the batch and the card: ``vmap``
batches points into larger kernels but pays for unbatched operations, a captured ``graph``
removes launch overhead but needs static shapes, the ``loop`` is never far behind on large
models (measured on an H200: vmap 4.2x the loop on a small MLP's plane, 0.7x on a ResNet).
So a short trial of each candidate on the first points and the first data batch decides,
when the job is large enough to pay for the trial; the choice is cached per model
structure, input shape, device, precision and options for the rest of the process.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator

import torch

from landscape.core._graphs import graph_unavailable, run_graph
from landscape.core._sources import Batch, Source
from landscape.core._strategies import Job, PointBatch, run_loop, run_vmap
from landscape.core.family import AffineFamily

__all__ = ["TRIAL_POINTS", "clear_choices", "measured_choice", "time_candidates"]

# Points and data batches a trial runs per candidate; the trial must be a small part of the job.
TRIAL_POINTS = 8
TRIAL_SHARE = 10
_CHOICES: dict[tuple, tuple[str, str]] = {}


def clear_choices() -> None:
    """Forget every cached choice (for benchmarks that compare fresh decisions)."""
    _CHOICES.clear()


class _FirstBatch(Source):
    """A source reduced to its first batch."""

    def __init__(self, batch: Batch) -> None:
        self.batch = batch
        self.size = batch.size

    def batches(self, batch_size: int) -> Iterator[Batch]:
        yield self.batch


def _first_points(family: AffineFamily, count: int) -> AffineFamily:
    rows = family.weights[:count]
    trial = AffineFamily._from_basis(
        family.basis, rows, ("point",), {"point": list(range(count))}, anchors=family.anchors
    )
    trial._device_basis = family._device_basis  # share the basis already on the device
    return trial


def _trial_job(job: Job, count: int) -> Job:
    split, source = next(iter(job.splits.items()))
    trial = copy.copy(job)
    trial.family = _first_points(job.family, count)
    trial.splits = {split: _FirstBatch(source.head(job.batch_size))}
    trial.bn_keys = []  # every strategy recomputes BatchNorm statistics the same way
    trial.tick = lambda n: None
    return trial


def _drain(strategy: Callable[[], Iterator[PointBatch]]) -> None:
    for out in strategy():
        out.output  # noqa: B018 - the outputs are the work; nothing is kept


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_candidates(job: Job, points_per_chunk: int, candidates: list[str]) -> dict[str, float]:
    """Seconds per point of each candidate on the job's first points and first data batch
    (after one untimed run each, which also records the graph)."""
    count = min(len(job.family), TRIAL_POINTS)
    trial = _trial_job(job, count)
    runs = {
        "loop": lambda: run_loop(trial),
        "vmap": lambda: run_vmap(trial, min(points_per_chunk, count)),
        "graph": lambda: run_graph(trial),
    }
    seconds = {}
    for name in candidates:
        _drain(runs[name])
        _sync(job.device)
        start = time.perf_counter()
        _drain(runs[name])
        _sync(job.device)
        seconds[name] = (time.perf_counter() - start) / count
    return seconds


def _signature(job: Job, points_per_chunk: int) -> tuple:
    sample = next(iter(job.splits.values())).head(job.batch_size)
    return (
        type(job.model).__qualname__,
        tuple((k, tuple(v.shape), v.dtype) for k, v in job.model.state_dict().items()),
        tuple((tuple(a.shape), a.dtype) for a in sample.args),
        tuple((k, tuple(v.shape)) for k, v in sample.kwargs.items() if isinstance(v, torch.Tensor)),
        str(job.device),
        points_per_chunk,
        job.precision_name,
        tuple(job.capture.names) if job.capture is not None else (),
    )


def measured_choice(job: Job, points_per_chunk: int) -> tuple[str, str]:
    """The strategy for ``job`` on CUDA and the reason, recorded with the result."""
    batches = sum(-(-(s.size if not s.streamed else job.batch_size) // job.batch_size) for s in job.splits.values())
    work = len(job.family) * batches
    candidates = ["loop", "vmap"]
    if graph_unavailable(job) is None:
        candidates.append("graph")
    trial_cost = 2 * len(candidates) * min(len(job.family), TRIAL_POINTS)
    if work < TRIAL_SHARE * trial_cost:
        return "loop", f"rule: {work} point-batches are too few to time {len(candidates)} strategies"
    key = _signature(job, points_per_chunk)
    if key in _CHOICES:
        chosen, reason = _CHOICES[key]
        return chosen, f"{reason} (cached)"
    seconds = time_candidates(job, points_per_chunk, candidates)
    chosen = min(seconds, key=seconds.__getitem__)
    reason = "timed: " + ", ".join(f"{name} {1e3 * t:.3f} ms" for name, t in seconds.items()) + " per point and batch"
    _CHOICES[key] = (chosen, reason)
    return chosen, reason
