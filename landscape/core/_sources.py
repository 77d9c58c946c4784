"""Where the engine's batches come from: tensors in memory, token sequences padded per batch,
or a DataLoader streamed batch by batch.

Every source yields :class:`Batch` objects (positional inputs, keyword inputs, targets) on
the engine's device. Tensors in memory are moved once and sliced; token sequences and
streamed loaders are moved a batch at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from landscape.core.data import Splits, as_splits, batch_slices, padded_batches
from landscape.core.errors import bad_argument, describe

__all__ = ["IGNORE_INDEX", "Batch", "Inputs", "Loader", "Source", "TokenData", "as_sources"]

# The target value that metrics skip (PyTorch's and Hugging Face's convention).
IGNORE_INDEX = -100
# A DataLoader whose batches add up to more than this is streamed, not held in memory.
DEFAULT_MEMORY_BUDGET = 2 * 2**30


@dataclass
class Batch:
    """One batch of model inputs: positional ``args``, keyword ``kwargs`` and the ``targets``
    (None for unlabelled data); ``size`` examples, which are the examples ``rows`` of their
    split (a slice, or a list of indices where batches reorder examples)."""

    args: tuple[Tensor, ...]
    kwargs: dict[str, Tensor]
    targets: Tensor | None
    size: int
    rows: slice | list[int] | None = None

    @property
    def first(self) -> Tensor:
        """The first input tensor (positional, else keyword)."""
        return self.args[0] if self.args else next(iter(self.kwargs.values()))

    def to(self, device: torch.device, dtype: torch.dtype) -> Batch:
        """On ``device``, floating-point inputs cast to ``dtype`` (the points' dtype)."""
        return Batch(
            tuple(_to(a, device, dtype) for a in self.args),
            {k: _to(v, device, dtype) for k, v in self.kwargs.items()},
            None if self.targets is None else self.targets.to(device),
            self.size,
            self.rows,
        )

    def channels_last(self) -> Batch:
        return Batch(
            tuple(a.contiguous(memory_format=torch.channels_last) if a.dim() == 4 else a for a in self.args),
            self.kwargs,
            self.targets,
            self.size,
            self.rows,
        )


def _to(x: Tensor, device: torch.device, dtype: torch.dtype) -> Tensor:
    return x.to(device=device, dtype=dtype) if x.is_floating_point() else x.to(device)


class Source:
    """One split's examples. ``size`` is the number of examples; ``tokens`` is True when the
    targets are next-token targets derived from the inputs (language-model data)."""

    size: int
    tokens: bool = False
    streamed: bool = False

    def batches(self, batch_size: int) -> Iterator[Batch]:  # pragma: no cover - interface
        raise NotImplementedError

    def head(self, n: int) -> Batch:
        return next(self.batches(n))

    def to(self, device: torch.device, dtype: torch.dtype, channels_last: bool = False) -> Source:
        """The source with its batches on ``device``."""
        raise NotImplementedError  # pragma: no cover - interface

    def inputs_only(self) -> Source:
        """The same inputs without targets (for BatchNorm statistics)."""
        raise NotImplementedError  # pragma: no cover - interface

    def labelled(self) -> bool:
        """Whether batches carry targets."""
        return self.head(1).targets is not None

    def largest_target(self) -> int | None:
        """The largest target value, where it is known without reading a stream (else None)."""
        return None


@dataclass
class Inputs(Source):
    """Examples held in memory: moved to the device once, then sliced into batches."""

    args: tuple[Tensor, ...]
    kwargs: dict[str, Tensor]
    targets: Tensor | None
    size: int
    tokens: bool = False

    def batches(self, batch_size: int) -> Iterator[Batch]:
        for s in batch_slices(self.size, batch_size):
            yield Batch(
                tuple(a[s] for a in self.args),
                {k: v[s] for k, v in self.kwargs.items()},
                None if self.targets is None else self.targets[s],
                s.stop - s.start,
                s,
            )

    def to(self, device: torch.device, dtype: torch.dtype, channels_last: bool = False) -> Inputs:
        moved = Batch(self.args, self.kwargs, self.targets, self.size).to(device, dtype)
        if channels_last:
            moved = moved.channels_last()
        return Inputs(moved.args, moved.kwargs, moved.targets, self.size, self.tokens)

    def inputs_only(self) -> Inputs:
        return Inputs(self.args, self.kwargs, None, self.size)

    def labelled(self) -> bool:
        return self.targets is not None

    def largest_target(self) -> int | None:
        if self.targets is None or self.targets.is_floating_point() or not self.targets.numel():
            return None
        return int(self.targets.max())

    @property
    def nbytes(self) -> int:
        tensors = [*self.args, *self.kwargs.values(), *([self.targets] if self.targets is not None else [])]
        return sum(t.numel() * t.element_size() for t in tensors)


def next_token_targets(input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
    """Targets of a causal language model: the inputs, with padding set to the ignore index
    (the metrics shift them: position t predicts token t + 1)."""
    if attention_mask is None:
        return input_ids.clone()
    return input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)


class _Padded(Source):
    """Token sequences of one split, padded per batch (longest first, so padding is small)."""

    tokens = True

    def __init__(
        self, sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device | None = None, side: str = "right"
    ) -> None:
        self.sequences = sequences
        self.pad_id = pad_id
        self.device = device or torch.device("cpu")
        self.side = side
        self.size = len(sequences)

    def batches(self, batch_size: int) -> Iterator[Batch]:
        for rows, ids, mask in padded_batches(
            self.sequences, batch_size, pad_id=self.pad_id, side=self.side, device=self.device
        ):
            inputs = {"input_ids": ids, "attention_mask": mask}
            yield Batch((), inputs, next_token_targets(ids, mask), ids.shape[0], rows)

    def to(self, device: torch.device, dtype: torch.dtype, channels_last: bool = False) -> _Padded:
        return _Padded(self.sequences, self.pad_id, device, self.side)

    def inputs_only(self) -> Source:
        return self

    def labelled(self) -> bool:
        return True

    def largest_target(self) -> int | None:
        return max((max(s) for s in self.sequences if s), default=None)


class TokenData(Mapping[str, Sequence[Sequence[int]]]):
    """Token sequences by split, for language models in the engine.

    Each batch holds ``input_ids`` and ``attention_mask`` (right padding with ``pad_id``);
    its targets are the inputs with padding ignored, for the metrics ``"lm_loss"``,
    ``"perplexity"`` and ``"next_token_accuracy"`` (position t predicts token t + 1).

    Build one with :meth:`from_texts` (a tokenizer and texts) or from token ids directly.

    Examples
    --------
    >>> data = TokenData({"test": [[5, 6, 7], [8, 9]]}, pad_id=0)
    >>> len(data["test"]), data.name
    (2, 'tokens')
    """

    def __init__(self, splits: Mapping[str, Sequence[Sequence[int]]], *, pad_id: int, name: str = "tokens") -> None:
        if not splits:
            raise bad_argument("TokenData", "splits", expected="at least one split", found="none")
        for split, sequences in splits.items():
            if len(sequences) == 0:
                raise bad_argument("TokenData", "splits", expected="at least one sequence per split", found=split)
            short = [i for i, s in enumerate(sequences) if len(s) < 2]
            if short:
                raise bad_argument(
                    "TokenData",
                    "splits",
                    expected="sequences of at least 2 tokens (one to read, one to predict)",
                    found=f"sequence {short[0]} of split {split!r} with {len(sequences[short[0]])} token(s)",
                )
        self.splits = {str(k): [list(map(int, s)) for s in v] for k, v in splits.items()}
        self.pad_id = int(pad_id)
        self.name = name

    @classmethod
    def from_texts(
        cls,
        texts: Sequence[str] | Mapping[str, Sequence[str]],
        tokenizer: object,
        *,
        max_length: int | None = None,
        name: str = "texts",
    ) -> TokenData:
        """Tokenize ``texts`` (a list, or lists by split) with a Hugging Face tokenizer.

        Special tokens are added as the tokenizer does by default; ``max_length`` truncates.
        The pad id is the tokenizer's pad token, else its end-of-sequence token.
        """
        by_split = {"data": texts} if not isinstance(texts, Mapping) else texts
        splits = {}
        for split, items in by_split.items():
            if isinstance(items, str):
                raise bad_argument("TokenData.from_texts", "texts", expected="a list of strings", found="one string")
            encoded = tokenizer(list(items), truncation=max_length is not None, max_length=max_length)["input_ids"]
            splits[split] = encoded
        pad = next(
            (
                v
                for v in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None))
                if isinstance(v, int)
            ),
            0,
        )
        return cls(splits, pad_id=pad, name=name)

    def __getitem__(self, key: str) -> Sequence[Sequence[int]]:
        return self.splits[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.splits)

    def __len__(self) -> int:
        return len(self.splits)

    @property
    def n_tokens(self) -> dict[str, int]:
        """Predicted tokens per split (each sequence predicts all but its first token)."""
        return {k: sum(len(s) - 1 for s in v) for k, v in self.splits.items()}


