"""Probing during distillation: encoders read out on the probe data sets, and the teacher with
BatchNorm statistics calibrated on the distillation inputs."""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from landscape.core.batchnorm import recompute_mode
from landscape.core.data import Splits, batch_slices
from landscape.core.state import State
from landscape.probes import features_at, probe_features

__all__ = ["Prober", "calibrated_state"]


@torch.no_grad()
def calibrated_state(model: nn.Module, state: State, inputs: Tensor, *, batch_size: int, device: torch.device) -> State:
    """``state`` with every BatchNorm layer's running statistics re-estimated on ``inputs``:
    the example-weighted average of the batch statistics (a smaller last batch counts for
    what it holds), as the engine's ``bn="reset"`` computes them."""
    work = copy.deepcopy(model)
    work.load_state_dict(state)
    work.to(device).eval()
    for module in work.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            module.reset_running_stats()
    with recompute_mode(work) as before_batch:
        for rows in batch_slices(inputs.shape[0], batch_size):
            xb = inputs[rows].to(device)
            before_batch(xb.shape[0])
            work(xb)
    out = State({k: v.detach().cpu().clone() for k, v in work.state_dict().items()})
    out.provenance = {**state.provenance, "bn": "calibrated on the distillation inputs"}
    return out


class Prober:
    """Probe accuracies of an encoder (given as a state of the zoo model) on each probe data set.

    ``datasets`` maps names to splits with ``train`` (fits the probes) and ``test`` (scores
    them); the first is the distillation data, the others are the ``transfer`` sets.
    """

    def __init__(
        self,
        model: nn.Module,
        datasets: Mapping[str, Splits],
        *,
        probes: Sequence[str],
        scalings: Sequence[str],
        options: Mapping[str, object],
        device: torch.device,
        batch_size: int = 1024,
    ) -> None:
        self.model, self.datasets = model, dict(datasets)
        self.probes, self.scalings, self.options = tuple(probes), tuple(scalings), dict(options)
        self.device, self.batch_size = device, batch_size
        self.seconds = 0.0  # time spent probing, for the benchmark

    @property
    def shape(self) -> tuple[int, int, int]:
        return len(self.datasets), len(self.probes), len(self.scalings)

    def _features(self, state: State, x: Tensor) -> Tensor:
        return features_at(self.model, state, x, layers="features", batch_size=self.batch_size, device=self.device)[
            "features"
        ]

    def __call__(self, state: State) -> np.ndarray:
        """Accuracies over (data set, probe, scaling)."""
        start = time.perf_counter()
        values = np.full(self.shape, np.nan)
        for i, splits in enumerate(self.datasets.values()):
            (x_train, y_train), (x_test, y_test) = splits["train"], splits["test"]
            values[i] = probe_features(
                self._features(state, x_train),
                y_train,
                self._features(state, x_test),
                y_test,
                probes=self.probes,
                scalings=self.scalings,
                device=self.device,
                **self.options,
            ).accuracy.values
        self.seconds += time.perf_counter() - start
        return values
