"""Metrics computed from logits and integer targets.

A metric is a callable ``metric(logits, targets)``: ``logits`` has shape (N, ..., C) and
``targets`` (N, ...). It returns either one value per example, shape (N,), which the engine
averages over the data; or a 0-d batch mean, which the engine weights by the batch size; or
a pair ``(values, weights)`` of per-example sums and weights, which the engine reduces to
``sum(values) / sum(weights)`` (the next-token metrics weight by predicted tokens). A metric
with a ``finalize`` attribute has it applied to the reduced value (``perplexity`` is the
exponential of the mean next-token loss). Sequence outputs of the classification metrics are
averaged over positions within each example.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from landscape.core.errors import bad_argument

__all__ = [
    "BUILTIN",
    "TOKEN_METRICS",
    "Metric",
    "accuracy",
    "error",
    "lm_loss",
    "loss",
    "mean_loss",
    "next_token_accuracy",
    "perplexity",
    "resolve_metrics",
]

Metric = Callable[[Tensor, Tensor], Tensor]


def _flat_logits(logits: Tensor) -> Tensor:
    """One row of class scores per position, in at least float32 (half precision loses too
    much in log-softmax)."""
    flat = logits.reshape(-1, logits.shape[-1])
    return flat.float() if flat.dtype in (torch.float16, torch.bfloat16) else flat


def loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy per example (mean over positions for sequence outputs)."""
    per_position = F.cross_entropy(_flat_logits(logits), targets.reshape(-1), reduction="none")
    if targets.dim() == 1:  # one position per example (a tiny model pays for every extra kernel)
        return per_position
    return per_position.reshape(targets.shape[0], -1).mean(dim=1)


def mean_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy over examples (and positions, for sequence outputs) in one fused
    kernel: :func:`loss` per example and then a mean costs an extra kernel and graph node per
    training step, which a small model notices."""
    return F.cross_entropy(_flat_logits(logits), targets.reshape(-1))


def accuracy(logits: Tensor, targets: Tensor) -> Tensor:
    """Fraction of correct argmax predictions per example (1 or 0 for classification)."""
    correct = (logits.argmax(dim=-1) == targets).float()
    if targets.dim() == 1:
        return correct
    return correct.reshape(targets.shape[0], -1).mean(dim=1)


def error(logits: Tensor, targets: Tensor) -> Tensor:
    """``1 - accuracy`` per example."""
    return 1.0 - accuracy(logits, targets)


IGNORE_INDEX = -100


def _next_token(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Logits at positions 0..L-2, the tokens they predict (1..L-1) and which ones count."""
    predicted = logits[:, :-1]
    following = targets[:, 1:]
    return predicted, following, following != IGNORE_INDEX


def lm_loss(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Next-token cross-entropy of a causal language model: per sequence, the sum over the
    predicted tokens and their number (padding, marked -100, is skipped). The engine's mean
    is over all predicted tokens of the data."""
    predicted, following, counted = _next_token(logits, targets)
    flat = predicted.reshape(-1, predicted.shape[-1])
    if flat.dtype in (torch.float16, torch.bfloat16):
        flat = flat.float()
    per_token = F.cross_entropy(flat, following.reshape(-1), reduction="none", ignore_index=IGNORE_INDEX)
    per_token = per_token.reshape(following.shape)
    return per_token.sum(dim=1), counted.sum(dim=1)


def perplexity(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """The exponential of the mean next-token loss over the data (``lm_loss``, finalised)."""
    return lm_loss(logits, targets)


perplexity.finalize = np.exp  # type: ignore[attr-defined]


def next_token_accuracy(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Fraction of predicted tokens that are the argmax of the logits before them."""
    predicted, following, counted = _next_token(logits, targets)
    correct = (predicted.argmax(dim=-1) == following) & counted
    return correct.sum(dim=1), counted.sum(dim=1)


BUILTIN: dict[str, Metric] = {
    "loss": loss,
    "accuracy": accuracy,
    "error": error,
    "lm_loss": lm_loss,
    "perplexity": perplexity,
    "next_token_accuracy": next_token_accuracy,
}
TOKEN_METRICS = ("lm_loss", "perplexity", "next_token_accuracy")


def resolve_metrics(
    metrics: str | Metric | Sequence[str | Metric] | Mapping[str, Metric], *, function: str = "evaluate"
) -> dict[str, Metric]:
    """Names and callables to an ordered ``{name: callable}``."""
    if isinstance(metrics, Mapping):
        items = list(metrics.items())
    else:
        if isinstance(metrics, str) or callable(metrics):
            metrics = [metrics]
        items = []
        for m in metrics:
            if isinstance(m, str):
                if m not in BUILTIN:
                    raise bad_argument(
                        function,
                        "metrics",
                        expected=f"names from {sorted(BUILTIN)} or callables",
                        found=repr(m),
                        fix="Pass a callable metric(logits, targets) -> per-example values for anything else.",
                    )
                items.append((m, BUILTIN[m]))
            elif callable(m):
                items.append((getattr(m, "__name__", f"metric{len(items)}"), m))
            else:
                raise bad_argument(function, "metrics", expected="metric names or callables", found=m)
    if not items:
        raise bad_argument(function, "metrics", expected="at least one metric", found="none")
    names = [n for n, _ in items]
    if len(set(names)) != len(names):
        raise bad_argument(function, "metrics", expected="distinct metric names", found=repr(names))
    return dict(items)


def batch_sum(metric: Metric, name: str, logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """The batch's sum of a metric's values and their total weight, as float64 0-d tensors on
    the logits' device (no host synchronisation). Per-example values weigh one each; a 0-d
    result counts as the batch mean; a ``(values, weights)`` pair gives its own weights."""
    value = metric(logits, targets)
    n = targets.shape[0]
    if isinstance(value, tuple):
        if len(value) != 2:
            raise bad_argument(
                "evaluate", "metrics", expected=f"metric {name!r} to return (values, weights)", found=value
            )
        values, weights = (torch.as_tensor(v, device=logits.device) for v in value)
        return values.sum(dtype=torch.float64), weights.sum(dtype=torch.float64)
    if not isinstance(value, Tensor):
        value = torch.as_tensor(value, device=logits.device)
    count = torch.tensor(float(n), dtype=torch.float64, device=logits.device)
    if value.dim() == 0:
        return value.double() * n, count
    if value.shape[0] != n:
        raise bad_argument(
            "evaluate",
            "metrics",
            expected=f"metric {name!r} to return one value per example ({n}) or a scalar",
            found=value,
        )
    if value.dim() == 1:
        return value.sum(dtype=torch.float64), count
    return value.double().reshape(n, -1).mean(dim=1).sum(), count


def model_output_logits(output: object) -> Tensor:
    """Logits from a model's output: a tensor, an object with ``.logits`` (Hugging Face), a
    mapping with a ``"logits"`` entry, or the first element of a tuple."""
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, Mapping):
        logits = output.get("logits")
    if isinstance(logits, Tensor):
        return logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise bad_argument(
        "evaluate",
        "model",
        expected="a model returning logits (a tensor, .logits, or a tuple starting with them)",
        found=output,
    )
