from __future__ import annotations

import numpy as np
import pytest
import torch

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
