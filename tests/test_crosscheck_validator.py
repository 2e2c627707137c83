"""Cross-check validator logic with scripted fake detectors: agreement table, vocabularies, batching, caching."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest
from PIL import Image

from detectors import CrossCheckValidator, Detection, Verdict
from detectors.crosscheck import decide
from halluc.errors import ConfigError
from halluc.records import TornRecordWarning


class ScriptedDetector:
    """Finds exactly the labels its script lists for an image (keyed by image.info["key"]); counts calls."""

    def __init__(self, name: str, script: dict[str, dict[str, float]], vocabulary: frozenset[str] | None = None):
        self.name = name
        self.vocabulary = vocabulary
        self.script = script
        self.calls: list[tuple[list[str], list[str]]] = []

    def detect(self, images: Sequence[Image.Image], labels: Sequence[str]) -> list[list[Detection]]:
        keys = [image.info["key"] for image in images]
        self.calls.append((keys, list(labels)))
        return [
            [
                Detection(label, score, (0.0, 0.0, 4.0, 4.0))
                for label, score in self.script.get(key, {}).items()
                if label in labels
            ]
            for key in keys
        ]


def _image(key: str) -> Image.Image:
    image = Image.new("RGB", (8, 8))
    image.info["key"] = key
    return image


@pytest.fixture
def pair() -> tuple[ScriptedDetector, ScriptedDetector]:
    a = ScriptedDetector("det-a", {"img1": {"cat": 0.9, "dog": 0.6}}, vocabulary=frozenset({"cat", "dog", "cup"}))
    b = ScriptedDetector("det-b", {"img1": {"cat": 0.8, "cup": 0.7, "kite": 0.5}})  # open vocabulary
    return a, b


def test_decide_table() -> None:
    assert decide(True, True, "a", "b") == ("present", "both")
    assert decide(False, False, "a", "b") == ("hallucinated", "both")
    assert decide(True, False, "a", "b") == ("uncertain", "both")
    assert decide(False, True, "a", "b") == ("uncertain", "both")
    assert decide(None, True, "a", "b") == ("present", "b")
    assert decide(False, None, "a", "b") == ("hallucinated", "a")
    assert decide(None, None, "a", "b") == ("uncertain", "none")


def test_agreement_and_vocabulary(pair: tuple[ScriptedDetector, ScriptedDetector]) -> None:
    a, b = pair
    verdicts = CrossCheckValidator(a, b).validate(_image("img1"), "img1", ["cat", "dog", "cup", "bus", "kite", "cat"])
    assert list(verdicts) == ["cat", "dog", "cup", "bus", "kite"]  # distinct, in mention order
    assert verdicts["cat"] == Verdict("present", "both", 0.9, 0.8)
    assert verdicts["dog"] == Verdict("uncertain", "both", 0.6, 0.0)
    assert verdicts["cup"] == Verdict("uncertain", "both", 0.0, 0.7)
    # Outside a's closed vocabulary: b alone decides, and says so.
    assert verdicts["bus"] == Verdict("hallucinated", "det-b", None, 0.0)
    assert verdicts["kite"] == Verdict("present", "det-b", None, 0.5)
    # a is never asked about labels outside its vocabulary.
    assert a.calls == [(["img1"], ["cat", "dog", "cup"])]


def test_neither_vocabulary_is_uncertain() -> None:
    a = ScriptedDetector("a", {}, vocabulary=frozenset({"cat"}))
    b = ScriptedDetector("b", {}, vocabulary=frozenset({"dog"}))
    verdicts = CrossCheckValidator(a, b).validate(_image("x"), "x", ["cat", "bus"])
    assert verdicts["cat"] == Verdict("hallucinated", "a", 0.0, None)
    assert verdicts["bus"] == Verdict("uncertain", "none", None, None)
    assert b.calls == []  # nothing it could judge: not run at all


def test_batch_runs_each_detector_once(pair: tuple[ScriptedDetector, ScriptedDetector]) -> None:
    a, b = pair
    validator = CrossCheckValidator(a, b)
    results = validator.validate_many([_image("img1"), _image("img2")], ["img1", "img2"], [["cat"], ["dog", "cat"]])
    assert results[0]["cat"].status == "present"
    assert results[1] == {
        "dog": Verdict("hallucinated", "both", 0.0, 0.0),
        "cat": Verdict("hallucinated", "both", 0.0, 0.0),
    }
    assert a.calls == [(["img1", "img2"], ["cat", "dog"])]
    assert len(b.calls) == 1


def test_memory_and_file_cache(pair: tuple[ScriptedDetector, ScriptedDetector], tmp_path) -> None:
    a, b = pair
    cache = tmp_path / "sub" / "crosscheck.jsonl"
    first = CrossCheckValidator(a, b, cache_path=cache).validate(_image("img1"), "img1", ["cat", "dog"])
    validator = CrossCheckValidator(a, b, cache_path=cache)
    assert validator.validate(_image("img1"), "img1", ["dog", "cat"]) == first
    assert len(a.calls) == len(b.calls) == 1  # the rerun cost nothing
    # Only the new object is computed, and only it is appended.
    validator.validate(_image("img1"), "img1", ["cat", "cup"])
    assert a.calls[-1] == (["img1"], ["cup"])
    records = [json.loads(line) for line in cache.read_text().splitlines()]
    assert [(r["image_key"], r["object"]) for r in records] == [("img1", "cat"), ("img1", "dog"), ("img1", "cup")]
    assert records[0]["detectors"] == ["det-a", "det-b"]


def test_cache_is_per_detector_pair_and_survives_torn_lines(
    pair: tuple[ScriptedDetector, ScriptedDetector], tmp_path
) -> None:
    a, b = pair
    cache = tmp_path / "crosscheck.jsonl"
    CrossCheckValidator(a, b, cache_path=cache).validate(_image("img1"), "img1", ["cat"])
    with cache.open("a") as fh:
        fh.write('{"detectors": ["det-a", "det-b"], "image_key": "img1", "obj')  # killed mid-write
    with pytest.warns(TornRecordWarning, match="crosscheck.jsonl:2: torn last line skipped"):
        swapped = CrossCheckValidator(b, a, cache_path=cache)
    with pytest.warns(TornRecordWarning, match="crosscheck.jsonl:2: torn last line removed"):
        assert swapped.validate(_image("img1"), "img1", ["cat"])["cat"] == Verdict("present", "both", 0.8, 0.9)
    assert len(a.calls) == 2  # the (b, a) pair does not reuse (a, b) verdicts
    again = CrossCheckValidator(b, a, cache_path=cache)
    again.validate(_image("img1"), "img1", ["cat"])
    assert len(a.calls) == 2
    lines = cache.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["detectors"] == ["det-b", "det-a"]


def test_misaligned_batch_is_rejected(pair: tuple[ScriptedDetector, ScriptedDetector]) -> None:
    with pytest.raises(ConfigError, match="must align"):
        CrossCheckValidator(*pair).validate_many([_image("img1")], ["img1", "img2"], [["cat"]])
