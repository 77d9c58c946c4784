"""Parameter states: a model's parameters and buffers as an ordered ``dict[str, Tensor]``.

Every operation here is a pure function that returns a new :class:`State`; nothing modifies
its inputs. Floating-point entries take part in arithmetic; integer entries (such as
BatchNorm's ``num_batches_tracked``) are carried along unchanged from the first argument.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from landscape.core.errors import StateMismatchError, bad_argument, describe

__all__ = [
    "NORMALIZATIONS",
    "State",
    "add",
    "as_state",
    "check_compatible",
    "content_hash",
    "distance",
    "dot",
    "flatten",
    "is_norm_or_bias",
    "lerp",
    "norm",
    "parameter_keys",
    "random_direction",
    "record_hash",
    "scale",
    "stack",
    "state_of",
    "sub",
    "unflatten",
    "unstack",
]

NORMALIZATIONS = ("filter", "layer", "model", None)


class State(dict[str, Tensor]):
    """An ordered mapping from parameter/buffer names to tensors, with provenance.

    A State is a plain ``dict`` (it can be passed to ``module.load_state_dict``), plus a
    ``provenance`` dictionary that records where it came from (format, source, sha256)
    when it was loaded from a checkpoint. Treat States as immutable: every function in
    :mod:`landscape.core.state` returns a new one.

    Examples
    --------
    >>> import torch
    >>> s = State({"w": torch.ones(2)}, provenance={"source": "hand-made"})
    >>> s.provenance["source"]
    'hand-made'
    """

    def __init__(
        self,
        items: Mapping[str, Tensor] | Iterable[tuple[str, Tensor]] = (),
        /,
        *,
        provenance: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(items)
        self.provenance: dict[str, object] = dict(provenance or {})

    def copy(self) -> State:  # dict.copy would drop the provenance
        return State(self, provenance=self.provenance)

    def __repr__(self) -> str:
        n = sum(t.numel() for t in self.values())
        source = self.provenance.get("source")
        where = f", source={source!r}" if source else ""
        return f"State({len(self)} tensors, {n:,} numbers{where})"


def _is_float(t: Tensor) -> bool:
    return t.is_floating_point() or t.is_complex()


def as_state(value: object, *, function: str = "as_state", argument: str = "state") -> State:
    """Coerce a module or a mapping of tensors into a :class:`State`.

    Parameters
    ----------
    value
        An ``nn.Module`` (its ``state_dict()`` is taken), a :class:`State`, or any mapping
        from strings to tensors.
    function, argument
        Used in the error message when ``value`` is neither.

    Returns
    -------
    State
        ``value`` itself when it is already a State, else a new State.
    """
    if isinstance(value, State):
        return value
    if isinstance(value, nn.Module):
        return state_of(value)
    if isinstance(value, Mapping):
        bad = [k for k, v in value.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
        if bad:
            raise bad_argument(
                function,
                argument,
                expected="a mapping from parameter names (str) to tensors",
                found=f"a mapping whose entry {bad[0]!r} is {describe(value[bad[0]])}",
                fix="Pass model.state_dict(), a State, or an nn.Module.",
            )
        return State(value)
    raise bad_argument(
        function,
        argument,
        expected="a State, a mapping of tensors or an nn.Module",
        found=value,
        fix="Use landscape.load_state(path) for files, or landscape.state_of(model).",
    )


def state_of(model: nn.Module) -> State:
    """The parameters and persistent buffers of ``model``, detached and cloned.

    Parameters
    ----------
    model
        Any ``nn.Module``.

    Returns
    -------
    State
        Keys in ``model.state_dict()`` order; later changes to the model do not affect it.

    Examples
    --------
    >>> import torch
    >>> s = state_of(torch.nn.Linear(3, 2))
    >>> list(s)
    ['weight', 'bias']
    """
    if not isinstance(model, nn.Module):
        raise bad_argument("state_of", "model", expected="an nn.Module", found=model)
    items = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return State(items, provenance={"format": "module", "source": type(model).__name__})


def check_compatible(
    a: Mapping[str, Tensor],
    b: Mapping[str, Tensor],
    *,
    function: str,
    names: tuple[str, str] = ("a", "b"),
) -> None:
    """Raise :class:`StateMismatchError` unless ``a`` and ``b`` have the same keys and shapes.

    The message lists the keys missing from each side and, for shape mismatches, the key
    with both shapes.
    """
    missing = [k for k in a if k not in b]
    unexpected = [k for k in b if k not in a]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"in {names[0]} but not in {names[1]}: {_short_list(missing)}")
        if unexpected:
            parts.append(f"in {names[1]} but not in {names[0]}: {_short_list(unexpected)}")
        raise StateMismatchError(
            f"{function}({names[0]}, {names[1]}): expected the same parameter names; keys "
            + "; keys ".join(parts)
            + ". Are these checkpoints of the same architecture?"
        )
    for k, t in a.items():
        if tuple(t.shape) != tuple(b[k].shape):
            raise StateMismatchError(
                f"{function}({names[0]}, {names[1]}): expected the same shapes; {k!r} has shape "
                f"{tuple(t.shape)} in {names[0]} and {tuple(b[k].shape)} in {names[1]}. "
                "Are these checkpoints of the same architecture and width?"
            )


def _short_list(keys: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _binary(a: Mapping[str, Tensor], b: Mapping[str, Tensor], op, function: str) -> State:
    a = as_state(a, function=function, argument="a")
    b = as_state(b, function=function, argument="b")
    check_compatible(a, b, function=function)
    return State({k: op(t, b[k]) if _is_float(t) else t.clone() for k, t in a.items()})


def lerp(a: Mapping[str, Tensor], b: Mapping[str, Tensor], t: float) -> State:
    """Linear interpolation ``(1 - t) * a + t * b`` of the floating-point entries.

    ``t`` may lie outside ``[0, 1]`` (extrapolation). ``lerp(a, b, 0)`` equals ``a`` and
    ``lerp(a, b, 1)`` equals ``b`` exactly. Integer entries come from the nearer endpoint.

    Examples
    --------
    >>> import torch
    >>> lerp({"w": torch.zeros(2)}, {"w": torch.ones(2)}, 0.25)["w"]
    tensor([0.2500, 0.2500])
    """
    t = float(t)
    a = as_state(a, function="lerp", argument="a")
    b = as_state(b, function="lerp", argument="b")
    check_compatible(a, b, function="lerp")
    near = a if t < 0.5 else b
    return State({k: torch.lerp(v, b[k], t) if _is_float(v) else near[k].clone() for k, v in a.items()})


def add(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> State:
    """Entry-wise ``a + b`` of the floating-point entries."""
    return _binary(a, b, torch.add, "add")


def sub(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> State:
    """Entry-wise ``a - b`` of the floating-point entries (the direction from ``b`` to ``a``)."""
    return _binary(a, b, torch.sub, "sub")


def scale(a: Mapping[str, Tensor], factor: float) -> State:
    """``factor * a`` for the floating-point entries."""
    a = as_state(a, function="scale", argument="a")
    return State({k: t * factor if _is_float(t) else t.clone() for k, t in a.items()})


def dot(a: Mapping[str, Tensor], b: Mapping[str, Tensor], *, keys: Iterable[str] | None = None) -> float:
    """Euclidean inner product over the floating-point entries (only ``keys`` when given),
    accumulated in float64."""
    a = as_state(a, function="dot", argument="a")
    b = as_state(b, function="dot", argument="b")
    check_compatible(a, b, function="dot")
    chosen = a if keys is None else list(keys)
    return sum(float(torch.sum(a[k].double() * b[k].double())) for k in chosen if _is_float(a[k]))


def norm(a: Mapping[str, Tensor], *, keys: Iterable[str] | None = None) -> float:
    """Euclidean norm over the floating-point entries (only ``keys`` when given), accumulated
    in float64."""
    a = as_state(a, function="norm", argument="a")
    chosen = a if keys is None else list(keys)
    return math.sqrt(sum(float(torch.sum(a[k].double() ** 2)) for k in chosen if _is_float(a[k])))


def parameter_keys(state: Mapping[str, Tensor]) -> list[str]:
    """Floating-point entries that are not BatchNorm running statistics: the coordinates of
    weight space. Distances and angles between networks are measured over these."""
    return [k for k, t in state.items() if _is_float(t) and k.rsplit(".", 1)[-1] not in _NORM_BUFFERS]


def distance(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> float:
    """Euclidean distance ``norm(a - b)`` between two states."""
    return norm(sub(a, b))


def _float_keys(state: Mapping[str, Tensor]) -> list[str]:
    return sorted(k for k, t in state.items() if _is_float(t))


def flatten(state: Mapping[str, Tensor]) -> Tensor:
    """All floating-point entries as one vector, in sorted key order.

    The vector has the widest floating dtype among the entries (float64 if any entry is
    float64, else float32), so that :func:`unflatten` restores every entry exactly.

    Examples
    --------
    >>> import torch
    >>> flatten({"b": torch.tensor([3.0]), "a": torch.tensor([1.0, 2.0])})
    tensor([1., 2., 3.])
    """
    state = as_state(state, function="flatten")
    keys = _float_keys(state)
    if not keys:
        raise bad_argument("flatten", "state", expected="at least one floating-point tensor", found="none")
    dtype = torch.float64 if any(state[k].dtype == torch.float64 for k in keys) else torch.float32
    return torch.cat([state[k].detach().reshape(-1).to(dtype) for k in keys])


def unflatten(vector: Tensor, like: Mapping[str, Tensor]) -> State:
    """Inverse of :func:`flatten`: a State shaped like ``like`` with entries from ``vector``.

    Integer entries are copied from ``like``.
    """
    like = as_state(like, function="unflatten", argument="like")
    keys = _float_keys(like)
    expected = sum(like[k].numel() for k in keys)
    if vector.dim() != 1 or vector.numel() != expected:
        raise bad_argument(
            "unflatten",
            "vector",
            expected=f"a 1-D tensor of {expected} numbers (the float entries of `like`)",
            found=vector,
            fix="Flatten a state of the same architecture with landscape.core.state.flatten.",
        )
    out: dict[str, Tensor] = {}
    offset = 0
    pieces: dict[str, Tensor] = {}
    for k in keys:
        n = like[k].numel()
        pieces[k] = vector[offset : offset + n].reshape(like[k].shape).to(like[k].dtype)
        offset += n
    for k, t in like.items():
        out[k] = pieces[k] if k in pieces else t.clone()
    return State(out)


def stack(states: Sequence[Mapping[str, Tensor]]) -> State:
    """Stack K states into one whose tensors carry a leading point axis of length K."""
    if len(states) == 0:
        raise bad_argument("stack", "states", expected="at least one state", found="an empty sequence")
    first = as_state(states[0], function="stack", argument="states[0]")
    for i, s in enumerate(states[1:], start=1):
        check_compatible(first, as_state(s, function="stack"), function="stack", names=("states[0]", f"states[{i}]"))
    return State({k: torch.stack([s[k] for s in states]) for k in first})


def unstack(stacked: Mapping[str, Tensor]) -> list[State]:
    """Inverse of :func:`stack`: split the leading axis into a list of states."""
    stacked = as_state(stacked, function="unstack", argument="stacked")
    sizes = {t.shape[0] if t.dim() else None for t in stacked.values()}
    if len(sizes) != 1 or None in sizes:
        raise bad_argument(
            "unstack", "stacked", expected="tensors that share one leading axis", found=f"leading sizes {sizes}"
        )
    (k,) = sizes
    return [State({name: t[i] for name, t in stacked.items()}) for i in range(k)]


def record_hash(state: State) -> str:
    """The sha256 content hash of ``state``, computed from its bytes now and stored in
    ``state.provenance["sha256"]``.

    It is recomputed on every call rather than cached: writes through ``.data``, in-place
    operations on ``.data`` and writes through a numpy view change the numbers without
    changing anything a cache could key on (storage pointer, version counter), so a cached
    hash could describe numbers the state no longer holds. Hashing reads every byte once
    (about 1 GB/s on one core).
    """
    state.provenance["sha256"] = content_hash(state)
    return str(state.provenance["sha256"])


def content_hash(state: Mapping[str, Tensor]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of every entry, in sorted key order.

    The hash depends on the numbers only, not on the file format, so the same weights
    saved as ``.pt`` and ``.safetensors`` hash alike.

    Examples
    --------
    >>> import torch
    >>> content_hash({"w": torch.zeros(2)}) == content_hash({"w": torch.zeros(2, dtype=torch.float32)})
    True
    """
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach()
        if t.device.type == "meta":
            raise bad_argument(
                "content_hash",
                "state",
                expected="tensors that hold numbers",
                found=f"{k!r} on the meta device (shapes only, no values)",
                fix="Load or materialise the weights first (e.g. model.to_empty(device='cpu') and load a checkpoint).",
            )
        t = t.cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            # The numpy view is a buffer hashlib reads in place (no copy of the bytes).
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


