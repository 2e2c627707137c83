"""CHAIR computed from cross-checked detections instead of annotations, and how well it agrees with the real thing.

Mentions come from the shared extractor (:mod:`halluc.objects`), exactly as annotation CHAIR finds them. Each
distinct category a caption mentions is judged once per image by a two-detector validator
(:class:`detectors.CrossCheckValidator`): ``present``, ``hallucinated`` or ``uncertain``. Counting:

* a mention is hallucinated when its category's verdict is ``hallucinated``;
* ``uncertain`` mentions are neither: they are left out of CHAIR_i's denominator,
  CHAIR_i = hallucinated / (hallucinated + present), and reported as uncertain_rate = uncertain / all mentions;
* CHAIR_s = captions with at least one hallucinated mention / all captions (a caption whose mentions are all
  uncertain counts as not hallucinated).

Agreement with annotations treats the annotation as truth and a three-way verdict as the prediction: accuracy and
Cohen's kappa (scikit-learn) over the decided items, plus the share left uncertain. ``mention_agreement`` compares
detector CHAIR with annotation CHAIR mention by mention; ``validator_agreement`` compares verdicts with
ground-truth object sets per (image, object), and ``check_validator`` runs that check over an annotated image set;
``correlations`` gives Spearman and Pearson (scipy) across systems. ``load_validator`` builds the two-detector
validator every job uses from two detector specs.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.chair import load_coco
from detectors import CrossCheckValidator, ObjectValidator, Verdict, load_detector, tag_image_id
from detectors.crosscheck import Status
from halluc.errors import ConfigError, InputDataError
from halluc.imagesets import ImageSet, load_image
from halluc.objects import Mode, extract_mentions
from halluc.runs import RunStore

__all__ = [
    "ARTIFACT",
    "annotated_objects",
    "check_validator",
    "correlations",
    "detector_chair_metrics",
    "load_validator",
    "mention_agreement",
    "score_records",
    "score_run",
    "validator_agreement",
]

ARTIFACT = "detector_chair.json"


def load_validator(specs: Sequence[str], *, cache_path: str | Path | None = None) -> CrossCheckValidator:
    """The two-detector validator from two detector specs (e.g. ``toy-yolov8``, ``oracle:instances.json``)."""
    if len(specs) != 2:
        raise ConfigError(f"a cross-check needs two detector specs (give --detector exactly twice), got {list(specs)}")
    return CrossCheckValidator(load_detector(specs[0]), load_detector(specs[1]), cache_path=cache_path)


def _judge_chunk(records: Sequence[dict[str, Any]], validator: ObjectValidator, mode: Mode) -> list[dict[str, Any]]:
    """Extract mentions of a chunk of records, validate their categories per image, return per-caption details."""
    mentions = [extract_mentions(r["caption"], mode=mode) for r in records]
    asked = [list(dict.fromkeys(m.category for m in ms)) for ms in mentions]
    todo = [i for i, objects in enumerate(asked) if objects]
    verdicts: dict[int, Mapping[str, Verdict]] = {}
    if todo:
        images = [load_image(str(records[i]["image"])) for i in todo]
        keys = [str(records[i]["image"]) for i in todo]
        verdicts = dict(zip(todo, validator.validate_many(images, keys, [asked[i] for i in todo]), strict=True))
    details = []
    for i, (record, caption_mentions) in enumerate(zip(records, mentions, strict=True)):
        judged = [{**asdict(m), "status": verdicts[i][m.category].status} for m in caption_mentions]
        details.append(
            {
                **{k: v for k, v in record.items() if k != "caption"},
                "caption": record["caption"],
                "mentions": judged,
                "hallucinated": any(m["status"] == "hallucinated" for m in judged),
            }
        )
    return details


def detector_chair_metrics(details: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate CHAIR_s, CHAIR_i (uncertain mentions excluded) and uncertain_rate over judged captions."""
    if not details:
        raise InputDataError("no captions to score: detector CHAIR needs at least one caption")
    counts = {"present": 0, "hallucinated": 0, "uncertain": 0}
    for caption in details:
        for mention in caption["mentions"]:
            counts[mention["status"]] += 1
    decided = counts["present"] + counts["hallucinated"]
    total = decided + counts["uncertain"]
    return {
        "CHAIR_s": sum(c["hallucinated"] for c in details) / len(details),
        "CHAIR_i": counts["hallucinated"] / decided if decided else 0.0,
        "uncertain_rate": counts["uncertain"] / total if total else 0.0,
        "n_captions": len(details),
        "n_mentions": total,
        "n_hallucinated_mentions": counts["hallucinated"],
        "n_uncertain_mentions": counts["uncertain"],
    }


