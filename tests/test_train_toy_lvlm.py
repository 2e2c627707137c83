"""The toy-LVLM training script: questions in POPE's exact prompt format, and a tiny two-process (gloo) run that
saves a LLaVA that transformers loads."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from benchmarks.pope import pope_prompt
from halluc.defaults import DESCRIBE_PROMPT

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def script():
    """The script as an importable module (spawned training processes import it by name, so it must be on the
    path they inherit)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        yield importlib.import_module("train_toy_lvlm")
    finally:
        sys.path.remove(str(ROOT / "scripts"))


def one_image_data(script):
    """Training data for one image holding a cat, with no pixels (only the text side is exercised)."""
    empty = torch.empty(0)
    return script.TrainingData([{"id": 1}], {1: ["cat"]}, {1: ["A cat."]}, ["cat", "dog", "tv"], empty, (empty, empty))


def test_questions_use_the_pope_prompt(script) -> None:
    """The model must be trained on the prompt POPE sends (question, newline, suffix), or it answers off-format."""
    examples = script.make_examples(one_image_data(script), questions_per_image=8, batch_size=4, seed=0)
    questions = [ex for ex in examples if ex.prompt != DESCRIBE_PROMPT]
    assert len(questions) == 8 and {ex.answer for ex in questions} <= {"Yes", "No"}
    suffixed = [ex.prompt for ex in questions if "\n" in ex.prompt]
    bare = [ex.prompt for ex in questions if "\n" not in ex.prompt]
    assert suffixed and bare
    assert all(prompt == pope_prompt(prompt.split("\n")[0]) for prompt in suffixed)
    assert all(prompt.startswith("Is there a") and prompt.endswith("in the image?") for prompt in bare)


def test_two_process_training_saves_a_loadable_llava(script, tmp_path: Path) -> None:
    out = tmp_path / "model"
    args = script.parse_args(
        ["--out", str(out), "--world", str(tmp_path / "world"), "--n-train", "24", "--vision-steps", "2"]
        + ["--steps", "3", "--answer-steps", "2", "--batch-size", "4", "--dim", "64", "--vision-dim", "32"]
        + ["--vocab-size", "300"]
    )
    script.train(args)
    record = json.loads((out / "TRAINING.json").read_text())
    assert record["args"]["processes"] == 2 and "out" not in record["args"] and "world" not in record["args"]
    assert set(record["final_losses"]) == {"stage 1", "stage 2"}
    model = AutoModelForImageTextToText.from_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)
    assert model.config.text_config.num_hidden_layers == 4 and model.config.text_config.num_attention_heads == 8
    assert processor.tokenizer.chat_template == script.CHAT_TEMPLATE


def test_a_phase_of_zero_steps_is_skipped(script, tmp_path: Path) -> None:
    """``--steps 0`` (stage 2 only) must train and record stage 2 alone, not crash on a loss it never computed."""
    out = tmp_path / "model"
    args = script.parse_args(
        ["--out", str(out), "--world", str(tmp_path / "world"), "--n-train", "24", "--vision-steps", "1"]
        + ["--steps", "0", "--answer-steps", "1", "--batch-size", "4", "--dim", "64", "--vision-dim", "32"]
        + ["--vocab-size", "300", "--processes", "1"]
    )
    script.train(args)
    assert set(json.loads((out / "TRAINING.json").read_text())["final_losses"]) == {"stage 2"}


def test_stage_two_is_question_heavy(script) -> None:
    """Stage 2 exists to get the yes/no answers learned: more questions per description, a lower learning rate."""
    first, second = script.phases(script.parse_args([]))
    assert second.questions_per_image > first.questions_per_image and second.lr < first.lr
    args = script.parse_args(["--batch-size", "4", "--processes", "1"])
    stream = script.batches(one_image_data(script), second, 1, args, rank=0)
    batch = next(stream)
    assert len(batch) == 4 and sum(ex.prompt != DESCRIBE_PROMPT for ex in batch) == 3
