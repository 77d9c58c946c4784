"""Union-find over axis atoms, with refinement into products and sums.

Every axis of every traced tensor is described by a layout tree whose atoms are integer ids.
Joining two axes that must transform together unions their atoms. When one side is an atom
and the other a product or sum (GroupNorm's groups, attention heads, ``chunk``), the atom is
*refined*: from then on it stands for that structure, which restricts its transforms to
the Kronecker product (or block-diagonal sum) of the parts. Refinement only ever shrinks
the set of allowed transforms, so every step is sound; when two structures cannot be
reconciled, the atoms involved are fixed (the identity is always allowed).
"""

from __future__ import annotations

from landscape.core.errors import LandscapeError
from landscape.symmetry.layout import Atom, Fixed, Layout, Prod, Sum, atoms, normalize

PERMUTATION, ORTHOGONAL, INVERTIBLE = 0, 1, 2
KIND_NAMES = ("permutation", "orthogonal", "invertible")
FIXED = 0


class Classes:
    """The union-find. Id 0 is the fixed class."""

    def __init__(self) -> None:
        self.parent: list[int] = [0]
        self.sizes: list[int] = [0]
        self.kinds: list[int] = [PERMUTATION]
        self.labels: list[str] = ["fixed"]
        self.refined: dict[int, Layout] = {}
        self.fix_reasons: dict[int, str] = {}  # why a root was fixed (first reason)
        self.kind_reasons: dict[int, str] = {}  # why a root's transforms were restricted
        self.notes: list[str] = []
        # Relations resolved when the graph is finalised (they need the final roots):
        # ``duals``: T(second) = T(first)^-T, the two sides of a dot product of activations;
        # ``per_head``: the first layout's transforms may differ along the second's units
        # (the head coordinates of attention, batched over the heads);
        # ``centered``: transforms must fix the all-ones vector (a mean-centering LayerNorm);
        # ``rotary``: transforms must commute with rotary position embeddings.
        self.duals: list[tuple[Layout, Layout, str]] = []
        self.per_head: list[tuple[Layout, Layout, str]] = []
        self.centered: list[tuple[Layout, str]] = []
        self.rotary: list[tuple[Layout, str]] = []
        # Axes that activations inside a module carry though no traced node holds them (the
        # queries, keys and values of nn.MultiheadAttention).
        self.carried: list[Layout] = []

    # -- basic union-find ------------------------------------------------------------
    def new(self, size: int, label: str, kind: int = INVERTIBLE) -> Layout:
        if size == 1:
            return Fixed(1)
        i = len(self.parent)
        self.parent.append(i)
        self.sizes.append(int(size))
        self.kinds.append(kind)
        self.labels.append(label)
        return Atom(i, int(size))

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        if root != FIXED:  # chains into the fixed class are kept, so that explain() can say why
            while self.parent[i] != root:
                self.parent[i], i = root, self.parent[i]
        return root

    def fixed_because(self, i: int) -> str | None:
        """Why atom ``i`` is fixed (None when it is not)."""
        last = i
        while self.parent[last] != last and self.parent[last] != FIXED:
            last = self.parent[last]
        return self.fix_reasons.get(last) if self.parent[last] == FIXED and last != FIXED else None

    def expand(self, node: Layout) -> Layout:
        """The tree with every atom replaced by its current root or refinement, normalised."""
        if isinstance(node, Fixed):
            return node
        if isinstance(node, Atom):
            r = self.find(int(node.group))
            if r == FIXED:
                return Fixed(node.size)
            if r in self.refined:
                return self.expand(self.refined[r])
            return Atom(r, node.size)
        kids = tuple(self.expand(c) for c in node.children)
        return normalize(Prod(kids) if isinstance(node, Prod) else Sum(kids))

    def _check_size(self, a: int, b: int, why: str) -> None:
        if self.sizes[a] != self.sizes[b]:
            raise LandscapeError(
                f"symmetry_graph: internal inconsistency at {why}: joining axes of {self.sizes[a]} and "
                f"{self.sizes[b]} units. This is a bug in landscape; meanwhile pass unknown='fixed' or "
                "fixed=[...] naming this module to symmetry_graph."
            )

    def union(self, a: int, b: int, why: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if ra == FIXED or rb == FIXED:
            self._fix_root(rb if ra == FIXED else ra, why)
            return
        self._check_size(ra, rb, why)
        ta, tb = self.refined.get(ra), self.refined.get(rb)
        if tb is not None and ta is None:
            ra, rb, ta, tb = rb, ra, tb, ta
        # ra is the new root; it keeps its refinement
        self.parent[rb] = ra
        kind = min(self.kinds[ra], self.kinds[rb])
        self.kinds[ra] = kind
        if rb in self.refined:
            del self.refined[rb]
        if rb in self.kind_reasons and self.kinds[rb] <= self.kinds[ra]:
            self.kind_reasons[ra] = self.kind_reasons[rb]
        if ta is not None:
            self.restrict(ta, kind, why)
            if tb is not None:
                self.join(ta, tb, why)

    def _fix_root(self, r: int, why: str) -> None:
        if r == FIXED:
            return
        sub = self.refined.pop(r, None)
        self.parent[r] = FIXED
        self.fix_reasons.setdefault(r, why)
        if sub is not None:
            self.fix(sub, why)

    def fix(self, node: Layout, why: str) -> None:
        """Fix every atom of ``node`` (the identity is the only transform left)."""
        for a in atoms(self.expand(node)):
            self._fix_root(self.find(int(a.group)), why)

    def restrict(self, node: Layout, kind: int, why: str) -> None:
        """Allow at most ``kind`` transforms on every atom of ``node``."""
        for a in atoms(self.expand(node)):
            r = self.find(int(a.group))
            if self.kinds[r] > kind:
                self.kinds[r] = kind
                self.kind_reasons[r] = why

    def refine(self, r: int, into: Layout, why: str) -> None:
        r = self.find(r)
        for a in atoms(into):
            ra = self.find(int(a.group))
            self.kinds[ra] = min(self.kinds[ra], self.kinds[r])
        self.refined[r] = into

    # -- joining trees ---------------------------------------------------------------
    def join(self, first: Layout, second: Layout, why: str) -> None:
        """Make two axis layouts (of equal length) transform together."""
        a, b = self.expand(first), self.expand(second)
        if a.size != b.size:
            raise LandscapeError(
                f"symmetry_graph: internal inconsistency at {why}: joining axes of length {a.size} and "
                f"{b.size}. This is a bug in landscape; meanwhile pass unknown='fixed' or fixed=[...]."
            )
        if a == b:
            return
        if isinstance(a, Fixed) or isinstance(b, Fixed):
            self.fix(b if isinstance(a, Fixed) else a, why)
            return
        if isinstance(a, Atom) and isinstance(b, Atom):
            self.union(int(a.group), int(b.group), why)
            return
        if isinstance(a, Atom) or isinstance(b, Atom):
            atom, tree = (a, b) if isinstance(a, Atom) else (b, a)
            self.refine(int(atom.group), tree, why)
            return
        if type(a) is not type(b):
            self.notes.append(f"{why}: a concatenation met a product of axes; their units are kept fixed")
            self.fix(a, why)
            self.fix(b, why)
            return
        self._align(a, b, why)

    def _align(self, a: Prod | Sum, b: Prod | Sum, why: str) -> None:
        product = isinstance(a, Prod)
        left, right = list(a.children), list(b.children)
        while left and right:
            x, y = self.expand(left[0]), self.expand(right[0])
            if x.size == y.size:
                self.join(x, y, why)
                left.pop(0)
                right.pop(0)
                continue
            swap = x.size < y.size
            big, small = (y, x) if swap else (x, y)
            bigger, smaller = (right, left) if swap else (left, right)
            fits = big.size % small.size == 0 if product else big.size > small.size
            rest = big.size // small.size if product else big.size - small.size
            if fits and isinstance(big, Fixed):
                self.fix(small, why)
                bigger[0] = Fixed(rest)
                smaller.pop(0)
            elif fits and isinstance(big, Atom):
                kind = self.kinds[self.find(int(big.group))]
                first = self.new(small.size, f"part of {self.labels[int(big.group)]}", kind)
                second = self.new(rest, f"part of {self.labels[int(big.group)]}", kind)
                self.refine(int(big.group), normalize(Prod((first, second)) if product else Sum((first, second))), why)
                bigger[0] = self.expand(big)
            else:
                self.notes.append(f"{why}: axis structures could not be matched; their units are kept fixed")
                for node in left + right:
                    self.fix(node, why)
                return
            # refinement may have turned the head into a product/sum: splice its parts in
            head = self.expand(bigger[0])
            if isinstance(head, Prod if product else Sum):
                bigger[0:1] = list(head.children)
        for node in left + right:
            self.fix(node, why)
