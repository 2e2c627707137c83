"""Whether runs can be compared, and their metrics on the samples they share (no Streamlit here).

Runs that differ in model, image set, prompt, token budget or protocol do not measure the method alone: the compare
page names each difference and can rescore every run on the samples all of them share (CHAIR: the shared image ids,
re-scored from the captions in chair_details.json; POPE: the shared questions of pope_scored.json). Paired
differences to a baseline with CIs and p-values come from :func:`benchmarks.compare.compare_runs`, as in
``halluc compare``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import pandas as pd

from app.data import Run, chair_details, run_file
from benchmarks.compare import Comparison, manifest_differences
from halluc.errors import InputDataError
from halluc.runs import read_json

__all__ = ["differences", "on_shared_samples", "paired_frame"]


def differences(runs: Sequence[Run]) -> list[str]:
    """One line per aspect in which the runs differ, naming each run's value (:data:`benchmarks.compare.ASPECTS`)."""
    return manifest_differences({run.id: run.manifest for run in runs})


def paired_frame(comparison: Comparison) -> pd.DataFrame:
    """One row per metric of a :func:`benchmarks.compare.compare_runs` result: A, B, B - A, its 95% CI and p."""
    return pd.DataFrame(
        [
            {"metric": row.metric, "baseline": row.a, "run": row.b, "difference": row.difference.estimate,
             "CI low": row.difference.low, "CI high": row.difference.high, "p": row.p_value, "test": row.test}
            for row in comparison.rows
        ]
    ).set_index("metric")  # fmt: skip


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
