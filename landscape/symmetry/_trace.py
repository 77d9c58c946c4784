"""Capture a model's computation as a graph and run the symmetry rules over it.

Two front ends capture the graph. torch.fx's symbolic tracer is tried first: it keeps
``nn.Linear``, ``nn.Conv2d``, ``nn.MultiheadAttention`` and the other standard layers as single
nodes, and it is what every model written in plain PyTorch needs. Models that it cannot trace
(Hugging Face transformers: their forward passes inspect shapes, build masks and caches in
Python) are captured with ``torch.export`` instead, which records the ATen operators that
actually run (``aten.linear``, ``aten.layer_norm``, ``aten.scaled_dot_product_attention``, ...)
with the module each one belongs to. Hugging Face's own fx tracer is gone from transformers 5,
and structural rules per module family would need one rule per model family and version;
torch.export covers them all with the same operator rules.

The captured graph is then run once on the example input by an interpreter
(:mod:`landscape.symmetry._interpreter`) that applies a rule to every operation.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch import Tensor, nn

from landscape.core.errors import LandscapeError
from landscape.symmetry._classes import Classes
from landscape.symmetry.layout import Atom, Layout, atoms

__all__ = [
    "FRONTENDS",
    "Slotted",
    "TInfo",
    "TraceResult",
    "UnsupportedOperationError",
    "expand_info",
    "info_atoms",
    "trace_model",
]

FRONTENDS = ("auto", "fx", "export")


class UnsupportedOperationError(LandscapeError):
    """An operation in the model that the symmetry graph has no rule for (or that cannot be traced)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class TInfo:
    """What the tracer knows about one tensor: a layout per axis, and for tensors that come
    straight from a parameter (through shape operations only) the parameter axis behind
    each axis (``origin``)."""

    layout: tuple[Layout, ...]
    origin: tuple[tuple[str, int] | None, ...] | None = None

    @property
    def is_param(self) -> bool:
        return self.origin is not None


@dataclass
class Slotted:
    """A tensor whose axis ``dim`` holds independent slots (the query, key and value parts of
    a packed projection reshaped to ``(..., 3, heads, head_dim)``): slot ``i`` has its own
    layouts for the other axes (``slots[i].layout`` leaves ``dim`` out)."""

    dim: int
    slots: list[TInfo]


@dataclass
class TraceResult:
    classes: Classes
    graph_module: fx.GraphModule
    infos: dict[str, object]
    param_axes: dict[tuple[str, int], Layout]
    variances: dict[tuple[str, int], set[str]]
    contraction_sites: list[tuple[str, int]]
    affine: dict[str, tuple[str, str, str | None, int]]
    nonlinear: list[str]
    transparent: set[str]
    node_order: list[str]
    folds: list[object] = field(default_factory=list)
    frontend: str = "fx"
    names: dict[int, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class _TraceFailure(Exception):
    def __init__(self, module: str, error: BaseException) -> None:
        super().__init__(str(error))
        self.module = module
        self.error = error


class _Tracer(fx.Tracer):
    proxy_buffer_attributes = True

    def __init__(self, opaque: set[str]) -> None:
        super().__init__()
        self.opaque = opaque

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name in self.opaque:
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Callable, args: tuple, kwargs: dict) -> object:
        try:
            return super().call_module(m, forward, args, kwargs)
        except _TraceFailure:
            raise
        except Exception as err:  # name the innermost module whose forward could not be traced
            raise _TraceFailure(self.path_of_module(m), err) from err


