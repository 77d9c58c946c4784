"""Probing during distillation: encoders, given as states of the zoo model, read out through
the engine on the probe data sets."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from landscape.core.data import Splits
from landscape.core.state import State
from landscape.probes import features_at, probe_features

__all__ = ["ProbeHistory", "Prober"]


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


class ProbeHistory:
    """Probe accuracies over (epoch, net, data set, probe, scaling), filled as the run goes.

    The nets are the student, the teacher and, with ``calibrate``, the teacher with the
    statistics ``calibrate`` gives it. A frozen teacher (``teacher_fixed``) is probed once, at
    epoch 0, and its values repeated at every later probed epoch.
    """

    def __init__(
        self,
        prober: Prober,
        *,
        epochs: int,
        calibrate: Callable[[State], State] | None,
        teacher_fixed: bool,
    ) -> None:
        self.prober, self.calibrate, self.teacher_fixed = prober, calibrate, teacher_fixed
        self.nets = ("student", "teacher", "teacher_calibrated") if calibrate else ("student", "teacher")
        self.values = np.full((epochs + 1, len(self.nets), *prober.shape), np.nan)

    def record(self, epoch: int, student: State, teacher: Callable[[], State]) -> None:
        self.values[epoch, 0] = self.prober(student)
        if self.teacher_fixed and epoch > 0:
            self.values[epoch, 1:] = self.values[0, 1:]
            return
        state = teacher()
        self.values[epoch, 1] = self.prober(state)
        if self.calibrate is not None:
            self.values[epoch, 2] = self.prober(self.calibrate(state))
