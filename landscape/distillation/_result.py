"""What a distillation run returns, and its history as a labelled Dataset."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import xarray as xr
from torch import Tensor, nn

from landscape.core.state import State

__all__ = ["DistillationResult", "history_dataset"]


@dataclass
class DistillationResult:
    """What :func:`distill_random_teacher` returns.

    Attributes
    ----------
    model : nn.Module
        The architecture (a zoo model, ``Classifier(features, classifier)``).
    teacher : State
        The teacher at its random initialisation, as a state of ``model`` (features and
        classifier). Frozen, so it is also the teacher at the end unless ``teacher_momentum``
        was set (then see ``final_teacher``).
    student : State
        The student after the last epoch, as a state of ``model``: distilled features and the
        teacher's (untrained) classifier, so that it differs from ``teacher`` only in the
        encoder.
    students : dict of int to State
        Student states after the epochs requested in ``save_epochs`` (0 = the initialisation).
    history : xarray.Dataset
        ``loss`` over ``epoch`` (0 = before training); ``accuracy`` (fractions) over
        (``epoch``, ``net``, ``probe``, ``scaling``), NaN at epochs that were not probed; with
        ``transfer`` data sets, ``transfer_accuracy`` over (``transfer``, ``epoch``, ``net``,
        ``probe``, ``scaling``). ``attrs`` hold the settings and ``probe_seconds``.
    teacher_head, student_head : State
        The DINO heads' parameters (teacher's at initialisation; student's at the end).
    final_teacher, final_teacher_head : State
        The teacher after the last epoch (equal to ``teacher`` and ``teacher_head`` unless it
        was an EMA teacher).
    center : Tensor
        The centre subtracted from the teacher's outputs at the end (zeros without centering).
    net : DistillationNet
        The distillation architecture, ``head(features(x))`` (on the CPU, holding the final
        student); :func:`distillation_problem` evaluates the distillation loss with it.
    """

    model: nn.Module
    teacher: State
    student: State
    students: dict[int, State] = field(default_factory=dict)
    history: xr.Dataset = field(default_factory=xr.Dataset)
    teacher_head: State = field(default_factory=State)
    student_head: State = field(default_factory=State)
    final_teacher: State = field(default_factory=State)
    final_teacher_head: State = field(default_factory=State)
    center: Tensor | None = None
    net: nn.Module | None = None


def history_dataset(
    losses: np.ndarray,
    accuracy: np.ndarray,
    *,
    nets: Sequence[str],
    probes: Sequence[str],
    scalings: Sequence[str],
    datasets: Sequence[str],
) -> xr.Dataset:
    """``loss`` over ``epoch``; ``accuracy`` from ``accuracy[:, :, 0]`` (the distillation data)
    and, with more data sets, ``transfer_accuracy`` from the rest.

    ``accuracy`` has shape (epochs + 1, nets, data sets, probes, scalings).
    """
    epochs = np.arange(losses.shape[0])
    coords = {"epoch": epochs, "net": list(nets), "probe": list(probes), "scaling": list(scalings)}
    history = xr.Dataset(
        {
            "loss": (("epoch",), losses),
            "accuracy": (("epoch", "net", "probe", "scaling"), accuracy[:, :, 0]),
        },
        coords=coords,
    )
    history["loss"].attrs["description"] = "mean distillation cross-entropy over the inputs (epoch 0: before training)"
    history["accuracy"].attrs["description"] = "test accuracy of probes on the encoder's features; NaN where not probed"
    if len(datasets) > 1:
        transfer = np.moveaxis(accuracy[:, :, 1:], 2, 0)
        history["transfer_accuracy"] = (("transfer", "epoch", "net", "probe", "scaling"), transfer)
        history = history.assign_coords(transfer=list(datasets[1:]))
        history["transfer_accuracy"].attrs["description"] = (
            "test accuracy of probes fit and scored on another data set's features; NaN where not probed"
        )
    return history
