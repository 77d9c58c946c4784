"""Checks of untrusted or careless input that run before any real work: a model spec read
from a file is dry-built on the ``meta`` device (shapes, no memory) and compared with the
file's tensors before a real model is allocated; labels, devices and weights are checked
where a raw library error would otherwise surface."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

from landscape.core.errors import CheckpointError, StateMismatchError, bad_argument, describe

__all__ = ["build_checked", "check_class_labels", "check_data_device", "check_finite_state", "dry_build"]

_MIB = 1 << 20


class _BudgetExceeded(Exception):
    pass


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


# Shape-only computations of a dry build that are cheaper on small CPU zeros than on the meta
# device: many meta kernels are Python references whose first call imports torch._dynamo and
# sympy (5-8 s on this project's machine), which a constructor's dummy forward pass (cnn1d
# infers its classifier's width that way) or an in-place initialiser would otherwise trigger.
_SMALL = 1 << 22  # elements of all tensor arguments together
_OPERATORS = {f"__{op}__" for op in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or")}
_OPERATORS |= {f"__r{op[2:]}" for op in _OPERATORS} | {
    f"__{op}__" for op in ("neg", "invert", "lt", "le", "gt", "ge", "eq", "ne")
}
# Values or identity matter to these, or their output shape depends on values: left to meta.
_KEEP = {"item", "tolist", "numpy", "data_ptr", "to", "cpu", "cuda", "detach", "size", "dim", "numel", "stride"}
_KEEP |= {"nonzero", "masked_select", "unique", "unique_consecutive", "argwhere", "bincount", "repeat_interleave"}
_KEEP |= {"equal", "allclose", "type", "element_size", "is_floating_point", "storage_offset", "untyped_storage"}
# In-place methods that change shapes or metadata: left to meta, the others change only values.
_RESHAPING = {"resize_", "resize_as_", "set_", "squeeze_", "unsqueeze_", "t_", "transpose_", "swapdims_"}
_RESHAPING |= {"swapaxes_", "as_strided_", "requires_grad_", "share_memory_", "copy_"}


class _ShapesOnly(TorchFunctionMode):
    """Inside a ``torch.device("meta")`` build: in-place value changes of meta tensors are
    skipped (meta tensors hold no values), random factories become ``empty``, and small
    computations run on CPU zeros of the same shapes and dtypes, their results moved to meta.
    Anything else runs on the meta device as usual."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        tensors = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, Tensor)]
        if not tensors:
            if func in (torch.randn, torch.rand):  # their meta versions are Python references
                kwargs = {k: v for k, v in kwargs.items() if k != "generator"}
                return torch.empty(*args, **kwargs)
            return func(*args, **kwargs)
        if not all(t.is_meta for t in tensors):
            return func(*args, **kwargs)
        if name.endswith("_") and not name.endswith("__") and name not in _RESHAPING:
            return tensors[0]
        private = name.startswith("_") and name not in _OPERATORS
        if name in _KEEP or name.endswith("_") or private or sum(t.numel() for t in tensors) > _SMALL:
            return func(*args, **kwargs)
        args, kwargs = pytree.tree_map_only(
            Tensor, lambda t: torch.zeros(t.shape, dtype=t.dtype, device="cpu"), (args, kwargs)
        )
        return pytree.tree_map_only(Tensor, lambda t: t.to("meta"), func(*args, **kwargs))


def dry_build(build: Callable[[], nn.Module], *, max_registrations: int, fast: bool = True) -> nn.Module:
    """``build()`` on the ``meta`` device: parameters and buffers get shapes but no memory.

    A construction that registers more than ``max_registrations`` parameters, buffers and
    submodules in all is stopped as it happens (a spec with ``depth=10**9`` would otherwise
    take hours and the Python objects of a billion layers, even without tensor memory).
    ``fast`` skips value-only work and runs small shape computations on CPU zeros (see
    ``_ShapesOnly``); ``fast=False`` is the plain meta build.

    Raises
    ------
    _BudgetExceeded
        When the budget is exceeded.
    """
    count = 0

    def counted(*args: object) -> None:
        nonlocal count
        count += 1
        if count > max_registrations:
            raise _BudgetExceeded(f"more than {max_registrations:,} parameters, buffers and submodules")

    module_hooks = nn.modules.module
    handles = [
        module_hooks.register_module_module_registration_hook(counted),
        module_hooks.register_module_parameter_registration_hook(counted),
        module_hooks.register_module_buffer_registration_hook(counted),
    ]
    try:
        with torch.device("meta"), _ShapesOnly() if fast else contextlib.nullcontext():
            return build()
    finally:
        for handle in handles:
            handle.remove()


