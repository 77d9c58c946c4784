"""``landscape align`` and ``landscape fuse``."""

from __future__ import annotations

import pytest
import torch

import landscape as ls
from landscape.cli import main

SIZES = ["--n-train", "200", "--n-test", "100", "--quiet"]


def _checkpoints(folder, count=2):
    paths = []
    for seed in range(count):
        path = folder / f"m{seed}.safetensors"
        args = ["train", "--model", "mlp:width=8,depth=1", "--epochs", "1", "--seed", str(seed), "--out", str(path)]
        assert main([*args, *SIZES]) == 0
        paths.append(str(path))
    return paths


def test_cli_align_and_fuse(tmp_path, capsys) -> None:
    a, b, c = _checkpoints(tmp_path, 3)
    out = tmp_path / "b_aligned.safetensors"
    report = tmp_path / "report.nc"
    assert main(["align", a, b, "--method", "weights", "--out", str(out), "--report", str(report), *SIZES]) == 0
    printed = capsys.readouterr().out
    assert "Alignment(method='weights'" in printed and "features.fc1" in printed
    aligned = ls.load_state(out)
    assert aligned.provenance["metadata"]["model_spec"]["name"] == "mlp"
    assert ls.load_result(report).attrs["method"] == "weights"
    # the aligned checkpoint computes the same function as B
    model = ls.models.create("mlp", width=8, depth=1)
    x = torch.randn(5, 40)
    same = torch.func.functional_call(model, dict(aligned), (x,))
    assert torch.allclose(same, torch.func.functional_call(model, dict(ls.load_state(b)), (x,)), atol=1e-5)
    args = ["align", a, b, "--method", "activations", "--curves", "3", "--out", str(tmp_path / "x.safetensors")]
    assert main([*args, *SIZES]) == 0
    assert "+repair" in capsys.readouterr().out

    fused = tmp_path / "fused.safetensors"
    assert main(["fuse", a, b, c, "--evaluate", "--out", str(fused), *SIZES]) == 0
    printed = capsys.readouterr().out
    assert "ensemble" in printed and "vanilla average" in printed
    # The printed accuracies are the hand-computed ones (the CLI prints percent).
    x, y = ls.datasets.mnist1d(n_train=200, n_test=100).test
    parents = [ls.load_state(p) for p in (a, b, c)]
    with torch.no_grad():
        logits = [torch.func.functional_call(model, dict(s), (x,)) for s in parents]
    hand = {f"parent {i}": (lg.argmax(-1) == y).float().mean().item() for i, lg in enumerate(logits)}
    hand["ensemble"] = (sum(torch.softmax(lg, -1) for lg in logits).argmax(-1) == y).float().mean().item()
    lines = {line[:32].strip(): line[32:] for line in printed.splitlines()}
    assert "test accuracy (%)" in printed
    for name, value in hand.items():
        assert float(lines[name]) == pytest.approx(100 * value, abs=0.006), (name, lines)
    narrow = tmp_path / "narrow.safetensors"
    assert main(["fuse", a, b, "--target-width", "4", "--repair", "--out", str(narrow), *SIZES]) == 0
    assert ls.load_state(narrow)["features.fc1.weight"].shape == (4, 40)


def test_cli_errors_are_reported(tmp_path, capsys) -> None:
    a, _ = _checkpoints(tmp_path)
    assert main(["fuse", a, "--out", str(tmp_path / "f.safetensors"), *SIZES]) == 2
    assert "two or more" in capsys.readouterr().err
    other = tmp_path / "deep.safetensors"
    args = ["train", "--model", "mlp:width=8,depth=2", "--epochs", "1", "--out", str(other)]
    assert main([*args, *SIZES]) == 0
    assert main(["align", a, str(other), "--out", str(tmp_path / "x.safetensors"), *SIZES]) == 2
    assert "same architecture" in capsys.readouterr().err
