"""scripts/measure_interventions.py: the strength sweep's Pareto front leaves degenerate settings out."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "measure_interventions.py"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("measure_interventions", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pareto_front_leaves_out_degenerate_settings() -> None:
    def point(label: str, chair_i: float, recall: float, degenerate_share: float) -> dict:
        return {"label": label, "CHAIR_i": chair_i, "recall": recall, "degenerate_share": degenerate_share}

    points = [
        point("baseline", 0.50, 0.40, 0.0),
        point("vhr(alpha=2)", 0.45, 0.40, 0.0),  # beats the baseline
        point("pai(alpha=2)", 0.30, 0.45, 0.65),  # would beat every point, but its captions loop
        point("pai(alpha=1)", 0.48, 0.42, 0.04),  # a few looping captions: below the 5% mark, kept
    ]
    assert _script().pareto(points) == ["vhr(alpha=2)", "pai(alpha=1)"]
