"""Labelled data in memory: named splits of ``(x, y)`` tensors, and the coercion of what
users pass (tensors, arrays, dicts, DataLoaders) into that one form."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from landscape.core.errors import bad_argument, describe

__all__ = ["Splits", "as_splits", "batch_slices", "batches", "padded_batches"]

Pair = tuple[Tensor, Tensor]


@dataclass
class Splits(Mapping[str, Pair]):
    """Named splits (``"train"``, ``"test"``, ...) of inputs and integer labels.

    Parameters
    ----------
    splits
        Ordered mapping from split name to ``(x, y)``; ``x`` has the examples on its first
        axis, ``y`` holds class indices (or, for sequence models, one index per position).
    name
        A short name used in results and plots (``"mnist1d"``).
    num_classes
        Number of classes (vocabulary size for character data).
    meta
        Anything else worth recording (seed, sizes, vocabulary).

    Examples
    --------
    >>> import torch
    >>> data = Splits({"train": (torch.zeros(4, 3), torch.zeros(4, dtype=torch.long))}, name="toy")
    >>> data.train[0].shape, data.input_shape
    (torch.Size([4, 3]), (3,))
    """

    splits: dict[str, Pair]
    name: str = "data"
    num_classes: int | None = None
    meta: dict[str, object] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Pair:
        if key not in self.splits:
            raise KeyError(f"split {key!r} not in {list(self.splits)}")
        return self.splits[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.splits)

    def __len__(self) -> int:
        return len(self.splits)

    @property
    def train(self) -> Pair:
        return self["train"]

    @property
    def test(self) -> Pair:
        return self["test"]

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example (without the batch axis)."""
        x = next(iter(self.splits.values()))[0]
        return tuple(x.shape[1:])

    def subset(self, n: int | None = None, *, splits: tuple[str, ...] | None = None) -> Splits:
        """The first ``n`` examples of each split (all when ``n`` is None), optionally only
        the named splits. Useful to make tiny versions for tests and quick looks."""
        names = splits or tuple(self.splits)
        chosen = {k: (self[k][0][:n], self[k][1][:n]) for k in names}
        return Splits(chosen, name=self.name, num_classes=self.num_classes, meta=dict(self.meta))


def _as_tensor(value: object, *, function: str, argument: str, labels: bool) -> Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, Tensor):
        raise bad_argument(function, argument, expected="a tensor or numpy array", found=value)
    if labels:
        if value.is_floating_point():
            if not torch.equal(value, value.round()):
                raise bad_argument(
                    function,
                    argument,
                    expected="integer class labels",
                    found=f"non-integer floats such as {value.reshape(-1)[0].item()}",
                    fix="Pass class indices (e.g. y.long()); regression targets are not supported by the default metrics.",
                )
        if value.numel() and int(value.min()) < 0:
            raise bad_argument(
                function,
                argument,
                expected="class indices >= 0",
                found=f"negative labels such as {int(value.min())} (-100 is the ignore index of padded sequences)",
                fix="Remove padded positions, or pass a custom metric that masks them.",
            )
        return value.long()
    return value  # evaluate and train cast inputs to the model's dtype


def _pair(value: object, *, function: str, argument: str) -> Pair:
    if isinstance(value, torch.utils.data.DataLoader):
        xs, ys = [], []
        for batch in value:
            if not isinstance(batch, (list, tuple)) or len(batch) < 2:
                raise bad_argument(function, argument, expected="a DataLoader yielding (x, y) batches", found=batch)
            xs.append(batch[0])
            ys.append(batch[1])
        if not xs:
            raise bad_argument(function, argument, expected="a non-empty DataLoader", found="an empty one")
        value = (torch.cat(xs), torch.cat(ys))
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise bad_argument(
            function,
            argument,
            expected="an (x, y) pair of tensors",
            found=value,
            fix="Pass (inputs, labels), a dict of such pairs, a DataLoader or landscape.datasets.mnist1d().",
        )
    x = _as_tensor(value[0], function=function, argument=f"{argument}[0]", labels=False)
    y = _as_tensor(value[1], function=function, argument=f"{argument}[1]", labels=True)
    if x.shape[0] != y.shape[0]:
        raise bad_argument(
            function,
            argument,
            expected="inputs and labels with the same number of examples",
            found=f"{x.shape[0]} inputs and {y.shape[0]} labels",
        )
    if x.shape[0] == 0:
        raise bad_argument(function, argument, expected="at least one example", found="an empty split")
    return x, y


