from __future__ import annotations

import itertools

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from hypothesis import given, settings

from landscape.core.errors import LandscapeError
from landscape.core.family import AffineFamily, as_family
from landscape.core.state import State, lerp


def _pair():
    g = torch.Generator().manual_seed(0)
    a = State({"w": torch.randn(3, 4, generator=g), "n": torch.tensor(1)})
    b = State({"w": torch.randn(3, 4, generator=g), "n": torch.tensor(2)})
    return a, b


def test_line_points_equal_lerp_and_endpoints_exactly() -> None:
    a, b = _pair()
    line = AffineFamily.line(a, b, alphas=[-0.5, 0.0, 0.3, 1.0, 1.5])
    for k, t in enumerate(line.coords["alpha"]):
        assert torch.allclose(line.state(k)["w"], lerp(a, b, t)["w"], atol=1e-6)
    assert torch.equal(line.state(1)["w"], a["w"])
    assert torch.equal(line.state(3)["w"], b["w"])
    stacked = line.stacked(range(5))
    assert torch.equal(stacked["w"][1], a["w"]) and torch.equal(stacked["w"][3], b["w"])
    assert [int(v) for v in stacked["n"]] == [1, 1, 1, 2, 2]


def test_grid_matches_affine_formula_in_c_order() -> None:
    a, _ = _pair()
    d1, d2 = {"w": torch.ones(3, 4), "n": torch.tensor(0)}, {"w": torch.full((3, 4), 2.0), "n": torch.tensor(0)}
    grid = AffineFamily.grid(a, (d1, d2), [0.0, 1.0], [0.0, 0.5, 1.0])
    assert len(grid) == 6 and grid.dims == ("alpha", "beta") and grid.shape == (2, 3)
    k = 1 * 3 + 2  # alpha = 1, beta = 1
    assert torch.allclose(grid.state(k)["w"], a["w"] + 1.0 + 2.0)
    assert torch.allclose(grid.stacked([k])["w"][0], a["w"] + 3.0)
    assert torch.allclose(grid.coefficients[k], torch.tensor([1.0, 1.0], dtype=torch.float64))


def test_points_family_returns_the_states_themselves() -> None:
    a, b = _pair()
    family = AffineFamily.points([a, b], labels=["x", "y"])
    assert torch.equal(family.state(0)["w"], a["w"]) and not family.is_structured
    assert list(family.coords["point"]) == ["x", "y"]


def test_affine_constructor_and_coercion() -> None:
    a, b = _pair()
    fam = AffineFamily(a, [b], np.array([[0.0], [2.0]]))
    assert torch.allclose(fam.state(1)["w"], a["w"] + 2 * b["w"])
    assert len(as_family([a, b])) == 2
    assert as_family({"first": a, "second": b}).coords["point"].tolist() == ["first", "second"]
    assert len(as_family(a)) == 1
    assert len(as_family(torch.nn.Linear(2, 2))) == 1


def test_bad_inputs_are_explained() -> None:
    a, b = _pair()
    with pytest.raises(LandscapeError, match=r"AffineFamily.line\(alphas=...\): expected at least 2"):
        AffineFamily.line(a, b, alphas=1)
    with pytest.raises(LandscapeError, match="finite"):
        AffineFamily.line(a, b, alphas=[0.0, float("nan")])
    with pytest.raises(LandscapeError, match=r"K x 1"):
        AffineFamily(a, [b], np.zeros((3, 2)))
    with pytest.raises(LandscapeError, match=r"evaluate\(points=...\)"):
        as_family(42)


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 9), cols=st.integers(1, 4), parts=st.integers(1, 12))
def test_chunks_cover_the_leading_dim_once_and_take_gives_the_same_points(rows: int, cols: int, parts: int) -> None:
    a, _ = _pair()
    d1, d2 = {"w": torch.ones(3, 4), "n": torch.tensor(0)}, {"w": torch.full((3, 4), 2.0), "n": torch.tensor(0)}
    grid = AffineFamily.grid(a, (d1, d2), np.linspace(-1, 1, rows), np.linspace(0, 2, cols))
    pieces = grid.chunks(parts)
    # contiguous, in order, non-empty, covering every row exactly once, lengths differing by at most 1
    assert pieces[0].start == 0 and pieces[-1].stop == rows and len(pieces) == min(parts, rows)
    assert all(p.stop == q.start for p, q in itertools.pairwise(pieces))
    lengths = [p.stop - p.start for p in pieces]
    assert min(lengths) >= 1 and max(lengths) - min(lengths) <= 1
    for piece in pieces:
        part = grid.take(piece)
        assert part.dims == grid.dims and part.shape == (piece.stop - piece.start, cols)
        assert np.array_equal(part.coords["alpha"], grid.coords["alpha"][piece])
        assert np.array_equal(part.coords["beta"], grid.coords["beta"])
        assert part.basis is grid.basis  # the basis is shared, not copied
        first = piece.start * cols
        for j in range(len(part)):
            # the j-th point of the piece is, bit for bit, point first + j of the whole grid
            assert torch.equal(part.state(j)["w"], grid.state(first + j)["w"])
        assert torch.equal(part.coefficients, grid.coefficients[first : first + len(part)])


def test_take_of_a_line_and_a_list_keeps_labels_and_device_cache() -> None:
    a, b = _pair()
    line = AffineFamily.line(a, b, alphas=[-0.5, 0.0, 0.5, 1.0, 1.5])
    line.device_basis("cpu")
    part = line.take(slice(3, 5))
    assert part.coords["alpha"].tolist() == [1.0, 1.5] and part.anchors == (0, 1)
    assert part.device_basis("cpu") is line.device_basis("cpu")  # moved once for all pieces
    assert torch.equal(part.stacked([0, 1])["w"], line.stacked([3, 4])["w"])
    listed = AffineFamily.points([a, b, a], labels=["x", "y", "z"]).take(slice(1, None))
    assert listed.coords["point"].tolist() == ["y", "z"] and torch.equal(listed.state(1)["w"], a["w"])
    with pytest.raises(LandscapeError, match=r"AffineFamily.take\(rows=...\): expected a non-empty range"):
        line.take(slice(5, 9))
    with pytest.raises(LandscapeError, match="step 1"):
        line.take(slice(0, 4, 2))
    with pytest.raises(LandscapeError, match="positive integer"):
        line.chunks(0)
