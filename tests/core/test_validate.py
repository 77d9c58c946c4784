"""Named errors where a raw library error used to surface (issue 12, finding 6): labels beyond
the model's classes, data on the meta device, NaN weights in alignment."""

from __future__ import annotations

import pytest
import torch

import landscape as ls
from landscape.core.errors import LandscapeError
from landscape.core.validate import check_class_labels, check_data_device, check_finite_state


def test_labels_beyond_the_class_count_are_named() -> None:
    check_class_labels(torch.tensor([0, 3, 9]), 10, function="evaluate", argument="data")
    check_class_labels(torch.zeros(0, dtype=torch.long), 10, function="evaluate", argument="data")
    with pytest.raises(
        LandscapeError, match=r"evaluate\(data=...\): expected class labels in \[0, 10\).*labels up to 12 \(2 of 4"
    ):
        check_class_labels(torch.tensor([0, 10, 12, 1]), 10, function="evaluate", argument="data")


def test_train_names_labels_beyond_the_model_outputs(device) -> None:
    model = ls.models.create("mlp", width=8, depth=1, seed=0)
    x, y = torch.randn(16, 40), torch.randint(0, 10, (16,))
    y[3] = 10
    with pytest.raises(
        LandscapeError, match=r"train\(data=...\): expected class labels in \[0, 10\) .*found labels up to 10"
    ):
        ls.train(model, (x, y), epochs=1, progress=False, device=device)
    test_labels = y.clone()
    y[3] = 0
    with pytest.raises(LandscapeError, match="labels up to 10"):  # the test split is checked too
        ls.train(model, {"train": (x, y), "test": (x, test_labels)}, epochs=1, progress=False, device=device)


def test_meta_tensors_in_data_are_named() -> None:
    x = torch.zeros(4, 40, device="meta")
    with pytest.raises(
        LandscapeError,
        match=r"check\(data=...\): .*found data\['train'\]\[0\], a Tensor of shape \(4, 40\).*meta device",
    ):
        check_data_device({"train": (x, torch.zeros(4))}, function="check", argument="data")
    model = ls.models.create("mlp", width=8, depth=1, seed=0)
    with pytest.raises(LandscapeError, match=r"train\(data=...\): expected tensors that hold values"):
        ls.train(model, (x, torch.zeros(4, dtype=torch.long)), epochs=1, progress=False)


def test_nan_weights_are_named_in_align() -> None:
    model = ls.models.create("mlp", width=8, depth=1, seed=0)
    a, b = ls.state_of(model), ls.state_of(ls.models.create("mlp", width=8, depth=1, seed=1))
    b["features.fc1.weight"][0, :3] = float("nan")
    with pytest.raises(
        LandscapeError,
        match=r"align\(b=...\): expected finite weights; found NaN or Inf in 'features.fc1.weight' \(3 of 320 values\)",
    ):
        ls.alignment.align(model, a, b, method="weights", progress=False)
    check_finite_state(a, function="align", argument="reference")
