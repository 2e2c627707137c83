"""POPE: the published LLaVA-1.5-13B table from real answers, hand-computed metrics, parsing, builder, I/O."""

import json
from pathlib import Path

import pytest

from benchmarks.chair import read_json_records
from benchmarks.pope import (
    SPLITS,
    PopeQuestion,
    aggregate,
    build_pope,
    load_questions,
    parse_answer,
    pope_metrics,
    pope_prompt,
    score_answer,
    write_questions,
)
from halluc.errors import ConfigError, InputDataError
from halluc.prompts import existence_question
from halluc.world import world_categories

REAL = Path(__file__).parent / "fixtures" / "realdata" / "pope"

# split -> accuracy, precision, recall, F1, yes-ratio (percent, 2 decimals), as in shared/README.md
LLAVA_13B = {
    "adversarial": (85.50, 90.99, 78.80, 84.46, 43.30),
    "popular": (87.43, 95.25, 78.80, 86.25, 41.37),
    "random": (88.01, 97.44, 78.80, 87.14, 41.68),
}


def test_reproduces_llava15_13b_table() -> None:
    labelled = {s: load_questions(REAL / f"questions_e3e3926/coco_pope_{s}.json.gz", split=s) for s in SPLITS}
    asked = load_questions(REAL / "answers/llava_pope_test_questions.jsonl.gz")
    answers = {r["question_id"]: r["text"] for r in read_json_records(REAL / "answers/llava-v1.5-13b.jsonl.gz")}
    assert {s: len(q) for s, q in labelled.items()} == {"random": 2910, "popular": 3000, "adversarial": 3000}
    seen = dict.fromkeys(SPLITS, 0)
    scored = []
    for q in asked:  # LLaVA asked each split's questions in label-file order
        truth = labelled[q.split][seen[q.split]]
        seen[q.split] += 1
        assert q.image == truth.image and q.text == pope_prompt(truth.text)
        scored.append(score_answer(truth, answers[q.question_id]))
    report = aggregate(scored)
    for split, expected in LLAVA_13B.items():
        got = tuple(round(100 * report[split][k], 2) for k in ("accuracy", "precision", "recall", "f1", "yes_ratio"))
        assert got == expected, split
        assert report[split]["n_unparsed"] == 0
    assert round(100 * report["mean"]["f1"], 2) == 85.95


def test_hand_computed_metrics() -> None:
    labels = [True, True, True, True, False, False, False, False, True, False]
    preds = [True, True, True, False, True, False, False, False, None, None]
    m = pope_metrics(labels, preds)  # on the 8 parsed: TP 3, FN 1, FP 1, TN 3
    assert m == pytest.approx(
        {
            "accuracy": 6 / 8,
            "precision": 3 / 4,
            "recall": 3 / 4,
            "f1": 3 / 4,
            "yes_ratio": 4 / 8,
            "tp": 3,
            "fp": 1,
            "tn": 3,
            "fn": 1,
            "n": 10,
            "n_unparsed": 2,
        }
    )
    all_no = pope_metrics([True, False], [False, False])
    assert (all_no["precision"], all_no["recall"], all_no["yes_ratio"]) == (0.0, 0.0, 0.0)
    with pytest.raises(InputDataError, match="2 labels but 1 predictions"):
        pope_metrics([True, False], [True])


def test_aggregate_means_over_splits() -> None:
    q = {s: PopeQuestion(1, "x.jpg", "Is there a dog in the image?", True, s) for s in ("random", "popular")}
    report = aggregate([score_answer(q["random"], "Yes"), score_answer(q["popular"], "No")])
    assert report["random"]["accuracy"] == 1.0 and report["popular"]["accuracy"] == 0.0
    assert report["mean"]["accuracy"] == 0.5 and report["mean"]["yes_ratio"] == 0.5


@pytest.mark.parametrize(
    ("text", "official", "strict"),
    [
        ("Yes", True, True),
        ("No", False, False),
        ("no.", False, False),
        ("Yes, there is a dog. No other animals.", True, True),  # only the first sentence counts
        ("There is not a dog in the image", False, None),
        ("I cannot tell", True, None),  # the official rule defaults to yes
        ("NO", True, False),  # official: only "No"/"no"/"not" mean no
        ("No,the image shows a cat", True, False),  # commas are removed, so "Nothe" remains
        ("  yes!", True, True),
        ("", True, None),
    ],
)
def test_parse_answer(text: str, official: bool, strict: bool | None) -> None:
    assert parse_answer(text) is official
    assert parse_answer(text, strict=True) is strict


def test_strict_mode_counts_unparsed() -> None:
    q = PopeQuestion(1, "x.jpg", "Is there a dog in the image?", False, "random")
    report = aggregate([score_answer(q, "No"), score_answer(q, "Maybe", strict=True)])
    assert report["random"]["n"] == 2 and report["random"]["n_unparsed"] == 1
    with pytest.raises(InputDataError, match="no label"):
        score_answer(PopeQuestion(2, "x.jpg", "Is there a cat in the image?", None), "yes")


def test_prompt() -> None:
    assert pope_prompt("Is there a dog in the image?") == (
        "Is there a dog in the image?\nAnswer the question using a single word or phrase."
    )
    assert pope_prompt("Is there a dog in the image?", suffix="") == "Is there a dog in the image?"


OBJECTS = {
    1: ["person", "dog", "frisbee"],
    2: ["person", "dog", "car"],
    3: ["person", "car", "bus"],
    4: ["person", "dog", "car", "bicycle"],
    5: ["person", "dog", "apple", "orange"],
    6: ["cat", "sofa"],
}
NAMES = [
    "person",
    "dog",
    "frisbee",
    "car",
    "bus",
    "bicycle",
    "apple",
    "orange",
    "cat",
    "sofa",
    "elephant",
    "umbrella",
    "zebra",
]