class Loader:
    """A DataLoader (or any re-iterable of batches) with the names of its fields.

    Batches may be tuples ``(x, y)`` or ``(x1, ..., xn, y)`` (the last element is the
    target), or dicts (Hugging Face datasets style). For dicts, ``inputs`` names the keyword
    inputs (default: every key but the targets), ``targets`` names the target field (default
    ``"labels"``, else ``"label"``; for a language model without labels, the targets are the
    ``input_ids`` with padding ignored). ``to_batch`` replaces all of this: a function from
    one raw batch to ``(args, kwargs, targets)``.

    A loader whose batches fit in ``memory_budget`` bytes is read once into memory; a larger
    one is streamed: read once per chunk of points, never once per point, with the same
    numbers as the in-memory path.

    Examples
    --------
    >>> import torch
    >>> rows = [{"x": torch.ones(3), "labels": torch.tensor(1)}] * 4
    >>> loader = torch.utils.data.DataLoader(rows, batch_size=2)
    >>> source = Loader(loader, inputs=["x"]).source("evaluate", "data")
    >>> batch = source.head(2)
    >>> sorted(batch.kwargs), batch.targets.tolist()
    (['x'], [1, 1])
    """

    def __init__(
        self,
        loader: Iterable[object],
        *,
        inputs: str | Sequence[str] | None = None,
        targets: str | None = None,
        to_batch: Callable[[object], tuple[tuple, dict, Tensor | None]] | None = None,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        name: str = "loader",
    ) -> None:
        self.loader = loader
        self.inputs = (inputs,) if isinstance(inputs, str) else (tuple(inputs) if inputs is not None else None)
        self.targets = targets
        self.to_batch = to_batch
        self.memory_budget = memory_budget
        self.name = name

    def convert(self, raw: object, *, function: str, argument: str) -> Batch:
        if self.to_batch is not None:
            converted = self.to_batch(raw)
            if not (isinstance(converted, tuple) and len(converted) == 3):
                raise bad_argument(
                    function, argument, expected="to_batch returning (args, kwargs, targets)", found=converted
                )
            args, kwargs, targets = converted
            return _checked(tuple(args), dict(kwargs), targets, function=function, argument=argument)
        if isinstance(raw, Mapping):
            return self._from_dict(raw, function=function, argument=argument)
        if isinstance(raw, (tuple, list)) and len(raw) >= 2 and all(isinstance(t, Tensor) for t in raw):
            return _checked(tuple(raw[:-1]), {}, raw[-1], function=function, argument=argument)
        if isinstance(raw, Tensor):
            return _checked((raw,), {}, None, function=function, argument=argument)
        raise bad_argument(
            function,
            argument,
            expected="a DataLoader yielding (x, y) tuples, dicts of tensors, or tensors of inputs",
            found=raw,
            fix="Wrap it as landscape.core.data.Loader(loader, to_batch=...) to say how a batch maps to inputs.",
        )

    def _from_dict(self, raw: Mapping, *, function: str, argument: str) -> Batch:
        keys = list(raw)
        target_key = self.targets
        if target_key is None:
            target_key = next((k for k in ("labels", "label") if k in raw), None)
        elif target_key not in raw:
            raise bad_argument(
                function, argument, expected=f"batches with the target field {target_key!r}", found=f"fields {keys}"
            )
        names = self.inputs if self.inputs is not None else tuple(k for k in keys if k != target_key)
        missing = [n for n in names if n not in raw]
        if missing:
            raise bad_argument(
                function, argument, expected=f"batches with the input fields {list(names)}", found=f"fields {keys}"
            )
        kwargs = {n: raw[n] for n in names}
        not_tensors = [n for n, v in kwargs.items() if not isinstance(v, Tensor)]
        if not_tensors:
            raise bad_argument(
                function,
                argument,
                expected="tensor fields (set the DataLoader's collate_fn, or pass inputs=[...] to leave others out)",
                found=f"field {not_tensors[0]!r} of type {type(kwargs[not_tensors[0]]).__name__}",
            )
        targets = raw[target_key] if target_key is not None else None
        if targets is None and "input_ids" in kwargs:
            targets = next_token_targets(kwargs["input_ids"], kwargs.get("attention_mask"))
            return Batch((), kwargs, targets, int(targets.shape[0]))
        return _checked((), kwargs, targets, function=function, argument=argument)

    def source(self, function: str, argument: str) -> Source:
        """Read the loader into memory if it fits the budget, else stream it."""
        batches: list[Batch] = []
        held = 0
        for raw in self.loader:
            batch = self.convert(raw, function=function, argument=argument)
            batches.append(batch)
            held += sum(t.numel() * t.element_size() for t in [*batch.args, *batch.kwargs.values()])
            if held > self.memory_budget:
                return _Streamed(self, function, argument)
        if not batches:
            raise bad_argument(function, argument, expected="a non-empty DataLoader", found="an empty one")
        return _concatenate(batches, function=function, argument=argument)


