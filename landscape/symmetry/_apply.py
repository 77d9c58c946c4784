"""Transforming states by one transform per group."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor

from landscape.core.state import State
from landscape.symmetry.layout import Atom, Fixed, apply_axis, atoms
from landscape.symmetry.transforms import PerHead, Permutation, Transform, apply_transform

__all__ = ["apply_maps", "is_permutation"]


def is_permutation(t: Transform) -> bool:
    """A permutation, or a permutation per head: applied exactly, by indexing."""
    if isinstance(t, PerHead):
        return all(isinstance(m, Permutation) for m in t.maps)
    return isinstance(t, Permutation)


def apply_maps(
    graph,
    state: Mapping[str, Tensor],
    maps: Mapping[str, Transform],
    sizes: Mapping[str, int] | None = None,
    *,
    keys: Sequence[str] | None = None,
) -> State:
    """Apply ``maps`` (already validated) to ``state``; entries outside ``keys`` are copied.

    When a map other than a permutation acts on a stream that a foldable norm normalises,
    the state is folded first (:meth:`SymmetryGraph.fold`) and the folded gains (one) stay
    as they are: the map acts on the gain-free norm. Maps that change widths (fusion into
    fewer units) act on every entry, gains included.
    """
    if sizes is None:
        sizes = graph.sizes_of(state, function="apply")
    exact = all(is_permutation(t) for t in maps.values())
    skip: set[str] = set()
    square = all(t.source_size == t.target_size for t in maps.values())
    if square and graph.folds and any(not is_permutation(t) for g, t in maps.items() if g in graph.folded_groups):
        from landscape.symmetry._fold import fold_state

        state = fold_state(graph, state)
        skip = graph.fold_constants
    out: dict[str, Tensor] = {}
    wanted = set(keys) if keys is not None else None
    for key, t in state.items():
        lays = graph.layouts[key]
        touched = {str(a.group) for lay in lays for a in atoms(lay)} & set(maps)
        if (
            not touched
            or key in skip
            or (wanted is not None and key not in wanted)
            or not (t.is_floating_point() or t.is_complex())
        ):
            out[key] = t.clone() if touched and not t.is_floating_point() else t
            continue
        variances = graph.variances[key]
        work = t if exact else t.double()
        for k, lay in enumerate(lays):
            if isinstance(lay, Fixed):
                continue
            variance = variances[k]

            def act(
                tensor: Tensor, d: int, atom: Atom, path: tuple, siblings: Mapping[str, int], variance: str = variance
            ) -> Tensor:
                m = maps.get(str(atom.group))
                if m is None:
                    return tensor
                v = ("in" if variance == "out" else "out") if atom.dual else variance
                return apply_transform(m, tensor, d, v, siblings)

            work = apply_axis(work, k, lay, act, sizes)
        out[key] = work.to(t.dtype).contiguous() if not exact else work.contiguous()
    provenance = {"derived": "symmetry.apply"}
    return State(out, provenance=provenance)
