"""Imports go one way: halluc core <- interventions, detectors <- benchmarks <- halluc.cli, app, scripts.

And private stays private: a module or name whose dotted path has a segment starting with ``_`` (``interventions._x``,
``from halluc.models import _loading``) is imported only from inside the package that holds it.
"""

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


FIRST_PARTY = ("halluc", "interventions", "detectors", "benchmarks", "app")
SCANNED = (*FIRST_PARTY, "scripts")  # tests may reach into the internals they test


def _private_owner(dotted: str) -> str | None:
    """The package that owns the first private segment of a first-party dotted path, or None if all are public.

    ``interventions._x.y`` -> ``interventions``; ``benchmarks.jobs._execute`` -> ``benchmarks`` (a module's private
    name belongs to the module's package).
    """
    parts = dotted.split(".")
    if parts[0] not in FIRST_PARTY:
        return None
    for i, part in enumerate(parts[1:], 1):
        if part.startswith("_") and not part.startswith("__"):
            owner = parts[:i]
            return ".".join(owner if (ROOT.joinpath(*owner)).is_dir() else owner[:-1])
    return None


def private_imports(path: Path) -> list[tuple[int, str, str]]:
    """(line, imported dotted path, owning package) of every first-party private import in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            dotted = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            dotted = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in dict.fromkeys(dotted):
            owner = _private_owner(name)
            if owner is not None:
                found.append((node.lineno, name, owner))
    return found


def test_private_owner() -> None:
    assert _private_owner("interventions._attention.edit") == "interventions"
    assert _private_owner("halluc.models._lvlm") == "halluc.models"
    assert _private_owner("halluc.models.LVLM") is None and _private_owner("torch._C") is None
    assert _private_owner("benchmarks.jobs._execute") == "benchmarks"
    assert _private_owner("halluc.objects._nltk") == "halluc.objects"


@pytest.mark.parametrize("folder", SCANNED)
def test_no_private_import_from_outside_its_package(folder: str) -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: {name} (private to {owner})"
        for path in sorted((ROOT / folder).rglob("*.py"))
        for line, name, owner in private_imports(path)
        if not path.resolve().is_relative_to(ROOT.joinpath(*owner.split(".")))
    ]
    assert not offenders, "\n".join(offenders)
