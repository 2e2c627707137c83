"""The CrossCheck job end to end: scripted systems on a tiny world, resume, the dashboard's reader, and the CLI."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from PIL import Image
from tiny_models import tiny_parts
from typer.testing import CliRunner

from app.artifacts import crosscheck as read_for_dashboard
from benchmarks import crosscheck
from benchmarks.crosscheck import CrossCheckSettings, System, run_crosscheck
from halluc.errors import OutputLocationError
from halluc.imagesets import ImageSet, resolve_images
from halluc.world import build_split

FOREIGN = ("giraffe", "zebra", "elephant", "umbrella", "toaster", "scissors")  # never in the toy world


def _key(image: Image.Image) -> str:
    return hashlib.sha1(image.convert("RGB").tobytes()).hexdigest()


@dataclass(frozen=True)
class Level:
    """A scripted 'intervention': the system invents ``level`` objects per description."""

    level: int

    def apply(self, lvlm: Any) -> nullcontext:
        return nullcontext()

    def to_dict(self) -> dict[str, Any]:
        return {"name": "level", "level": self.level}


class ScriptedLVLM:
    """Names an image's true objects (one sentence each) plus ``level`` invented ones; sampling varies them."""

    name_or_path = "scripted-lvlm"

    def __init__(self, truth: dict[str, set[str]]) -> None:
        self.truth = truth
        self.model = SimpleNamespace(config=SimpleNamespace())
        self.generated = 0
        self.rng = random.Random(0)

    def generate(self, images: Sequence[Image.Image], prompts: Sequence[str], **kwargs: Any) -> list[str]:
        level = kwargs["intervention"].level if kwargs.get("intervention") else 0
        texts = []
        for image in images:
            objects = sorted(self.truth[_key(image)])
            invented = self.rng.sample(FOREIGN, level) if kwargs.get("do_sample") else list(FOREIGN[:level])
            texts.append(" ".join(f"There is a {obj}." for obj in [*objects, *invented]))
        self.generated += len(images)
        return texts


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[ImageSet, dict[str, set[str]]]:
    root = tmp_path_factory.mktemp("world")
    paths = build_split("val", 8, root, seed=5)
    images = resolve_images(str(paths.images), instances=paths.instances, captions=paths.captions)
    data = json.loads(paths.instances.read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    by_id: dict[int, set[str]] = {img["id"]: set() for img in data["images"]}
    for ann in data["annotations"]:
        by_id[ann["image_id"]].add(names[ann["category_id"]])
    truth = {_key(Image.open(images.path(i))): by_id[i] for i in images.image_ids}
    return images, truth


def _scripted_judge(truth: dict[str, set[str]], calls: list[int]):
    def judge(lvlm: Any, images: Sequence[Image.Image], objects: Sequence[str], **kwargs: Any) -> list[float]:
        calls.append(len(objects))
        return [0.1 if obj in truth[_key(img)] else 0.9 for img, obj in zip(images, objects, strict=True)]

    return judge


SYSTEMS = [System("honest"), System("one", intervention=Level(1)), System("two", intervention=Level(2))]


def test_scripted_systems_rank_like_chair_and_resume(world, tmp_path: Path, monkeypatch) -> None:
    images, truth = world
    calls: list[int] = []
    monkeypatch.setattr(crosscheck, "judge_objects", _scripted_judge(truth, calls))
    lvlm = ScriptedLVLM(truth)
    loaded: list[str | None] = []
    settings = CrossCheckSettings(n_samples=3, batch_size=4, max_new_tokens=16)

    def load(model: str | None) -> ScriptedLVLM:
        loaded.append(model)
        return lvlm

    out = tmp_path / "cc"
    result = run_crosscheck(SYSTEMS, images, out, load, settings=settings, progress=False)

    assert loaded == [None]  # one shared model, loaded once
    assert lvlm.generated == 3 * 8 * (1 + 3)
    rows = {row["system"]: row for row in result["systems"]}
    assert [rows[n]["CHAIR_i"] for n in ("honest", "one", "two")] == sorted(rows[n]["CHAIR_i"] for n in rows)
    assert rows["honest"]["CHAIR_i"] == 0.0 < rows["one"]["CHAIR_i"] < rows["two"]["CHAIR_i"]
    for kind in ("explicit", "implicit"):
        assert result[kind]["ranking"] == ["honest", "one", "two"]
        assert result[kind]["correlation"]["spearman"] == pytest.approx(1.0)
        assert result[kind]["weights"]["honest"] > result[kind]["weights"]["two"]
    assert rows["honest"]["explicit"] == 0.0 and rows["honest"]["implicit"] == pytest.approx(0.1)
    assert result["correlations"]["spearman explicit (CHAIR_i)"] == pytest.approx(1.0)

    invented = [s for s in result["sentences"] if "giraffe" in s["sentence"]]
    assert invented and all(s["system"] in ("one", "two") for s in invented)
    for sentence in invented:
        (obj,) = sentence["objects"]
        assert (obj["object"], obj["annotation"], obj["p_no"]) == ("giraffe", "hallucinated", pytest.approx(0.9))
        assert sentence["score"] == sentence["explicit"] > 0.5
    assert set(invented[0]["explicit_by_evidence"]) == {"honest", "one", "two"}

    for sub in ("target", "evidence"):
        assert (out / rows["two"][f"{sub}_run"] / "manifest.json").exists()
    assert (out / rows["two"]["evidence_run"] / "judgements.json").exists()
    on_disk = json.loads((out / "crosscheck.json").read_text())
    assert on_disk["systems"] == json.loads(json.dumps(result["systems"]))
    dashboard = read_for_dashboard(out)
    assert [s["system"] for s in dashboard.systems] == ["honest", "one", "two"]
    assert dashboard.correlations["spearman explicit (CHAIR_i)"] == pytest.approx(1.0)
    assert json.loads((out / "manifest.json").read_text())["status"] == "finished"

    generated, judged = lvlm.generated, len(calls)
    again = run_crosscheck(SYSTEMS, images, out, load, settings=settings, resume=True, progress=False)
    assert (lvlm.generated, len(calls)) == (generated, judged)  # every sample and judgement came from disk
    assert again["systems"] == result["systems"]
    with pytest.raises(OutputLocationError, match="already holds a crosscheck run"):
        run_crosscheck(SYSTEMS, images, out, load, settings=settings, progress=False)


def test_images_without_annotations_still_rank(world, tmp_path: Path, monkeypatch) -> None:
    images, truth = world
    bare = ImageSet("bare", images.image_dir, images.image_ids[:4], images.file_names)
    monkeypatch.setattr(crosscheck, "judge_objects", _scripted_judge(truth, []))
    result = run_crosscheck(SYSTEMS, bare, tmp_path / "cc", lambda _: ScriptedLVLM(truth), progress=False)
    assert result["explicit"]["ranking"] == ["honest", "one", "two"]
    assert result["correlations"] == {} and result["explicit"]["correlation"] is None
    assert all(row["CHAIR_i"] is None for row in result["systems"])
    assert all(o["annotation"] is None for s in result["sentences"] for o in s["objects"])


def test_cli_crosscheck_on_a_tiny_model(world, tmp_path: Path) -> None:
    from halluc.cli import app

    images, _ = world
    model_dir = tmp_path / "tiny"
    model, processor = tiny_parts("llava")
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    out = tmp_path / "cc"
    args = ["crosscheck", "--model", str(model_dir), "--systems", "baseline", "--systems", "vhr:alpha=2",
            "--images", str(images.image_dir), "--annotations", str(images.instances),
            "--captions", str(images.captions), "--limit", "2", "--samples", "1", "--max-new-tokens", "6",
            "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    written = json.loads((out / "crosscheck.json").read_text())
    assert {row["system"] for row in written["systems"]} | set(written["unscored"]) == {"baseline", "vhr:alpha=2"}
    assert "crosscheck.json" in result.output
