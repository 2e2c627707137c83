"""Context-aware DPO: the loss equals a hand computation, LoRA placement, saving a loadable merged model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tiny_models import tiny_parts

from halluc.dpo import DpoSettings, build_trainer, load_pairs, preference_rows, train_dpo
from halluc.errors import ConfigError, InputDataError
from halluc.models import LVLM, load_lvlm, model_fingerprint

pytest.importorskip("trl")
QUESTION = "Describe this image in detail."
KEYS = ("chosen", "rejected")


@pytest.fixture
def pairs(tmp_path: Path) -> list[dict]:
    paths = []
    for i, colour in enumerate([(200, 10, 10), (10, 200, 10)]):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (28, 28), colour).save(paths[-1])
    return [
        {"image_id": 0, "image_path": str(paths[0]), "question": QUESTION, "context": "A cat is sitting on a table.",
         "y_win": "The cat is next to a cup.", "y_lose": "A dog rides a bus.", "type": "coherent"},
        {"image_id": 1, "image_path": str(paths[1]), "question": QUESTION, "context": "",
         "y_win": "A laptop.", "y_lose": "There is a person, a car and a tree.", "type": "exploratory"},
    ]  # fmt: skip


def fresh_tiny() -> LVLM:
    model, processor = tiny_parts("llava")  # a new copy: the trainer adds LoRA layers to it in place
    return LVLM.from_parts(model, processor, name_or_path="tiny-llava")


def sentence_logp(model, processor, prompt: str, sentence: str, image: Image.Image) -> float:
    """log p(sentence | image, prompt), token by token, on one unpadded sequence."""
    prompt_inputs = processor(text=[prompt], images=[image], add_special_tokens=False, return_tensors="pt")
    sentence_ids = processor.tokenizer(sentence, add_special_tokens=False, return_tensors="pt")["input_ids"]
    ids = torch.cat([prompt_inputs["input_ids"], sentence_ids], dim=1)
    logits = model(
        input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=prompt_inputs["pixel_values"]
    ).logits
    logp = F.log_softmax(logits[0, :-1].float(), dim=-1)  # position t predicts token t + 1
    n = sentence_ids.shape[1]
    return logp[-n:].gather(-1, ids[0, -n:, None]).sum().item()


def test_loss_equals_hand_computed_value(pairs: list[dict], tmp_path: Path) -> None:
    lvlm = fresh_tiny()
    lvlm.lm_head.weight.data *= 20  # random tiny logits are near-uniform; sharpen them so the adapter matters
    rows = preference_rows(pairs, lvlm.processor)
    assert rows[0]["prompt"].endswith("ASSISTANT: A cat is sitting on a table.")
    assert (rows[0]["chosen"], rows[1]["prompt"][-10:]) == (" The cat is next to a cup.", "ASSISTANT:")
    settings = DpoSettings(beta=0.1, lora_dropout=0.0, batch_size=2)
    trainer = build_trainer(lvlm, rows, settings, tmp_path / "work", progress=False)
    model = trainer.model
    generator = torch.Generator().manual_seed(0)
    for name, param in model.named_parameters():  # LoRA B starts at 0: make the policy differ from the reference
        if "lora_" in name:
            param.data = 0.5 * torch.randn(param.shape, generator=generator)
    model.eval()
    batch = trainer.data_collator([{**row, "images": [Image.open(row["images"][0])]} for row in rows])
    with torch.no_grad():
        loss = trainer.compute_loss(model, batch).item()
        by_hand = []
        for row in rows:
            image = Image.open(row["images"][0]).convert("RGB")
            args = (model, lvlm.processor, row["prompt"])
            win, lose = sentence_logp(*args, row["chosen"], image), sentence_logp(*args, row["rejected"], image)
            with model.disable_adapter():
                ref_win, ref_lose = (
                    sentence_logp(*args, row["chosen"], image),
                    sentence_logp(*args, row["rejected"], image),
                )
            margin = 0.1 * ((win - ref_win) - (lose - ref_lose))
            by_hand.append(math.log1p(math.exp(-margin)))  # -log sigmoid(margin)
    expected = sum(by_hand) / len(by_hand)
    assert abs(expected - math.log(2)) > 0.1  # far from log 2, the loss while policy == reference
    assert loss == pytest.approx(expected, abs=1e-5)


def test_lora_only_on_language_model(pairs: list[dict], tmp_path: Path) -> None:
    lvlm = fresh_tiny()
    trainer = build_trainer(lvlm, preference_rows(pairs, lvlm.processor), DpoSettings(), tmp_path, progress=False)
    lora = [name for name, _ in trainer.model.named_parameters() if "lora_A" in name]
    assert len(lora) == 2 * 7 and all(".language_model.layers." in name for name in lora)
    trainable = [name for name, p in trainer.model.named_parameters() if p.requires_grad]
    assert all("lora_" in name for name in trainable)


def test_train_saves_adapter_and_merged_model(pairs: list[dict], tmp_path: Path) -> None:
    model, processor = tiny_parts("llava")
    base_dir = tmp_path / "base"
    model.save_pretrained(base_dir)
    processor.save_pretrained(base_dir)
    settings = DpoSettings(max_steps=2, batch_size=2, learning_rate=1e-2, logging_steps=1)
    result = train_dpo(base_dir, pairs, tmp_path / "dpo", settings=settings, progress=False)
    assert (result.adapter / "adapter_config.json").is_file()
    merged = load_lvlm(result.merged)
    base = load_lvlm(base_dir)
    q_merged, q_base = merged.attention(0).q_proj.weight, base.attention(0).q_proj.weight
    assert not torch.allclose(q_merged, q_base)
    vision = zip(merged.vision_tower.parameters(), base.vision_tower.parameters(), strict=True)
    assert all(torch.equal(a, b) for a, b in vision)
    assert merged.generate([Image.open(pairs[0]["image_path"])], [QUESTION], max_new_tokens=3)
    manifest = json.loads((tmp_path / "dpo" / "manifest.json").read_text())
    assert (manifest["job"], manifest["n_pairs"], manifest["status"]) == ("dpo", 2, "finished")
    assert (
        manifest["weights_sha256"] is not None
        and manifest["weights_sha256"] == model_fingerprint(base)["weights_sha256"]
    )
    assert result.metrics["global_step"] == 2 and "rewards/accuracies" in result.metrics["last_log"]


def test_load_pairs_filters_types_and_reports_problems(pairs: list[dict], tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    assert len(load_pairs([run])) == 2 and len(load_pairs([run / "pairs.jsonl"], pair_types=["coherent"])) == 1
    with pytest.raises(InputDataError, match="no SENTINEL pairs"):
        load_pairs([tmp_path / "missing"])
    with pytest.raises(InputDataError, match="no pairs to train on"):
        load_pairs([run], pair_types=["other"])
    with pytest.raises(InputDataError, match="do not exist"):
        preference_rows([{**pairs[0], "image_path": str(tmp_path / "gone.png")}], fresh_tiny().processor)
    with pytest.raises(ConfigError, match="max_steps"):
        DpoSettings(max_steps=0)
