"""The rounds of iterative magnitude pruning: the dense round 0 and every pruned round, each
training the ``imp`` branch and its controls."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn

from landscape.core.state import State
from landscape.pruning._imp_store import RoundStore
from landscape.pruning._masks import apply_mask, magnitude_prune, random_mask, sparsity
from landscape.training import TrainConfig, TrainResult
from landscape.training import train as train_model

__all__ = ["Fitter", "dense_round", "pruned_round", "round_dataset"]


@dataclass
class Fitter:
    """Every training run of one IMP call: same model, data, recipe and device."""

    model: nn.Module
    splits: Mapping[str, tuple[Tensor, Tensor]]
    config: TrainConfig
    total: int
    device: str | torch.device
    progress: bool

    def __call__(
        self, start: Mapping[str, Tensor], mask: State | None, steps: int, keep: tuple[int, ...] = ()
    ) -> TrainResult:
        # A rewound run continues the dense run from its rewind step: same schedule position and
        # data order (resume_step), the last `steps` steps of it.
        return train_model(
            self.model,
            self.splits,
            config=self.config,
            start=start,
            steps=steps,
            resume_step=self.total - steps,
            mask=mask,
            checkpoint_steps=keep,
            device=self.device,
            progress=self.progress,
        )

    def summary(self, result: TrainResult) -> tuple[float, float, float]:
        """Test accuracy and loss at the end, and the mean training loss over the last epoch."""
        per_epoch = -(-self.splits["train"][0].shape[0] // self.config.batch_size)
        h = result.history
        last_epoch = h.loss[-min(int(h.sizes["step"]), per_epoch) :]
        return float(h.test_accuracy[-1]), float(h.test_loss[-1]), float(last_epoch.mean())


def dense_round(
    fit: Fitter,
    store: RoundStore,
    *,
    branches: tuple[str, ...],
    start: State,
    reinit: State,
    mask: State,
    rewind_step: int,
) -> np.ndarray:
    """Round 0: the dense run from ``start`` (keeping the rewind state) and, for the
    ``reinit`` control, from the re-initialisation. The random mask of a full mask is the
    full mask, so ``random_mask`` is the dense run itself. Returns (branches, 4) values."""
    values = np.full((len(branches), 4), np.nan)
    dense = fit(start, None, fit.total, keep=(rewind_step,))
    store.put("rewind", dense.checkpoints[rewind_step])
    store.put("mask-000", mask)
    store.put("trained-000", dense.state)
    for i, branch in enumerate(branches):
        result = fit(reinit, None, fit.total) if branch == "reinit" else dense
        values[i, :3] = fit.summary(result)
        values[i, 3] = 0.0
    return values


def pruned_round(
    fit: Fitter,
    store: RoundStore,
    r: int,
    *,
    branches: tuple[str, ...],
    reinit: State,
    rate: float,
    scope: str,
    rewind_step: int,
    seed: int,
) -> tuple[np.ndarray, State]:
    """Round ``r`` >= 1: prune the previous ``imp`` branch's trained weights, then train from
    the rewound weights with the new mask (``imp``), from the re-initialisation with it
    (``reinit``) and from the rewound weights with a random mask of the same per-layer
    sparsity (``random_mask``, seed ``seed + r``). Returns (branches, 4) values and the mask."""
    mask = magnitude_prune(
        store.get(f"trained-{r - 1:03d}"), store.get(f"mask-{r - 1:03d}"), prune_rate=rate, scope=scope
    )
    rewind = store.get("rewind")
    remaining = fit.total - rewind_step
    values = np.full((len(branches), 4), np.nan)
    for i, branch in enumerate(branches):
        if branch == "imp":
            result = fit(apply_mask(rewind, mask), mask, remaining)
            store.put(f"mask-{r:03d}", mask)
            store.put(f"trained-{r:03d}", result.state)
            used = mask
        elif branch == "reinit":
            result = fit(apply_mask(reinit, mask), mask, remaining)
            used = mask
        else:
            used = random_mask(mask, seed=seed + r)
            result = fit(apply_mask(rewind, used), used, remaining)
        values[i, :3] = fit.summary(result)
        values[i, 3] = sparsity(used)
    return values, mask


def round_dataset(r: int, branches: tuple[str, ...], values: np.ndarray, mask: State) -> xr.Dataset:
    """One round's results over (``round``, ``branch``), with its sparsity and density."""
    names = ("test_accuracy", "test_loss", "train_loss", "mask_sparsity")
    return xr.Dataset(
        {name: (("round", "branch"), values[None, :, j]) for j, name in enumerate(names)},
        coords={
            "round": [r],
            "branch": list(branches),
            "sparsity": ("round", [sparsity(mask)]),
            "density": ("round", [1.0 - sparsity(mask)]),
        },
    )