def _checked(args: tuple, kwargs: dict, targets: object, *, function: str, argument: str) -> Batch:
    tensors = [*args, *kwargs.values()]
    if not tensors or not all(isinstance(t, Tensor) for t in tensors):
        raise bad_argument(function, argument, expected="batches of tensors", found=describe(tensors))
    n = int(tensors[0].shape[0])
    if targets is not None:
        if not isinstance(targets, Tensor):
            targets = torch.as_tensor(targets)
        if targets.shape[0] != n:
            raise bad_argument(
                function,
                argument,
                expected="inputs and targets with the same number of examples",
                found=f"{n} inputs and {targets.shape[0]} targets",
            )
    return Batch(args, kwargs, targets, n)


def _concatenate(batches: list[Batch], *, function: str, argument: str) -> Inputs:
    first = batches[0]
    try:
        args = tuple(torch.cat([b.args[i] for b in batches]) for i in range(len(first.args)))
        kwargs = {k: torch.cat([b.kwargs[k] for b in batches]) for k in first.kwargs}
        targets = None if first.targets is None else torch.cat([b.targets for b in batches])  # type: ignore[misc]
    except (RuntimeError, KeyError, TypeError) as err:
        raise bad_argument(
            function,
            argument,
            expected="batches of the same structure and shapes (pad sequences to one length, or stream them)",
            found=str(err).splitlines()[0],
        ) from err
    tokens = targets is not None and first.targets is not None and "input_ids" in first.kwargs and not first.args
    return Inputs(args, kwargs, targets, sum(b.size for b in batches), tokens=bool(tokens and _is_derived(first)))


