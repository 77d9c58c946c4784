"""Model fusion: align several networks to one and average them (Singh & Jaggi 2020),
optionally into a narrower network."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from landscape.alignment._activations import inputs_from, statistics
from landscape.alignment._align import METHODS, align, build_graph, run_alignment
from landscape.alignment._repair import correct_statistics
from landscape.alignment._result import load
from landscape.core.device import resolve_device
from landscape.core.errors import bad_argument
from landscape.core.io import checkpoint_record
from landscape.core.state import State, check_compatible
from landscape.symmetry import SymmetryGraph, Transform, apply_maps
from landscape.symmetry.layout import apply_axis, select
from landscape.symmetry.transforms import apply_transform

__all__ = ["fuse"]


class _Restriction(Transform):
    """Keep the units ``index`` (a narrower starting point for fusion into fewer units)."""

    def __init__(self, index: Tensor, source: int) -> None:
        self.index = index
        self._source = source

    @property
    def source_size(self) -> int:
        return self._source

    @property
    def target_size(self) -> int:
        return int(self.index.numel())

    def apply(
        self, tensor: Tensor, dim: int, variance: str = "out", siblings: Mapping[str, int] | None = None
    ) -> Tensor:
        return tensor.index_select(dim, self.index.to(tensor.device))


def _average(states: Sequence[Mapping[str, Tensor]], weights: np.ndarray, like: Mapping[str, Tensor]) -> State:
    out = {}
    for k, t in like.items():
        if t.is_floating_point():
            total = sum(float(w) * s[k].double() for w, s in zip(weights, states))
            out[k] = total.to(t.dtype)
        else:
            out[k] = t.clone()
    return State(out)


def _target_sizes(graph: SymmetryGraph, target_widths: object, target_model: nn.Module | None) -> dict[str, int] | None:
    if target_model is not None:
        return graph.sizes_of(target_model.state_dict(), function="fuse", argument="target_model")
    if target_widths is None:
        return None
    sizes = {g: grp.size for g, grp in graph.groups.items()}
    if isinstance(target_widths, Mapping):
        unknown = [g for g in target_widths if g not in graph.groups]
        if unknown:
            raise bad_argument(
                "fuse", "target_widths", expected=f"group names ({list(graph.groups)[:5]})", found=repr(unknown[0])
            )
        chosen = {g: int(v) for g, v in target_widths.items()}
    elif isinstance(target_widths, float) and 0 < target_widths <= 1:
        chosen = {g: max(1, round(grp.size * target_widths)) for g, grp in graph.groups.items()}
    elif isinstance(target_widths, int) and not isinstance(target_widths, bool):
        chosen = {g: target_widths for g in graph.groups}
    else:
        raise bad_argument(
            "fuse",
            "target_widths",
            expected="a dict {group: width}, an int (every group), or a fraction in (0, 1]",
            found=repr(target_widths),
        )
    for g, w in chosen.items():
        if not 1 <= w <= graph.groups[g].size:
            raise bad_argument(
                "fuse",
                "target_widths",
                expected=f"widths between 1 and the parents' ({graph.groups[g].size} for {g!r})",
                found=str(w),
            )
        sizes[g] = w
    return sizes


def fuse(
    model: nn.Module,
    states: Sequence[Mapping[str, Tensor] | nn.Module | str],
    *,
    method: str = "ot",
    kinds: str | None = None,
    anchor: int = 0,
    target_widths: Mapping[str, int] | int | float | None = None,
    target_model: nn.Module | None = None,
    weights: Sequence[float] | None = None,
    data: object = None,
    repair: bool = False,
    iterations: int = 4,
    reg: float = 0.01,
    on: str | None = None,
    graph: SymmetryGraph | None = None,
    seed: int = 0,
    n_examples: int | None = None,
    batch_size: int = 1024,
    align_options: Mapping[str, object] | None = None,
    finetune: int = 0,
    finetune_lr: float = 1e-4,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> State:
    """Fuse ``N >= 2`` networks into one: align each to the anchor and average (OT fusion).

    Transformers fuse like any other model (Imfeld et al. 2023): the symmetry graph aligns
    the residual stream as one group through every block, permutes the attention heads as
    units and the coordinates inside them, and the MLP units; with ``method="learned"`` and
    ``kinds="max"`` the alignment also uses orthogonal maps of the stream and per-head maps
    (Theus et al. 2025). ``finetune`` epochs of training on ``data`` follow, as in both
    papers.

    Parameters
    ----------
    model
        The parents' architecture.
    states
        The parents (states, modules or checkpoint paths), all of ``model``'s architecture.
    method
        How each parent is aligned to the anchor: ``"ot"`` (exact transport, Singh & Jaggi
        2020; a permutation between equal widths), ``"sinkhorn"``, ``"weights"`` or
        ``"activations"`` or ``"learned"`` (see :func:`align`); or ``"neuron_interpolation"``
        and ``"zipit"``, which fuse by other means (see :func:`neuron_interpolation` and
        :func:`zipit`).
    kinds
        The widest maps the alignment may use (see :func:`align`; default ``"max"`` for
        matching, ``"permutation"`` for transport).
    anchor
        Index of the parent the others are aligned to.
    target_widths
        Fuse into a narrower network: ``{group: width}``, one width for every group, or a
        fraction of each group's width. The fused network starts as the anchor's
        ``width`` most important units (largest weight norm) and is refined by alternating
        transport of every parent onto it and averaging (a free-support Wasserstein
        barycenter over units); merged units' outgoing weights are summed, so merging
        identical units keeps the function. ``"ot"`` or ``"sinkhorn"`` only.
    target_model
        The narrower architecture, instead of ``target_widths`` (needed for ``repair`` or
        activations at other widths).
    weights
        Weights of the average (default uniform; they are normalised to sum to 1).
    data
        Data for activation-based alignment and for ``repair``.
    repair
        Correct the fused network's statistics to the average of the aligned parents'
        (REPAIR for N networks); needs ``data``.
    iterations
        Rounds of the barycenter refinement for ``target_widths``; 0 returns the starting
        point (the anchor restricted to its most important units).
    reg, on, graph, seed, n_examples, batch_size, device, progress
        As in :func:`align`.
    align_options
        Further options of :func:`align` (``max_iter``, and ``epochs``, ``lr``, ``alphas``
        for ``"learned"``).
    finetune, finetune_lr
        Epochs of training the fused network on ``data`` (AdamW with a cosine schedule from
        ``finetune_lr``); 0 (default) returns the fused network as it is.

    Returns
    -------
    State
        The fused state (of ``target_model``'s architecture when narrower); its provenance
        records the parents.

    Examples
    --------
    >>> import landscape as ls
    >>> model = ls.models.create("mlp", width=8, depth=1, seed=0)
    >>> parents = [ls.models.create("mlp", width=8, depth=1, seed=s) for s in (1, 2, 3)]
    >>> fused = fuse(model, parents, progress=False)
    >>> fused["features.fc1.weight"].shape
    torch.Size([8, 40])
    """
    if not isinstance(model, nn.Module):
        raise bad_argument("fuse", "model", expected="an nn.Module (the architecture)", found=model)
    if isinstance(states, (str, bytes, Mapping)) or not isinstance(states, Sequence) or len(states) < 2:
        raise bad_argument(
            "fuse", "states", expected="a list of at least two states, modules or checkpoint paths", found=states
        )
    if method in ("neuron_interpolation", "zipit"):  # fusion families with their own modules
        from landscape.alignment import neuron_interpolation, zipit

        options = {"weights": weights, "graph": graph, "n_examples": n_examples, "batch_size": batch_size}
        if method == "zipit":
            return zipit(model, states, data, **options, progress=progress).state
        return neuron_interpolation(model, states, data, **options, seed=seed, progress=progress)
    if method not in METHODS:
        raise bad_argument(
            "fuse", "method", expected=f"one of {(*METHODS, 'neuron_interpolation', 'zipit')}", found=repr(method)
        )
    if not isinstance(anchor, int) or not 0 <= anchor < len(states):
        raise bad_argument("fuse", "anchor", expected=f"an index between 0 and {len(states) - 1}", found=repr(anchor))
    parents = [load(s, function="fuse", argument=f"states[{i}]") for i, s in enumerate(states)]
    for i, s in enumerate(parents):
        check_compatible(model.state_dict(), s, function="fuse", names=("model", f"states[{i}]"))
    if weights is None:
        w = np.full(len(parents), 1.0 / len(parents))
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (len(parents),) or np.any(w < 0) or w.sum() <= 0:
            raise bad_argument("fuse", "weights", expected=f"{len(parents)} non-negative weights", found=repr(weights))
        w = w / w.sum()
    if repair and data is None:
        raise bad_argument(
            "fuse", "data", expected="data for repair=True", found=None, fix="Pass data=... or repair=False."
        )
    graph = build_graph(model, graph, None, data, function="fuse")
    sizes = _target_sizes(graph, target_widths, target_model)
    narrower = sizes is not None and any(sizes[g] != grp.size for g, grp in graph.groups.items())
    dev = resolve_device(device, function="fuse")
    if not isinstance(finetune, int) or finetune < 0:
        raise bad_argument("fuse", "finetune", expected="a non-negative number of epochs", found=repr(finetune))
    if finetune and data is None:
        raise bad_argument(
            "fuse", "data", expected="training data for finetune", found=None, fix="Pass data=... or finetune=0."
        )
    options = {
        "data": data,
        "kinds": kinds,
        "reg": reg,
        "on": on,
        "seed": seed,
        "n_examples": n_examples,
        "batch_size": batch_size,
        "device": dev,
        "progress": progress,
        **dict(align_options or {}),
    }
    anchor_state = parents[anchor]
    if not narrower:
        alignments = [
            None if i == anchor else align(model, anchor_state, s, method=method, graph=graph, **options)
            for i, s in enumerate(parents)
        ]
        aligned = [s if a is None else a.apply(s) for s, a in zip(parents, alignments)]
        fused = _average(aligned, w, anchor_state)
        maps_per_parent = [{} if a is None else a.maps for a in alignments]
        target = model
    else:
        if method not in ("ot", "sinkhorn"):
            raise bad_argument(
                "fuse",
                "method",
                expected="'ot' or 'sinkhorn' to fuse into narrower widths",
                found=repr(method),
                fix="Permutation matching needs equal widths.",
            )
        if (repair or on == "activations") and target_model is None:
            raise bad_argument(
                "fuse",
                "target_model",
                expected="the narrower architecture (repair and activations run the fused network)",
                found=None,
                fix="Pass target_model=landscape.models.create(..., width=...) instead of target_widths.",
            )
        fused = _initial_target(graph, anchor_state, sizes)
        target = target_model
        target_graph = None
        if target_model is not None:
            target_graph = build_graph(target_model, None, graph.example_inputs, None, function="fuse")
            check_compatible(target_model.state_dict(), fused, function="fuse", names=("target_model", "fused state"))
        on_what = on or "weights"
        parameters = {name for name, _ in model.named_parameters()}
        if not isinstance(iterations, int) or iterations < 0:
            raise bad_argument("fuse", "iterations", expected="a non-negative integer", found=repr(iterations))
        alignments = []
        for _ in range(iterations):
            alignments = [
                run_alignment(
                    graph,
                    fused,
                    s,
                    method=method,
                    on=on_what,
                    reg=reg,
                    marginals="uniform",
                    data=data,
                    parameters=parameters,
                    a_graph=target_graph,
                    seed=seed,
                    n_examples=n_examples,
                    batch_size=batch_size,
                    device=dev,
                )
                for s in parents
            ]
            aligned = [a.apply(s) for a, s in zip(alignments, parents)]
            fused = _average(aligned, w, aligned[anchor])
        if not alignments and repair:
            raise bad_argument("fuse", "iterations", expected="at least 1 with repair=True", found="0")
        maps_per_parent = [a.maps for a in alignments]
    if repair:
        fused = _repair_fused(
            graph, target or model, model, parents, maps_per_parent, fused, w, data, n_examples, batch_size, dev
        )
    if finetune:
        from landscape.training import train

        fused = train(
            target or model,
            data,
            start=fused,
            epochs=finetune,
            optimizer="adamw",
            lr=finetune_lr,
            schedule="cosine",
            data_seed=seed,
            device=dev,
            progress=progress,
        ).state
    fused.provenance = {
        "format": "fused",
        "source": f"landscape.alignment.fuse(method={method!r})",
        "derived": "fusion of " + ", ".join(checkpoint_record(p).get("sha256", "?")[:12] for p in parents),
    }
    return fused


def _initial_target(graph: SymmetryGraph, anchor: State, sizes: Mapping[str, int]) -> State:
    """The anchor restricted to each group's most important units (largest squared norm over
    the axes the group produces)."""
    maps: dict[str, Transform] = {}
    for g, grp in graph.groups.items():
        if sizes[g] == grp.size:
            continue
        norms = torch.zeros(grp.size, dtype=torch.float64)
        for ref in grp.axes:
            if ref.variance != "out":
                continue
            t = anchor[ref.key].double()
            rows = select(t, ref.axis, graph.layouts[ref.key][ref.axis], ref.path)
            norms += (rows * rows).sum(1)
        keep = torch.argsort(norms, descending=True)[: sizes[g]].sort().values
        maps[g] = _Restriction(keep, grp.size)
    return apply_maps(graph, anchor, maps)


def _repair_fused(
    graph: SymmetryGraph,
    target: nn.Module,
    model: nn.Module,
    parents: Sequence[State],
    maps_per_parent: Sequence[Mapping[str, Transform]],
    fused: State,
    w: np.ndarray,
    data: object,
    n_examples: int | None,
    batch_size: int,
    device: torch.device,
) -> State:
    x = inputs_from(data, function="fuse", n_examples=n_examples)
    target_graph = graph if target is model else build_graph(target, None, graph.example_inputs, None, function="fuse")
    sites = target_graph.repair_sites
    if not sites:
        raise bad_argument("fuse", "repair", expected="a model with layers REPAIR can rescale", found="none")
    keys = [(s.node, s.axis) for s in sites]
    targets: dict[str, list[Tensor]] = {}
    for parent, maps, weight in zip(parents, maps_per_parent, w):
        stats = statistics(graph, parent, x, keys, batch_size=batch_size, device=device, function="fuse")
        sizes = graph.sizes_of(parent, function="fuse")
        for s in sites:
            mean, std = stats[(s.node, s.axis)]
            layout = graph.activations[s.node][s.axis]

            def act(t: Tensor, d: int, atom: object, path: tuple, siblings: Mapping, maps: Mapping = maps) -> Tensor:
                m = maps.get(str(atom.group))
                return t if m is None else apply_transform(m, t, d, "in" if atom.dual else "out", siblings)

            mean = apply_axis(mean, 0, layout, act, sizes)
            std = apply_axis(std, 0, layout, act, sizes)
            acc = targets.setdefault(s.node, [0.0, 0.0])
            acc[0] = acc[0] + float(weight) * mean
            acc[1] = acc[1] + float(weight) * std
    return correct_statistics(
        target_graph,
        fused,
        x,
        {k: (v[0], v[1]) for k, v in targets.items()},
        sites=sites,
        batch_size=batch_size,
        device=device,
    )
