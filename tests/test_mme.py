"""MME-style scoring (the eval tool's rule, by hand), world questions checked against the world's annotations,
and the MME / AMBER jobs on a tiny random LLaVA (runs, resume, rescoring through halluc score amber)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_models import build_tiny

from benchmarks import mme
from benchmarks.qa_jobs import amber_requests, run_amber, run_mme, world_amber_data
from benchmarks.runner import GenerationSettings
from benchmarks.score import score_amber_file
from halluc.errors import ConfigError, InputDataError
from halluc.imagesets import resolve_images
from halluc.world import build_split
from halluc.world.captions import OCCLUDED_BELOW
from halluc.world.catalog import GLYPHS
from halluc.world.questions import MME_SUBSETS, load_world_images, mme_questions


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("Yes", "yes"), ("no", "no"), ("Yes, there is.", "yes"), ("No.", "no"), ("Not at all", "no"),
     ("I think yes", "other"), ("There is a cat", "other"), ("nope", "no"), (" yes", "yes")],
)  # fmt: skip
def test_parse_answer_follows_the_eval_tool(text: str, parsed: str) -> None:
    assert mme.parse_answer(text) == parsed


def test_score_by_hand() -> None:
    records = [
        # existence: image a both right; image b answers "No" twice (one right)
        {"subset": "existence", "image": "a", "label": True, "response": "Yes"},
        {"subset": "existence", "image": "a", "label": False, "response": "No"},
        {"subset": "existence", "image": "b", "label": True, "response": "No"},
        {"subset": "existence", "image": "b", "label": False, "response": "No"},
        # count: one "other" answer, one right
        {"subset": "count", "image": "c", "label": True, "response": "Maybe"},
        {"subset": "count", "image": "c", "label": False, "response": "no"},
        # colour: a pair with its no-question missing (left out, counted)
        {"subset": "colour", "image": "d", "label": True, "response": "Yes"},
    ]
    metrics = mme.score(records, MME_SUBSETS)
    assert (metrics["existence_acc"], metrics["existence_acc_plus"], metrics["existence_score"]) == (75.0, 50.0, 125.0)
    assert (metrics["existence_precision"], metrics["existence_recall"]) == (100.0, 50.0)  # of "yes": 1 TP, 1 FN
    assert (metrics["count_acc"], metrics["count_acc_plus"], metrics["count_other"]) == (50.0, 0.0, 1)
    assert metrics["colour_incomplete_pairs"] == 1 and metrics["colour_score"] is None
    assert metrics["position_score"] is None
    assert metrics["total_score"] == 175.0
    with pytest.raises(InputDataError, match="'scene'"):
        mme.score([{**records[0], "subset": "scene"}], MME_SUBSETS)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("world")
    build_split("val", 24, root, seed=5)
    return root


def _images(world: Path, limit: int):
    return resolve_images(str(world / "images" / "val"), instances=world / "instances_val.json", limit=limit)


def test_world_questions_are_true_and_paired(world: Path) -> None:
    images = load_world_images(world / "instances_val.json")
    questions = mme_questions(images)
    by_id = {image.id: image for image in images}
    for subset in MME_SUBSETS:
        asked = [q for q in questions if q.kind == subset]
        assert asked, subset
        for image_id in {q.image_id for q in asked}:  # MME's format: one yes and one no question per image
            assert sorted(q.label for q in asked if q.image_id == image_id) == [False, True]
    for q in questions:
        objs = by_id[q.image_id].objects
        names = {o.category: o for o in objs}
        if q.kind == "existence":
            name = q.text.removeprefix("Is there a ").removeprefix("n ").removesuffix(" in the image?")
            assert (name in names) == q.label and (not q.label or names[name].visible >= OCCLUDED_BELOW)
        elif q.kind == "count":
            assert all(o.visible >= OCCLUDED_BELOW for o in objs)
            word = q.text.split()[2]
            n = ("one", "two", "three", "four", "five", "six", "seven").index(word) + 1
            assert (n == len(objs)) == q.label
        elif q.kind == "colour":
            obj = next(o for c, o in names.items() if q.text.startswith(f"Is the {c} "))
            assert obj.contrast == 1.0 and (f" {GLYPHS[obj.category].colour} " in q.text) == q.label
        else:
            obj = next(o for c, o in names.items() if q.text.startswith(f"Is the {c} "))
            cx, cy = obj.box[0] + obj.box[2] / 2, obj.box[1] + obj.box[3] / 2
            side = {"left": cx < 64 / 3, "right": cx >= 128 / 3, "top": cy < 64 / 3, "bottom": cy >= 128 / 3}
            assert side[next(s for s in side if f" {s} " in q.text)] == q.label


def test_mme_job_runs_resumes_and_scores(world: Path, tmp_path: Path) -> None:
    lvlm = build_tiny("llava")
    images = _images(world, limit=4)
    settings = GenerationSettings(max_new_tokens=3, batch_size=8)
    first = run_mme(lvlm, images, tmp_path / "mme", settings=settings, progress=False)
    n = len(mme_questions(load_world_images(images.instances, images.image_ids)))
    assert first.summary.generated == n and 0 <= first.metrics["total_score"] <= 800
    again = run_mme(lvlm, images, tmp_path / "mme", settings=settings, progress=False, resume=True)
    assert again.summary.generated == 0 and again.metrics == first.metrics
    assert json.loads((tmp_path / "mme" / "manifest.json").read_text())["job"] == "mme"


def test_amber_job_on_the_world_rescores_identically(world: Path, tmp_path: Path) -> None:
    lvlm = build_tiny("llava")
    images = _images(world, limit=3)
    run = tmp_path / "amber"
    data = world_amber_data(images, run / "amber_data")
    requests = amber_requests(data, images.image_dir)
    result = run_amber(lvlm, data, requests, run, settings=GenerationSettings(max_new_tokens=6, batch_size=8),
                       answer_tokens=2, progress=False)  # fmt: skip
    assert result.summary.generated == len(requests) and result.metrics["n_generative"] == 3
    rescored = score_amber_file(run / "samples.jsonl", tmp_path / "rescored", amber_data=run / "amber_data",
                                id_key="query_id", parse_answers=True)  # fmt: skip
    assert {k: v for k, v in rescored.metrics.items() if k in result.metrics and k not in ("n_errors", "firing")} == {
        k: v for k, v in result.metrics.items() if k not in ("n_errors", "firing")
    }


def test_world_questions_need_world_annotations(world: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="embedded world"):
        world_amber_data(resolve_images(str(world / "images" / "val")), tmp_path / "d")
    (tmp_path / "coco.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    with pytest.raises(InputDataError, match="not in"):
        load_world_images(tmp_path / "coco.json", [7])
