"""Decide whether a mentioned object is really in an image by asking two independent detectors.

Per (image, object):

* both detectors find it -> ``present``; neither finds it -> ``hallucinated``; they disagree -> ``uncertain``;
* an object outside one closed-set detector's vocabulary is decided by the other detector alone, and the verdict's
  ``decided_by`` names that detector (``"both"`` when both judged, ``"none"`` when neither could: ``uncertain``).

A detector "finds" an object when it returns at least one detection of that label with a score above 0 (each
detector applies its own confidence threshold first). Verdicts are cached in memory per (image key, object) and,
given ``cache_path``, appended to a JSONL file that later validators read back, so reruns cost nothing. Cache
records carry both detector names and are only reused by a validator with the same two names, so a detector's
``name`` must identify its weights and settings (``load_detector`` uses the spec string). The cache follows
:mod:`halluc.records`: a last line torn by a killed process is skipped (and recomputed), then truncated before the
next append.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from detectors.base import Detector
from halluc.errors import ConfigError, InputDataError, OutputLocationError
from halluc.records import append_records, read_records

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["CrossCheckValidator", "ObjectValidator", "Status", "Verdict", "decide"]

Status = Literal["present", "hallucinated", "uncertain"]


@dataclass(frozen=True)
class Verdict:
    """The cross-check outcome for one object in one image, with each detector's best score.

    A score is 0.0 when that detector looked and found nothing, None when the object is outside its vocabulary.
    """

    status: Status
    decided_by: str
    score_a: float | None
    score_b: float | None


class ObjectValidator(Protocol):
    """What jobs need from a validator (detector CHAIR, SENTINEL): batched verdicts per (image, object).

    :class:`CrossCheckValidator` is one; tests script others.
    """

    def validate_many(
        self, images: Sequence[Image], image_keys: Sequence[str], objects: Sequence[Sequence[str]]
    ) -> list[Mapping[str, Verdict]]:
        """Per image, a verdict for each distinct object asked."""
        ...


def decide(found_a: bool | None, found_b: bool | None, name_a: str, name_b: str) -> tuple[Status, str]:
    """Return (status, decided_by) from each detector's finding (None = the object is outside its vocabulary)."""
    if found_a is None and found_b is None:
        return "uncertain", "none"
    if found_a is None or found_b is None:
        found, name = (found_b, name_b) if found_a is None else (found_a, name_a)
        return ("present" if found else "hallucinated"), name
    if found_a == found_b:
        return ("present" if found_a else "hallucinated"), "both"
    return "uncertain", "both"


def _best_scores(detector: Detector, images: Sequence[Image], pending: list[list[str]]) -> list[dict[str, float]]:
    """Run ``detector`` on the images with pending objects it knows; per image, best score per asked object."""
    vocab = detector.vocabulary
    asked = [[obj for obj in objs if vocab is None or obj in vocab] for objs in pending]
    scores: list[dict[str, float]] = [dict.fromkeys(objs, 0.0) for objs in asked]
    todo = [i for i, objs in enumerate(asked) if objs]
    if not todo:
        return scores
    labels = list(dict.fromkeys(obj for i in todo for obj in asked[i]))
    for i, detections in zip(todo, detector.detect([images[i] for i in todo], labels), strict=True):
        for det in detections:
            if det.label in scores[i]:
                scores[i][det.label] = max(scores[i][det.label], det.score)
    return scores


class CrossCheckValidator:
    """Two-detector agreement check for object mentions, cached per (image key, object)."""

    def __init__(self, detector_a: Detector, detector_b: Detector, *, cache_path: str | Path | None = None) -> None:
        self.detector_a = detector_a
        self.detector_b = detector_b
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self._pair = [detector_a.name, detector_b.name]
        self._cache: dict[tuple[str, str], Verdict] = {}
        if self.cache_path is not None:
            self._load_cache(self.cache_path)

    def _load_cache(self, path: Path) -> None:
        """Read the verdicts of this detector pair from a JSONL cache file."""
        for n, rec in enumerate(read_records(path), 1):
            if rec.get("detectors") != self._pair:
                continue
            try:
                verdict = Verdict(rec["status"], rec["decided_by"], rec["score_a"], rec["score_b"])
                self._cache[(rec["image_key"], rec["object"])] = verdict
            except KeyError as exc:
                raise InputDataError(f"cross-check cache {path}: record {n} lacks {exc}") from None

    def _append_cache(self, new: dict[tuple[str, str], Verdict]) -> None:
        """Append new verdicts to the cache file."""
        if self.cache_path is None or not new:
            return
        records = [
            {"detectors": self._pair, "image_key": key, "object": obj, **asdict(verdict)}
            for (key, obj), verdict in new.items()
        ]
        try:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputLocationError(
                f"cannot create the cross-check cache's folder {str(self.cache_path.parent)!r}: {exc.strerror}"
            ) from None
        append_records(self.cache_path, records)

    def validate(self, image: Image, image_key: str, objects: Sequence[str]) -> dict[str, Verdict]:
        """Return a verdict per distinct object for one image; ``image_key`` identifies the image in the cache."""
        return self.validate_many([image], [image_key], [objects])[0]

    def validate_many(
        self, images: Sequence[Image], image_keys: Sequence[str], objects: Sequence[Sequence[str]]
    ) -> list[dict[str, Verdict]]:
        """Batched ``validate``: each detector runs once over the images that still have uncached objects."""
        if not len(images) == len(image_keys) == len(objects):
            raise ConfigError(
                f"images, image_keys and objects must align, got {len(images)}, {len(image_keys)}, {len(objects)}"
            )
        keys = [str(key) for key in image_keys]
        pending = [
            [obj for obj in dict.fromkeys(objs) if (key, obj) not in self._cache]
            for key, objs in zip(keys, objects, strict=True)
        ]
        scores_a = _best_scores(self.detector_a, images, pending)
        scores_b = _best_scores(self.detector_b, images, pending)
        new: dict[tuple[str, str], Verdict] = {}
        for key, objs, sa, sb in zip(keys, pending, scores_a, scores_b, strict=True):
            for obj in objs:
                score_a, score_b = sa.get(obj), sb.get(obj)
                found_a = None if score_a is None else score_a > 0
                found_b = None if score_b is None else score_b > 0
                status, decided_by = decide(found_a, found_b, *self._pair)
                new[(key, obj)] = Verdict(status, decided_by, score_a, score_b)
        self._cache.update(new)
        self._append_cache(new)
        return [
            {obj: self._cache[(key, obj)] for obj in dict.fromkeys(objs)}
            for key, objs in zip(keys, objects, strict=True)
        ]
