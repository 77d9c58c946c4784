from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest

import landscape as ls
from landscape import connectivity as C
from landscape import plot
from landscape.cli import main


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    paths = []
    for seed in (0, 1, 2):
        path = folder / f"m{seed}.safetensors"
        assert (
            main(
                [
                    "train",
                    "--model",
                    "mlp:width=8,depth=1",
                    "--epochs",
                    "1",
                    "--n-train",
                    "200",
                    "--n-test",
                    "100",
                    "--seed",
                    str(seed),
                    "--out",
                    str(path),
                    "--quiet",
                ]
            )
            == 0
        )
        paths.append(str(path))
    return paths


def test_cli_train_evaluate_lmc_plane_surface(checkpoints, tmp_path, capsys) -> None:
    sizes = ["--n-train", "200", "--n-test", "100", "--quiet"]
    assert main(["evaluate", *checkpoints[:2], *sizes, "--out", str(tmp_path / "e.nc")]) == 0
    assert "m0.safetensors" in capsys.readouterr().out
    assert (
        main(
            [
                "lmc",
                *checkpoints[:2],
                "--alphas",
                "5",
                *sizes,
                "--out",
                str(tmp_path / "l.nc"),
                "--plot",
                str(tmp_path / "l.png"),
            ]
        )
        == 0
    )
    assert "max_minus_mean" in capsys.readouterr().out
    assert ls.load_result(tmp_path / "l.nc").sizes["alpha"] == 5
    assert main(["plane", *checkpoints, "--resolution", "4", *sizes, "--plot", str(tmp_path / "p.png")]) == 0
    assert main(["surface", checkpoints[0], "--resolution", "3", *sizes, "--out", str(tmp_path / "s.nc")]) == 0
    assert (tmp_path / "l.png").stat().st_size > 0 and (tmp_path / "p.png").exists()


def test_cli_instability_and_errors(tmp_path, capsys) -> None:
    assert (
        main(
            [
                "instability",
                "--model",
                "mlp:width=8,depth=1",
                "--steps",
                "0,2",
                "--epochs",
                "1",
                "--alphas",
                "3",
                "--n-train",
                "200",
                "--n-test",
                "100",
                "--quiet",
                "--plot",
                str(tmp_path / "i.png"),
            ]
        )
        == 0
    )
    assert "error_barrier" in capsys.readouterr().out
    assert main(["evaluate", str(tmp_path / "missing.safetensors"), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_demo_quick(tmp_path, capsys) -> None:
    assert main(["demo", "--quick", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "barriers" in out and "midpoint" in out
    assert (tmp_path / "demo" / "demo.png").exists()
    curve = ls.load_result(tmp_path / "demo" / "demo.nc", group="curve")
    assert curve.loss.dims == ("alpha", "split")


def test_plots_return_axes(mnist1d_small) -> None:
    model = ls.models.create("mlp", width=8, depth=1, seed=0)
    other = ls.models.create("mlp", width=8, depth=1, seed=1)
    curve = C.interpolate(model, model, other, mnist1d_small, alphas=5, progress=False)
    axes = plot.curve(curve)
    assert len(axes) == 2 and axes[0].get_xlabel().startswith("interpolation")
    assert plot.curves({"vanilla": curve, "again": curve}).get_legend() is not None
    surface = C.random_plane(model, model, mnist1d_small, resolution=4, progress=False)
    assert plot.surface(surface, log_levels=True).get_xlabel().startswith("α")
    inst = curve.copy()
    inst["error_barrier"] = C.barrier(curve, metric="error")
    assert plot.instability(inst).get_ylabel().startswith("error")