def _is_derived(batch: Batch) -> bool:
    ids = batch.kwargs.get("input_ids")
    if ids is None or batch.targets is None or batch.targets.shape != ids.shape:
        return False
    keep = batch.targets != IGNORE_INDEX
    return bool(torch.equal(batch.targets[keep], ids[keep]))


class _Streamed(Source):
    """A loader read batch by batch each time it is iterated."""

    streamed = True

    def __init__(
        self, loader: Loader, function: str, argument: str, device: torch.device | None = None, dtype=None
    ) -> None:
        self.loader = loader
        self.function = function
        self.argument = argument
        self.device = device
        self.dtype = dtype
        self.channels_last = False
        self._size: int | None = None
        first = self.loader.convert(next(iter(loader.loader)), function=function, argument=argument)
        self.tokens = _is_derived(first)

    @property
    def size(self) -> int:  # type: ignore[override]
        if self._size is None:
            self._size = sum(b.size for b in self._raw())
        return self._size

    def _raw(self) -> Iterator[Batch]:
        for raw in self.loader.loader:
            yield self.loader.convert(raw, function=self.function, argument=self.argument)

    def batches(self, batch_size: int) -> Iterator[Batch]:
        # The loader's own batches: re-batching would cost a copy of every batch.
        count = 0
        for batch in self._raw():
            batch.rows = slice(count, count + batch.size)
            count += batch.size
            if self.device is not None:
                batch = batch.to(self.device, self.dtype)
                if self.channels_last:
                    batch = batch.channels_last()
            yield batch
        self._size = count

    def to(self, device: torch.device, dtype: torch.dtype, channels_last: bool = False) -> _Streamed:
        moved = _Streamed.__new__(_Streamed)
        moved.__dict__.update(self.__dict__)
        moved.device, moved.dtype, moved.channels_last = device, dtype, channels_last
        return moved

    def inputs_only(self) -> Source:
        return self


