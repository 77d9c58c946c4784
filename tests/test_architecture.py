"""Imports flow one way: core <- models/train/symmetry <- analyses <- plot/commands/demo."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "landscape"
ANALYSES = ("connectivity", "alignment", "distillation", "probes", "pruning", "concepts", "curvature")
# Which top-level parts of the package each part may import.
ALLOWED = {
    "core": {"core"},
    "models": {"core", "models"},
    "training": {"core", "models", "training"},
    "datasets": {"core", "datasets"},
    "symmetry": {"core", "models", "symmetry"},
}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "landscape":
            found.update(alias.name for alias in node.names)  # from landscape import plot
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("landscape."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("landscape."):
                    found.add(alias.name.split(".")[1])
    return found


def _part(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def test_import_direction() -> None:
    violations = []
    for path in PACKAGE.rglob("*.py"):
        part = _part(path)
        allowed = ALLOWED.get(part)
        if part in ANALYSES:
            allowed = {"core", "models", "training", "datasets", "symmetry", *ANALYSES}
            if {"plot", "commands", "demo", "cli"} & _imports(path):
                violations.append(f"{path.relative_to(PACKAGE)} imports plot/commands/demo")
        if allowed is None:
            continue
        bad = _imports(path) - allowed
        if bad:
            violations.append(f"{path.relative_to(PACKAGE)} imports {sorted(bad)}")
    assert not violations, violations


def test_analyses_import_each_other_only_through_public_init() -> None:
    violations = []
    for analysis in ANALYSES:
        folder = PACKAGE / analysis
        if not folder.exists():
            continue
        for path in folder.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("landscape."):
                    parts = node.module.split(".")
                    if parts[1] in ANALYSES and parts[1] != analysis and len(parts) > 2:
                        violations.append(f"{path.relative_to(PACKAGE)} imports {node.module}")
    assert not violations, violations


def test_import_is_light() -> None:
    code = (
        "import sys, landscape; print(sorted(m for m in ('torch', 'matplotlib', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