def _write_instances(path: Path) -> None:
    """Six images (image 6 has only two objects); images per object: person 5, dog 4, car 3, others <= 1."""
    cats = [{"id": i + 1, "name": n, "supercategory": "x"} for i, n in enumerate(NAMES)]
    images = [{"id": i, "file_name": f"img_{i}.jpg", "height": 4, "width": 4} for i in OBJECTS]
    anns = [
        {
            "id": 100 * i + k,
            "image_id": i,
            "category_id": NAMES.index(n) + 1,
            "bbox": [0, 0, 1, 1],
            "area": 1,
            "iscrowd": 0,
        }
        for i, objs in OBJECTS.items()
        for k, n in enumerate(objs)
    ]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))


def _negatives(questions: list[PopeQuestion], image: str) -> list[str]:
    return [q.text.split()[3] for q in questions if q.image == image and not q.label]


def test_builder(tmp_path: Path) -> None:
    instances = tmp_path / "instances.json"
    _write_instances(instances)
    splits = build_pope(instances, n_images=5, seed=3)
    assert splits == build_pope(instances, n_images=5, seed=3)  # deterministic
    assert splits != build_pope(instances, n_images=5, seed=4)
    for split, questions in splits.items():
        assert len(questions) == 30 and [q.question_id for q in questions] == list(range(1, 31))
        assert [q.label for q in questions[:6]] == [True, False] * 3
        assert {q.image for q in questions} == {f"img_{i}.jpg" for i in range(1, 6)}  # never image 6
        for q in questions:
            article, obj = q.text.split()[2:4]
            assert q.text == f"Is there {article} {obj} in the image?" and q.split == split
            assert article == ("an" if obj[0] in "aeiou" else "a")
            assert (obj in OBJECTS[int(q.image[4:-4])]) == q.label
    positives = {s: [q.text for q in qs if q.label] for s, qs in splits.items()}
    assert positives["random"] == positives["popular"] == positives["adversarial"]
    # popular: most images first (car 3), then ties by name
    assert _negatives(splits["popular"], "img_1.jpg") == ["car", "apple", "bicycle"]
    assert _negatives(splits["popular"], "img_5.jpg") == ["car", "bicycle", "bus"]
    # adversarial for image 5: car co-occurs with person 3x + dog 2x; bicycle, frisbee 2; bus 1
    assert _negatives(splits["adversarial"], "img_5.jpg") == ["car", "bicycle", "frisbee"]
    assert _negatives(splits["adversarial"], "img_3.jpg") == ["dog", "bicycle", "apple"]


def test_builder_errors(tmp_path: Path) -> None:
    instances = tmp_path / "instances.json"
    _write_instances(instances)
    with pytest.raises(ConfigError, match="n_images=500 but only 5 images"):
        build_pope(instances)
    with pytest.raises(ConfigError, match="n_negative"):
        build_pope(instances, n_images=2, n_negative=0)


def test_question_file_round_trips(tmp_path: Path) -> None:
    instances = tmp_path / "instances.json"
    _write_instances(instances)
    questions = build_pope(instances, n_images=4, n_positive=2, n_negative=1, seed=0)["adversarial"]
    write_questions(questions, tmp_path / "q.json")
    assert load_questions(tmp_path / "q.json", split="adversarial") == questions
    assert json.loads((tmp_path / "q.json").read_text().splitlines()[0]).keys() == {
        "question_id",
        "image",
        "text",
        "label",
    }


def test_loader_variants(tmp_path: Path) -> None:
    rows = [
        {
            "question_id": 1,
            "image": "COCO_val2014_000000310196.jpg",
            "text": "Is there a snowboard in the image?",
            "label": "yes",
        },
        {
            "question_id": "2",
            "image": "2354786.jpg",
            "text": "Is there a car in the imange?",
            "label": " No ",
            "category": "random",
            "extra": [1, 2],
        },
    ]
    (tmp_path / "array.json").write_text(json.dumps(rows))
    (tmp_path / "crlf.json").write_bytes(b"".join(json.dumps(r).encode() + b"\r\n" for r in rows))
    for name in ("array.json", "crlf.json"):
        loaded = load_questions(tmp_path / name)
        assert [(q.question_id, q.label, q.split) for q in loaded] == [(1, True, None), (2, False, "random")]
    assert load_questions(tmp_path / "crlf.json", split="popular")[1].split == "popular"
    (tmp_path / "gqa_pope_adversarial.json").write_text(json.dumps(rows))
    assert [q.split for q in load_questions(tmp_path / "gqa_pope_adversarial.json")] == ["adversarial", "random"]
    (tmp_path / "unlabelled.jsonl").write_text(json.dumps({k: rows[0][k] for k in ("question_id", "image", "text")}))
    assert load_questions(tmp_path / "unlabelled.jsonl")[0].label is None
    (tmp_path / "bad.jsonl").write_text(json.dumps({**rows[0], "label": "maybe"}))
    with pytest.raises(InputDataError, match="'maybe'"):
        load_questions(tmp_path / "bad.jsonl")
    with pytest.raises(ConfigError, match="'hard'.*random, popular, adversarial"):
        load_questions(tmp_path / "array.json", split="hard")


def test_existence_question_wording_is_the_one_the_toy_model_was_trained_on() -> None:
    assert existence_question("apple") == "Is there an apple in the image?"
    assert existence_question("Umbrella") == "Is there an Umbrella in the image?"
    assert existence_question("dining table") == "Is there a dining table in the image?"
    for name in (c["name"] for c in world_categories()):  # the training script's former template, verbatim
        assert existence_question(name) == "Is there a{n} {obj} in the image?".format(
            n="n" if name[0] in "aeiou" else "", obj=name
        )