def build_checked(
    build: Callable[[], nn.Module],
    state: Mapping[str, Tensor],
    *,
    function: str,
    argument: str,
    source: str = "the checkpoint",
    max_bytes: int | None = None,
) -> nn.Module:
    """Build a model from an untrusted recipe only once it is known to fit ``state``.

    ``build()`` first runs on the ``meta`` device, where tensors have shapes but no storage
    (a spec for a 160 GB model costs nothing there), with at most ``16 * len(state) + 256``
    parameters, buffers and submodules registered (small shape computations of the constructor
    run on CPU zeros, see :func:`dry_build`). All the dry model's parameters and buffers,
    non-persistent ones included, must fit ``max_bytes`` (default: twice the bytes of
    ``state`` plus 256 MiB), and its keys and shapes must fit ``state`` (after the prefix and
    tied-weight handling of :func:`~landscape.core.checkpoints.fit_to_model`). Only then does
    ``build()`` run for real.

    Parameters
    ----------
    build
        Makes the model, e.g. ``lambda: landscape.models.from_spec(spec)``.
    state
        The tensors the model must hold.
    function, argument, source
        Named in the error: the public function, its argument, and where the recipe came from.
    max_bytes
        Memory the model may take.

    Returns
    -------
    torch.nn.Module
        The real model (built by ``build()`` on the default device).

    Raises
    ------
    CheckpointError
        When the recipe cannot be dry-built, is too large, or does not fit the tensors.

    Examples
    --------
    >>> import torch
    >>> state = {"weight": torch.zeros(2, 3), "bias": torch.zeros(2)}
    >>> build_checked(lambda: torch.nn.Linear(3, 2), state, function="demo", argument="path").weight.shape
    torch.Size([2, 3])
    """

    from landscape.core.checkpoints import fit_to_model

    state_bytes = _nbytes(state.values())
    budget = 2 * state_bytes + 256 * _MIB if max_bytes is None else int(max_bytes)
    max_registrations = 16 * len(state) + 256
    fix = "Pass the model explicitly (e.g. --model SPEC on the command line), or re-save the checkpoint with its model."

    def dry(fast: bool) -> nn.Module:
        try:
            return dry_build(build, max_registrations=max_registrations, fast=fast)
        except _BudgetExceeded as err:  # counted alike with and without the shortcut
            raise bad_argument(
                function,
                argument,
                expected=f"a model spec in {source} for a model of at most {max_registrations:,} parameters, "
                f"buffers and submodules ({len(state)} tensors are stored)",
                found=f"a spec whose model registers {err} while being built",
                fix=fix,
                cls=CheckpointError,
            ) from None
        except Exception as err:  # any failure of an untrusted recipe is reported, not raised raw
            if fast:  # the shortcut may not suit every constructor: the plain meta build decides
                return dry(False)
            raise bad_argument(
                function,
                argument,
                expected=f"a model spec in {source} that builds a model",
                found=f"a spec that fails to build ({type(err).__name__}: {err})",
                fix=fix,
                cls=CheckpointError,
            ) from err

    model = dry(True)
    model_bytes = _nbytes([*model.parameters(), *model.buffers()])
    if model_bytes > budget:
        raise bad_argument(
            function,
            argument,
            expected=f"a model spec in {source} for a model of at most {budget / _MIB:,.0f} MiB "
            f"(the stored tensors take {state_bytes / _MIB:,.1f} MiB)",
            found=f"a spec for a model of {model_bytes / _MIB:,.0f} MiB",
            fix=fix,
            cls=CheckpointError,
        )
    try:
        fit_to_model(state, model, function=function)
    except StateMismatchError:
        try:  # confirmed with the plain meta build, whose shapes need no shortcut
            fit_to_model(state, dry(False), function=function)
        except StateMismatchError as err:
            # The mismatch itself, without its "f(model, state): " prefix and closing question.
            detail = str(err).split(": ", 1)[-1].split(". Are these", 1)[0].rstrip(".")
            raise bad_argument(
                function,
                argument,
                expected=f"a model spec in {source} that matches its tensors",
                found=f"a spec whose model does not fit them ({detail})",
                fix=fix,
                cls=CheckpointError,
            ) from None
    del model
    return build()