def as_splits(data: object, *, function: str = "evaluate", argument: str = "data") -> tuple[Splits, bool]:
    """Coerce user data into :class:`Splits`.

    Returns
    -------
    (Splits, bool)
        The splits, and whether the user passed one unnamed ``(x, y)`` pair (so results
        need no ``split`` dimension).
    """
    if isinstance(data, Splits):
        return data, False
    if isinstance(data, Mapping):
        if not data:
            raise bad_argument(function, argument, expected="at least one split", found="an empty mapping")
        pairs = {str(k): _pair(v, function=function, argument=f"{argument}[{k!r}]") for k, v in data.items()}
        return Splits(pairs), False
    if data is None:
        raise bad_argument(
            function, argument, expected="data: an (x, y) pair, a dict of splits or a DataLoader", found=None
        )
    return Splits({"data": _pair(data, function=function, argument=argument)}), True


def batch_slices(n: int, batch_size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``batch_size`` out of ``n`` items: the one batching loop
    every part of the library uses."""
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
        raise bad_argument("batches", "batch_size", expected="a positive integer", found=describe(batch_size))
    return (slice(start, min(start + batch_size, n)) for start in range(0, n, int(batch_size)))


def batches(x: Tensor, y: Tensor, batch_size: int) -> Iterator[Pair]:
    """Consecutive slices of ``batch_size`` examples (views, no copies)."""
    for s in batch_slices(x.shape[0], batch_size):
        yield x[s], y[s]


def padded_batches(
    sequences: Sequence[Sequence[int]],
    batch_size: int,
    *,
    pad_id: int,
    side: str = "right",
    longest_first: bool = True,
    device: torch.device | str = "cpu",
) -> Iterator[tuple[list[int], Tensor, Tensor]]:
    """Token sequences in padded batches: ``(rows, input_ids, attention_mask)``.

    With ``longest_first`` the sequences are taken longest first (ties in input order), so
    each batch pads to little more than its own length; ``rows`` gives each batch row's index
    into ``sequences``. ``side="left"`` pads on the left, as generation needs.

    Examples
    --------
    >>> [(rows, ids.tolist()) for rows, ids, _ in padded_batches([[1], [2, 3]], 2, pad_id=0)]
    [([1, 0], [[2, 3], [1, 0]])]
    """
    if side not in ("left", "right"):
        raise bad_argument("padded_batches", "side", expected="'left' or 'right'", found=repr(side))
    order = list(range(len(sequences)))
    if longest_first:
        order.sort(key=lambda i: (-len(sequences[i]), i))
    for s in batch_slices(len(order), batch_size):
        rows = order[s]
        length = max(len(sequences[i]) for i in rows)
        input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for r, i in enumerate(rows):
            ids = torch.as_tensor(list(sequences[i]), dtype=torch.long)
            where = slice(0, len(ids)) if side == "right" else slice(length - len(ids), length)
            input_ids[r, where] = ids
            mask[r, where] = 1
        yield rows, input_ids.to(device), mask.to(device)


def __getattr__(name: str) -> object:
    # The engine's sources build on the helpers above, so they live next to the engine and
    # are resolved here on first use (a plain import would be circular).
    if name in ("Loader", "TokenData"):
        from landscape.core import _sources

        return getattr(_sources, name)
    raise AttributeError(f"module 'landscape.core.data' has no attribute {name!r}")
