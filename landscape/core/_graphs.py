"""The ``graph`` strategy: a forward pass recorded once per input shape and replayed at every
point, for models whose per-point cost on a GPU is kernel-launch overhead.

Points are written into the engine's private model in place (as the ``loop`` strategy does),
so a recorded CUDA graph, which reads the parameters' memory, computes the new point on every
replay. Inputs are copied into the recording's static buffers and outputs copied out. On a
device without CUDA graphs the same static-buffer protocol runs the forward pass eagerly, so
the strategy's bookkeeping is exercised (and tested) on the CPU too.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils._pytree import tree_map

from landscape.core._sources import Batch
from landscape.core._strategies import Job, PointBatch, PointRunner, run_loop

__all__ = ["Replay", "graph_unavailable", "run_graph"]

# Forward passes run on a side stream before recording, as CUDA graph capture requires (lazy
# initialisation, cuDNN autotuning and the allocator settle first).
WARMUP_PASSES = 3


def graph_unavailable(job: Job) -> str | None:
    """Why the ``graph`` strategy cannot run this job (None when it can)."""
    if not PointRunner(job).in_place:
        return "the points' dtypes, shapes or devices differ from the model's, so they cannot be written in place"
    if any(source.streamed for source in job.splits.values()):
        return "the data is streamed from a loader"
    return None


def _clone(value: object) -> object:
    return tree_map(lambda t: t.clone() if isinstance(t, Tensor) else t, value)


class Replay:
    """One recorded forward pass for inputs of one shape."""

    def __init__(self, job: Job, runner: PointRunner, batch: Batch) -> None:
        self.job = job
        self.runner = runner
        self.static = Batch(
            tuple(a.clone() for a in batch.args),
            {k: v.clone() if isinstance(v, Tensor) else v for k, v in batch.kwargs.items()},
            None,
            batch.size,
        )
        self.graph: torch.cuda.CUDAGraph | None = None
        if job.device.type == "cuda":
            stream = torch.cuda.Stream(job.device)
            stream.wait_stream(torch.cuda.current_stream(job.device))
            with torch.cuda.stream(stream):
                for _ in range(WARMUP_PASSES):
                    runner.forward(self.static)
                    job.features()
            torch.cuda.current_stream(job.device).wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.output = runner.forward(self.static)
                self.features = job.features()

    def __call__(self, batch: Batch) -> tuple[object, dict[str, Tensor]]:
        for static, new in zip(self.static.args, batch.args):
            static.copy_(new)
        for key, new in batch.kwargs.items():
            if isinstance(new, Tensor):
                self.static.kwargs[key].copy_(new)
        if self.graph is None:
            return self.runner.forward(self.static), self.job.features()
        self.graph.replay()
        # The recording's outputs are overwritten by the next replay: hand out copies.
        return _clone(self.output), {name: value.clone() for name, value in self.features.items()}


def _shape_key(split: str, batch: Batch) -> tuple:
    return (
        split,
        tuple((tuple(a.shape), a.dtype) for a in batch.args),
        tuple((k, tuple(v.shape), v.dtype) for k, v in batch.kwargs.items() if isinstance(v, Tensor)),
    )


def run_graph(job: Job) -> Iterator[PointBatch]:
    """The loop, with each batch's forward pass replayed from a recording of its shape."""

    def forward(runner: PointRunner):
        replays: dict[tuple, Replay] = {}

        def run(split: str, batch: Batch) -> tuple[object, dict[str, Tensor]]:
            key = _shape_key(split, batch)
            if key not in replays:
                replays[key] = Replay(job, runner, batch)
            return replays[key](batch)

        return run

    return run_loop(job, forward)