class _Mapped(Source):
    """A source whose batches are rewritten for the model (see :func:`for_model`)."""

    def __init__(self, source: Source, rewrite: Callable[[Batch], Batch]) -> None:
        self.source = source
        self.rewrite = rewrite
        self.tokens = source.tokens
        self.streamed = source.streamed

    @property
    def size(self) -> int:  # type: ignore[override]
        return self.source.size

    def batches(self, batch_size: int) -> Iterator[Batch]:
        return (self.rewrite(b) for b in self.source.batches(batch_size))

    def to(self, device: torch.device, dtype: torch.dtype, channels_last: bool = False) -> Source:
        return _Mapped(self.source.to(device, dtype, channels_last), self.rewrite)

    def inputs_only(self) -> Source:
        return _Mapped(self.source.inputs_only(), self.rewrite)

    def labelled(self) -> bool:
        return self.source.labelled()

    def largest_target(self) -> int | None:
        return self.source.largest_target()


def for_model(source: Source, model: torch.nn.Module) -> Source:
    """Token batches in the form ``model`` takes: keyword ``input_ids``/``attention_mask``
    (with ``use_cache=False``: nothing is generated, so no key/value cache is built) for a
    Hugging Face model; the ids alone, positionally, for a model whose ``forward`` takes one
    tensor (such as the zoo's GPT), which is exact for a causal model with right padding: no
    position attends to the padding after it, and padded positions are not scored."""
    import inspect

    if not source.tokens:
        return source
    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - a forward without a signature
        return source
    if "input_ids" in parameters:
        if "use_cache" not in parameters:
            return source
        return _Mapped(source, lambda b: Batch(b.args, {**b.kwargs, "use_cache": False}, b.targets, b.size, b.rows))

    def positional(b: Batch) -> Batch:
        if b.args or "input_ids" not in b.kwargs:
            return b
        return Batch((b.kwargs["input_ids"],), {}, b.targets, b.size, b.rows)

    return _Mapped(source, positional)


def _tensor(value: object, *, function: str, argument: str) -> Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, Tensor):
        raise bad_argument(function, argument, expected="a tensor or numpy array", found=value)
    return value


