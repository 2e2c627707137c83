"""SENTINEL generation: pair construction on a scripted model and validator, resume, stopping, prompts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image
from tiny_models import build_tiny

from benchmarks.sentinel import generate_pairs
from halluc.errors import ConfigError, OutputLocationError
from halluc.imagesets import ImageSet
from halluc.records import read_records
from halluc.sentinel import (
    LVLMSentenceSource,
    Sample,
    SentenceEnd,
    SentinelConfig,
    continuation,
    cut_row,
    render_prompt,
    run_step,
)

PAIR_KEYS = {
    "image_id", "image_path", "question", "context", "y_win", "y_lose", "win_objects", "lose_hallucinated",
    "context_objects", "step", "type",
}  # fmt: skip
ENDED = object()  # marks a scripted sample that ends the answer


def s(text: str, ended: bool = False) -> Sample:
    return Sample(text, ended=ended, complete=True)


# Image 1 shows a dog, a dining table and a cup; the bowl is "uncertain"; cat, knife and bus are absent.
SCRIPT: dict[int, dict[str, list[Sample]]] = {
    1: {
        "": [s("A dog sits on a table."), s("A cat sits on a table."), s("A dog sits on a table."),
             s("The floor is wood.")],
        "A dog sits on a table.": [
            s("The dog is next to a cup."), s("A knife lies by the dog."), s("A cup is on the table."),
            s("The dog looks at a cat."), s("A bowl is near the dog."),
        ],
        "A dog sits on a table. The dog is next to a cup.": [
            s("The cup is red."), s("A bus.", ended=True), s("", ended=True), s("", ended=True),
        ],
    },
    2: {"": [s("", ended=True), s("", ended=True), s("A cat.")]},
}  # fmt: skip
STATUS = {
    1: {"dog": "present", "dining table": "present", "cup": "present", "bowl": "uncertain", "cat": "hallucinated",
        "knife": "hallucinated", "bus": "hallucinated"},
    2: {"cat": "hallucinated"},
}  # fmt: skip


class ScriptedSource:
    """Returns SCRIPT[image id][context]; counts calls and can fail at a given call (a simulated kill)."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.calls = 0
        self.fail_at = fail_at

    def sample(self, images: Sequence[Image.Image], question: str, contexts: Sequence[str]) -> list[list[Sample]]:
        self.calls += 1
        if self.calls == self.fail_at:
            raise KeyboardInterrupt
        return [SCRIPT[img.info["image_id"]][ctx] for img, ctx in zip(images, contexts, strict=True)]


@dataclass(frozen=True)
class V:
    status: str


class ScriptedValidator:
    """Verdicts from STATUS; records what it was asked."""

    def __init__(self) -> None:
        self.asked: list[list[str]] = []

    def validate_many(self, images, image_keys, objects):
        self.asked += [list(o) for o in objects]
        pairs = zip(images, objects, strict=True)
        return [{o: V(STATUS[img.info["image_id"]][o]) for o in objs} for img, objs in pairs]


@pytest.fixture
def image_set(tmp_path: Path) -> ImageSet:
    folder = tmp_path / "images"
    folder.mkdir()
    for i in (1, 2):
        Image.new("RGB", (28, 28), (40 * i, 90, 160)).save(folder / f"{i}.png")
    return ImageSet("scripted", folder, (1, 2), {1: "1.png", 2: "2.png"})


def expected_pairs(image_dir: Path) -> list[dict]:
    path = str((image_dir / "1.png").resolve())
    base = {"image_id": 1, "image_path": path, "question": SentinelConfig().question, "type": "coherent"}
    ctx1 = {"context": "A dog sits on a table.", "context_objects": ["dog", "dining table"], "step": 1}
    ctx2 = {"context": "A dog sits on a table. The dog is next to a cup.", "step": 2,
            "context_objects": ["dog", "dining table", "cup"]}  # fmt: skip
    return [
        {**base, **ctx1, "y_win": "The dog is next to a cup.", "y_lose": "A knife lies by the dog.",
         "win_objects": ["dog", "cup"], "lose_hallucinated": ["knife"]},
        {**base, **ctx1, "y_win": "A cup is on the table.", "y_lose": "The dog looks at a cat.",
         "win_objects": ["cup", "dining table"], "lose_hallucinated": ["cat"]},
        {**base, **ctx2, "y_win": "The cup is red.", "y_lose": "A bus.", "win_objects": ["cup"],
         "lose_hallucinated": ["bus"]},
    ]  # fmt: skip


def test_pairs_from_scripted_model_and_validator(image_set: ImageSet, tmp_path: Path) -> None:
    validator = ScriptedValidator()
    result = generate_pairs(ScriptedSource(), validator, image_set, tmp_path / "run", progress=False)
    pairs = read_records(tmp_path / "run" / "pairs.jsonl")
    assert all(set(p) == PAIR_KEYS for p in pairs)
    assert pairs == expected_pairs(image_set.image_dir)
    images = {r["image_id"]: r for r in read_records(tmp_path / "run" / "images.jsonl")}
    assert images[1]["description"] == "A dog sits on a table. The dog is next to a cup."
    assert images[1]["stop_reason"] == "answer_end" and images[2]["stop_reason"] == "answer_end"
    assert images[1]["verdicts"]["bowl"] == "uncertain" and images[2]["description"] == ""
    step1 = images[1]["steps"][1]
    assert (step1["coherent"], step1["hallucinated"], step1["uncertain"], step1["kept"]) == (
        2, 2, 1, "The dog is next to a cup."
    )  # fmt: skip
    assert ["dog", "dining table", "cat"] in validator.asked and ["cup", "knife", "bowl"] in validator.asked
    stats = result.stats
    assert stats["n_pairs"] == 3 and stats["pairs_by_type"] == {"coherent": 3}
    rates = [row["hallucination_rate"] for row in stats["by_position"]]
    assert rates == [pytest.approx(2 / 3), pytest.approx(2 / 5), pytest.approx(1 / 2)]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["job"] == "sentinel" and manifest["status"] == "finished"


