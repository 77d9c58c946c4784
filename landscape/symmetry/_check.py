"""Checking that a graph's transforms keep the network's function (``SymmetryGraph.check``)."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn

from landscape.core import run_points
from landscape.core.device import resolve_device
from landscape.core.errors import bad_argument
from landscape.core.io import provenance_attrs
from landscape.core.state import State, as_state
from landscape.core.tied import canonical_state, tied_groups
from landscape.symmetry._apply import apply_maps
from landscape.symmetry._graph import SymmetryCheckError, SymmetryGraph
from landscape.symmetry.transforms import as_transform

__all__ = ["check", "flat_outputs", "output_scale"]

# Outputs that vary across inputs by less than this fraction of their size test nothing:
# float64 cannot tell a transform's effect from rounding there (a constant output, or logits
# that are all bias).
_MIN_VARIATION = 1e-10


def flat_outputs(value: object) -> Iterator[Tensor]:
    """Every floating tensor of a model's output (tensors, tuples, dicts, Hugging Face outputs)."""
    if isinstance(value, Tensor):
        if value.is_floating_point() and value.numel():
            yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from flat_outputs(v)
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from flat_outputs(v)
    elif hasattr(value, "logits"):
        yield from flat_outputs(value.logits)


def output_scale(outputs: list[Tensor]) -> tuple[float, float]:
    """``(variation, size)``: the largest deviation of an output from its mean over the batch
    (what the inputs change), and the largest absolute output."""
    variation = max((float((t - t.mean(0, keepdim=True)).abs().max()) for t in outputs if t.shape[0] > 1), default=0.0)
    size = max((float(t.abs().max()) for t in outputs), default=0.0)
    return variation, size


def _max_change(a: list[Tensor], b: list[Tensor]) -> float:
    if len(a) != len(b):
        return float("inf")
    vals = [float((x - y).abs().max()) for x, y in zip(a, b)]
    if any(not np.isfinite(v) for v in vals):
        return float("inf")
    return max(vals, default=0.0)


def _inputs(graph: SymmetryGraph, inputs: object, seed: int) -> tuple:
    if inputs is not None:
        xs = inputs if isinstance(inputs, tuple) else (inputs,)
    else:
        if not graph.example_inputs:
            raise bad_argument(
                "SymmetryGraph.check",
                "inputs",
                expected="inputs to run (the graph was built without an example input)",
                found=None,
                fix="Pass inputs=..., or build the graph with symmetry_graph(model, example_input).",
            )
        generator = torch.Generator().manual_seed(int(seed) + 7)
        xs = []
        for ex in graph.example_inputs:
            if isinstance(ex, Tensor) and ex.is_floating_point():
                xs.append(torch.randn((8, *ex.shape[1:]), generator=generator, dtype=torch.float64))
            elif isinstance(ex, Tensor):
                high = int(ex.max()) + 1 if ex.numel() else 2
                xs.append(torch.randint(0, max(high, 2), (8, *ex.shape[1:]), generator=generator))
            else:
                xs.append(ex)
        xs = tuple(xs)
    return tuple(x.double() if isinstance(x, Tensor) and x.is_floating_point() else x for x in xs)


