"""Model specs: the JSON-able recipe a zoo model was built from, kept on the module so that
checkpoints and results can record it (the registry in :mod:`landscape.models` sets it)."""

from __future__ import annotations

from typing import Any

from torch import nn

SPEC_ATTRIBUTE = "landscape_spec"

__all__ = ["SPEC_ATTRIBUTE", "spec_of"]


def spec_of(model: nn.Module) -> dict[str, Any] | None:
    """The spec a zoo model was created from (``{"name": ..., **kwargs}``), or None."""
    spec = getattr(model, SPEC_ATTRIBUTE, None)
    return dict(spec) if spec is not None else None