def test_exploratory_pairs_when_enabled(image_set: ImageSet, tmp_path: Path) -> None:
    config = SentinelConfig(pair_types=("coherent", "exploratory"))
    generate_pairs(ScriptedSource(), ScriptedValidator(), image_set, tmp_path / "run", config=config, progress=False)
    first = [p for p in read_records(tmp_path / "run" / "pairs.jsonl") if p["step"] == 0]
    assert [(p["type"], p["y_win"], p["y_lose"], p["context"]) for p in first] == [
        ("exploratory", "A dog sits on a table.", "A cat sits on a table.", "")
    ]


def test_resume_after_interruption_has_no_duplicate_pairs(image_set: ImageSet, tmp_path: Path) -> None:
    config = SentinelConfig(batch_images=1)
    reference = tmp_path / "ref"
    generate_pairs(ScriptedSource(), ScriptedValidator(), image_set, reference, config=config, progress=False)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):  # killed while sampling for image 2, after image 1 was written
        generate_pairs(ScriptedSource(fail_at=4), ScriptedValidator(), image_set, out, config=config, progress=False)
    assert json.loads((out / "manifest.json").read_text())["status"] == "interrupted"
    with (out / "pairs.jsonl").open("a") as fh:  # a kill between an image's pairs and its record, then a torn line
        fh.write(json.dumps({**expected_pairs(image_set.image_dir)[0], "image_id": 2}) + "\n" + '{"image_id": 2, "y')
    with pytest.raises(OutputLocationError, match="--resume"):
        generate_pairs(ScriptedSource(), ScriptedValidator(), image_set, out, config=config, progress=False)
    with pytest.raises(OutputLocationError, match=r"options differ .*config.batch_images: 1 -> 4"):
        generate_pairs(ScriptedSource(), ScriptedValidator(), image_set, out, resume=True, progress=False)
    source = ScriptedSource()
    result = generate_pairs(source, ScriptedValidator(), image_set, out, config=config, resume=True, progress=False)
    assert (result.skipped, result.generated, source.calls) == (1, 1, 1)
    assert (out / "pairs.jsonl").read_text() == (reference / "pairs.jsonl").read_text()
    assert [r["image_id"] for r in read_records(out / "images.jsonl")] == [1, 2]


def test_step_finishes_on_majority_end_and_never_extends_with_hallucination() -> None:
    statuses = {"cat": "hallucinated", "dog": "present"}
    result = run_step([s("A cat."), s("A cat sits."), s("The sky is blue.")], statuses, [], [])
    assert result.next_sentence is not None and result.next_sentence.text == "The sky is blue."
    result = run_step([s("A cat.")], statuses, [], [])
    assert (result.next_sentence, result.stop_reason) == (None, "no_clean_sentence")
    tie = run_step([s("A dog."), s("", ended=True)], statuses, [], [])  # half, not more than half
    assert tie.next_sentence is not None and tie.next_sentence.text == "A dog."
    assert run_step([s("A dog."), s("A dog.", ended=True), s("")], statuses, [], []).stop_reason == "answer_end"
    assert run_step([s("A dog.")], statuses, ["dog"], ["A dog."]).kinds == {"A dog.": "repeat"}


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ConfigError, match="coherent, exploratory"):
        SentinelConfig(pair_types=("positive",))
    with pytest.raises(ConfigError, match="n_samples"):
        SentinelConfig(n_samples=0)


def test_prompt_and_continuation_match_the_chat_template() -> None:
    processor = build_tiny("llava").processor
    prompt = render_prompt(processor, "Describe this image in detail.")
    assert prompt == "USER: <image>\nDescribe this image in detail. ASSISTANT:"
    assert render_prompt(processor, "Describe this image in detail.", "A cat.") == prompt + " A cat."
    assert continuation(prompt, "A cup.") == " A cup." and continuation("assistant\n", "A cup.") == "A cup."


def test_cut_row_and_sentence_end_criterion() -> None:
    assert cut_row([5, 6, 7, 0, 0], end_ids={7}, eos_ids={2}) == (3, False, True)
    assert cut_row([5, 2, 7, 2], end_ids={7}, eos_ids={2}) == (1, True, True)
    assert cut_row([5, 7, 2, 2], end_ids={7}, eos_ids={2}) == (2, False, True)  # pad == eos after the stop
    assert cut_row([5, 6], end_ids={7}, eos_ids={2}) == (2, False, False)
    ends = torch.tensor([False, False, True])
    assert SentenceEnd(ends)(torch.tensor([[0, 2], [2, 1]]), torch.zeros(2, 3)).tolist() == [True, False]


def test_lvlm_source_batches_images_and_samples() -> None:
    lvlm = build_tiny("llava")
    config = SentinelConfig(n_samples=3, max_sentence_tokens=6)
    source = LVLMSentenceSource(lvlm, config)
    torch.manual_seed(0)
    images = [Image.new("RGB", (28, 28), (200, 0, 0)), Image.new("RGB", (40, 28), (0, 0, 200))]
    out = source.sample(images, "Describe this image in detail.", ["", "A cat is sitting on a wooden table."])
    assert [len(per_image) for per_image in out] == [3, 3]
    for sample in (x for per_image in out for x in per_image):
        assert sample.complete or not sample.ended
        assert sample.text == sample.text.strip()
