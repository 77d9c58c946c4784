"""The README runs as written: its set-up commands are the ones CI runs, every `landscape` line
of its other shell blocks runs (under LANDSCAPE_TINY=1, which the CLI honours by shrinking
epochs, data and grids), every Python block runs (with the tiny substitutions below, each of
which must still match the README), and the code is ruff clean."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()

# Python blocks at tiny settings: (README text, what the test runs instead). Each must occur in
# the README, so that a changed README cannot silently run at full size or drop a setting.
TINY_PYTHON = [
    ("ls.datasets.mnist1d()", "ls.datasets.mnist1d(n_train=200, n_test=100)"),
    ("epochs=40", "epochs=1"),
    ('"epochs": 60', '"epochs": 1'),
    ("resolution=21", "resolution=3"),
    ("alphas=25", "alphas=5"),
    ("rounds=8", "rounds=1"),
    ("steps=[32, 128]", "steps=[2]"),
    ("cg.load_lm()", 'cg.load_lm("tiny")'),
    ("cg.sentiment(256)", "cg.sentiment(32)"),
    ("top_k=8", "top_k=1"),
    ("layers=[20, 21, 22, 23]", "layers=[1]"),
]
LM_MARKS = ("landscape.concepts", "import transformers")  # blocks that need transformers (lm/dev extras)


def _setup_commands() -> list[str]:
    section = README.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section, flags=re.S)


def _after_setup() -> str:
    return "\n## " + README.split("## Set up", 1)[1].split("\n## ", 1)[1]


def _shell_lines() -> list[str]:
    """Every command line of the bash blocks after the set-up section, continuations joined."""
    lines = []
    for block in re.findall(r"```bash\n(.+?)\n```", _after_setup(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.+?)\n```", README, flags=re.S)


def _tiny(code: str) -> str:
    for full, tiny in TINY_PYTHON:
        code = code.replace(full, tiny)
    return code


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one() -> None:
    commands = _setup_commands()
    assert len(commands) == 2, commands
    demo, tests = commands
    assert demo.strip().endswith("landscape demo")
    assert "pytest" in tests
    assert tests.strip() in (ROOT / ".ci" / "run").read_text()


def test_tiny_substitutions_still_match_the_readme() -> None:
    code = "\n".join(_python_blocks())
    stale = [full for full, _ in TINY_PYTHON if full not in code]
    assert not stale, f"README no longer contains {stale}: update TINY_PYTHON"
    scripts = [line for line in _shell_lines() if not line.startswith("landscape ")]
    assert all(SCRIPT.match(line) for line in scripts), scripts


def _run_shell_lines(lines: list[str], folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from landscape.cli import main

    monkeypatch.chdir(folder)
    monkeypatch.setenv("LANDSCAPE_TINY", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    for line in lines:
        assert main(shlex.split(line)[1:]) == 0, f"README line failed: {line}"


def test_readme_shell_lines_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every `landscape ...` line, in order, in one folder (later lines use earlier files)."""
    lines = [
        line for line in _shell_lines() if line.startswith("landscape ") and not line.startswith("landscape concepts")
    ]
    assert len(lines) >= 10
    _run_shell_lines(lines, tmp_path, monkeypatch)
    for written in ("a.safetensors", "c.safetensors", "lmc.png", "plane.png", "instability.png", "fused.safetensors"):
        assert (tmp_path / written).exists(), written


def test_readme_concept_lines_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("transformers")
    lines = [line for line in _shell_lines() if line.startswith("landscape concepts")]
    assert len(lines) >= 3
    _run_shell_lines(lines, tmp_path, monkeypatch)
    assert (tmp_path / "curve.png").exists()


SCRIPT = re.compile(r"python (analyses|benchmarks)/\w+\.py( |$)")


def test_readme_script_lines_run(tmp_path: Path) -> None:
    """Every `python analyses/...` or `python benchmarks/...` line, in order, as a shell would
    run it (``~`` is the home folder, here a temporary one), with LANDSCAPE_TINY=1, which the
    scripts honour by switching to a tiny model."""
    pytest.importorskip("transformers")
    import os
    import sys

    lines = [line for line in _shell_lines() if SCRIPT.match(line)]
    env = {**os.environ, "LANDSCAPE_TINY": "1", "HOME": str(tmp_path), "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    for line in dict.fromkeys(lines):  # a line repeated in the README runs once
        words = [
            os.path.expanduser(w) if w.startswith("~") else w for w in shlex.split(line.replace("~", str(tmp_path)))
        ]
        command = [sys.executable, str(ROOT / words[1]), *words[2:]]
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"README line failed: {line}\n{result.stderr[-3000:]}"


def test_readme_python_blocks_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Quick tour, then every later Python block continuing it (each in a copy of the
    Quick tour's namespace, as a reader would paste it after the tour), in a script's setting."""
    import matplotlib

    matplotlib.use("Agg")
    blocks = _python_blocks()
    assert len(blocks) >= 4
    monkeypatch.chdir(tmp_path)
    tour: dict[str, object] = {"__name__": "__readme__"}
    for i, block in enumerate(blocks):
        if any(mark in block for mark in LM_MARKS):
            pytest.importorskip("transformers")
        namespace = tour if i == 0 else dict(tour)
        try:
            exec(compile(_tiny(block), f"README.md python block {i + 1}", "exec"), namespace)
        except Exception as err:
            raise AssertionError(f"README python block {i + 1} failed: {err!r}\n{block}") from err
        if i == 0:
            assert (tmp_path / "lmc.nc").exists() and (tmp_path / "surface3d.png").exists()


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff not installed")
def test_ruff_is_clean() -> None:
    for args in (["check", "."], ["format", "--check", "."]):
        result = subprocess.run(["ruff", *args], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
