"""Readers for the outputs of later jobs (head analysis, CrossCheck, SENTINEL pairs, detector boxes).

Each reader validates the documented format (app/README.md) and raises :class:`InputDataError` naming the file and
the first problem, so a page can show one clear message instead of a traceback.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from app.data import Run, read_jsonl, run_file
from halluc.errors import InputDataError
from halluc.runs import read_json

__all__ = [
    "CROSSCHECK",
    "DETECTIONS",
    "HEADS",
    "PAIRS",
    "CrossCheck",
    "Detection",
    "Pair",
    "crosscheck",
    "detections",
    "heads",
    "pairs",
]

HEADS = "heads.json"
CROSSCHECK = "crosscheck.json"
PAIRS = "pairs.jsonl"
DETECTIONS = "detections.json"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def heads(run: Run) -> dict[str, list[list[float]]]:
    """The layer x head matrices of heads.json (every top-level key holding one), all of one shape."""
    path = run_file(run, HEADS)
    data = read_json(path)
    if not isinstance(data, dict):
        raise InputDataError(f"{path} must hold a JSON object of layer x head arrays")
    matrices = {
        key: value
        for key, value in data.items()
        if isinstance(value, list) and value and all(isinstance(row, list) and row for row in value)
    }
    if not matrices:
        raise InputDataError(f"{path} holds no layer x head array; expected keys such as 'vhd', 'image_attention'")
    shapes = set()
    for key, rows in matrices.items():
        if len({len(row) for row in rows}) != 1 or not all(_is_number(v) for row in rows for v in row):
            raise InputDataError(f"{path}: {key!r} must be a rectangular array of finite numbers (layers x heads)")
        shapes.add((len(rows), len(rows[0])))
    if len(shapes) != 1:
        raise InputDataError(f"{path}: arrays differ in shape {sorted(shapes)}; all must be layers x heads")
    return matrices


@dataclass(frozen=True)
class CrossCheck:
    """A CrossCheck ranking: systems best first (with ``rank``), per-sentence scores and optional correlations."""

    systems: list[dict[str, Any]]
    sentences: list[dict[str, Any]]
    lower_is_better: bool
    correlations: dict[str, float]


def crosscheck(run: Run) -> CrossCheck:
    """Read crosscheck.json; scores are inconsistencies (lower is better) unless it says ``lower_is_better: false``."""
    path = run_file(run, CROSSCHECK)
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("systems"), list) or not data["systems"]:
        raise InputDataError(f"{path} must hold an object with a non-empty 'systems' array (and 'sentences')")
    systems, sentences = data["systems"], data.get("sentences", [])
    for n, system in enumerate(systems):
        if not (isinstance(system, dict) and isinstance(system.get("system"), str) and _is_number(system.get("score"))):
            raise InputDataError(f"{path}: systems[{n}] needs a string 'system' and a numeric 'score', got {system!r}")
    if not isinstance(sentences, list) or not all(
        isinstance(s, dict) and isinstance(s.get("sentence"), str) and _is_number(s.get("score")) for s in sentences
    ):
        raise InputDataError(f"{path}: 'sentences' must be objects with a string 'sentence' and a numeric 'score'")
    lower = data.get("lower_is_better", True) is not False
    ranked = sorted(systems, key=lambda s: s["score"], reverse=not lower)
    correlations = data.get("correlations") or {}
    return CrossCheck(
        [{"rank": i + 1, **s} for i, s in enumerate(ranked)],
        sentences,
        lower,
        {str(k): float(v) for k, v in correlations.items() if _is_number(v)} if isinstance(correlations, dict) else {},
    )


@dataclass(frozen=True)
class Pair:
    """One SENTINEL preference pair: the context so far, the preferred and rejected next sentences."""

    image_id: int | str | None
    image_path: str | None
    question: str
    context: str
    y_win: str
    y_lose: str
    win_objects: tuple[str, ...]
    lose_hallucinated: tuple[str, ...]
    context_objects: tuple[str, ...]
    step: int | None
    type: str


def _strings(record: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = record.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InputDataError(f"{where}: {key!r} must be a list of object names, got {value!r}")
    return tuple(value)


def pairs(run: Run) -> tuple[list[Pair], list[str]]:
    """Preference pairs of pairs.jsonl and a message per unreadable line or record."""
    path = run_file(run, PAIRS)
    records, problems = read_jsonl(path)
    out = []
    for n, rec in enumerate(records, 1):
        where = f"{PAIRS} record {n}"
        try:
            if not all(isinstance(rec.get(k), str) for k in ("y_win", "y_lose")):
                raise InputDataError(f"{where}: 'y_win' and 'y_lose' must be strings")
            step = rec.get("step")
            out.append(
                Pair(
                    image_id=rec.get("image_id"),
                    image_path=rec.get("image_path") if isinstance(rec.get("image_path"), str) else None,
                    question=str(rec.get("question", "")),
                    context=str(rec.get("context", "")),
                    y_win=rec["y_win"],
                    y_lose=rec["y_lose"],
                    win_objects=_strings(rec, "win_objects", where),
                    lose_hallucinated=_strings(rec, "lose_hallucinated", where),
                    context_objects=_strings(rec, "context_objects", where),
                    step=step if isinstance(step, int) else None,
                    type=str(rec.get("type", "unknown")),
                )
            )
        except InputDataError as exc:
            problems.append(str(exc))
    return out, problems


@dataclass(frozen=True)
class Detection:
    """One detector box in pixels of the original image: (x1, y1, x2, y2)."""

    label: str
    score: float
    box: tuple[float, float, float, float]
    detector: str


def detections(run: Run) -> dict[str, list[Detection]]:
    """Detector boxes per image id (as a string) from detections.json; empty when the run has none."""
    path = run_file(run, DETECTIONS)
    if not path.exists():
        return {}
    data = read_json(path)
    if not isinstance(data, dict):
        raise InputDataError(f"{path} must hold an object {{image_id: [detections]}}")
    out: dict[str, list[Detection]] = {}
    for image_id, dets in data.items():
        try:
            out[str(image_id)] = [_detection(d) for d in dets]
        except (KeyError, TypeError, ValueError) as exc:
            raise InputDataError(
                f"{path}: image {image_id!r} must map to [{{label, score, box: [x1, y1, x2, y2]}}] ({exc})"
            ) from None
    return out


def _detection(record: dict[str, Any]) -> Detection:
    """One detections.json entry as a Detection; KeyError/TypeError/ValueError when malformed."""
    x1, y1, x2, y2 = (float(v) for v in record["box"])
    return Detection(str(record["label"]), float(record["score"]), (x1, y1, x2, y2), str(record.get("detector", "")))
