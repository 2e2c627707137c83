"""halluc score: existing captions and answers -> a run directory, with error records instead of crashes."""

import gzip
import hashlib
import json
import logging
import random
import sys
from pathlib import Path

import pytest

from benchmarks import chair, pope
from benchmarks.outputs import coco_image_id, read_outputs
from benchmarks.score import score_chair_file, score_pope_file
from halluc.errors import ConfigError, InputDataError
from halluc.records import read_records

REAL = Path(__file__).parent / "fixtures" / "realdata" / "pope"
# split -> accuracy, precision, recall, F1, yes-ratio (percent, 2 decimals), as in shared/README.md
LLAVA_13B = {
    "adversarial": (85.50, 90.99, 78.80, 84.46, 43.30),
    "popular": (87.43, 95.25, 78.80, 86.25, 41.37),
    "random": (88.01, 97.44, 78.80, 87.14, 41.68),
}
GT = {"1": ["dog", "person"], "2": ["cat", "couch"], "3": ["car", "person"]}
ROWS = [
    {"image_id": 1, "caption": "A man walks his dog past a cat."},
    {"image_id": 2, "caption": "A cat sleeps on a couch."},
    {"image_id": 3, "caption": "A person stands next to a red car."},
]


def _write(path: Path, text: str) -> Path:
    path.write_bytes(gzip.compress(text.encode(), mtime=0) if path.suffix == ".gz" else text.encode())
    return path


def _gt(tmp_path: Path) -> Path:
    return _write(tmp_path / "gt.json", json.dumps(GT))


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def test_chair_on_hand_made_coco_files_maps_file_names_to_ids(tmp_path: Path) -> None:
    images = [{"id": 11, "file_name": "kitchen_a.jpg"}, {"id": 12345, "file_name": "COCO_val2014_000000012345.jpg"}]
    categories = [{"id": 1, "name": "dog"}, {"id": 2, "name": "cat"}, {"id": 3, "name": "dining table"}]
    anns = [{"id": 1, "image_id": 11, "category_id": 1, "bbox": [0, 0, 1, 1], "area": 1, "iscrowd": 0},
            {"id": 2, "image_id": 11, "category_id": 3, "bbox": [0, 0, 1, 1], "area": 1, "iscrowd": 0},
            {"id": 3, "image_id": 12345, "category_id": 2, "bbox": [0, 0, 1, 1], "area": 1, "iscrowd": 0}]  # fmt: skip
    instances = _write(tmp_path / "instances.json", json.dumps({"images": images, "annotations": anns,
                                                                "categories": categories}))  # fmt: skip
    caps = [{"id": 1, "image_id": 12345, "caption": "A cat on a sofa."}]
    captions = _write(tmp_path / "captions.json", json.dumps({"images": images, "annotations": caps}))
    rows = [{"image": "kitchen_a.jpg", "text": "A dog under a table."},  # named by the annotations' table
            {"image": "val2014/COCO_val2014_000000012345.jpg", "text": "A cat on a couch next to a car."}]  # fmt: skip
    answers = _write(tmp_path / "out.jsonl", _jsonl(rows))
    result = score_chair_file(answers, tmp_path / "run", instances=instances, captions=captions)
    m = result.metrics  # mentions: dog, dining table | cat, couch (GT from the captions), car (hallucinated)
    assert (m["CHAIR_s"], m["CHAIR_i"], m["n_captions"], m["n_errors"]) == (0.5, 0.2, 2, 0)
    expected, _ = chair.score_records([{"image_id": 11, "caption": rows[0]["text"]},
                                       {"image_id": 12345, "caption": rows[1]["text"]}],
                                      chair.load_ground_truth(instances, captions))  # fmt: skip
    assert {k: m[k] for k in expected} == expected  # the scoring is benchmarks.chair's, unchanged
    run = result.store.path
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["job"] == "chair" and manifest["status"] == "finished" and manifest["source"] == "score"
    assert manifest["scored_file"]["sha256"] == hashlib.sha256(answers.read_bytes()).hexdigest()
    assert manifest["scored_file"]["path"] == str(answers.resolve())
    assert (manifest["scored_file"]["id_key"], manifest["scored_file"]["text_key"]) == ("image", "text")
    samples = read_records(run / "samples.jsonl")
    assert [s["image_id"] for s in samples] == [11, 12345] and samples[1]["hallucinated"]
    assert json.loads((run / "metrics.json").read_text()) == m