def _without_cache(model: nn.Module) -> nn.Module:
    """Hugging Face models return key/value caches unless told not to; a cache is not a
    tensor torch.export can return, and it plays no part in the function."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "use_cache"):
        config.use_cache = False
    return model


def _capture_fx(work: nn.Module, opaque: set[str]) -> fx.GraphModule:
    tracer = _Tracer(opaque)
    graph = tracer.trace(work)
    return fx.GraphModule(tracer.root, graph)


def _capture_export(work: nn.Module, inputs: tuple) -> fx.GraphModule:
    from torch.export import Dim

    # The batch axis is dynamic so that the captured graph runs on batches of any size
    # (activation matching runs it on the data in batches).
    dynamic = tuple({0: Dim.AUTO} if isinstance(x, Tensor) and x.dim() > 0 else None for x in inputs)
    program = torch.export.export(work, inputs, dynamic_shapes=dynamic, strict=False)
    return program.module()


def capture(
    model: nn.Module, inputs: tuple, *, opaque: set[str], frontend: str
) -> tuple[fx.GraphModule, str, nn.Module]:
    """The model's graph (a GraphModule whose parameters are the model's), the front end
    that captured it, and the working copy of the model."""
    work = _without_cache(copy.deepcopy(model)).eval()
    fx_error: BaseException | None = None
    if frontend in ("auto", "fx"):
        try:
            gm = _capture_fx(work, opaque)
            gm.eval()
            return gm, "fx", work
        except _TraceFailure as failure:
            fx_error = failure
            if frontend == "fx":
                raise UnsupportedOperationError(
                    f"symmetry_graph(model=...): expected a model that torch.fx can trace; found that the forward "
                    f"of module {failure.module!r} cannot be traced ({type(failure.error).__name__}: "
                    f"{failure.error}). Pass fixed=[{failure.module!r}] to treat that module as an opaque block "
                    "whose axes stay fixed, frontend='export' to capture it with torch.export, or "
                    "spec={group: ['param.name:axis', ...]} to describe the permutation groups by hand."
                ) from failure.error
        except Exception as err:
            fx_error = err
            if frontend == "fx":
                raise UnsupportedOperationError(
                    f"symmetry_graph(model=...): expected a model that torch.fx can trace; found that its forward "
                    f"cannot be traced ({type(err).__name__}: {err}). Pass frontend='export', fixed=['module.name'] "
                    "for the module that fails, or spec={group: ['param.name:axis', ...]} to describe the "
                    "permutation groups by hand."
                ) from err
    try:
        gm = _capture_export(work, inputs)
        return gm, "export", work
    except Exception as err:
        exported = f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
        if isinstance(fx_error, _TraceFailure):
            raise UnsupportedOperationError(
                f"symmetry_graph(model=...): expected a model that torch.fx or torch.export can capture; found that "
                f"the forward of module {fx_error.module!r} cannot be traced by torch.fx "
                f"({type(fx_error.error).__name__}: {str(fx_error.error)[:200]}) and torch.export failed too "
                f"({exported}). Pass fixed=[{fx_error.module!r}] to treat that module as an opaque block whose axes "
                "stay fixed, or spec={group: ['param.name:axis', ...]} to describe the permutation groups by hand."
            ) from err
        tried = f"torch.fx ({type(fx_error).__name__}: {str(fx_error)[:200]}) and " if fx_error is not None else ""
        raise UnsupportedOperationError(
            f"symmetry_graph(model=...): expected a model that torch.fx or torch.export can capture; {tried}"
            f"torch.export ({exported}) both failed. Pass fixed=['module.name'] for the module that fails "
            "(torch.fx), example_input= a batch the model accepts, or spec={group: ['param.name:axis', ...]} to "
            "describe the permutation groups by hand."
        ) from err


def trace_model(
    model: nn.Module,
    example_inputs: tuple,
    *,
    opaque: Sequence[str] = (),
    unknown: str = "error",
    norms: str = "fold",
    frontend: str = "auto",
) -> TraceResult:
    """Capture ``model`` and run the rules on ``example_inputs`` (see :func:`symmetry_graph`)."""
    from landscape.symmetry._interpreter import Builder

    opaque_set = set(opaque)
    gm, used, work = capture(model, example_inputs, opaque=opaque_set, frontend=frontend)
    state_keys = set(work.state_dict().keys())
    builder = Builder(gm, work, state_keys, opaque_set, unknown, norms=norms, frontend=used)
    try:
        with torch.no_grad():
            builder.run(*example_inputs)
    except UnsupportedOperationError as err:
        # fx's interpreter appends the failing node's trace to the message; keep ours clean
        raise UnsupportedOperationError(err.message) from None
    except LandscapeError:
        raise
    except Exception as err:
        raise UnsupportedOperationError(
            f"symmetry_graph(example_input=...): expected the model to run on the example input; found "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}. Pass example_input= a batch "
            "the model accepts."
        ) from err
    return TraceResult(
        classes=builder.classes,
        graph_module=gm,
        infos=builder.infos,
        param_axes=builder.param_axes,
        variances=builder.variances,
        contraction_sites=builder.sites,
        affine=builder.affine,
        nonlinear=builder.nonlinear,
        transparent=builder.transparent,
        node_order=builder.order,
        folds=list(builder.applied_folds.values()),
        frontend=used,
        names=builder.names,
        notes=builder.classes.notes,
    )


def expand_info(classes: Classes, info: object) -> object:
    """The info with every layout expanded to the current roots (slotted tensors as lists of slots)."""
    if isinstance(info, TInfo):
        return TInfo(tuple(classes.expand(lay) for lay in info.layout), info.origin)
    if isinstance(info, Slotted):
        return [expand_info(classes, s) for s in info.slots]
    if isinstance(info, (list, tuple)):
        return [expand_info(classes, i) for i in info]
    return None


def info_atoms(info: object) -> Iterable[Atom]:
    if isinstance(info, TInfo):
        for lay in info.layout:
            yield from atoms(lay)
    elif isinstance(info, Slotted):
        for s in info.slots:
            yield from info_atoms(s)
    elif isinstance(info, (list, tuple)):
        for i in info:
            yield from info_atoms(i)
