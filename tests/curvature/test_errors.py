"""Bad input is an error that names the function, the argument, what was expected and found."""

from __future__ import annotations

import pytest
import torch

import landscape as ls
from landscape.core.errors import LandscapeError, StateMismatchError
from landscape.curvature import curvature, hessian_density, hessian_eigenvalues, hessian_operator, hessian_trace


@pytest.fixture(scope="module")
def setup():
    model = ls.models.create("mlp", seed=0, width=4, depth=1)
    data = {"train": (torch.randn(16, 40), torch.randint(0, 10, (16,)))}
    return model, data


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda m, d: hessian_eigenvalues(m, None, d, matrix="fisher"), r"hessian_eigenvalues\(matrix=...\)"),
        (lambda m, d: hessian_eigenvalues(m, None, d, which="top"), r"hessian_eigenvalues\(which=...\)"),
        (lambda m, d: hessian_eigenvalues(m, None, d, k=0), r"hessian_eigenvalues\(k=...\): expected a positive"),
        (lambda m, d: hessian_eigenvalues(m, None, d, tol=2.0), r"hessian_eigenvalues\(tol=...\)"),
        (lambda m, d: hessian_eigenvalues(m, None, d, split="test"), r"split=...\): expected one of the data's splits"),
        (lambda m, d: hessian_eigenvalues(m, None, d, blocks="module"), r"blocks=...\): expected None, 'layer'"),
        (lambda m, d: hessian_eigenvalues(m, None, d, blocks={"x": ["nope"]}), r"blocks\['x'\]=...\)"),
        (lambda m, d: hessian_eigenvalues(m, None, d, blocks={"x": []}), r"a non-empty list of parameter keys"),
        (lambda m, d: hessian_eigenvalues(m, None, d, bn="recompute"), r"bn=...\): expected 'keep' or 'reset'"),
        (lambda m, d: hessian_eigenvalues(m, None, d, batch_size=0), r"batch_size=...\)"),
        (lambda m, d: hessian_eigenvalues(m, None, d, loss="mse"), r"loss=...\)"),
        (lambda m, d: hessian_eigenvalues("mlp", None, d), r"model=...\): expected an nn.Module"),
        (lambda m, d: hessian_eigenvalues(m, None, None), r"data=...\)"),
        (lambda m, d: hessian_eigenvalues(m, 3, d), r"state=...\)"),
        (lambda m, d: hessian_trace(m, None, d, probes=0), r"hessian_trace\(probes=...\)"),
        (lambda m, d: hessian_density(m, None, d, lanczos_steps=0), r"lanczos_steps=...\)"),
        (lambda m, d: hessian_density(m, None, d, sigma=-1.0), r"sigma=...\)"),
        (lambda m, d: hessian_density(m, None, d, grid=[1.0, 0.0]), r"grid=...\)"),
        (lambda m, d: curvature(m, [None], d), r"curvature\(points\[0\]=...\)"),
        (lambda m, d: curvature(m, ls.state_of(m), d, statistics=("sharpness",)), r"curvature\(statistics=...\)"),
        (
            lambda m, d: hessian_operator(m, None, d, parameters=["features.act1"]),
            r"hessian_operator\(parameters=...\)",
        ),
    ],
)
def test_bad_arguments(setup, call, match: str) -> None:
    model, data = setup
    with pytest.raises(LandscapeError, match=match):
        call(model, data)


def test_a_state_of_another_architecture_is_refused(setup) -> None:
    model, data = setup
    other = ls.state_of(ls.models.create("mlp", seed=0, width=5, depth=1))
    with pytest.raises(StateMismatchError, match="hessian_trace"):
        hessian_trace(model, other, data, probes=2, progress=False)


def test_a_model_without_trainable_parameters_is_refused(setup) -> None:
    _, data = setup
    frozen = ls.models.create("mlp", seed=0, width=4, depth=1).requires_grad_(False)
    with pytest.raises(LandscapeError, match="unfreeze"):
        hessian_eigenvalues(frozen, None, data, progress=False)


def test_cuda_on_a_machine_without_it_is_refused(setup) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    model, data = setup
    with pytest.raises(LandscapeError, match=r"device=...\)"):
        hessian_eigenvalues(model, None, data, device="cuda", progress=False)
