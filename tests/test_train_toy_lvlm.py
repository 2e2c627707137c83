"""The toy-LVLM training script: questions in POPE's exact prompt format, and a tiny two-process (gloo) run that
saves a LLaVA that transformers loads."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
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


def test_questions_use_the_pope_prompt(script) -> None:
    """The model must be trained on the prompt POPE sends (question, newline, suffix), or it answers off-format."""
    args = script.parse_args(["--questions-per-image", "8"])
    examples = script.make_examples([{"id": 1}], {1: ["cat"]}, {1: ["A cat."]}, ["cat", "dog", "tv"], args)
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
        + ["--steps", "3", "--batch-size", "4", "--dim", "64", "--vision-dim", "32", "--vocab-size", "300"]
    )
    script.train(args)
    record = json.loads((out / "TRAINING.json").read_text())
    assert record["args"]["processes"] == 2 and "out" not in record["args"] and "world" not in record["args"]
    model = AutoModelForImageTextToText.from_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)
    assert model.config.text_config.num_hidden_layers == 4 and model.config.text_config.num_attention_heads == 8
    assert processor.tokenizer.chat_template == script.CHAT_TEMPLATE


def test_tokenizer_merges_the_prompts(script) -> None:
    """Prompts are in the BPE corpus as often as training sees them, so they cost a few tokens, not bytes."""
    records = [{"caption": "A cat sits on a couch next to a tv."}] * 50
    plain = script.build_tokenizer([record["caption"] for record in records], 400)
    tuned = script.build_tokenizer(script.tokenizer_corpus(records, ["cat", "couch", "tv"], 50), 400)
    prompt = pope_prompt("Is there a cat in the image?")
    assert len(tuned(prompt)["input_ids"]) * 2 < len(plain(prompt)["input_ids"])
    assert len(tuned(DESCRIBE_PROMPT)["input_ids"]) * 2 < len(plain(DESCRIBE_PROMPT)["input_ids"])
