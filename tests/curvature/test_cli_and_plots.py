"""`landscape hessian` and the curvature figures."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch

import landscape as ls
from landscape import plot
from landscape.cli import main
from landscape.curvature import curvature, hessian_density, hessian_eigenvalues

SIZES = ["--n-train", "120", "--n-test", "60", "--quiet", "--device", "cpu"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("curvature-ckpt")
    paths = []
    for seed in (0, 1):
        path = folder / f"m{seed}.safetensors"
        args = ["train", "--model", "mlp:width=6,depth=1", "--epochs", "1", *SIZES, "--seed", str(seed)]
        assert main([*args, "--out", str(path)]) == 0
        paths.append(str(path))
    return paths


def test_cli_at_a_checkpoint_prints_and_writes_eigenvalues_trace_and_density(checkpoints, tmp_path, capsys) -> None:
    out, figure = tmp_path / "h.nc", tmp_path / "h.png"
    args = ["hessian", checkpoints[0], "--top-k", "3", "--trace", "--probes", "5", "--density"]
    assert main([*args, "--lanczos-steps", "10", *SIZES, "--out", str(out), "--plot", str(figure)]) == 0
    printed = capsys.readouterr().out
    assert "largest eigenvalues of the hessian" in printed and "trace:" in printed
    assert figure.stat().st_size > 0
    stored = ls.load_result(out, group="eigenvalues")
    state = ls.load_state(checkpoints[0])
    model = ls.models.from_spec(state.provenance["metadata"]["model_spec"])
    data = ls.datasets.mnist1d(n_train=120, n_test=60)
    direct = hessian_eigenvalues(model, state, data, k=3, device="cpu", progress=False)
    np.testing.assert_allclose(stored.eigenvalues.values, direct.eigenvalues.values, rtol=1e-6)
    density = ls.load_result(out, group="density")
    assert float(density.density.integrate("eigenvalue")) == pytest.approx(1.0, abs=1e-6)
    assert float(ls.load_result(out, group="trace").trace) > 0


def test_cli_along_a_line(checkpoints, tmp_path, capsys) -> None:
    out = tmp_path / "line.nc"
    args = ["hessian", *checkpoints, "--alphas", "3", "--top-k", "1", "--trace", "--probes", "4", *SIZES]
    assert main([*args, "--out", str(out), "--plot", str(tmp_path / "line.png")]) == 0
    assert "along the line" in capsys.readouterr().out
    result = ls.load_result(out)
    assert result.top_eigenvalue.dims == ("alpha",) and result.sizes["alpha"] == 3
    assert set(result.data_vars) >= {"top_eigenvalue", "trace", "trace_se", "loss"}
    assert (tmp_path / "line.png").stat().st_size > 0


def test_cli_refuses_three_checkpoints_and_a_density_along_a_line(checkpoints, capsys) -> None:
    assert main(["hessian", *checkpoints, checkpoints[0], *SIZES]) == 2
    assert main(["hessian", *checkpoints, "--density", *SIZES]) == 2
    assert "expected one checkpoint" in capsys.readouterr().err


def test_density_figure_is_logarithmic_with_one_line_per_layer(tmp_path) -> None:
    model = ls.models.create("mlp", seed=0, width=4, depth=1)
    data = (torch.randn(32, 40), torch.randint(0, 10, (32,)))
    ds = hessian_density(model, None, data, probes=2, lanczos_steps=8, blocks="layer", device="cpu", progress=False)
    axis = plot.eigenvalue_density(ds, path=tmp_path / "density.png")
    assert (tmp_path / "density.png").stat().st_size > 1000
    assert axis.get_yscale() == "log" and len(axis.get_lines()) == 2
    assert len(plot.eigenvalue_density(ds, layer="classifier").get_lines()) == 1


def test_curvature_curve_draws_loss_and_statistics_side_by_side(tmp_path) -> None:
    model = ls.models.create("mlp", seed=0, width=4, depth=1)
    a, b = ls.state_of(model), ls.state_of(ls.models.create("mlp", seed=1, width=4, depth=1))
    data = {"train": (torch.randn(32, 40), torch.randint(0, 10, (32,)))}
    line = ls.AffineFamily.line(a, b, alphas=3)
    ds = curvature(model, line, data, statistics=("top_eigenvalue", "trace"), probes=3, device="cpu", progress=False)
    curve = ls.connectivity.interpolate(model, a, b, data, alphas=3, progress=False)
    axes = plot.curvature_curve(ds, curve=curve, statistics=("top_eigenvalue", "trace"), path=tmp_path / "c.pdf")
    assert (tmp_path / "c.pdf").stat().st_size > 1000
    assert len(axes) == 3
    np.testing.assert_allclose(axes[0].get_lines()[0].get_ydata(), curve.loss.sel(split="train").values)
    np.testing.assert_allclose(axes[1].get_lines()[0].get_ydata(), ds.top_eigenvalue.values)
    assert len(plot.curvature_curve(ds)) == 1  # no loss available: statistics only
    with pytest.raises(ls.core.LandscapeError, match="statistics"):
        plot.curvature_curve(ds, statistics=("loss",))
