"""A comparison suite: several interventions x image sets, CHAIR and POPE each, one run directory per cell.

Used by ``halluc demo`` (baseline + every intervention on the embedded world) and by the measurement scripts.
Cells already finished in ``root`` by the same model weights are reused, so an interrupted suite resumes where it
stopped; a finished cell of other weights is an error, never silently reported as this model's result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.jobs import run_chair, run_pope
from benchmarks.runner import GenerationSettings
from halluc.imagesets import resolve_images
from halluc.models import model_fingerprint
from halluc.runs import OutputLocationError, RunStore

__all__ = ["SUITE_CHAIR_METRICS", "SuiteRow", "cell_dir", "finished_metrics", "run_suite"]

# The CHAIR metrics a suite cell reports (and a reused finished cell must hold): CHAIR_i always beside its
# repetition checks. The dashboard's runs table picks its own columns (app.data.CHAIR_HEADLINE).
SUITE_CHAIR_METRICS = (
    "CHAIR_s", "CHAIR_i", "CHAIR_i_distinct", "recall", "avg_len", "mentions_per_caption", "degenerate_share",
)  # fmt: skip


@dataclass(frozen=True)
class SuiteRow:
    """Headline metrics of one (system, image set) cell."""

    system: str
    images: str
    chair: dict[str, Any]
    pope: dict[str, Any]

    def flat(self) -> dict[str, Any]:
        """One flat dict of the cell's headline CHAIR metrics (repetition checks included) and POPE accuracies."""
        return {
            "system": self.system,
            "images": self.images,
            **{key: self.chair[key] for key in SUITE_CHAIR_METRICS},
            **{f"pope_{split}_acc": self.pope[split]["accuracy"] for split in ("random", "popular", "adversarial")},
            "pope_f1": self.pope["mean"]["f1"],
        }


def cell_dir(root: Path, system: str, spec: str) -> Path:
    """Where :func:`run_suite` keeps one (system, image set) cell: ``<root>/<system>__<spec, ':' as '-'>``."""
    return root / f"{system}__{spec.replace(':', '-')}"


def finished_metrics(path: Path, lvlm: Any) -> dict[str, Any] | None:
    """The metrics of a run in ``path`` that ``lvlm`` finished, or None when it is missing, unfinished or a CHAIR run
    scored without the repetition checks (so it is (re)run); raises when the finished run was made by another model
    or other weights."""
    if not (path / "metrics.json").exists():
        return None
    store = RunStore.open(path)
    if store.manifest.get("status") != "finished":
        return None
    expected = model_fingerprint(lvlm)
    recorded = {key: store.manifest.get(key) for key in expected}
    if recorded != expected:
        raise OutputLocationError(
            f"{str(path)!r} holds a finished run of {recorded['model']!r} (weights {recorded['weights_sha256']}), "
            f"not of {expected['model']!r} (weights {expected['weights_sha256']}); choose another --out or delete it"
        )
    metrics = store.metrics()
    if store.manifest.get("job") == "chair" and not set(SUITE_CHAIR_METRICS) <= metrics.keys():
        return None  # scored before the repetition checks existed: resuming rescores its stored captions
    return metrics


def run_suite(
    lvlm: Any,
    systems: dict[str, Any],
    image_specs: Sequence[str],
    root: Path,
    *,
    chair_images: int = 100,
    pope_images: int = 50,
    batch_size: int = 16,
    max_new_tokens: int = 128,
    seed: int = 0,
    ids_files: dict[str, Path] | None = None,
    progress: bool = True,
) -> list[SuiteRow]:
    """CHAIR and POPE for every system (name -> intervention or None) on every image set."""
    rows = []
    for spec in image_specs:
        ids_file = (ids_files or {}).get(spec)
        chair_set = resolve_images(spec, ids_file=ids_file, limit=chair_images)
        pope_set = resolve_images(spec)
        for name, intervention in systems.items():
            cell = cell_dir(root, name, spec)
            chair_dir, pope_dir = cell / "chair", cell / "pope"
            chair_metrics = (
                finished_metrics(chair_dir, lvlm)
                or run_chair(
                    lvlm,
                    chair_set,
                    chair_dir,
                    settings=GenerationSettings(max_new_tokens=max_new_tokens, batch_size=batch_size),
                    intervention=intervention,
                    seed=seed,
                    resume=True,
                    progress=progress,
                ).metrics
            )
            pope_metrics = (
                finished_metrics(pope_dir, lvlm)
                or run_pope(
                    lvlm,
                    pope_set,
                    pope_dir,
                    n_images=pope_images,
                    settings=GenerationSettings(max_new_tokens=8, batch_size=batch_size * 2),
                    intervention=intervention,
                    seed=seed,
                    resume=True,
                    progress=progress,
                ).metrics
            )
            rows.append(SuiteRow(name, spec, chair_metrics, pope_metrics))
    return rows