def _structured_inputs(x: object, *, function: str, argument: str) -> tuple[tuple[Tensor, ...], dict[str, Tensor]]:
    """Positional inputs from a tensor or a tuple of tensors; keyword inputs from a dict."""
    if isinstance(x, Mapping):
        return (), {str(k): _tensor(v, function=function, argument=f"{argument}[{k!r}]") for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return tuple(_tensor(v, function=function, argument=f"{argument}[{i}]") for i, v in enumerate(x)), {}
    return (_tensor(x, function=function, argument=argument),), {}


def _from_pair(value: object, *, function: str, argument: str) -> Source:
    """An ``(inputs, targets)`` pair whose inputs are a tuple or a dict of tensors."""
    x, y = value  # type: ignore[misc]
    args, kwargs = _structured_inputs(x, function=function, argument=f"{argument}[0]")
    targets = None if y is None else _tensor(y, function=function, argument=f"{argument}[1]")
    batch = _checked(args, kwargs, targets, function=function, argument=argument)
    if batch.size == 0:
        raise bad_argument(function, argument, expected="at least one example", found="an empty split")
    if targets is None and "input_ids" in kwargs:
        targets = next_token_targets(kwargs["input_ids"], kwargs.get("attention_mask"))
        return Inputs(args, kwargs, targets, batch.size, tokens=True)
    return Inputs(args, kwargs, targets, batch.size)


def _is_structured_pair(value: object) -> bool:
    return (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and (isinstance(value[0], (Mapping, tuple, list)) or value[1] is None)
    )


def as_sources(data: object, *, function: str, argument: str = "data") -> tuple[dict[str, Source], bool, str, dict]:
    """User data as named sources.

    Returns
    -------
    (dict of str to Source, bool, str, dict)
        The sources by split, whether the data was one unnamed split, the data's name and
        its recorded metadata.
    """
    from landscape.core.validate import check_data_device

    check_data_device(data, function=function, argument=argument)
    if isinstance(data, (Tensor, np.ndarray)):
        x = _tensor(data, function=function, argument=argument)
        if x.dim() == 0 or x.shape[0] == 0:
            raise bad_argument(function, argument, expected="inputs with at least one example", found=x)
        return {"data": Inputs((x,), {}, None, x.shape[0])}, True, "inputs", {}
    if isinstance(data, TokenData):
        sources = {k: _Padded(v, data.pad_id) for k, v in data.splits.items()}
        single = list(data.splits) == ["data"]
        return sources, single, data.name, {"pad_id": data.pad_id, "n_tokens": data.n_tokens}  # type: ignore[return-value]
    if isinstance(data, Loader):
        return {"data": data.source(function, argument)}, True, data.name, {}
    if isinstance(data, torch.utils.data.DataLoader):
        return {"data": Loader(data).source(function, argument)}, True, "loader", {}
    if _is_structured_pair(data):
        return {"data": _from_pair(data, function=function, argument=argument)}, True, "data", {}
    if isinstance(data, Mapping) and data and all(isinstance(v, Source) for v in data.values()):
        return {str(k): v for k, v in data.items()}, False, "data", {}
    if isinstance(data, Mapping) and not isinstance(data, Splits) and data:
        values = list(data.values())
        if any(isinstance(v, (Loader, torch.utils.data.DataLoader)) or _is_structured_pair(v) for v in values):
            sources: dict[str, Source] = {}
            for k, v in data.items():
                where = f"{argument}[{k!r}]"
                if isinstance(v, (Loader, torch.utils.data.DataLoader)):
                    sources[str(k)] = (v if isinstance(v, Loader) else Loader(v)).source(function, where)
                elif _is_structured_pair(v):
                    sources[str(k)] = _from_pair(v, function=function, argument=where)
                else:
                    (name, (x, y)), *_ = as_splits({k: v}, function=function, argument=argument)[0].splits.items()
                    sources[name] = Inputs((x,), {}, y, y.shape[0])
            return sources, False, "data", {}
    splits, single = as_splits(data, function=function, argument=argument)
    sources = {name: Inputs((x,), {}, y, y.shape[0]) for name, (x, y) in splits.items()}
    return sources, single, splits.name, dict(splits.meta)
