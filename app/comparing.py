"""Whether runs can be compared, and their metrics on the samples they share (no Streamlit here).

Runs that differ in image set, prompt, token budget or protocol do not measure the same thing: the compare page
names each difference and can rescore every run on the samples all of them share (CHAIR: the shared image ids,
re-scored from the captions in chair_details.json; POPE: the shared questions of pope_scored.json).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from typing import Any

from app.data import Run, chair_details, read_json, run_file
from halluc.errors import InputDataError

__all__ = ["ASPECTS", "differences", "on_shared_samples"]


def _get(manifest: dict[str, Any], dotted: str) -> Any:
    value: Any = manifest
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _picker(*keys: str) -> Callable[[dict[str, Any]], str]:
    def pick(manifest: dict[str, Any]) -> str:
        values = {key: _get(manifest, key) for key in keys}
        return ", ".join(f"{k.split('.')[-1]}={json.dumps(v)}" for k, v in values.items() if v is not None) or "-"

    return pick


# What must agree for two runs' metrics to be comparable, read from their manifests.
ASPECTS: dict[str, Callable[[dict[str, Any]], str]] = {
    "image set": _picker("images.name", "images.n_images", "images.image_dir", "n_questions"),
    "prompt": _picker("prompt", "suffix"),
    "token budget": _picker("settings.max_new_tokens"),
    "protocol": _picker(
        "chair_mode", "strict", "settings.do_sample", "settings.num_beams", "settings.temperature", "seed"
    ),
}


def differences(runs: Sequence[Run]) -> list[str]:
    """One line per aspect in which the runs differ, naming each run's value."""
    lines = []
    for aspect, pick in ASPECTS.items():
        values = {run.id: pick(run.manifest) for run in runs}
        if len(set(values.values())) > 1:
            lines.append(f"{aspect}: " + "; ".join(f"{run_id}: {value}" for run_id, value in values.items()))
    return lines


def _pope_scored(run: Run) -> dict[tuple[str, int], dict[str, Any]]:
    path = run_file(run, "pope_scored.json")
    records = read_json(path) if path.exists() else None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise InputDataError(f"{path} is missing or not a JSON array of scored answers; cannot rescore the run")
    return {(str(r.get("split")), int(r["question_id"])): r for r in records}


def on_shared_samples(runs: Sequence[Run]) -> tuple[list[Run], int]:
    """The runs with their metrics recomputed on the samples all of them share, and how many samples that is."""
    from benchmarks import chair, pope

    if all(run.job == "pope" for run in runs):
        scored = [_pope_scored(run) for run in runs]
        shared = set.intersection(*(set(s) for s in scored))
        if not shared:
            return [dataclasses.replace(run, metrics={}) for run in runs], 0
        rescored = [pope.aggregate([s[k] for k in sorted(shared)]) for s in scored]
        return [dataclasses.replace(run, metrics=m) for run, m in zip(runs, rescored, strict=True)], len(shared)
    details = []
    for run in runs:
        found = chair_details(run)
        if found is None:
            raise InputDataError(f"run {run.id} has no chair_details.json; cannot rescore it on shared samples")
        details.append(found)
    shared = set.intersection(*(set(d) for d in details))
    if not shared:
        return [dataclasses.replace(run, metrics={}) for run in runs], 0
    out = []
    for run, by_id in zip(runs, details, strict=True):
        mode = "corrected" if run.manifest.get("chair_mode") == "corrected" else "reference"
        scores = [chair.score_caption(by_id[i]["caption"], by_id[i]["gt_objects"], mode=mode) for i in sorted(shared)]
        out.append(dataclasses.replace(run, metrics=chair.chair_metrics(scores)))
    return out, len(shared)
