"""Eigenvalues, eigenvectors, traces and densities against the exact Hessian's eigendecomposition."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import landscape as ls
from landscape.core.state import flatten, norm
from landscape.curvature import (
    hessian_density,
    hessian_eigenpairs,
    hessian_eigenvalues,
    hessian_operator,
    hessian_trace,
)
from landscape.curvature._spectrum import gauss_quadrature, lanczos, rademacher
from tests.curvature.reference import block_offsets, exact_ggn, exact_hessian


def _mlp(width: int = 6, depth: int = 2, seed: int = 0, n: int = 24, dims: int = 40):
    model = ls.models.create("mlp", seed=seed, width=width, depth=depth, input_shape=(dims,)).double()
    g = torch.Generator().manual_seed(seed)
    return model, torch.randn(n, dims, generator=g, dtype=torch.float64), torch.randint(0, 10, (n,), generator=g)


@pytest.fixture(scope="module")
def problem():
    model, x, y = _mlp()
    return model, x, y, exact_hessian(model, None, x, y)


@pytest.mark.parametrize("which", ["largest", "smallest", "magnitude"])
def test_extreme_eigenvalues_match_eigvalsh(problem, which: str, device: str) -> None:
    model, x, y, exact = problem
    values = np.linalg.eigvalsh(exact)
    expected = {
        "largest": values[::-1][:5],
        "smallest": values[:5],
        "magnitude": values[np.argsort(-np.abs(values))][:5],
    }[which]
    ds = hessian_eigenvalues(model, None, (x, y), k=5, which=which, tol=1e-8, device=device, progress=False)
    assert ds.eigenvalues.dims == ("k",) and list(ds.k.values) == [1, 2, 3, 4, 5]
    # ARPACK's residual bound tol * |theta| bounds each eigenvalue's error.
    np.testing.assert_allclose(ds.eigenvalues.values, expected, rtol=1e-7, atol=1e-12)
    assert ds.attrs["products"] > 0 and ds.attrs["parameters"] == exact.shape[0]


def test_the_default_tolerance_is_within_its_bound(problem, device: str) -> None:
    model, x, y, exact = problem
    top = np.linalg.eigvalsh(exact)[::-1][:3]
    ds = hessian_eigenvalues(model, None, (x, y), k=3, device=device, progress=False)
    np.testing.assert_allclose(ds.eigenvalues.values, top, rtol=ds.attrs["tol"])


def test_eigenpairs_are_unit_eigenvectors_as_states(problem, device: str) -> None:
    model, x, y, exact = problem
    state = ls.state_of(model)
    ds, vectors = hessian_eigenpairs(model, state, (x, y), k=3, tol=1e-10, device=device, progress=False)
    assert len(vectors) == 3
    for value, vector in zip(ds.eigenvalues.values, vectors):
        assert set(vector) == set(state) and all(vector[k].dtype == state[k].dtype for k in state)
        assert norm(vector) == pytest.approx(1.0, abs=1e-12)
        v = torch.cat([vector[k].reshape(-1) for k, _ in model.named_parameters()]).numpy()
        np.testing.assert_allclose(exact @ v, value * v, atol=1e-8 * abs(value))


def test_a_matrix_smaller_than_the_lanczos_basis_is_solved_densely(device: str) -> None:
    model = torch.nn.Linear(3, 2).double()  # 8 parameters: fewer than ARPACK's Lanczos vectors
    x, y = torch.randn(10, 3, dtype=torch.float64), torch.randint(0, 2, (10,))
    exact = np.linalg.eigvalsh(exact_hessian(model, None, x, y))[::-1]
    ds = hessian_eigenvalues(model, None, (x, y), k=10, device=device, progress=False)
    np.testing.assert_allclose(ds.eigenvalues.values[:8], exact, atol=1e-12)
    assert np.isnan(ds.eigenvalues.values[8:]).all()  # k beyond the dimension: NaN, not an error
    assert ds.attrs["products"] == 8


def test_layer_blocks_equal_the_diagonal_blocks_of_the_exact_hessian(problem, device: str) -> None:
    model, x, y, exact = problem
    ds = hessian_eigenvalues(model, None, (x, y), k=3, blocks="layer", tol=1e-9, device=device, progress=False)
    assert list(ds.layer.values) == ["features.fc1", "features.fc2", "classifier"]
    for layer in ds.layer.values:
        keys = [f"{layer}.weight", f"{layer}.bias"]
        index = np.concatenate([np.arange(s.start, s.stop) for s in block_offsets(model, keys).values()])
        block = exact[np.ix_(index, index)]
        np.testing.assert_allclose(
            ds.eigenvalues.sel(layer=layer).values, np.linalg.eigvalsh(block)[::-1][:3], rtol=1e-7, atol=1e-12
        )
        assert int(ds.parameters.sel(layer=layer)) == len(index)


def test_named_blocks_take_any_keys(problem, device: str) -> None:
    model, x, y, exact = problem
    keys = ["features.fc1.bias", "classifier.weight"]
    ds = hessian_eigenvalues(model, None, (x, y), k=2, blocks={"mix": keys}, tol=1e-9, device=device, progress=False)
    index = np.concatenate([np.arange(s.start, s.stop) for s in block_offsets(model, keys).values()])
    np.testing.assert_allclose(
        ds.eigenvalues.sel(layer="mix").values,
        np.linalg.eigvalsh(exact[np.ix_(index, index)])[::-1][:2],
        rtol=1e-7,
    )


def test_hutchinson_is_the_mean_of_v_h_v_over_the_seeded_probes(problem, device: str) -> None:
    model, x, y, exact = problem
    ds = hessian_trace(model, None, (x, y), probes=30, seed=3, blocks="layer", device=device, progress=False)
    probes = np.stack([rademacher(3, i, exact.shape[0]) for i in range(30)]).astype(np.float64)
    samples = np.einsum("pi,ij,pj->p", probes, exact, probes)
    total = ds.trace.sum("layer")  # the block estimates add up to the whole matrix's, probe by probe
    assert float(total) == pytest.approx(samples.mean(), rel=1e-10)
    for layer in ds.layer.values:
        index = np.concatenate(
            [np.arange(s.start, s.stop) for s in block_offsets(model, [f"{layer}.weight", f"{layer}.bias"]).values()]
        )
        block_samples = np.einsum("pi,pi->p", probes[:, index], (probes @ exact)[:, index])
        assert float(ds.trace.sel(layer=layer)) == pytest.approx(block_samples.mean(), rel=1e-10)
        assert float(ds.trace_se.sel(layer=layer)) == pytest.approx(block_samples.std(ddof=1) / np.sqrt(30), rel=1e-8)


def test_hutchinson_is_consistent_with_the_exact_trace(problem, device: str) -> None:
    model, x, y, exact = problem
    ds = hessian_trace(model, None, (x, y), probes=400, device=device, progress=False)
    assert ds.trace.dims == ()
    # An unbiased estimate: within 4 standard errors (fails with probability below 1e-4).
    assert abs(float(ds.trace) - np.trace(exact)) < 4 * float(ds.trace_se)


def test_gauss_quadrature_reproduces_the_moments_of_the_probe(problem, device: str) -> None:
    """m Lanczos steps give a Gauss rule exact for polynomials of degree below 2m."""
    model, x, y, exact = problem
    op = hessian_operator(model, None, (x, y), device=device)
    start = torch.from_numpy(rademacher(0, 0, exact.shape[0])[None].astype(np.float64))
    for steps in (5, 12):
        alphas, betas, lengths = lanczos(op._products, start, steps, lambda n: None)
        nodes, weights = gauss_quadrature(alphas[0, : lengths[0]], betas[0, : lengths[0] - 1])
        q = start[0].numpy() / np.linalg.norm(start[0].numpy())
        moment = q.copy()
        scale = np.abs(np.linalg.eigvalsh(exact)).max()
        for power in range(2 * steps):
            exact_moment = q @ moment
            assert (weights * nodes**power).sum() == pytest.approx(exact_moment, abs=1e-9 * scale**power)
            moment = exact @ moment


def test_lanczos_over_the_whole_space_finds_every_eigenvalue(device: str) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 3)).double()
    x, y = torch.randn(20, 4, dtype=torch.float64), torch.randint(0, 3, (20,))
    exact = np.linalg.eigvalsh(exact_hessian(model, None, x, y))
    ds = hessian_density(model, None, (x, y), probes=1, lanczos_steps=60, device=device, progress=False)
    nodes = ds.nodes.isel(probe=0).values
    found = np.sort(nodes[np.isfinite(nodes)])
    assert len(found) <= len(exact) == 27  # the Krylov space ends at the dimension (or earlier)
    # Every node is an eigenvalue (a probe sees each eigenvalue with a non-zero weight).
    assert np.abs(found[:, None] - exact[None]).min(axis=1).max() < 1e-8
    assert float(ds.weights.sum()) == pytest.approx(1.0, abs=1e-12)


def test_density_integrates_to_one_and_matches_the_exact_histogram(problem, device: str) -> None:
    model, x, y, exact = problem
    values = np.linalg.eigvalsh(exact)
    sigma = 0.05 * (values.max() - values.min())
    ds = hessian_density(model, None, (x, y), probes=40, lanczos_steps=40, sigma=sigma, device=device, progress=False)
    assert ds.density.dims == ("eigenvalue",) and ds.nodes.dims == ("probe", "node")
    assert float(ds.density.integrate("eigenvalue")) == pytest.approx(1.0, abs=1e-6)
    grid = ds.eigenvalue.values
    broadened = np.exp(-0.5 * ((grid[:, None] - values[None]) / sigma) ** 2).sum(1) / (
        len(values) * sigma * np.sqrt(2 * np.pi)
    )
    # At a resolution of sigma, 40 Rademacher probes estimate the broadened histogram to a few
    # percent of its peak (the Monte Carlo error of the trace of a smooth function).
    assert np.abs(ds.density.values - broadened).max() < 0.1 * broadened.max()
    # The cumulative weights follow the exact distribution function up to the quadrature's
    # resolution: a shift by sigma in eigenvalue and a Monte Carlo error in probability.
    nodes, weights = ds.nodes.values.ravel(), ds.weights.values.ravel() / 40
    for t in np.linspace(values.min(), values.max(), 9):
        estimate = weights[nodes <= t].sum()
        assert (values <= t - sigma).mean() - 0.05 <= estimate <= (values <= t + sigma).mean() + 0.05


def test_layer_densities_share_one_grid(problem, device: str) -> None:
    model, x, y, _ = problem
    ds = hessian_density(
        model, None, (x, y), probes=2, lanczos_steps=10, blocks="layer", grid=500, device=device, progress=False
    )
    assert ds.density.dims == ("layer", "eigenvalue") and ds.sizes["eigenvalue"] == 500
    assert ds.nodes.dims == ("layer", "probe", "node")
    np.testing.assert_allclose(ds.density.integrate("eigenvalue").values, 1.0, atol=1e-6)


def test_the_ggn_matches_the_hand_built_matrix_in_its_spectrum(problem, device: str) -> None:
    model, x, y, _ = problem
    exact = np.linalg.eigvalsh(exact_ggn(model, None, x, y))[::-1][:4]
    ds = hessian_eigenvalues(model, None, (x, y), k=4, matrix="ggn", tol=1e-9, device=device, progress=False)
    np.testing.assert_allclose(ds.eigenvalues.values, exact, rtol=1e-7)


@settings(max_examples=12, deadline=None)
@given(
    width=st.integers(1, 5),
    n=st.integers(1, 9),
    seed=st.integers(0, 2**16),
    scale=st.floats(0.1, 10.0),
)
def test_the_ggn_is_positive_semi_definite(width: int, n: int, seed: int, scale: float) -> None:
    model, x, y = _mlp(width=width, depth=1, seed=seed, n=n, dims=3)
    state = {k: v * scale for k, v in ls.state_of(model).items()}
    op = hessian_operator(model, state, (x, y), matrix="ggn", device="cpu")
    dense = op @ np.eye(op.shape[0])
    values = np.linalg.eigvalsh((dense + dense.T) / 2)
    # J^T H_z J with H_z = diag(p) - p p^T >= 0: negative only by rounding.
    assert values.min() >= -1e-10 * max(1.0, np.abs(values).max())
    assert np.allclose(dense, dense.T, atol=1e-12 * max(1.0, np.abs(dense).max()))


def test_the_same_seed_gives_the_same_numbers(problem, device: str) -> None:
    model, x, y, _ = problem
    one = hessian_density(model, None, (x, y), probes=2, lanczos_steps=8, seed=4, device=device, progress=False)
    two = hessian_density(model, None, (x, y), probes=2, lanczos_steps=8, seed=4, device=device, progress=False)
    np.testing.assert_array_equal(one.nodes.values, two.nodes.values)
    three = hessian_trace(model, None, (x, y), probes=5, seed=4, device=device, progress=False)
    four = hessian_trace(model, None, (x, y), probes=5, seed=4, device=device, progress=False)
    assert float(three.trace) == float(four.trace)


def test_flat_order_of_eigenvectors_matches_the_operator(problem, device: str) -> None:
    model, x, y, _ = problem
    _, vectors = hessian_eigenpairs(model, None, (x, y), k=1, device=device, progress=False)
    assert flatten(vectors[0]).shape[0] == sum(t.numel() for t in ls.state_of(model).values())
