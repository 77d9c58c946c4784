"""The command line (options, help, threads, tiny settings, units of what it prints), progress
output, and the content of every figure."""

from __future__ import annotations

import argparse
import io
import itertools
import re
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

import landscape as ls
from landscape import connectivity as C
from landscape import plot
from landscape.cli import TINY_LIMITS, _subcommand_parsers, apply_tiny, build_parser, main
from landscape.core.errors import LandscapeError
from landscape.core.progress import progress_bar
from landscape.plot.style import log_ticks

ROOT = Path(__file__).resolve().parents[1]
SIZES = ["--n-train", "200", "--n-test", "100", "--quiet"]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    paths = []
    for seed in (0, 1, 2):
        path = folder / f"m{seed}.safetensors"
        args = ["train", "--model", "mlp:width=8,depth=1", "--epochs", "1", *SIZES, "--seed", str(seed)]
        assert main([*args, "--out", str(path)]) == 0
        paths.append(str(path))
    return paths


# ---------------------------------------------------------------- command line


def test_cli_train_evaluate_lmc_plane_surface(checkpoints, tmp_path, capsys) -> None:
    assert main(["evaluate", *checkpoints[:2], *SIZES, "--out", str(tmp_path / "e.nc")]) == 0
    printed = capsys.readouterr().out
    assert "m0.safetensors" in printed and "accuracy (%)" in printed and "loss (nats)" in printed
    for value in ls.load_result(tmp_path / "e.nc").accuracy.values.ravel():  # fractions saved, percent printed
        assert f"{100 * value:.2f}" in printed
    lmc = ["lmc", *checkpoints[:2], "--alphas", "5", *SIZES, "--out", str(tmp_path / "l.nc")]
    assert main([*lmc, "--plot", str(tmp_path / "l.png")]) == 0
    printed = capsys.readouterr().out
    assert "max_minus_mean" in printed and "error in percentage points" in printed
    curve = ls.load_result(tmp_path / "l.nc")
    assert curve.sizes["alpha"] == 5
    # The table prints percentage points; the result holds fractions.
    table = C.barriers(curve)
    assert table.error_barrier.attrs["units"] == "fraction" and table.loss_barrier.attrs["units"] == "nats"
    for value in table.error_barrier.values.ravel():
        assert f"{100 * value:.3f}" in printed
    assert main(["plane", *checkpoints, "--resolution", "4", *SIZES, "--plot", str(tmp_path / "p.png")]) == 0
    assert main(["surface", checkpoints[0], "--resolution", "3", *SIZES, "--out", str(tmp_path / "s.nc")]) == 0
    assert (tmp_path / "l.png").stat().st_size > 0 and (tmp_path / "p.png").exists()


