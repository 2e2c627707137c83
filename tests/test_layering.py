"""Imports go one way: halluc core <- interventions, detectors <- benchmarks <- halluc.cli, app, scripts."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# package -> the first-party packages it must never import
FORBIDDEN = {
    "halluc": {"interventions", "detectors", "benchmarks", "app"},
    "interventions": {"detectors", "benchmarks", "app"},
    "detectors": {"interventions", "benchmarks", "app"},
    "benchmarks": {"app"},
}
ALLOWED_TO_IMPORT_ALL = {ROOT / "halluc" / "cli.py"}  # the one core module that wires the layers together


def imported_packages(path: Path) -> set[str]:
    """Top-level package names a module imports, lazily inside functions included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_module_imports_a_higher_layer(package: str) -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) & FORBIDDEN[package])
        for path in (ROOT / package).rglob("*.py")
        if path not in ALLOWED_TO_IMPORT_ALL
    }
    assert not {k: v for k, v in offenders.items() if v}