def check(
    graph: SymmetryGraph,
    model: nn.Module,
    state: Mapping[str, Tensor] | None,
    *,
    kind: str,
    trials: int,
    seed: int,
    rtol: float,
    transforms: Mapping[str, object] | None,
    inputs: object,
    device: str | torch.device,
) -> xr.Dataset:
    """See :meth:`SymmetryGraph.check`."""
    from landscape.symmetry._trace import _without_cache

    if not isinstance(model, nn.Module):
        raise bad_argument("SymmetryGraph.check", "model", expected="an nn.Module", found=model)
    if not (isinstance(rtol, (int, float)) and rtol > 0):
        raise bad_argument("SymmetryGraph.check", "rtol", expected="a positive tolerance", found=repr(rtol))
    dev = resolve_device(device, function="SymmetryGraph.check")
    state = as_state(model if state is None else state, function="SymmetryGraph.check", argument="state")
    graph._check_keys(state, "SymmetryGraph.check", "state")
    work = _without_cache(copy.deepcopy(model)).double().eval()
    x = _inputs(graph, inputs, seed)
    state = State({k: (v.double() if v.is_floating_point() else v) for k, v in state.items()})

    tied = tied_groups(model)

    def run(s: Mapping[str, Tensor]) -> list[Tensor]:
        point = canonical_state(s, tied)
        if len(x) != 1:  # several positional inputs: a plain call (the engine reads one input)
            moved = {k: v.to(dev) for k, v in point.items()}
            with torch.no_grad():
                out = torch.func.functional_call(work.to(dev), moved, tuple(t.to(dev) for t in x))
            return [t.detach().double().cpu() for t in flat_outputs(out)]
        # The engine's one way to run a model at a point: one batch of the check's inputs.
        points = run_points(work, [point], x[0], device=dev, function="SymmetryGraph.check")
        try:
            outputs = [t[0].detach().double().cpu() for out in points for t in flat_outputs(out.output)]
        finally:
            points.close()
        return outputs

    base = run(state)
    variation, size = output_scale(base)
    if not variation > _MIN_VARIATION * size or not np.isfinite(variation):
        raise bad_argument(
            "SymmetryGraph.check",
            "state",
            expected="a network whose outputs depend on its input (otherwise no transform can be seen)",
            found=f"outputs that vary by {variation:.3g} across the inputs (largest output {size:.3g})",
            fix="Check a state whose last layers are not zero (a trained one, or weights from a non-degenerate "
            "initialisation), or pass inputs= that the model tells apart.",
        )
    tol = rtol * variation
    fold_deviation = 0.0
    if graph.folds:
        fold_deviation = _max_change(run(graph.fold(state)), base) / variation
    rounds = 1 if transforms is not None else int(trials)
    names = list(graph.groups)
    per_group = np.zeros((rounds, len(names)))
    together = np.zeros(rounds)
    used_kind: dict[str, str] = {}
    sizes = graph.sizes_of(state, function="SymmetryGraph.check")
    for r in range(rounds):
        if transforms is not None:
            drawn = {
                g: as_transform(v, group=g, size=sizes[g], function="SymmetryGraph.check", over=graph.groups[g].per)
                for g, v in transforms.items()
            }
        else:
            drawn = graph.random_transforms(seed=seed * 1009 + r, kind=kind)
        for g, t in drawn.items():
            used_kind[g] = t.kind
        together[r] = _max_change(run(apply_maps(graph, state, drawn, sizes)), base) / variation
        for j, g in enumerate(names):
            if g in drawn:
                per_group[r, j] = _max_change(run(apply_maps(graph, state, {g: drawn[g]}, sizes)), base) / variation
    bad = [(names[j], float(per_group[:, j].max())) for j in range(len(names)) if per_group[:, j].max() > rtol]
    passed = not bad and together.max(initial=0.0) <= rtol and fold_deviation <= rtol
    result = xr.Dataset(
        {
            "deviation": (("round", "group"), per_group),
            "deviation_all": (("round",), together),
            "kind": ("group", np.array([used_kind.get(g, "none") for g in names], dtype=object)),
        },
        coords={"round": np.arange(rounds), "group": names},
        attrs=provenance_attrs(
            analysis="symmetry_check",
            rtol=rtol,
            scale=variation,
            tolerance=tol,
            fold_deviation=fold_deviation,
            seed=seed,
            device=str(dev),
            passed=passed,
        ),
    )
    if fold_deviation > rtol:
        raise SymmetryCheckError(
            f"SymmetryGraph.check: expected folding the norms to keep the function; found a change of "
            f"{fold_deviation:.3g} x the outputs' scale {variation:.3g}. Please report it; meanwhile build the graph "
            "with norms='keep'."
        )
    if bad:
        g, dev_g = max(bad, key=lambda item: item[1])
        grp = graph.groups[g]
        where = ", ".join(str(a) for a in grp.axes[:6])
        raise SymmetryCheckError(
            f"SymmetryGraph.check: expected the transformed network to compute the same function (outputs "
            f"within {rtol:g} x their scale {variation:.3g}); found a change of {dev_g:.3g} x the scale after a "
            f"{used_kind.get(g, 'random')} transform of group {g!r} (size {grp.size}, acting on {where}). "
            + (
                "That transform is not a symmetry of this group."
                if transforms is not None
                else "The group is wrong: if it came from a manual spec, fix the spec; if it was traced, "
                "please report it and pass fixed=[...] naming the module meanwhile."
            )
        )
    if together.max(initial=0.0) > rtol:
        raise SymmetryCheckError(
            f"SymmetryGraph.check: expected the transformed network to compute the same function; found a change "
            f"of {together.max():.3g} x the outputs' scale with all groups transformed together, though each group "
            "alone passes. Two groups interact in a way the graph does not describe; please report it."
        )
    return result