def test_cli_instability_prints_points_and_returns_fractions(tmp_path, capsys) -> None:
    args = ["instability", "--model", "mlp:width=8,depth=1", "--steps", "0,3", "--epochs", "1", "--alphas", "3"]
    assert main([*args, *SIZES, "--out", str(tmp_path / "i.nc"), "--plot", str(tmp_path / "i.png")]) == 0
    printed = capsys.readouterr().out
    assert "error barrier (pp)" in printed and "percentage points" in printed
    result = ls.load_result(tmp_path / "i.nc")
    # The parent trains exactly to the last requested step (3), which no whole epoch hits.
    assert list(result.step.values) == [0, 3]
    assert result.error_barrier.attrs["units"] == "fraction"
    for value in result.error_barrier.values.ravel():
        assert f"{100 * value:.3f}" in printed
    assert main(["evaluate", str(tmp_path / "missing.safetensors"), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["instability", "--steps", "a,b", "--quiet"]) == 2
    assert "--steps" in capsys.readouterr().err


def test_demo_quick(tmp_path, capsys) -> None:
    assert main(["demo", "--quick", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "barriers" in out and "midpoint" in out and "percentage points" in out
    assert (tmp_path / "demo" / "demo.png").exists()
    curve = ls.load_result(tmp_path / "demo" / "demo.nc", group="curve")
    assert curve.loss.dims == ("alpha", "split")


def _every_parser() -> list[argparse.ArgumentParser]:
    parser = build_parser()
    return [parser, *_subcommand_parsers(parser)]


def test_every_option_has_a_sentence_of_help_and_shows_its_default() -> None:
    parsers = _every_parser()
    assert len(parsers) > 15
    for parser in parsers:
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help and len(action.help) >= 8, (parser.prog, action.dest, action.help)
        text = parser.format_help()
        for action in parser._actions:
            shown = action.default not in (None, False, argparse.SUPPRESS) and action.option_strings
            if shown and not isinstance(action, argparse._HelpAction) and action.default != []:
                assert re.search(r"default", " ".join(text.split())), (parser.prog, action.dest)
    lmc = next(p for p in parsers if p.prog.endswith(" lmc"))
    assert "(default: 25)" in " ".join(lmc.format_help().split())


def test_threads_before_or_after_the_command_and_from_the_environment(checkpoints, monkeypatch, capsys) -> None:
    parser = build_parser()
    assert parser.parse_args(["--threads", "2", "lmc", "a", "b"]).threads == 2
    assert parser.parse_args(["lmc", "a", "b", "--threads", "3"]).threads == 3
    assert parser.parse_args(["concepts", "fit", "--out", "p", "--threads", "3"]).threads == 3
    assert parser.parse_args(["lmc", "a", "b"]).threads is None
    evaluate = ["evaluate", checkpoints[0], *SIZES]
    assert main([*evaluate, "--threads", "2"]) == 0
    assert torch.get_num_threads() == 2
    monkeypatch.setenv("LANDSCAPE_NUM_THREADS", "3")
    assert main(evaluate) == 0
    assert torch.get_num_threads() == 3
    assert main([*evaluate, "--threads", "1"]) == 0  # the option wins over the environment
    assert torch.get_num_threads() == 1
    monkeypatch.setenv("LANDSCAPE_NUM_THREADS", "many")
    assert main(evaluate) == 2
    assert "LANDSCAPE_NUM_THREADS" in capsys.readouterr().err


def test_help_imports_no_torch() -> None:
    """`landscape --help` stays fast: building the parser imports neither torch nor matplotlib."""
    code = "import sys, landscape.cli as c; c.build_parser(); print(sorted({'torch', 'matplotlib'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_tiny_settings_cap_every_command() -> None:
    parser = build_parser()
    args = parser.parse_args(["instability", "--steps", "0,25,100,400", "--epochs", "30"])
    changed = apply_tiny(args)
    assert args.steps == "0,4" and args.epochs == 1 and args.n_train == TINY_LIMITS["n_train"]
    assert args.alphas == TINY_LIMITS["alphas"] and "steps" in changed
    args = parser.parse_args(["basins", "--steps", "32", "128", "--out", "x"])
    apply_tiny(args)
    assert args.steps == [4]
    args = parser.parse_args(["concepts", "curve", "--probe", "p", "--top-k", "8", "--out", "c.nc"])
    apply_tiny(args)
    assert args.model == "tiny" and args.top_k == 1 and args.alphas == "-0.1,0,0.1"
    args = parser.parse_args(["demo"])
    apply_tiny(args)
    assert args.quick is True
    args = parser.parse_args(["train", "--model", "mlp", "--epochs", "1", "--out", "a"])
    apply_tiny(args)
    assert args.epochs == 1 and args.model == "mlp"


# ---------------------------------------------------------------- progress


def test_progress_writes_whole_lines_when_not_on_a_terminal(monkeypatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    with progress_bar(total=4, desc="train", unit="step", interval=0.0) as bar:
        for i in range(4):
            bar.update(1)
            bar.set_postfix(loss=f"{1 / (i + 1):.2f}")
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 5 and lines[-1].startswith("train: 100% 4/4") and "loss=0.25" in lines[-1]
    stream.truncate(0)
    stream.seek(0)
    with progress_bar(total=1000, desc="fast", interval=60.0) as bar:
        for _ in range(1000):
            bar.update(1)
    assert stream.getvalue() == ""  # a run shorter than the interval writes nothing
    with progress_bar(total=3, desc="off", disable=True) as bar:
        bar.update(3)
    assert stream.getvalue() == ""


# ---------------------------------------------------------------- figures


@pytest.fixture(scope="module")
def results(mnist1d_small):
    model = ls.models.create("mlp", width=8, depth=1, seed=0)
    a = ls.models.create("mlp", width=8, depth=1, seed=0)
    b = ls.models.create("mlp", width=8, depth=1, seed=1)
    c = ls.models.create("mlp", width=8, depth=1, seed=2)
    curve = C.interpolate(model, a, b, mnist1d_small, alphas=5, progress=False, device="cpu")
    return {
        "model": model,
        "states": (ls.state_of(a), ls.state_of(b), ls.state_of(c)),
        "curve": curve,
        "surface": C.random_plane(model, a, mnist1d_small, resolution=5, progress=False, device="cpu"),
        "plane": C.plane(model, a, b, c, mnist1d_small, resolution=4, progress=False, device="cpu"),
        "data": mnist1d_small,
    }


def _labels_overlap(axis) -> list[tuple[str, str]]:
    """Pairs of visible tick labels of one axis whose boxes intersect on the rendered figure."""
    figure = axis.figure
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    boxes = [
        (t.get_text(), t.get_window_extent(renderer)) for t in axis.get_ticklabels() if t.get_visible() and t.get_text()
    ]
    return [(p, q) for (p, a), (q, b) in itertools.combinations(boxes, 2) if a.overlaps(b)]


def test_curve_and_curves(results) -> None:
    curve = results["curve"]
    axes = plot.curve(curve)
    assert [a.get_ylabel() for a in axes] == ["cross-entropy loss (nats)", "accuracy (%)"]
    drawn = [line for line in axes[1].get_lines() if not line.get_label().startswith("_")]
    assert axes[0].get_xlabel().startswith("interpolation") and [d.get_label() for d in drawn] == ["train", "test"]
    np.testing.assert_allclose(drawn[1].get_ydata(), 100 * curve.accuracy.sel(split="test").values)
    other = curve.copy(deep=True)
    other["accuracy"] = other["accuracy"] * 0.5
    ax = plot.curves({"vanilla": curve, "weights": other, "ot": other.copy(deep=True)})
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts == ["vanilla", "weights", "ot (same as weights)"]
    lines = ax.get_lines()
    assert len(lines) == 3 and lines[2].get_linestyle() != lines[1].get_linestyle()
    assert lines[2].get_marker() != lines[1].get_marker()


@settings(max_examples=200, deadline=None)
@given(
    low=st.floats(1e-6, 1e6, allow_nan=False, allow_infinity=False),
    ratio=st.floats(1.0001, 1e8, allow_nan=False, allow_infinity=False),
)
def test_log_ticks_are_few_increasing_and_inside_the_range(low: float, ratio: float) -> None:
    high = low * ratio
    ticks = log_ticks(low, high)
    assert 3 <= len(ticks) <= 7
    assert all(low <= t <= high for t in ticks)
    assert all(p < q for p, q in itertools.pairwise(ticks))


def test_log_ticks_pick_round_values() -> None:
    assert log_ticks(0.3, 2.0) == [0.5, 1.0, 2.0]
    assert log_ticks(1e-3, 1e3) == [1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0]
    assert log_ticks(1.65, 3.7) == [2.0, 2.5, 3.0, 3.5]


def test_surface_colour_bar_is_labelled_at_several_values(results) -> None:
    surface = results["surface"]
    ax = plot.surface(surface, log_levels=True)
    bar = ax.collections[0].colorbar
    ax.figure.canvas.draw()
    labels = [t.get_text() for t in bar.ax.get_yticklabels() if t.get_text()]
    assert len(labels) >= 3 and len(set(labels)) == len(labels)
    values = surface.loss.sel(split="test").values
    assert all(values.min() * 0.999 <= float(v) <= values.max() * 1.001 for v in labels)
    assert bar.ax.get_ylabel() == "cross-entropy loss (nats), test"
    assert ax.get_xlabel().startswith("α") and ax.get_ylabel().startswith("β")
    plane = plot.surface(results["plane"])
    assert [t.get_text() for t in plane.texts] == ["a", "b", "c"]


def test_surface3d(results) -> None:
    ax = plot.surface3d(results["plane"], log=True)
    assert ax.name == "3d" and ax.get_zlabel() == "cross-entropy loss (nats), test"
    ax.figure.canvas.draw()
    zlabels = [t.get_text() for t in ax.get_zticklabels() if t.get_text()]
    assert len(zlabels) >= 3
    values = results["plane"].loss.sel(split="test").values
    assert all(values.min() * 0.999 <= float(v) <= values.max() * 1.001 for v in zlabels)
    assert [t.get_text().strip() for t in ax.texts] == ["a", "b", "c"]
    with pytest.raises(LandscapeError, match="3-D Axes"):
        plot.surface3d(results["plane"], ax=plt.subplots()[1])


@pytest.mark.parametrize("suffix", [".vtu", ".vtk"])
def test_export_vtk_round_trip(results, tmp_path, suffix) -> None:
    meshio = pytest.importorskip("meshio")
    plane = results["plane"]
    path = plot.export_vtk(plane, tmp_path / f"plane{suffix}", log=True)
    mesh = meshio.read(path)
    test = plane.sel(split="test")
    loss = test.loss.transpose("beta", "alpha").values.ravel()
    grid_alpha, grid_beta = np.meshgrid(plane.alpha.values, plane.beta.values)
    np.testing.assert_allclose(mesh.points[:, 0], grid_alpha.ravel())
    np.testing.assert_allclose(mesh.points[:, 1], grid_beta.ravel())
    np.testing.assert_allclose(mesh.points[:, 2], np.log10(loss), rtol=1e-6)
    np.testing.assert_allclose(mesh.point_data["loss"], loss, rtol=1e-6)
    np.testing.assert_allclose(mesh.point_data["accuracy"], test.accuracy.transpose("beta", "alpha").values.ravel())
    quads = mesh.cells_dict["quad"]
    n_alpha, n_beta = plane.sizes["alpha"], plane.sizes["beta"]
    assert quads.shape == ((n_alpha - 1) * (n_beta - 1), 4)
    # Every quad joins grid neighbours: its corners differ by one step in alpha and/or beta.
    steps = np.abs(np.diff(np.c_[quads, quads[:, :1]], axis=1))
    assert set(np.unique(steps)) == {1, n_alpha}
    with pytest.raises(LandscapeError, match=r"\.vtu"):
        plot.export_vtk(plane, tmp_path / "plane.vtp")


def test_instability_figure(results) -> None:
    sweep = xr.concat(
        [results["curve"].assign(error_barrier=C.barrier(results["curve"], metric="error"))] * 3, dim="step"
    ).assign_coords(step=[0, 20, 200])
    sweep.attrs["threshold"] = 0.02
    ax = plot.instability(sweep)
    assert ax.get_ylabel() == "error barrier (percentage points)"
    assert len(ax.get_lines()) == 2 and ax.get_xscale() == "symlog"
    np.testing.assert_allclose(ax.get_lines()[1].get_ydata(), [2.0, 2.0])
    assert ax.get_ylim()[0] == 0.0


def test_alignment_barriers_takes_library_curves_and_the_analysis_layout(results) -> None:
    curve = results["curve"]
    aligned = curve.copy(deep=True)
    aligned["accuracy"] = aligned["accuracy"] * 0 + 0.5
    ax = plot.alignment_barriers({"vanilla": curve, "weights": aligned})
    bars = ax.patches
    assert len(bars) == 2
    mid = 100 * float(curve.accuracy.sel(split="test", alpha=0.5))
    np.testing.assert_allclose([b.get_height() for b in bars], [mid, 50.0])
    assert ax.get_ylabel() == "test accuracy at α = 0.5 (%)"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["vanilla", "weights"]
    loss = plot.alignment_barriers({"vanilla": curve, "weights": aligned}, metric="loss_barrier")
    expected = float(C.barrier(curve, metric="loss").sel(split="test"))
    np.testing.assert_allclose(loss.patches[0].get_height(), expected)
    # The layout of analyses/alignment_barriers.py: lines against width, one per method + endpoints.
    table = xr.concat([curve, aligned, aligned], dim="alignment").assign_coords(alignment=["none", "weights", "ot"])
    table = table.expand_dims(width=[32, 128], pair=[0, 1], correction=["none"]).transpose("width", "pair", ...)
    ax = plot.alignment_barriers(table)
    assert ax.get_xlabel() == "width" and ax.get_title() == "interpolation midpoint, no correction"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["endpoints", "vanilla", "weights", "ot (same as weights)"]
    with pytest.raises(LandscapeError):
        plot.alignment_barriers({"vanilla": curve}, correction="repair")


def test_fusion_accuracy_takes_evaluate_results_and_mappings(results) -> None:
    model, (a, b, _), data = results["model"], results["states"], results["data"]
    table = ls.evaluate(model, {"parent 0": a, "parent 1": b, "average": ls.lerp(a, b, 0.5)}, data, progress=False)
    ax = plot.fusion_accuracy(table)
    widths = [p.get_width() for p in ax.patches]
    np.testing.assert_allclose(widths, 100 * table.accuracy.sel(split="test").values)
    assert ax.get_xlim()[0] == 0 and ax.get_xlabel() == "test accuracy (%)"
    ticks = {t.get_text(): y for t, y in zip(ax.get_yticklabels(), ax.get_yticks())}
    assert sorted(ticks, key=ticks.get, reverse=True) == ["parent 0", "parent 1", "average"]  # top to bottom
    ax = plot.fusion_accuracy({"parent 0": 0.6, "fused": 0.55})
    np.testing.assert_allclose([p.get_width() for p in ax.patches], [60.0, 55.0])
    analysis = xr.Dataset(
        {"test_accuracy": (("seed", "model"), [[0.6, 0.3], [0.62, 0.32]])}, coords={"model": ["parent 0", "avg"]}
    )
    ax = plot.fusion_accuracy(analysis)
    np.testing.assert_allclose([p.get_width() for p in ax.patches], [61.0, 31.0])
    assert ax.get_xlim()[0] == 0


def _guidance_curve() -> xr.Dataset:
    alphas = np.array([-0.2, -0.1, -0.05, -0.025, 0, 0.025, 0.05, 0.1, 0.2])
    effect = np.array([-0.6, -0.5, -0.39, 0.2, 0.71, 0.87, 0.94, 0.94, 0.5])
    perplexity = np.array([900.0, 70, 9.1, 5.5, 4.3, 5.4, 8.9, 68.7, 1200])
    return xr.Dataset(
        {"effect": ("alpha", effect), "effect_sem": ("alpha", np.full(9, 0.05)), "perplexity": ("alpha", perplexity)},
        coords={"alpha": alphas},
        attrs={"scorer": "vader", "relative": 1},
    )


def test_guidance_and_pnes_figures_have_readable_ticks() -> None:
    import warnings

    from landscape.concepts import pnes

    curve = _guidance_curve()
    ax = plot.guidance(curve)
    assert not _labels_overlap(ax.xaxis) and not _labels_overlap(ax.right_ax.yaxis)
    right = [t.get_text() for t in ax.right_ax.get_yticklabels() if t.get_text()]
    assert right == ["10", "100", "1000"]
    assert len(ax.get_lines()) == 1 and len(ax.right_ax.get_lines()) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = pnes(curve)
    ax = plot.pnes_fit(fit)
    assert not _labels_overlap(ax.xaxis) and not _labels_overlap(ax.yaxis)
    assert len(ax.get_lines()) == 3  # points, fit, zero line
    assert ax.get_ylabel() == "perplexity-normalised effect"


def test_detection_in_percent() -> None:
    accuracy = xr.Dataset(
        {"val_accuracy": ("layer", [0.5, 0.8, 0.9]), "train_accuracy": ("layer", [0.6, 0.9, 1.0])},
        coords={"layer": [0, 1, 2]},
    )
    ax = plot.detection(accuracy)
    assert ax.get_ylabel() == "probe accuracy (%)"
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), [50, 80, 90])


def test_probe_history_takes_the_distillation_result_in_percent() -> None:
    from types import SimpleNamespace

    accuracy = np.array([[0.5, 0.6], [0.52, 0.65]])  # (epoch, net)
    history = xr.Dataset(
        {"accuracy": (("epoch", "net", "probe", "scaling"), accuracy[:, :, None, None])},
        coords={"epoch": [0, 5], "net": ["teacher", "student"], "probe": ["linear"], "scaling": ["raw"]},
    )
    ax = plot.probe_history(SimpleNamespace(history=history), scaling="raw")
    lines = {line.get_label(): line for line in ax.get_lines()}
    np.testing.assert_allclose(lines["student"].get_ydata(), [60, 65])
    assert ax.get_ylabel() == "linear probe accuracy, raw (%)"


def test_every_plot_function_saves_with_path(results, tmp_path) -> None:
    curve, surface = results["curve"], results["surface"]
    alignment = ls.alignment.align(results["model"], results["states"][0], results["states"][1], progress=False)
    calls = {
        "curve": lambda p: plot.curve(curve, path=p),
        "curves": lambda p: plot.curves({"a": curve}, path=p),
        "surface": lambda p: plot.surface(surface, path=p),
        "surface3d": lambda p: plot.surface3d(surface, path=p),
        "objective_history": lambda p: plot.objective_history(alignment, path=p),
        "permutation_matrix": lambda p: plot.permutation_matrix(alignment, "features.fc1", path=p),
        "alignment_barriers": lambda p: plot.alignment_barriers({"vanilla": curve}, path=p),
        "fusion_accuracy": lambda p: plot.fusion_accuracy({"a": 0.5}, path=p),
        "guidance": lambda p: plot.guidance(_guidance_curve(), path=p),
        "detection": lambda p: plot.detection(
            xr.Dataset({"val_accuracy": ("layer", [0.5, 0.7])}, coords={"layer": [0, 1]}), path=p
        ),
    }
    for name, call in calls.items():
        path = tmp_path / "figures" / f"{name}.png"
        call(path)
        assert path.stat().st_size > 1000, name
    # the others save with path= in their own tests (the curvature figures in tests/curvature)
    covered = set(calls) | {"instability", "pnes_fit", "export_vtk", "probe_history", "locality", "imp", "basins"}
    covered |= {"eigenvalue_density", "curvature_curve"}
    assert covered >= set(plot.__all__)
    import inspect

    for name in plot.__all__:
        if name != "export_vtk":
            assert "path" in inspect.signature(getattr(plot, name)).parameters, name
