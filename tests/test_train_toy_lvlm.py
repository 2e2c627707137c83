"""The toy-LVLM training script: LLaVA's recipe after a text-only pretraining (each phase trains its own part),
questions in POPE's exact prompt format, text-only examples in tuning, and a tiny two-process (gloo) run that saves
a LLaVA that transformers loads."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import tiny_parts
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


def one_image_data(script, texts: tuple[str, ...] = ()):
    """Training data for one image holding a cat, with no pixels (only the text side is exercised)."""
    empty = torch.empty(0)
    captions = {1: ["A cat lies on the couch.", "A cat."]}
    return script.TrainingData(
        [{"id": 1}], {1: ["cat"]}, captions, ["cat", "dog", "tv"], empty, empty, (empty, empty), list(texts)
    )


def tuning(script, **overrides):
    return script.Phase("tuning", 10, 1e-4, "projector + language model", **overrides)


def test_questions_use_the_pope_prompt(script) -> None:
    """The model must be trained on the prompt POPE sends (question, newline, suffix), or it answers off-format."""
    phase = tuning(script, questions_per_image=8)
    examples = script.make_examples(one_image_data(script), phase, batch_size=4, seed=0)
    assert [ex.answer for ex in examples if ex.prompt == DESCRIBE_PROMPT] == ["A cat lies on the couch."]
    questions = [ex for ex in examples if ex.prompt != DESCRIBE_PROMPT]
    assert len(questions) == 8 and {ex.answer for ex in questions} <= {"Yes", "No"}
    suffixed = [ex.prompt for ex in questions if "\n" in ex.prompt]
    bare = [ex.prompt for ex in questions if "\n" not in ex.prompt]
    assert suffixed and bare
    assert all(prompt == pope_prompt(prompt.split("\n")[0]) for prompt in suffixed)
    assert all(prompt.startswith("Is there a") and prompt.endswith("in the image?") for prompt in bare)


def test_tuning_mixes_in_text_only_descriptions(script) -> None:
    """Text-only descriptions (describe prompt, no image) make up ``text_share`` of tuning, so the prior is kept."""
    data = one_image_data(script, texts=tuple(f"A kitchen scene with a cup number {i}." for i in range(20)))
    examples = script.make_examples(data, tuning(script, questions_per_image=2, text_share=0.25), 4, seed=0)
    text_only = [ex for ex in examples if ex.image_index is None]
    assert len(examples) == 4 and len(text_only) == 1
    assert text_only[0].prompt == DESCRIBE_PROMPT and text_only[0].answer in data.texts


def test_text_pretraining_is_plain_text_and_encodes_as_bos_plus_answer(script) -> None:
    data = one_image_data(script, texts=("A street with a car.", "A park with a dog."))
    phase = script.Phase("text pretraining", 1, 1e-3, "language model")
    examples = script.make_examples(data, phase, batch_size=2, seed=0)
    assert {ex.answer for ex in examples} == set(data.texts) and {ex.prompt for ex in examples} == {None}


def test_each_phase_trains_only_its_part(script) -> None:
    """Alignment trains the projector alone; text pretraining the language model alone; the tower never learns."""
    model, _ = tiny_parts("llava")
    for phase, learns in [
        (script.Phase("a", 1, 1e-3, "projector"), {"multi_modal_projector"}),
        (script.Phase("t", 1, 1e-3, "language model"), {"language_model", "lm_head"}),
        (tuning(script), {"multi_modal_projector", "language_model", "lm_head"}),
    ]:
        trainable = script.trainable_parts(model, phase)
        names = {n for n, p in model.named_parameters() if p.requires_grad}
        assert len(trainable) == len(names) > 0
        assert {part for n in names for part in learns if part in n} == learns
        assert not any("vision_tower" in n for n in names)
        assert all(any(part in n for part in learns) for n in names)


def test_two_process_training_saves_a_loadable_llava(script, tmp_path: Path) -> None:
    out = tmp_path / "model"
    args = script.parse_args(
        ["--out", str(out), "--world", str(tmp_path / "world"), "--n-train", "24", "--vision-steps", "2"]
        + ["--text-steps", "2", "--text-batch-size", "4", "--align-steps", "2", "--tune-steps", "2"]
        + ["--batch-size", "4", "--dim", "64", "--vision-dim", "32", "--vocab-size", "300"]
    )
    script.train(args)
    record = json.loads((out / "TRAINING.json").read_text())
    assert record["args"]["processes"] == 2 and "out" not in record["args"] and "world" not in record["args"]
    assert set(record["final_losses"]) == {"text pretraining", "alignment", "tuning"}
    model = AutoModelForImageTextToText.from_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)
    assert model.config.text_config.num_hidden_layers == 8 and model.config.text_config.num_attention_heads == 8
    assert processor.tokenizer.chat_template == script.CHAT_TEMPLATE


def test_a_phase_of_zero_steps_is_skipped(script, tmp_path: Path) -> None:
    """``--text-steps 0 --align-steps 0`` must train and record tuning alone, not crash on a loss it never
    computed."""
    out = tmp_path / "model"
    args = script.parse_args(
        ["--out", str(out), "--world", str(tmp_path / "world"), "--n-train", "24", "--vision-steps", "1"]
        + ["--text-steps", "0", "--align-steps", "0", "--tune-steps", "1", "--batch-size", "4", "--dim", "64"]
        + ["--vision-dim", "32", "--vocab-size", "300", "--processes", "1", "--layers", "2"]
    )
    script.train(args)
    assert set(json.loads((out / "TRAINING.json").read_text())["final_losses"]) == {"tuning"}


def test_tuning_follows_pretraining_at_a_lower_rate_and_asks_questions(script) -> None:
    """LLaVA's order: text pretraining, projector alignment, then tuning at a lower rate with questions mixed in."""
    text, align, tune = script.phases(script.parse_args([]))
    assert [p.trains for p in (text, align, tune)] == ["language model", "projector", "projector + language model"]
    assert tune.lr < text.lr and tune.questions_per_image > 0 and 0 < tune.text_share < 1
    args = script.parse_args(["--batch-size", "4", "--processes", "1"])
    data = one_image_data(script, texts=("A park with a dog.",))
    mixed = tuning(script, questions_per_image=2, text_share=0.25)
    batch = next(script.batches(data, mixed, 2, args, rank=0))
    assert len(batch) == 4 and sum(ex.prompt not in (DESCRIBE_PROMPT, None) for ex in batch) == 2
    with pytest.raises(ValueError, match="fewer than a batch"):  # one image cannot fill a batch of 8: fail, not hang
        next(script.batches(data, mixed, 2, script.parse_args(["--batch-size", "8"]), rank=0))