_NORM_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def is_norm_or_bias(key: str, tensor: Tensor) -> tuple[bool, bool]:
    """Classify an entry as (bias, norm-layer entry) from its name and shape.

    A bias is any entry whose last name component is ``bias``; a norm-layer entry is any
    other one-dimensional entry (norm weights) or a BatchNorm running statistic.
    """
    leaf = key.rsplit(".", 1)[-1]
    is_bias = leaf == "bias"
    is_norm = not is_bias and (leaf in _NORM_BUFFERS or tensor.dim() <= 1)
    return is_bias, is_norm


def _ignored(ignore: Sequence[str] | str) -> tuple[str, ...]:
    if isinstance(ignore, str):
        ignore = {"biasbn": ("bias", "bn"), "": ()}.get(ignore, (ignore,))
    ignore = tuple(ignore)
    if set(ignore) - {"bias", "bn"}:
        raise bad_argument(
            "random_direction",
            "ignore",
            expected="a subset of ('bias', 'bn'), or 'biasbn'",
            found=repr(ignore),
            fix="Use ignore=() to move every parameter, ('bias',) or ('bn',) to hold some fixed.",
        )
    return ignore


def random_direction(
    state: Mapping[str, Tensor],
    *,
    normalization: str | None = "filter",
    ignore: Sequence[str] | str = ("bias", "bn"),
    seed: int = 0,
) -> State:
    """A Gaussian random direction in parameter space, normalised as in Li et al. (2018).

    Parameters
    ----------
    state
        The point the direction is drawn around; it sets shapes, dtypes and the norms
        used for normalisation.
    normalization
        ``"filter"``: every filter (slice along the first axis of a tensor with two or more
        axes) gets the norm of the matching filter of ``state``. ``"layer"``: every tensor
        gets the norm of the matching tensor. With both, one-dimensional entries that are not
        ignored are set to the state's own values, as in the reference code of Li et al.
        ``"model"``: the whole direction gets the norm of the whole state. ``None``: raw
        standard-normal entries.
    ignore
        ``"bias"`` zeroes the direction on biases, ``"bn"`` on normalisation-layer weights;
        the reference code's spelling ``"biasbn"`` means both, and a single string is
        accepted. BatchNorm running statistics and integer buffers never move along a
        direction (they are not parameters; use ``bn="reset"`` to recompute statistics).
    seed
        Seed of the generator; the same seed gives the same direction on every device.

    Returns
    -------
    State
        Same keys, shapes and dtypes as ``state``.

    Examples
    --------
    >>> import torch
    >>> w = {"weight": torch.ones(3, 4), "bias": torch.ones(3)}
    >>> d = random_direction(w, seed=0)
    >>> torch.allclose(d["weight"].norm(dim=1), w["weight"].norm(dim=1)), float(d["bias"].abs().sum())
    (True, 0.0)
    """
    state = as_state(state, function="random_direction")
    if normalization not in NORMALIZATIONS:
        raise bad_argument(
            "random_direction",
            "normalization",
            expected="'filter', 'layer', 'model' or None",
            found=repr(normalization),
        )
    ignore = _ignored(ignore)
    generator = torch.Generator().manual_seed(int(seed))
    direction: dict[str, Tensor] = {}
    drawn: list[str] = []
    # Draw in sorted key order on the CPU so the direction does not depend on dict order or device.
    for k in sorted(state):
        w = state[k]
        if not _is_float(w):
            direction[k] = torch.zeros_like(w)
            continue
        is_bias, is_norm = is_norm_or_bias(k, w)
        leaf = k.rsplit(".", 1)[-1]
        skip = (is_bias and "bias" in ignore) or (is_norm and "bn" in ignore) or leaf in _NORM_BUFFERS
        if skip:
            direction[k] = torch.zeros_like(w)
            continue
        d = torch.randn(w.shape, generator=generator, dtype=torch.float64)
        w64 = w.detach().double().cpu()
        if normalization in ("filter", "layer") and w.dim() <= 1:
            d = w64.clone()
        elif normalization == "filter":
            d_norm = d.reshape(d.shape[0], -1).norm(dim=1)
            w_norm = w64.reshape(w64.shape[0], -1).norm(dim=1)
            factor = torch.where(d_norm > 0, w_norm / d_norm.clamp_min(1e-300), torch.zeros_like(d_norm))
            d = d * factor.reshape(-1, *([1] * (d.dim() - 1)))
        elif normalization == "layer":
            d_norm = d.norm()
            d = d * (w64.norm() / d_norm) if d_norm > 0 else d
        direction[k] = d
        drawn.append(k)
    if normalization == "model":
        d_total = math.sqrt(sum(float(direction[k].pow(2).sum()) for k in drawn))
        w_total = math.sqrt(sum(float(state[k].detach().double().pow(2).sum()) for k in drawn))
        for k in drawn:
            direction[k] = direction[k] * (w_total / d_total if d_total > 0 else 0.0)
    ordered = {k: direction[k].to(dtype=state[k].dtype, device=state[k].device) for k in state}
    return State(ordered, provenance={"derived": "random_direction", "normalization": normalization, "seed": int(seed)})