def score_records(
    records: Iterable[dict[str, Any]],
    validator: ObjectValidator,
    *,
    image_dir: str | Path | None = None,
    mode: Mode = "reference",
    batch_size: int = 32,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score ``{image, caption}`` records (image: a path, relative to ``image_dir`` when given) with detector CHAIR.

    Other keys of a record (e.g. ``image_id``) are kept in its details. Returns (metrics, per-caption details).
    """
    rows = []
    for n, record in enumerate(records):
        if not isinstance(record, dict) or not isinstance(record.get("caption"), str) or not record.get("image"):
            raise InputDataError(
                f"caption record {n} needs a string 'caption' and an 'image' path; got {record!r:.200}"
            )
        image = Path(image_dir) / record["image"] if image_dir is not None else Path(record["image"])
        rows.append({**record, "image": str(image)})
    details: list[dict[str, Any]] = []
    for start in range(0, len(rows), batch_size):
        details.extend(_judge_chunk(rows[start : start + batch_size], validator, mode))
    return detector_chair_metrics(details), details


def score_run(
    run_dir: str | Path,
    validator: ObjectValidator,
    *,
    image_dir: str | Path | None = None,
    mode: Mode = "reference",
    batch_size: int = 32,
    write: bool = True,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Detector CHAIR of a run's samples (errors skipped); writes ``detector_chair.json`` into the run when asked.

    Images are looked up in ``image_dir``, by default the run manifest's ``images.image_dir``.
    """
    store = RunStore.open(Path(run_dir))
    root = image_dir or (store.manifest.get("images") or {}).get("image_dir")
    if root is None:
        raise InputDataError(f"run {str(run_dir)!r} does not record its image directory; pass image_dir=...")
    records = [
        {"image": s["image"], "image_id": s.get("image_id"), "caption": s["response"]}
        for s in store.samples()
        if "error" not in s
    ]
    metrics, details = score_records(records, validator, image_dir=root, mode=mode, batch_size=batch_size)
    if write:
        names = (
            [validator.detector_a.name, validator.detector_b.name]
            if isinstance(validator, CrossCheckValidator)
            else None
        )
        store.write_artifact(ARTIFACT, {"validator": names, "mode": mode, "metrics": metrics, "captions": details})
    return metrics, details


def _kappa(truth: Sequence[bool], predicted: Sequence[bool]) -> float | None:
    """Cohen's kappa of two binary labelings, or None when undefined (both raters constant and equal)."""
    from sklearn.exceptions import UndefinedMetricWarning
    from sklearn.metrics import cohen_kappa_score

    if not truth:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        value = float(cohen_kappa_score(truth, predicted, labels=[False, True]))
    return None if math.isnan(value) else value


def _agreement(hallucinated: Sequence[bool], statuses: Sequence[Status]) -> dict[str, Any]:
    """Accuracy and kappa over decided items, the uncertain share, and the confusion counts."""
    decided = [(h, s == "hallucinated") for h, s in zip(hallucinated, statuses, strict=True) if s != "uncertain"]
    truth, predicted = [t for t, _ in decided], [p for _, p in decided]
    confusion: dict[str, int] = defaultdict(int)
    for h, s in zip(hallucinated, statuses, strict=True):
        confusion[f"{'absent' if h else 'present'}->{s}"] += 1
    return {
        "n": len(statuses),
        "n_decided": len(decided),
        "uncertain_share": 1 - len(decided) / len(statuses) if statuses else 0.0,
        "accuracy": sum(t == p for t, p in decided) / len(decided) if decided else None,
        "kappa": _kappa(truth, predicted),
        "confusion": dict(sorted(confusion.items())),
    }


def mention_agreement(
    detector_details: Sequence[dict[str, Any]], annotation_details: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """Per-mention agreement of detector CHAIR with annotation CHAIR over the same captions, in the same order.

    ``annotation_details`` are :func:`benchmarks.chair.score_records` details (``mentions[].hallucinated``).
    """
    if len(detector_details) != len(annotation_details):
        raise InputDataError(
            f"detector and annotation CHAIR cover {len(detector_details)} and {len(annotation_details)} captions; "
            "score the same samples with both"
        )
    truth: list[bool] = []
    statuses: list[Status] = []
    for n, (det, ann) in enumerate(zip(detector_details, annotation_details, strict=True)):
        if det["caption"] != ann["caption"] or len(det["mentions"]) != len(ann["mentions"]):
            raise InputDataError(f"caption {n} differs between the detector and annotation details: {det['caption']!r}")
        truth.extend(m["hallucinated"] for m in ann["mentions"])
        statuses.extend(m["status"] for m in det["mentions"])
    return _agreement(truth, statuses)


def validator_agreement(
    verdicts: Sequence[Mapping[str, Verdict]], ground_truth: Sequence[Collection[str]]
) -> dict[str, Any]:
    """Agreement of validator verdicts with ground-truth object sets per (image, object), overall and per category."""
    if len(verdicts) != len(ground_truth):
        raise InputDataError(f"got verdicts for {len(verdicts)} images but ground truth for {len(ground_truth)}")
    pairs = [
        (obj, obj not in gt, v.status) for vs, gt in zip(verdicts, ground_truth, strict=True) for obj, v in vs.items()
    ]
    by_category: dict[str, list[tuple[bool, Status]]] = defaultdict(list)
    for obj, absent, status in pairs:
        by_category[obj].append((absent, status))
    result = _agreement([a for _, a, _ in pairs], [s for _, _, s in pairs])
    result["by_category"] = {
        obj: {k: v for k, v in _agreement([a for a, _ in rows], [s for _, s in rows]).items() if k != "confusion"}
        for obj, rows in sorted(by_category.items())
    }
    return result


def annotated_objects(instances: str | Path) -> dict[int, set[str]]:
    """Annotated category names per image id of a COCO instances file (what a detector can see)."""
    coco = load_coco(instances)
    truth: dict[int, set[str]] = {image_id: set() for image_id in coco.getImgIds()}
    try:
        for ann in coco.dataset.get("annotations", []):
            truth[ann["image_id"]].add(coco.cats[ann["category_id"]]["name"])
    except KeyError as exc:
        raise InputDataError(f"{str(instances)!r}: an annotation refers to unknown id {exc}") from None
    return truth


def check_validator(
    validator: ObjectValidator, images: ImageSet, vocabulary: Sequence[str], *, batch_size: int = 32
) -> dict[str, Any]:
    """The two-detector check: every ``vocabulary`` object judged on every image of an annotated image set, and the
    verdicts' :func:`validator_agreement` with its annotations."""
    if images.instances is None:
        raise InputDataError(f"checking a validator needs COCO instances of {images.name!r}; pass --annotations")
    truth = annotated_objects(images.instances)
    verdicts: list[Mapping[str, Verdict]] = []
    for start in range(0, len(images.image_ids), batch_size):
        ids = images.image_ids[start : start + batch_size]
        keys = [str(images.path(i)) for i in ids]
        loaded = [tag_image_id(load_image(key), i) for key, i in zip(keys, ids, strict=True)]  # ids for an oracle
        verdicts += validator.validate_many(loaded, keys, [list(vocabulary)] * len(keys))
    return validator_agreement(verdicts, [truth.get(i, set()) for i in images.image_ids])


def _finite(value: float) -> float | None:
    """``value`` as a float, or None when scipy returned NaN (e.g. a constant input)."""
    value = float(value)
    return None if math.isnan(value) else value


def correlations(x: Mapping[str, float | None], y: Mapping[str, float | None]) -> dict[str, Any]:
    """Spearman and Pearson correlations (with p-values) over the systems both maps score; None below 3 systems."""
    from scipy.stats import ConstantInputWarning, pearsonr, spearmanr

    shared = [k for k in x if k in y and x[k] is not None and y[k] is not None]
    result: dict[str, Any] = {"n_systems": len(shared)}
    keys = ("spearman", "spearman_p", "pearson", "pearson_p")
    if len(shared) < 3:
        return {**result, **dict.fromkeys(keys)}
    xs, ys = [float(x[k]) for k in shared], [float(y[k]) for k in shared]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstantInputWarning)
        rho, rho_p = spearmanr(xs, ys)
        r, r_p = pearsonr(xs, ys)
    return {**result, **dict(zip(keys, (_finite(v) for v in (rho, rho_p, r, r_p)), strict=True))}