def check_class_labels(labels: Tensor, num_classes: int, *, function: str, argument: str) -> None:
    """Raise a :class:`LandscapeError` unless every label is a class index below ``num_classes``.

    ``num_classes`` is the width of the model's logits; cross-entropy would otherwise stop
    with ``IndexError: Target 10 is out of bounds``.

    Examples
    --------
    >>> import torch
    >>> check_class_labels(torch.tensor([0, 9]), 10, function="evaluate", argument="data")
    >>> check_class_labels(torch.tensor([0, 10]), 10, function="evaluate", argument="data")
    Traceback (most recent call last):
    ...
    landscape.core.errors.LandscapeError: evaluate(data=...): expected class labels in [0, 10) (the model has 10 outputs); found labels up to 10 (1 of 2 labels are >= 10). Check that the data and the model have the same number of classes (a model for N classes needs labels 0..N-1).
    """
    if labels.numel() == 0 or labels.is_floating_point() or labels.device.type == "meta":
        return
    top = int(labels.max())
    if top >= num_classes:
        over = int((labels >= num_classes).sum())
        raise bad_argument(
            function,
            argument,
            expected=f"class labels in [0, {num_classes}) (the model has {num_classes} outputs)",
            found=f"labels up to {top} ({over} of {labels.numel()} labels are >= {num_classes})",
            fix="Check that the data and the model have the same number of classes "
            "(a model for N classes needs labels 0..N-1).",
        )


def check_data_device(value: object, *, function: str, argument: str) -> None:
    """Raise a :class:`LandscapeError` for tensors on the ``meta`` device (shapes without values),
    looking into tuples, lists and dicts.

    Examples
    --------
    >>> import torch
    >>> check_data_device((torch.zeros(2), torch.zeros(2, device="meta")), function="evaluate", argument="data")
    Traceback (most recent call last):
    ...
    landscape.core.errors.LandscapeError: evaluate(data=...): expected tensors that hold values (on the CPU or a GPU); found data[1], a Tensor of shape (2,) and dtype torch.float32 on the meta device (shapes only, no values). Materialise the data first (e.g. load it from disk), or build it outside a torch.device('meta') context.
    """

    def walk(item: object, where: str) -> None:
        if isinstance(item, Tensor):
            if item.device.type == "meta":
                raise bad_argument(
                    function,
                    argument,
                    expected="tensors that hold values (on the CPU or a GPU)",
                    found=f"{where}, a {describe(item)} on the meta device (shapes only, no values)",
                    fix="Materialise the data first (e.g. load it from disk), or build it outside a "
                    "torch.device('meta') context.",
                )
        elif isinstance(item, Mapping):
            for k, v in item.items():
                walk(v, f"{where}[{k!r}]")
        elif isinstance(item, (list, tuple)):
            for i, v in enumerate(item):
                walk(v, f"{where}[{i}]")

    walk(value, "data")


def check_finite_state(state: Mapping[str, Tensor], *, function: str, argument: str) -> None:
    """Raise a :class:`LandscapeError` naming the entries of ``state`` that hold NaN or Inf.

    Examples
    --------
    >>> import torch
    >>> check_finite_state({"w": torch.tensor([1.0, float("nan")])}, function="align", argument="b")
    Traceback (most recent call last):
    ...
    landscape.core.errors.LandscapeError: align(b=...): expected finite weights; found NaN or Inf in 'w' (1 of 2 values). Check the run that produced these weights (it may have diverged), or load an earlier checkpoint.
    """
    bad = []
    for k, t in state.items():
        if (t.is_floating_point() or t.is_complex()) and t.device.type != "meta":
            n = int((~torch.isfinite(t)).sum())
            if n:
                bad.append(f"{k!r} ({n} of {t.numel()} values)")
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise bad_argument(
            function,
            argument,
            expected="finite weights",
            found=f"NaN or Inf in {shown}",
            fix="Check the run that produced these weights (it may have diverged), or load an earlier checkpoint.",
        )
