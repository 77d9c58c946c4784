"""Every notebook runs top to bottom at tiny settings (LANDSCAPE_TINY=1), says nothing about
the engine's choice that its output contradicts, and explains every figure it draws."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
# Notebooks whose every figure is followed by a markdown cell that interprets it, opening with
# READING (so that the next section's introduction does not count as an interpretation).
INTERPRETED = ("01_linear_mode_connectivity", "03_random_teachers_and_lottery_tickets")
READING = "**Reading the figure.**"
STRATEGIES = ("affine", "loop", "vmap")
# A sentence that claims which strategy the engine took, e.g. "the engine chose `affine`".
CLAIM = re.compile(r"(?:cho(?:se|oses|sen)|picked|picks|took|here)\W+(?:\w+\W+){0,3}?`(" + "|".join(STRATEGIES) + ")`")


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def _text(cell: dict) -> str:
    return "".join(cell["source"])


def _draws(cell: dict) -> bool:
    return cell["cell_type"] == "code" and re.search(
        r"\b(plot|plt)\.\w+\(|\b(detection|guidance|pnes_fit)\(", _text(cell)
    )


@pytest.mark.parametrize("name", INTERPRETED)
def test_every_figure_is_interpreted(name: str) -> None:
    cells = _cells(next(p for p in NOTEBOOKS if p.stem == name))
    figures = [i for i, cell in enumerate(cells) if _draws(cell)]
    assert figures, name
    for i in figures:
        after = cells[i + 1] if i + 1 < len(cells) else None
        assert after is not None and after["cell_type"] == "markdown", f"{name}: no text after cell {i}"
        text = _text(after)
        assert text.startswith(READING), f"{name}: the text after cell {i} does not interpret its figure"
        assert len(re.findall(r"[.!?](\s|$)", text.removeprefix(READING))) >= 1, f"{name}: cell {i + 1}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("LANDSCAPE_TINY", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the kernel's torch: one thread, as in the other tests
    monkeypatch.chdir(tmp_path)  # notebooks write their outputs into the working directory
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    errors = [
        out
        for cell in notebook.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    assert not errors, errors
    assert os.environ["LANDSCAPE_TINY"] == "1"
    # A strategy the text says the engine chose must be the one the next output reports.
    for i, cell in enumerate(notebook.cells):
        if cell.cell_type != "markdown":
            continue
        for claimed in CLAIM.findall(cell.source):
            shown = next(
                (_outputs_text(c) for c in notebook.cells[i + 1 :] if c.cell_type == "code" and "strategy" in c.source),
                "",
            )
            found = [s for s in STRATEGIES if f"'{s}'" in shown or f'"{s}"' in shown]
            assert found == [claimed], f"{path.stem}: the text says `{claimed}`, the output says {found}"


def _outputs_text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        parts.append(out.get("text", ""))
        parts.append(out.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)
