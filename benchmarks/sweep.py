"""Strength sweeps: CHAIR for each method at several strengths, and the Pareto front of CHAIR_i against recall.

Every setting is one CHAIR run directory under the sweep's folder (named after the setting), so an interrupted
sweep resumes where it stopped and a finished setting is reused (:func:`benchmarks.suite.finished_metrics`). A
degenerate setting (see :func:`benchmarks.chair.degenerate_setting`) owes its CHAIR_i to repetition, so it is
marked and neither joins nor shapes the front.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.chair import degenerate_setting
from benchmarks.jobs import run_chair
from benchmarks.runner import GenerationSettings
from benchmarks.suite import finished_metrics
from halluc.imagesets import ImageSet
from interventions import Intervention

__all__ = ["SWEEP_METRICS", "pareto_front", "run_sweep", "setting_dir", "setting_label"]

SWEEP_METRICS = ("CHAIR_s", "CHAIR_i", "CHAIR_i_distinct", "recall", "mentions_per_caption", "degenerate_share")
_LABEL_FIELDS = ("alpha", "local", "cfg")  # the strength settings a label shows


def setting_label(config: Intervention | None) -> str:
    """A short name of one setting: ``baseline``, or the method with its strength, e.g. ``vhr(alpha=2.0)``."""
    if config is None:
        return "baseline"
    fields = {k: v for k, v in config.to_dict().items() if k in _LABEL_FIELDS and v is not False}
    return config.name + "(" + ",".join(f"{k}={v}" for k, v in fields.items()) + ")"


def setting_dir(root: Path, label: str) -> Path:
    """The run directory of one setting: its label with every character but letters, digits, '.' and '-' as '_'."""
    return Path(root) / "".join(c if c.isalnum() or c in ".-" else "_" for c in label)


def pareto_front(points: Sequence[Mapping[str, Any]]) -> list[str]:
    """Labels of the non-degenerate points no other such point beats on both lower CHAIR_i and higher recall."""

    def beats(q: Mapping[str, Any], p: Mapping[str, Any]) -> bool:
        better_or_equal = q["CHAIR_i"] <= p["CHAIR_i"] and q["recall"] >= p["recall"]
        return better_or_equal and (q["CHAIR_i"], q["recall"]) != (p["CHAIR_i"], p["recall"])

    kept = [p for p in points if not degenerate_setting(p)]
    return [p["label"] for p in kept if not any(beats(q, p) for q in kept)]


def run_sweep(
    lvlm: Any,
    images: ImageSet,
    root: Path,
    plan: Mapping[str, Sequence[Intervention]],
    *,
    settings: GenerationSettings | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """CHAIR of the baseline and of every (method, setting) in ``plan`` on ``images``, runs kept under ``root``.

    Returns ``{"points": [{label, method, *SWEEP_METRICS}], "pareto": [labels], "degenerate": [labels]}``.
    """
    settings = settings or GenerationSettings(max_new_tokens=128)
    steps: list[tuple[str, Intervention | None]] = [("baseline", None)]
    steps += [(method, config) for method, configs in plan.items() for config in configs]
    points = []
    for method, config in steps:
        label = setting_label(config)
        run_dir = setting_dir(root, label)
        metrics = (
            finished_metrics(run_dir, lvlm)
            or run_chair(
                lvlm, images, run_dir, settings=settings, intervention=config, seed=seed, resume=True, progress=progress
            ).metrics
        )
        points.append({"label": label, "method": method, **{k: metrics[k] for k in SWEEP_METRICS}})
    return {
        "points": points,
        "pareto": pareto_front(points),
        "degenerate": [p["label"] for p in points if degenerate_setting(p)],
    }
