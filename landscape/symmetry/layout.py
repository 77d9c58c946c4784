"""Axis layouts: how the symmetry groups act on one axis of a tensor.

An axis of a parameter or activation is described by a small tree:

- ``Fixed(n)``: no symmetry acts on these ``n`` indices.
- ``Atom(g, n)``: group ``g`` (of size ``n``) acts on the whole axis.
- ``Prod(c1, ..., ck)``: the axis is the row-major flattening of its children
  (``flatten`` of conv channels and positions gives ``Prod(Atom(g, C), Fixed(H * W))``;
  attention heads give ``Prod(Fixed(3), Atom(heads, H), Atom(head_dim, D))``). The
  transform acting on the axis is the Kronecker product of the children's transforms.
- ``Sum(c1, ..., ck)``: the axis is the concatenation of its children (``torch.cat`` of
  channels, or ``chunk``/``split``); the transform is block diagonal.

The functions here apply transforms along such an axis and select the rows that belong to
one occurrence of a group, which is all that matching and transport need.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from torch import Tensor

__all__ = [
    "Atom",
    "Fixed",
    "Layout",
    "Prod",
    "Sum",
    "apply_axis",
    "atoms",
    "describe",
    "is_fixed",
    "node_size",
    "normalize",
    "occurrences",
    "relabel",
    "select",
]


@dataclass(frozen=True)
class Fixed:
    """``size`` indices on which no symmetry acts."""

    size: int


@dataclass(frozen=True)
class Atom:
    """Group ``group`` acts on all ``size`` indices.

    ``dual`` marks the other side of a dot product between two activations (keys against
    queries): there the group acts by the inverse transpose of its transform, so that the
    product is unchanged.
    """

    group: int | str
    size: int
    dual: bool = False


@dataclass(frozen=True)
class Prod:
    """Row-major product of the children (Kronecker product of their transforms)."""

    children: tuple[Layout, ...]

    @property
    def size(self) -> int:
        return math.prod(c.size for c in self.children)


@dataclass(frozen=True)
class Sum:
    """Concatenation of the children (block-diagonal transform)."""

    children: tuple[Layout, ...]

    @property
    def size(self) -> int:
        return sum(c.size for c in self.children)


Layout = Fixed | Atom | Prod | Sum
Path = tuple[int, ...]


def normalize(node: Layout) -> Layout:
    """Canonical form: nested products and sums flattened, adjacent fixed parts merged,
    size-1 factors dropped, a sum at the head of a product distributed over the product."""
    if isinstance(node, Fixed):
        return node
    if isinstance(node, Atom):
        return Fixed(1) if node.size == 1 else node
    if isinstance(node, Prod):
        children: list[Layout] = []
        for c in (normalize(c) for c in node.children):
            children.extend(c.children if isinstance(c, Prod) else [c])
        merged: list[Layout] = []
        for c in children:
            if c.size == 1:
                continue
            if isinstance(c, Fixed) and merged and isinstance(merged[-1], Fixed):
                merged[-1] = Fixed(merged[-1].size * c.size)
            else:
                merged.append(c)
        if not merged:
            return Fixed(1)
        if all(isinstance(c, Fixed) for c in merged):
            return Fixed(math.prod(c.size for c in merged))
        if len(merged) == 1:
            return merged[0]
        if isinstance(merged[0], Sum):
            # (A + B) x C indexes as A x C followed by B x C.
            rest = tuple(merged[1:])
            return normalize(Sum(tuple(Prod((c, *rest)) for c in merged[0].children)))
        return Prod(tuple(merged))
    children = []
    for c in (normalize(c) for c in node.children):
        children.extend(c.children if isinstance(c, Sum) else [c])
    merged = []
    for c in children:
        if c.size == 0:
            continue
        if isinstance(c, Fixed) and merged and isinstance(merged[-1], Fixed):
            merged[-1] = Fixed(merged[-1].size + c.size)
        else:
            merged.append(c)
    if not merged:
        return Fixed(0)
    if all(isinstance(c, Fixed) for c in merged):
        return Fixed(sum(c.size for c in merged))
    if len(merged) == 1:
        return merged[0]
    return Sum(tuple(merged))


def is_fixed(node: Layout) -> bool:
    return isinstance(node, Fixed)


def atoms(node: Layout) -> Iterator[Atom]:
    """Every atom in the tree, in index order."""
    if isinstance(node, Atom):
        yield node
    elif isinstance(node, (Prod, Sum)):
        for c in node.children:
            yield from atoms(c)


def occurrences(node: Layout, path: Path = ()) -> Iterator[tuple[Path, Atom]]:
    """``(path, atom)`` for every atom; the path is the child index at each level."""
    if isinstance(node, Atom):
        yield path, node
    elif isinstance(node, (Prod, Sum)):
        for q, c in enumerate(node.children):
            yield from occurrences(c, (*path, q))


def relabel(node: Layout, label: Callable[[Atom], Layout]) -> Layout:
    """The tree with every atom replaced by ``label(atom)`` (then normalised)."""
    if isinstance(node, Atom):
        return label(node)
    if isinstance(node, Prod):
        return normalize(Prod(tuple(relabel(c, label) for c in node.children)))
    if isinstance(node, Sum):
        return normalize(Sum(tuple(relabel(c, label) for c in node.children)))
    return node


def node_size(node: Layout, sizes: Mapping[object, int] | None = None) -> int:
    """Length of the axis when group ``g`` has ``sizes[g]`` units (default: the layout's)."""
    if isinstance(node, Atom):
        return sizes.get(node.group, node.size) if sizes else node.size
    if isinstance(node, Fixed):
        return node.size
    if isinstance(node, Prod):
        return math.prod(node_size(c, sizes) for c in node.children)
    return sum(node_size(c, sizes) for c in node.children)


def describe(node: Layout) -> str:
    """A compact text form: ``fixed(40)``, ``features.fc1(128)``, ``[g(8) x fixed(4)]``, ``[a(3) + b(5)]``."""
    if isinstance(node, Fixed):
        return f"fixed({node.size})"
    if isinstance(node, Atom):
        return f"{node.group}{'^-T' if node.dual else ''}({node.size})"
    sep = " x " if isinstance(node, Prod) else " + "
    return "[" + sep.join(describe(c) for c in node.children) + "]"


def apply_axis(
    tensor: Tensor,
    dim: int,
    node: Layout,
    act: Callable[[Tensor, int, Atom, Path, Mapping[str, int]], Tensor],
    sizes: Mapping[object, int] | None = None,
    path: Path = (),
    siblings: Mapping[str, int] | None = None,
) -> Tensor:
    """Transform axis ``dim`` of ``tensor`` laid out as ``node``.

    ``act(t, d, atom, path, siblings)`` transforms axis ``d`` of ``t`` for one atom;
    ``siblings`` maps the groups of the other factors of the same product to the axes of
    ``t`` that hold them (a per-head transform reads its head's index there). ``sizes`` gives
    the current length of each group's part of the axis (groups may change length, as soft
    maps between models of different widths do).
    """
    if isinstance(node, Fixed):
        return tensor
    if isinstance(node, Atom):
        return act(tensor, dim, node, path, siblings or {})
    shape = tuple(tensor.shape)
    if isinstance(node, Prod):
        factors = [node_size(c, sizes) for c in node.children]
        t = tensor.reshape(*shape[:dim], *factors, *shape[dim + 1 :])
        inner = {str(c.group): dim + q for q, c in enumerate(node.children) if isinstance(c, Atom)}
        for q, c in enumerate(node.children):
            t = apply_axis(t, dim + q, c, act, sizes, (*path, q), inner)
        k = len(node.children)
        return t.reshape(*t.shape[:dim], -1, *t.shape[dim + k :])
    import torch

    pieces = tensor.split([node_size(c, sizes) for c in node.children], dim=dim)
    out = [
        apply_axis(p, dim, c, act, sizes, (*path, q), siblings) for q, (p, c) in enumerate(zip(pieces, node.children))
    ]
    return torch.cat(out, dim=dim)


def select(tensor: Tensor, dim: int, node: Layout, path: Path, sizes: Mapping[object, int] | None = None) -> Tensor:
    """The indices of axis ``dim`` that belong to the atom at ``path``, as a matrix whose
    rows are the atom's units and whose columns are everything else (all other axes and the
    other factors of this one)."""
    if not path:
        assert isinstance(node, Atom)
        n = tensor.shape[dim]
        return tensor.movedim(dim, 0).reshape(n, -1)
    q = path[0]
    shape = tuple(tensor.shape)
    if isinstance(node, Prod):
        factors = [node_size(c, sizes) for c in node.children]
        t = tensor.reshape(*shape[:dim], *factors, *shape[dim + 1 :])
        return select(t, dim + q, node.children[q], path[1:], sizes)
    assert isinstance(node, Sum)
    lengths = [node_size(c, sizes) for c in node.children]
    start = sum(lengths[:q])
    return select(tensor.narrow(dim, start, lengths[q]), dim, node.children[q], path[1:], sizes)
