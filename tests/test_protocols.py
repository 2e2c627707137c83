"""Protocols as data (issue 18 item 2): split sampling, conflicting options, mean ± std, POPE file versions, RePOPE.

Fast: no model loads except two toy-model runs of 2 images and 4 new tokens (a 2-split protocol, a POPE label set).
"""

from __future__ import annotations

import json
import random
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from benchmarks.pope import PopeQuestion, apply_label_set, load_questions, write_questions
from benchmarks.protocols import (
    IDS_FILE,
    PROTOCOLS,
    SUMMARY_FILE,
    check_conflicts,
    detect_pope_version,
    get_protocol,
    protocol_splits,
    sample_split,
    split_dir,
    summarise_splits,
)
from halluc.errors import ConfigError, InputDataError
from halluc.imagesets import resolve_images

ROOT = Path(__file__).resolve().parents[1]
POPE_DATA = ROOT.parent / "shared" / "realdata" / "pope"
needs_pope = pytest.mark.skipif(not POPE_DATA.is_dir(), reason="needs ../shared/realdata/pope")


def _main(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """Run the console entry point in this process: (exit code, stdout + stderr)."""
    from halluc.cli import main

    monkeypatch.setattr(sys, "argv", ["halluc", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    captured = capsys.readouterr()
    return exited.value.code, captured.out + captured.err


def _no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr("halluc.cli._load_model", refuse)


# --- image samples ----------------------------------------------------------------------------------------------


def test_protocols_are_frozen_data_with_the_published_settings() -> None:
    vhr, pai = get_protocol("vhr"), get_protocol("pai")
    assert (vhr.n_splits, vhr.n_images, vhr.max_new_tokens, vhr.prompt) == (
        5, 500, 512, "Please describe this image in detail.",
    )  # fmt: skip
    assert (pai.seeds, pai.n_images, pai.max_new_tokens, pai.prompt) == (
        (927,), 500, 512, "Please help me describe the image in detail.",
    )  # fmt: skip
    assert all(not p.do_sample and p.num_beams == 1 for p in PROTOCOLS.values())
    json.dumps(vhr.to_dict())  # JSON primitives only: recorded in manifests as is
    with pytest.raises(AttributeError):
        vhr.prompt = "x"  # type: ignore[misc]
    with pytest.raises(ConfigError, match="did you mean 'vhr'.*pai, vhr"):
        get_protocol("vrh")


def test_split_sampling_is_deterministic_and_matches_the_recorded_seeds() -> None:
    images = resolve_images("toy:val")
    protocol = get_protocol("vhr")
    first, again = protocol_splits(protocol, images), protocol_splits(protocol, images)
    assert [seed for seed, _ in first] == [0, 1, 2, 3, 4]
    assert [s.image_ids for _, s in first] == [s.image_ids for _, s in again]
    names = sorted(images.file_names[i] for i in images.image_ids)
    by_name = {images.file_names[i]: i for i in images.image_ids}
    for seed, split in first:
        shuffled = list(names)
        random.Random(seed).shuffle(shuffled)  # the rule, written out independently
        assert list(split.image_ids) == [by_name[n] for n in shuffled[:500]]
        assert len(set(split.image_ids)) == 500 and split.name == "toy:val"
    assert len({s.image_ids for _, s in first}) == 5  # five different samples
    assert [s.image_ids for _, s in protocol_splits(protocol, images, 2)] == [s.image_ids for _, s in first[:2]]


def test_pai_sample_is_the_official_shuffle_of_sorted_file_names() -> None:
    """LALBJ/PAI chair_eval.py seeds Python's random with 927, shuffles the listed file names, keeps the first 500."""
    files = [f"COCO_val2014_{i:012d}.jpg" for i in random.Random(1).sample(range(1, 600_000), 2000)]
    file_names = {int(name.split(".jpg")[0][-6:]): name for name in files}  # eval_data_loader.py's id rule
    state = random.getstate()
    try:
        random.seed(927)  # setup_seeds()
        official = sorted(files)  # os.listdir order is file-system dependent; sorted is the portable one
        random.shuffle(official)  # COCODataSet.__init__
    finally:
        random.setstate(state)
    expected = [int(name.split(".jpg")[0][-6:]) for name in official[:500]]  # batch size 1, break at batch 500
    assert sample_split(file_names, 500, 927) == expected


def test_a_pool_smaller_than_the_sample_is_refused() -> None:
    with pytest.raises(ConfigError, match="samples 500 images but the image set holds only 3"):
        sample_split({1: "a.png", 2: "b.png", 3: "c.png"}, 500, 0)


# --- options a protocol fixes -----------------------------------------------------------------------------------


def test_check_conflicts_names_both_values() -> None:
    vhr = get_protocol("vhr")
    check_conflicts(vhr, {"--prompt": vhr.prompt, "--max-new-tokens": 512})  # agreeing values are fine
    with pytest.raises(ConfigError) as err:
        check_conflicts(vhr, {"--max-new-tokens": 64, "--prompt": "Describe.", "--seed": 3})
    message = str(err.value)
    for part in ("--max-new-tokens 64", "fixes 512", "--prompt 'Describe.'", vhr.prompt, "--seed 3", "[0, 1, 2, 3, 4]"):
        assert part in message, message


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--protocol", "vhr", "--max-new-tokens", "64"], ["--max-new-tokens 64", "fixes 512"]),
        (["--protocol", "pai", "--prompt", "Please describe this image in detail."],
         ["Please describe this image in detail.", "Please help me describe the image in detail."]),
        (["--protocol", "vhr", "--num-beams", "5"], ["--num-beams 5", "fixes 1"]),
        (["--protocol", "vhr", "--limit", "4"], ["--limit 4", "500-image sample"]),
        (["--protocol", "pai", "--seed", "0"], ["--seed 0", "[927]"]),
        (["--protocol", "vhr", "--splits", "6"], ["--splits 6", "5 split(s)"]),
        (["--protocol", "pai", "--splits", "2"], ["--splits 2", "1 split(s)"]),
        (["--protocol", "vhx"], ["'vhx'", "did you mean 'vhr'"]),
        (["--splits", "2"], ["--splits 2 needs --protocol"]),
    ],
)  # fmt: skip
def test_conflicting_options_are_refused_before_the_model_loads(
    args: list[str], named: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    _no_model(monkeypatch)
    code, output = _main(["chair", *args, "--out", str(tmp_path / "run")], monkeypatch, capsys)
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in output, output
    assert all(part in errors[0] for part in named), errors[0]
    assert not (tmp_path / "run").exists()


# --- statistics over splits -------------------------------------------------------------------------------------


def test_summary_is_mean_and_sample_std_over_fake_split_metrics() -> None:
    values = {"CHAIR_s": [0.40, 0.50, 0.45], "CHAIR_i": [0.12, 0.15, 0.13], "recall": [0.80, 0.78, 0.79]}
    rows = [
        {"seed": seed, "run": f"split{k + 1}-seed{seed}", "metrics": {key: v[k] for key, v in values.items()}}
        for k, seed in enumerate((0, 1, 2))
    ]
    summary = summarise_splits(get_protocol("vhr"), rows)
    for key, series in values.items():
        row = summary["metrics"][key]
        assert row["values"] == series
        assert row["mean"] == pytest.approx(statistics.fmean(series))
        assert row["std"] == pytest.approx(statistics.stdev(series))  # n - 1
    assert summary["metrics"]["CHAIR_s"]["std"] == pytest.approx(0.05)
    assert summary["n_splits_run"] == 3 and summary["complete"] is False  # vhr has 5
    assert [s["seed"] for s in summary["splits"]] == [0, 1, 2] and summary["protocol"]["name"] == "vhr"
    one = summarise_splits(get_protocol("pai"), rows[:1])
    assert one["complete"] is True and one["metrics"]["CHAIR_s"] == {"mean": 0.40, "std": None, "values": [0.40]}


def test_a_protocol_runs_each_split_on_the_toy_world(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """`halluc chair --protocol vhr --splits 2` with the protocol shrunk to 2 images and 4 tokens (data, not code)."""
    small = replace(PROTOCOLS["vhr"], n_images=2, max_new_tokens=4, seeds=(0, 1, 2))
    monkeypatch.setitem(PROTOCOLS, "vhr", small)
    out = tmp_path / "vhr"
    args = ["chair", "--protocol", "vhr", "--splits", "2", "--max-new-tokens", "4", "--batch-size", "2"]
    code, output = _main([*args, "--out", str(out)], monkeypatch, capsys)
    assert code == 0, output
    expected = protocol_splits(small, resolve_images("toy:val"), 2)
    summary = json.loads((out / SUMMARY_FILE).read_text())
    split_metrics = []
    for index, (seed, images) in enumerate(expected):
        run = split_dir(out, index, seed)
        ids = [int(line) for line in (run / IDS_FILE).read_text().split()]
        manifest = json.loads((run / "manifest.json").read_text())
        assert ids == list(images.image_ids)
        assert manifest["protocol"]["name"] == "vhr" and manifest["protocol"]["seed"] == seed == manifest["seed"]
        assert manifest["prompt"] == small.prompt and manifest["settings"]["max_new_tokens"] == 4
        assert set(manifest["protocol"]["data_files"]) == {"instances", "captions"}  # path + sha256 of the GT
        assert sorted(int(s["image_id"]) for s in map(json.loads, (run / "samples.jsonl").read_text().splitlines()))\
            == sorted(ids)  # fmt: skip
        split_metrics.append(json.loads((run / "metrics.json").read_text()))
    for key in ("CHAIR_s", "CHAIR_i", "recall"):
        series = [m[key] for m in split_metrics]
        assert summary["metrics"][key]["values"] == series
        assert summary["metrics"][key]["mean"] == pytest.approx(statistics.fmean(series))
        assert summary["metrics"][key]["std"] == pytest.approx(statistics.stdev(series))
    assert summary["complete"] is False and summary["n_splits_run"] == 2


# --- POPE question-file versions and RePOPE labels --------------------------------------------------------------


@needs_pope
@pytest.mark.parametrize(
    ("folder", "version"), [("questions_e3e3926", "pope-e3e3926"), ("questions_current", "pope-3df3ba1")]
)
def test_pope_file_version_is_detected_on_the_shared_real_files(folder: str, version: str) -> None:
    for split in ("random", "popular", "adversarial"):
        questions = load_questions(POPE_DATA / folder / f"coco_pope_{split}.json")
        [found] = detect_pope_version(questions)
        assert (found["split"], found["version"], found["match"]) == (split, version, "exact")
        assert found["n_questions"] == (2910 if (split, version) == ("random", "pope-e3e3926") else 3000)


@needs_pope
def test_pope_version_of_llavas_combined_unlabelled_file_and_of_a_subset() -> None:
    combined = load_questions(POPE_DATA / "answers" / "llava_pope_test_questions.jsonl")  # suffix, no labels
    found = {f["split"]: f for f in detect_pope_version(combined)}
    assert {s: (f["version"], f["match"]) for s, f in found.items()} == {
        s: ("pope-e3e3926", "questions") for s in ("random", "popular", "adversarial")
    }
    subset = load_questions(POPE_DATA / "questions_current" / "coco_pope_popular.json")[:100]
    assert detect_pope_version(subset)[0]["version"] == "unknown"


def _questions(split: str) -> list[PopeQuestion]:
    rows = [("a.jpg", "dog", True), ("a.jpg", "cat", False), ("b.jpg", "car", True), ("b.jpg", "bus", False)]
    return [PopeQuestion(n, image, f"Is there a {obj} in the image?", label, split)
            for n, (image, obj, label) in enumerate(rows, 1)]  # fmt: skip


def test_a_repope_format_label_set_relabels_and_drops(tmp_path: Path) -> None:
    """A hand-made file in RePOPE's format (coco_repope_{split}.json: POPE's own JSON lines, corrected labels,
    ambiguous questions left out), read by the same loader."""
    asked = _questions("random")
    relabels = [replace(asked[0], label=False), asked[2], asked[3]]  # q1 corrected, q2 ambiguous (removed)
    path = tmp_path / "coco_repope_random.json"
    write_questions(relabels, path)
    kept, effect = apply_label_set(asked, load_questions(path))
    assert [(q.question_id, q.label) for q in kept] == [(1, False), (3, True), (4, False)]
    assert effect == {"n_kept": 3, "n_dropped": 1, "n_relabelled": 1}
    suffixed = [replace(q, text=q.text + "\nAnswer the question using a single word or phrase.") for q in asked]
    assert apply_label_set(suffixed, relabels)[1] == effect  # matched on the question's first line
    other = [replace(relabels[0], image="z.jpg")]
    with pytest.raises(InputDataError, match="1 questions of the label set are not among the questions asked"):
        apply_label_set(asked, other)


def test_pope_records_file_version_and_label_set_in_the_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    images = resolve_images("toy:val", limit=2)
    names = [images.file_names[i] for i in images.image_ids]
    asked = [replace(q, image=names[0] if q.image == "a.jpg" else names[1]) for q in _questions("random")]
    questions, labels = tmp_path / "coco_pope_random.json", tmp_path / "coco_repope_random.json"
    write_questions(asked, questions)
    write_questions([replace(asked[0], label=False), asked[2], asked[3]], labels)
    out = tmp_path / "pope"
    args = ["pope", "--questions", str(questions), "--label-set", str(labels), "--max-new-tokens", "2"]
    code, output = _main([*args, "--out", str(out)], monkeypatch, capsys)
    assert code == 0, output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["question_versions"][0]["version"] == "unknown" and manifest["n_questions"] == 3
    assert manifest["label_set"]["n_relabelled"] == 1 and manifest["label_set"]["n_dropped"] == 1
    assert manifest["question_files"][0]["path"] == str(questions.resolve())
    scored = json.loads((out / "pope_scored.json").read_text())
    assert [(r["question_id"], r["label"]) for r in scored] == [(1, False), (3, True), (4, False)]