def test_coco_file_names_and_ids() -> None:
    assert coco_image_id("COCO_val2014_000000012345.jpg") == 12345
    assert coco_image_id("/data/coco/val2014/COCO_val2014_000000000042.jpg") == 42
    assert coco_image_id("000000012345.jpg") == coco_image_id(" 12345 ") == coco_image_id(12345) == 12345
    assert coco_image_id("world_val_000002000001.png") == 2000001
    assert coco_image_id("photo_3.jpg", {"photo_3.jpg": 77}) == 77
    assert coco_image_id("no id here") is None and coco_image_id(True) is None and coco_image_id(None) is None


def test_every_file_layout_gives_the_same_metrics(tmp_path: Path) -> None:
    gt = _gt(tmp_path)
    layouts = {
        "lines.jsonl": _jsonl(ROWS),
        "lines.jsonl.gz": _jsonl(ROWS),
        "array.json": json.dumps(ROWS),
        "pretty_array.json": json.dumps(ROWS, indent=2),
        "pretty_array.json.gz": json.dumps(ROWS, indent=2),
        "pretty_objects.json": "\n".join(json.dumps(r, indent=4) for r in ROWS),  # one pretty object after another
        "wrapped.json": json.dumps({"results": ROWS}, indent=2),
        "mapping.json": json.dumps({str(r["image_id"]): r["caption"] for r in ROWS}, indent=2),
        "crlf.jsonl": _jsonl(ROWS).replace("\n", "\r\n"),
    }
    found = {}
    for name, text in layouts.items():
        result = score_chair_file(_write(tmp_path / name, text), tmp_path / f"run-{name}", gt_file=gt)
        found[name] = _metrics(result.store.path)
    reference = found["lines.jsonl"]
    assert reference["n_captions"] == 3 and reference["CHAIR_s"] == pytest.approx(1 / 3)  # the cat of image 1
    assert all(m == reference for m in found.values()), found


def test_malformed_pretty_json_names_its_line(tmp_path: Path) -> None:
    broken = _write(
        tmp_path / "broken.json", json.dumps(ROWS[0], indent=2) + '\n{\n  "image_id": 2\n  "caption": "x"\n}'
    )
    with pytest.raises(InputDataError, match=r"broken\.json' line 7"):
        read_outputs(broken)
    torn = _write(tmp_path / "torn.jsonl", _jsonl(ROWS[:2]) + '{"image_id": 3,\n')
    with pytest.raises(InputDataError, match="line 3"):
        read_outputs(torn)


