"""Detector-based CHAIR with a scripted validator; agreement with annotations (accuracy, kappa) and correlations."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from PIL import Image

from benchmarks.detector_chair import (
    ARTIFACT,
    annotated_objects,
    check_validator,
    correlations,
    detector_chair_metrics,
    load_validator,
    mention_agreement,
    score_records,
    score_run,
    validator_agreement,
)
from detectors import AnnotationOracle, CrossCheckValidator, Verdict
from halluc.errors import ConfigError, InputDataError
from halluc.imagesets import resolve_images
from halluc.runs import RunStore


class ScriptedValidator:
    """Verdicts from a script keyed by image file name; objects not in the script are hallucinated."""

    def __init__(self, script: dict[str, dict[str, str]]) -> None:
        self.script = script
        self.asked: list[tuple[str, list[str]]] = []

    def validate_many(
        self, images: Sequence[Image.Image], image_keys: Sequence[str], objects: Sequence[Sequence[str]]
    ) -> list[dict[str, Verdict]]:
        out = []
        for key, objs in zip(image_keys, objects, strict=True):
            name = Path(key).name
            self.asked.append((name, list(objs)))
            statuses = self.script.get(name, {})
            out.append({o: Verdict(statuses.get(o, "hallucinated"), "both", None, None) for o in objs})
        return out


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    for name in ("a.png", "b.png", "c.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    return tmp_path


SCRIPT = {"a.png": {"dog": "present", "cat": "uncertain"}, "b.png": {"car": "present"}}
RECORDS = [
    {"image": "a.png", "image_id": 1, "caption": "A dog and a cat. Another dog sits on a bench."},
    {"image": "b.png", "image_id": 2, "caption": "A car on the street."},
    {"image": "c.png", "image_id": 3, "caption": "An empty room."},
]


def test_detector_chair_counts_uncertain_apart(image_dir: Path) -> None:
    validator = ScriptedValidator(SCRIPT)
    metrics, details = score_records(RECORDS, validator, image_dir=image_dir, batch_size=2)
    # a: dog present (x2), cat uncertain, bench hallucinated; b: car present; c: no mention (not asked at all)
    assert validator.asked == [("a.png", ["dog", "cat", "bench"]), ("b.png", ["car"])]
    assert [m["status"] for m in details[0]["mentions"]] == ["present", "uncertain", "present", "hallucinated"]
    assert details[0]["mentions"][1] == {
        "word": "cat",
        "category": "cat",
        "start": 12,
        "end": 15,
        "status": "uncertain",
    }
    assert [d["hallucinated"] for d in details] == [True, False, False]
    assert details[0]["image_id"] == 1 and details[0]["image"] == str(image_dir / "a.png")
    assert metrics == {
        "CHAIR_s": pytest.approx(1 / 3),
        "CHAIR_i": pytest.approx(1 / 4),  # 1 hallucinated of 4 decided (3 present); the uncertain one left out
        "uncertain_rate": pytest.approx(1 / 5),
        "n_captions": 3,
        "n_mentions": 5,
        "n_hallucinated_mentions": 1,
        "n_uncertain_mentions": 1,
    }


def test_bad_records_and_empty_input_are_clear_errors(image_dir: Path) -> None:
    with pytest.raises(InputDataError, match="caption record 0 needs a string 'caption'"):
        score_records([{"caption": "A dog."}], ScriptedValidator({}), image_dir=image_dir)
    with pytest.raises(InputDataError, match="no captions to score"):
        detector_chair_metrics([])


def test_score_run_reads_samples_and_writes_the_artifact(image_dir: Path, tmp_path: Path) -> None:
    store = RunStore.create(tmp_path / "run", {"job": "chair", "images": {"image_dir": str(image_dir)}})
    samples = [{"id": str(r["image_id"]), "image": r["image"], "image_id": r["image_id"], "response": r["caption"]}
               for r in RECORDS]  # fmt: skip
    store.append([*samples, {"id": "9", "image": "c.png", "image_id": 9, "error": "cannot read image"}])
    metrics, details = score_run(store.path, ScriptedValidator(SCRIPT))
    assert metrics["n_captions"] == 3 and metrics["CHAIR_i"] == pytest.approx(1 / 4)
    written = json.loads((store.path / ARTIFACT).read_text())
    assert written["metrics"] == metrics and len(written["captions"]) == 3 and written["validator"] is None


def test_mention_agreement_kappa_by_hand() -> None:
    truth = [True, True, False, False, False, False]  # annotation says hallucinated
    statuses = ["hallucinated", "present", "present", "present", "hallucinated", "uncertain"]
    det = [{"caption": "c", "mentions": [{"status": s} for s in statuses]}]
    ann = [{"caption": "c", "mentions": [{"hallucinated": t} for t in truth]}]
    result = mention_agreement(det, ann)
    # decided: truth T T F F F vs predicted T F F F T -> p_o = 3/5, p_e = .4 * .4 + .6 * .6 = .52
    assert result["accuracy"] == pytest.approx(0.6)
    assert result["kappa"] == pytest.approx((0.6 - 0.52) / (1 - 0.52))
    assert result["uncertain_share"] == pytest.approx(1 / 6)
    assert (result["n"], result["n_decided"]) == (6, 5)
    assert result["confusion"] == {
        "absent->hallucinated": 1, "absent->present": 1, "present->hallucinated": 1, "present->present": 2,
        "present->uncertain": 1,
    }  # fmt: skip
    with pytest.raises(InputDataError, match="cover 1 and 0 captions"):
        mention_agreement(det, [])


def test_kappa_is_none_when_undefined() -> None:
    det = [{"caption": "c", "mentions": [{"status": "present"}, {"status": "present"}]}]
    ann = [{"caption": "c", "mentions": [{"hallucinated": False}, {"hallucinated": False}]}]
    result = mention_agreement(det, ann)
    assert result["accuracy"] == 1.0 and result["kappa"] is None


def test_validator_agreement_per_object_and_category() -> None:
    verdicts = [
        {"dog": Verdict("present", "both", 0.9, 0.8), "cat": Verdict("hallucinated", "both", 0.0, 0.0)},
        {"dog": Verdict("uncertain", "both", 0.7, 0.0), "cat": Verdict("present", "b", None, 0.6)},
    ]
    result = validator_agreement(verdicts, [{"dog"}, {"dog"}])
    assert (result["n"], result["n_decided"], result["uncertain_share"]) == (4, 3, 0.25)
    assert result["accuracy"] == pytest.approx(2 / 3)  # the second cat is wrongly called present
    assert result["by_category"]["dog"] == {"n": 2, "n_decided": 1, "uncertain_share": 0.5, "accuracy": 1.0,
                                            "kappa": None}  # fmt: skip
    assert result["by_category"]["cat"]["accuracy"] == 0.5


def test_correlations() -> None:
    chair = {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.5}
    result = correlations({"a": 1.0, "b": 2.0, "c": 4.0, "d": 3.0, "e": 9.0}, chair)
    assert result["n_systems"] == 4
    assert result["spearman"] == pytest.approx(0.8)
    assert -1 <= result["pearson"] <= 1 and 0 <= result["pearson_p"] <= 1
    assert correlations({"a": 1.0, "b": 2.0}, chair)["spearman"] is None  # fewer than 3 systems
    assert correlations({"a": 1.0, "b": 1.0, "c": 1.0}, chair)["spearman"] is None  # constant input


def _instances(tmp_path: Path) -> Path:
    """A COCO instances file for a.png (a dog and a cat) and b.png (nothing)."""
    data = {
        "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
        "categories": [{"id": 1, "name": "dog"}, {"id": 2, "name": "cat"}, {"id": 3, "name": "car"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4], "area": 16, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [4, 4, 4, 4], "area": 16, "iscrowd": 0},
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path


def test_load_validator_takes_exactly_two_specs(image_dir: Path) -> None:
    instances = _instances(image_dir)
    validator = load_validator([f"oracle:{instances}", f"oracle:{instances}"], cache_path=image_dir / "c.jsonl")
    assert isinstance(validator, CrossCheckValidator) and isinstance(validator.detector_a, AnnotationOracle)
    assert validator.cache_path == image_dir / "c.jsonl"
    with pytest.raises(ConfigError, match="exactly twice"):
        load_validator(["toy-yolov8"])


def test_check_validator_against_the_annotations(image_dir: Path) -> None:
    instances = _instances(image_dir)
    assert annotated_objects(instances) == {1: {"dog", "cat"}, 2: set()}
    images = resolve_images(str(image_dir), instances=instances)
    validator = ScriptedValidator({"a.png": {"dog": "present", "cat": "uncertain"}, "b.png": {"car": "present"}})
    result = check_validator(validator, images, ["dog", "cat", "car"], batch_size=1)
    assert validator.asked == [("a.png", ["dog", "cat", "car"]), ("b.png", ["dog", "cat", "car"])]
    # a: dog right, cat uncertain, car right (absent); b: dog and cat right (absent), car wrongly present
    assert (result["n"], result["n_decided"], result["accuracy"]) == (6, 5, pytest.approx(4 / 5))
    assert result["by_category"]["car"]["accuracy"] == 0.5
    oracle = load_validator([f"oracle:{instances}", f"oracle:{instances}"])
    assert check_validator(oracle, images, ["dog", "cat", "car"])["accuracy"] == 1.0
    with pytest.raises(InputDataError, match="COCO instances"):
        check_validator(validator, resolve_images(str(image_dir)), ["dog"])