def test_duplicates_unknown_ids_and_missing_gt_are_counted_error_records(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [
        {"image_id": 1, "caption": "A dog."},
        {"image_id": 1, "caption": "A dog.", "other": "ignored"},  # exact repeat (same id and text): dropped
        {"image_id": 2, "caption": "A cat."},
        {"image_id": "2", "caption": "A car."},  # same image, another caption: both become error records
        {"image_id": 99, "caption": "A dog."},  # no ground truth
        {"image_id": "not an id", "caption": "A dog."},
        {"caption": "A dog."},
        {"image_id": 3, "caption": 5},
    ]
    with caplog.at_level(logging.WARNING, logger="halluc"):
        result = score_chair_file(_write(tmp_path / "c.jsonl", _jsonl(rows)), tmp_path / "run", gt_file=_gt(tmp_path))
    assert "dropped 1 exact repeat" in caplog.text and "6 of 8 records are error records" in caplog.text
    m = _metrics(result.store.path)
    assert (m["n_records"], m["n_captions"], m["n_errors"], m["n_duplicates_dropped"]) == (8, 1, 6, 1)
    kinds = {"bad_id": 1, "bad_text": 1, "conflicting_duplicate": 2, "missing_gt": 1, "missing_id": 1}
    assert result.errors == kinds and {k: m[f"n_errors_{k}"] for k in kinds} == kinds
    samples = read_records(result.store.path / "samples.jsonl")
    assert [s["record"] for s in samples] == [1, 3, 4, 5, 6, 7, 8]  # file order, the dropped repeat left out
    assert [s.get("error_kind") for s in samples] == [None, "conflicting_duplicate", "conflicting_duplicate",
                                                      "missing_gt", "bad_id", "missing_id", "bad_text"]  # fmt: skip
    assert all(s["error"] for s in samples[1:]) and len({s["id"] for s in samples}) == len(samples)
    assert json.loads((result.store.path / "manifest.json").read_text())["n_errors"] == 6


def test_nothing_scoreable_fails_the_run_with_its_error_records(tmp_path: Path) -> None:
    rows = [{"image_id": 98, "caption": "A dog."}, {"image_id": 99, "caption": "A cat."}]
    with pytest.raises(InputDataError, match="none of the 2 records"):
        score_chair_file(_write(tmp_path / "c.jsonl", _jsonl(rows)), tmp_path / "run", gt_file=_gt(tmp_path))
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["status"] == "failed"
    assert [s["error_kind"] for s in read_records(tmp_path / "run" / "samples.jsonl")] == ["missing_gt"] * 2


def test_chair_against_the_toy_world(tmp_path: Path) -> None:
    """World file names map to ids; a reference caption names only ground-truth objects."""
    from halluc.imagesets import resolve_images

    world = resolve_images("toy:val", limit=3)
    refs = {a["image_id"]: a["caption"] for a in json.loads(world.captions.read_text())["annotations"]}
    rows = [{"image": world.file_names[i], "caption": refs[i]} for i in world.image_ids]
    rows.append({"image": world.file_names[world.image_ids[0]], "caption": "A giraffe and a surfboard."})
    result = score_chair_file(_write(tmp_path / "toy.jsonl", _jsonl(rows[1:])), tmp_path / "run", images="toy:val")
    assert result.metrics["CHAIR_s"] == pytest.approx(1 / 3) and result.metrics["n_captions"] == 3
    samples = read_records(result.store.path / "samples.jsonl")
    assert [s["image_id"] for s in samples] == list(world.image_ids[1:]) + [world.image_ids[0]]


# --- POPE ---------------------------------------------------------------------------------------------------


def _llava_run(tmp_path: Path, name: str, answers: list[dict]) -> dict:
    answer_file = _write(tmp_path / f"{name}.jsonl", _jsonl(answers))
    labels = [REAL / f"questions_e3e3926/coco_pope_{s}.json.gz" for s in pope.SPLITS]
    asked = [REAL / "answers/llava_pope_test_questions.jsonl.gz"]
    result = score_pope_file(answer_file, tmp_path / name, questions=asked, labels=labels)
    return _metrics(result.store.path)


def test_pope_pairs_by_question_id_so_shuffled_answers_score_the_same(tmp_path: Path) -> None:
    answers = chair.read_json_records(REAL / "answers/llava-v1.5-13b.jsonl.gz")
    shuffled = random.Random(0).sample(answers, len(answers))
    in_order, reordered = _llava_run(tmp_path, "ordered", answers), _llava_run(tmp_path, "shuffled", shuffled)
    assert in_order == reordered
    for split, expected in LLAVA_13B.items():  # the published LLaVA-1.5-13B table, exactly
        got = tuple(round(100 * in_order[split][k], 2) for k in ("accuracy", "precision", "recall", "f1", "yes_ratio"))
        assert got == expected, split
        counts = in_order[split]
        assert counts["tp"] + counts["fp"] + counts["tn"] + counts["fn"] == counts["n"]
    assert round(100 * in_order["mean"]["f1"], 2) == 85.95 and in_order["n_errors"] == 0
    # the trap: pairing the shuffled answers by position would have scored about chance
    asked = pope.load_questions(REAL / "answers/llava_pope_test_questions.jsonl.gz")
    labelled = pope.attach_labels(
        asked, [q for s in pope.SPLITS for q in pope.load_questions(REAL / f"questions_e3e3926/coco_pope_{s}.json.gz")]
    )
    by_position = pope.aggregate(pope.score_answer(q, a["text"]) for q, a in zip(labelled, shuffled, strict=True))
    assert by_position["mean"]["accuracy"] < 0.55


QUESTIONS = [
    {"question_id": i, "image": f"COCO_val2014_{i:012d}.jpg", "text": f"Is there a thing{i} in the image?",
     "label": "yes" if i % 2 else "no"}
    for i in range(1, 9)
]  # fmt: skip
# answers: 1 yes (TP), 2 yes (FP), 3 no (FN), 4 no (TN), 5 yes (TP), 6 no (TN); 7 and 8 below
ANSWERS = [{"question_id": i, "text": t} for i, t in enumerate(["Yes", "Yes", "No", "No", "Yes", "No"], 1)]


def test_pope_confusion_counts_and_error_records(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    questions = _write(tmp_path / "coco_pope_random.json", _jsonl(QUESTIONS))
    answers = [
        *ANSWERS[::-1],
        {"question_id": 1, "text": "Yes", "answer_id": "x"},  # exact repeat: dropped
        {"question_id": 7, "text": "Yes"},
        {"question_id": "7", "text": "No"},  # conflicting: both records are errors, question 7 unscored
        {"question_id": 42, "text": "Yes"},  # unknown id
        {"question_id": 8, "text": None},
        {"text": "Yes"},
    ]
    with caplog.at_level(logging.WARNING, logger="halluc"):
        result = score_pope_file(_write(tmp_path / "a.jsonl", _jsonl(answers)), tmp_path / "run", questions=[questions])
    m = result.metrics
    assert {k: m["random"][k] for k in ("tp", "fp", "tn", "fn", "n")} == {"tp": 2, "fp": 1, "tn": 2, "fn": 1, "n": 6}
    assert m["random"]["accuracy"] == pytest.approx(4 / 6) and m["random"]["precision"] == pytest.approx(2 / 3)
    assert m["random"]["yes_ratio"] == pytest.approx(3 / 6)
    assert result.errors == {"bad_text": 1, "conflicting_duplicate": 2, "missing_id": 1, "unknown_id": 1}
    assert (m["n_records"], m["n_errors"], m["n_duplicates_dropped"], m["n_unanswered"]) == (12, 5, 1, 2)
    assert "2 labelled questions have no answer" in caplog.text
    samples = read_records(result.store.path / "samples.jsonl")
    assert len(samples) == 11 and [s["record"] for s in samples] == sorted(s["record"] for s in samples)
    scored = json.loads((result.store.path / "pope_scored.json").read_text())
    assert sorted(r["question_id"] for r in scored) == [1, 2, 3, 4, 5, 6]
    manifest = json.loads((result.store.path / "manifest.json").read_text())
    assert manifest["pairing"] == "question_id" and manifest["questions"][0]["sha256"]


def test_pope_file_layouts_agree(tmp_path: Path) -> None:
    questions = _write(tmp_path / "coco_pope_popular.json", json.dumps(QUESTIONS, indent=2))
    texts = {"a.jsonl": _jsonl(ANSWERS), "a.json": json.dumps(ANSWERS), "p.json.gz": json.dumps(ANSWERS, indent=1),
             "o.json": "".join(json.dumps(a, indent=2) for a in ANSWERS)}  # fmt: skip
    found = [_metrics(score_pope_file(_write(tmp_path / n, t), tmp_path / f"r{n}", questions=[questions]).store.path)
             for n, t in texts.items()]  # fmt: skip
    assert all(m == found[0] for m in found) and found[0]["popular"]["n"] == 6


def test_pope_pairs_by_order_only_without_ids(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    questions = _write(tmp_path / "coco_pope_random.json", _jsonl(QUESTIONS[:6]))
    no_ids = [{"answer": a["text"]} for a in ANSWERS]
    with caplog.at_level(logging.WARNING, logger="halluc"):
        result = score_pope_file(
            _write(tmp_path / "a.json", json.dumps(no_ids)), tmp_path / "run", questions=[questions]
        )
    assert "paired with the questions by order" in caplog.text
    assert result.metrics["random"]["tp"] == 2 and result.metrics["random"]["accuracy"] == pytest.approx(4 / 6)
    assert json.loads((result.store.path / "manifest.json").read_text())["pairing"] == "order"
    with pytest.raises(InputDataError, match="5 answers without question ids but there are 6 questions"):
        score_pope_file(_write(tmp_path / "b.json", json.dumps(no_ids[:5])), tmp_path / "run2", questions=[questions])


def test_pope_warns_when_the_answer_field_holds_questions(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    questions = _write(tmp_path / "coco_pope_random.json", _jsonl(QUESTIONS))
    rows = [{"question_id": q["question_id"], "text": q["text"], "answer": "No"} for q in QUESTIONS]
    with caplog.at_level(logging.WARNING, logger="halluc"):
        score_pope_file(_write(tmp_path / "a.jsonl", _jsonl(rows)), tmp_path / "run", questions=[questions])
    assert "look like questions; is --answer-key right?" in caplog.text
    fixed = score_pope_file(tmp_path / "a.jsonl", tmp_path / "run2", questions=[questions], answer_key="answer")
    assert fixed.metrics["random"]["yes_ratio"] == 0.0 and fixed.metrics["random"]["tn"] == 4


def test_pope_split_files_numbering_from_one(tmp_path: Path) -> None:
    files = [_write(tmp_path / f"coco_pope_{s}.json", _jsonl(QUESTIONS[:4])) for s in ("random", "adversarial")]
    plain = _write(tmp_path / "plain.jsonl", _jsonl(ANSWERS[:4]))
    with pytest.raises(ConfigError, match="question_id 1 names several questions"):
        score_pope_file(plain, tmp_path / "run", questions=files)
    answers = [{**a, "category": s} for s in ("adversarial", "random") for a in ANSWERS[:4]]
    result = score_pope_file(_write(tmp_path / "cat.jsonl", _jsonl(answers)), tmp_path / "run2", questions=files)
    assert result.metrics["random"] == result.metrics["adversarial"] and result.metrics["random"]["n"] == 4


# --- the command line -------------------------------------------------------------------------------------------


def test_cli_scores_and_the_dashboard_lists_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.data import headline, scan_runs
    from halluc.cli import main

    captions = _write(tmp_path / "c.json", json.dumps(ROWS, indent=2))
    monkeypatch.setattr(sys, "argv", ["halluc", "score", "chair", str(captions), "--gt-file", str(_gt(tmp_path)),
                                      "--model", "my-system", "--out", str(tmp_path / "runs" / "scored")])  # fmt: skip
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 0
    (run,) = scan_runs(tmp_path / "runs").runs
    assert (run.job, run.model, run.status) == ("chair", "my-system", "finished")
    assert headline(run)["CHAIR_s"] == pytest.approx(1 / 3)


def _bad_invocations(tmp_path: Path) -> list[tuple[list[str], str]]:
    captions = _write(tmp_path / "c.jsonl", _jsonl(ROWS))
    gt = str(_gt(tmp_path))
    unlabelled = _write(tmp_path / "q.jsonl", _jsonl([{k: v for k, v in q.items() if k != "label"} for q in QUESTIONS]))
    labelled = _write(tmp_path / "coco_pope_random.json", _jsonl(QUESTIONS))
    return [
        (["score", "chair", str(tmp_path / "nope.jsonl"), "--gt-file", gt], "nope.jsonl"),
        (["score", "chair", str(captions)], "exactly one of --gt-file"),
        (["score", "chair", str(captions), "--gt-file", gt, "--images", "toy:val"], "--gt-file and --images"),
        (["score", "chair", str(captions), "--images", "toy:bogus"], "'toy:bogus'"),
        (["score", "chair", str(captions), "--gt-file", str(tmp_path / "gt-missing.json")], "gt-missing.json"),
        (["score", "chair", str(captions), "--gt-file", gt, "--id-key", "img"], "--id-key 'img'"),
        (["score", "chair", str(captions), "--gt-file", gt, "--text-key", "caption_text"], "'caption_text'"),
        (["score", "pope", str(captions), "--questions", str(tmp_path / "q-missing.json")], "q-missing.json"),
        (["score", "pope", str(captions), "--questions", str(unlabelled)], "yes/no 'label'"),
        (["score", "pope", str(captions), "--questions", str(labelled), "--answer-key", "reply"], "'reply'"),
        (["score", "pope", str(captions), "--questions", str(labelled)], "--answer-key"),
    ]


def test_cli_errors_are_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from halluc.cli import main

    for n, (args, named) in enumerate(_bad_invocations(tmp_path)):
        out = tmp_path / f"out{n}"
        monkeypatch.setattr(sys, "argv", ["halluc", *args, "--out", str(out)])
        with pytest.raises(SystemExit) as exited:
            main()
        stderr = capsys.readouterr().err
        assert exited.value.code == 2 and named in stderr and "Traceback" not in stderr, (args, stderr)
        assert len(stderr.strip().splitlines()) == 1, stderr
        assert not out.exists(), args  # refused before any work: no run directory left behind


# --- the POPE file version, and scoring into an --out that holds a run ------------------------------------------


def test_pope_records_which_official_question_file_it_was_given(tmp_path: Path) -> None:
    answers = _write(tmp_path / "a.jsonl", _jsonl([{"question_id": i, "text": "Yes"} for i in range(1, 6)]))
    official = REAL / "questions_e3e3926/coco_pope_random.json.gz"
    score_pope_file(answers, tmp_path / "official", questions=[official])
    [found] = json.loads((tmp_path / "official" / "manifest.json").read_text())["question_versions"]
    assert (found["split"], found["n_questions"]) == ("random", 2910)  # the version LLaVA's evaluation uses
    assert (found["version"], found["match"]) == ("pope-e3e3926", "exact")
    custom = _write(tmp_path / "coco_pope_random.json", _jsonl(QUESTIONS))
    [found] = score_pope_file(answers, tmp_path / "custom", questions=[custom]).store.manifest["question_versions"]
    assert (found["version"], found["n_questions"]) == ("unknown", 8)


def test_scoring_into_an_existing_run_is_refused_unless_overwrite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from halluc.cli import main
    from halluc.errors import OutputLocationError

    gt, out = _gt(tmp_path), tmp_path / "run"
    first, second = _write(tmp_path / "c.jsonl", _jsonl(ROWS)), _write(tmp_path / "d.jsonl", _jsonl(ROWS[:2]))
    score_chair_file(first, out, gt_file=gt)
    with pytest.raises(OutputLocationError, match="scoring does not resume .* pass --overwrite"):
        score_chair_file(second, out, gt_file=gt)
    result = score_chair_file(second, out, gt_file=gt, overwrite=True)
    assert result.metrics["n_captions"] == 2 and len(read_records(out / "samples.jsonl")) == 2  # replaced, not appended
    assert result.store.manifest["scored_file"]["sha256"] == hashlib.sha256(second.read_bytes()).hexdigest()
    generated = tmp_path / "generated"  # a run whose captions a model wrote is never replaced
    generated.mkdir()
    (generated / "manifest.json").write_text(json.dumps({"job": "chair", "status": "finished"}))
    (generated / "samples.jsonl").write_text(_jsonl(ROWS))
    with pytest.raises(OutputLocationError, match="model-generated outputs; --overwrite replaces only scoring runs"):
        score_chair_file(first, generated, gt_file=gt, overwrite=True)
    assert (generated / "samples.jsonl").read_text() == _jsonl(ROWS)
    args = ["halluc", "score", "chair", str(first), "--gt-file", str(gt), "--out", str(out)]
    for extra, code in (([], 2), (["--overwrite"], 0)):
        monkeypatch.setattr(sys, "argv", [*args, *extra])
        with pytest.raises(SystemExit) as exited:
            main()
        assert exited.value.code == code, capsys.readouterr()
    assert len(read_records(out / "samples.jsonl")) == 3


def test_the_real_released_outputs_through_halluc_score_give_the_published_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from halluc.cli import main

    def score(*args: str) -> dict:
        out = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
        monkeypatch.setattr(sys, "argv", ["halluc", "score", *args, "--out", str(out)])
        with pytest.raises(SystemExit) as exited:
            main()
        assert exited.value.code == 0
        return json.loads((out / "metrics.json").read_text())

    chair_dir = REAL.parent / "chair"
    gt = str(chair_dir / "coco2014_gt_objects_pattern_subset.json.gz")  # the ground truth of OPERA's table
    for log, chair_s, chair_i in (("beam5", 48.8, 13.9), ("ours", 44.6, 12.8)):  # OPERA's Table 1, LLaVA-1.5-7B
        metrics = score("chair", str(chair_dir / f"opera_llava15_{log}.jsonl.gz"), "--gt-file", gt)
        assert (round(100 * metrics["CHAIR_s"], 1), round(100 * metrics["CHAIR_i"], 1)) == (chair_s, chair_i), log
    labels = [arg for s in pope.SPLITS for arg in ("--labels", str(REAL / f"questions_e3e3926/coco_pope_{s}.json.gz"))]
    metrics = score(
        "pope", str(REAL / "answers/llava-v1.5-13b.jsonl.gz"),
        "--questions", str(REAL / "answers/llava_pope_test_questions.jsonl.gz"), *labels,
    )  # fmt: skip
    for split, expected in LLAVA_13B.items():  # the published LLaVA-1.5-13B table
        got = tuple(round(100 * metrics[split][k], 2) for k in ("accuracy", "precision", "recall", "f1", "yes_ratio"))
        assert got == expected, split
