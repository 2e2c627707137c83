"""Each method on every tiny family: changes outputs, neutral is a no-op, detach is exact, batched == one-by-one.

A neutral score edit (PAI ``alpha=0``, token emphasis ``local=summary=0``, CFG off) installs nothing, so the no-op
check of the edit itself uses an identity strength instead: ``a + 1e-30 * |a|`` rounds to ``a`` in float32, yet the
whole edit path (row recomputation, strengths, CLS probe, generation hook) runs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import TINY_FAMILIES, build_tiny
from transformers import LogitsProcessor

from halluc.errors import ConfigError
from halluc.models import LVLM, PreparedBatch
from interventions import PAI, VHR, Intervention, TokenEmphasis, analyse_heads, apply, row_edit
from interventions.batching import paired_inputs
from interventions.contrastive import ContrastBranch, ContrastiveGuidance
from interventions.modality import pai_layers
from interventions.vision import FEATURE_LAYER, FIRST_LAYER, add_cls_probe, vision_attention

torch.set_num_threads(1)

IMAGES = [
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (24, 40, 3), dtype=np.uint8)),  # landscape
    None,  # text-only sample in the same batch
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (56, 24, 3), dtype=np.uint8)),  # portrait
]
PROMPTS = ["Describe this image in detail.", "Is there a dog?", "What objects can you see in this picture?"]
STRONG = {  # strengths that visibly move a random tiny model; CFG has its own tests below
    "vhr": VHR(alpha=8.0),
    "pai": PAI(alpha=3.0, cfg=False),
    "token_emphasis": TokenEmphasis(local=5.0, summary=3.0, cfg=False),
}
NEUTRAL = {
    "vhr": VHR(alpha=1.0),
    "pai": PAI(alpha=0.0, cfg=False),
    "token_emphasis": TokenEmphasis(local=0.0, summary=0.0, cfg=False),
}
IDENTITY = {  # score edits that run in full but round to the unedited scores (a + 1e-30|a| == a in float32)
    "pai": PAI(alpha=1e-30, cfg=False),
    "token_emphasis": TokenEmphasis(local=1e-30, summary=1e-30, cfg=False),
}
STEPS = 4


class Recorder(LogitsProcessor):
    """Keeps a copy of the scores of every step and passes them through."""

    def __init__(self) -> None:
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.steps.append(scores.clone())
        return scores


def logits(lvlm: LVLM, batch: PreparedBatch, intervention: Intervention | None = None) -> torch.Tensor:
    """``[steps, batch, vocab]`` scores of STEPS greedy steps."""
    recorder = Recorder()
    lvlm.generate_ids(
        batch, max_new_tokens=STEPS, min_new_tokens=STEPS, logits_processor=[recorder], intervention=intervention
    )
    return torch.stack(recorder.steps)


def tokens(lvlm: LVLM, images: list, prompts: list[str], intervention: Intervention | None = None) -> list[list[int]]:
    """STEPS greedy new tokens per sample."""
    batch = lvlm.prepare(images, prompts)
    return lvlm.generate_ids(batch, max_new_tokens=STEPS, min_new_tokens=STEPS, intervention=intervention).tolist()


@pytest.fixture(params=TINY_FAMILIES)
def lvlm(request: pytest.FixtureRequest) -> LVLM:
    """The cached tiny LVLM of one model type."""
    return build_tiny(request.param)


@pytest.mark.parametrize("method", list(STRONG))
def test_method_changes_outputs_neutral_is_noop_detach_is_exact(lvlm: LVLM, method: str) -> None:
    batch = lvlm.prepare(IMAGES, PROMPTS)
    before = logits(lvlm, batch)
    active = logits(lvlm, batch, STRONG[method])
    change = (active - before).nan_to_num()[:, [0, 2]].abs().amax()  # -inf - -inf (suppressed EOS) is nan
    assert change > 1e-4, "no effect on the samples with an image"
    assert torch.equal(logits(lvlm, batch, NEUTRAL[method]), before)
    assert torch.equal(logits(lvlm, batch), before), "detach must restore the model bit for bit"
    assert lvlm.attn_implementation == "sdpa" and lvlm.generation_hooks == []


@pytest.mark.parametrize("method", list(IDENTITY))
def test_identity_strength_runs_the_edit_and_leaves_the_logits(
    lvlm: LVLM, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = lvlm.prepare(IMAGES, PROMPTS)
    before = logits(lvlm, batch)
    edited: list[torch.Tensor] = []  # the edited scores of every recomputed last row

    def spy(scores: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        edited.append(scores)
        return attend_row(scores, value)

    attend_row = row_edit.attend_row
    monkeypatch.setattr(row_edit, "attend_row", spy)
    after = logits(lvlm, batch, IDENTITY[method])
    assert len(edited) == STEPS * len(pai_layers(lvlm.num_layers)), "the edit must run on every layer and step"
    assert torch.allclose(after, before, atol=1e-5), "an identity edit changed the model"


@pytest.mark.parametrize("method", list(STRONG))
def test_batched_equals_one_by_one(lvlm: LVLM, method: str) -> None:
    config = STRONG[method]
    singles = [tokens(lvlm, [image], [prompt], config)[0] for image, prompt in zip(IMAGES, PROMPTS, strict=True)]
    assert tokens(lvlm, IMAGES, PROMPTS, config) == singles


def first_step_logits(lvlm: LVLM, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """``[rows, vocab]`` logits of the first generated step for raw model inputs."""
    out = lvlm.model.generate(**inputs, max_new_tokens=1, return_dict_in_generate=True, output_logits=True)
    return out.logits[0]


def test_paired_batch_rows_equal_the_two_batches(lvlm: LVLM) -> None:
    batch = lvlm.prepare(IMAGES, PROMPTS)
    paired = first_step_logits(lvlm, paired_inputs(lvlm, batch))  # VHR's lockstep prefill
    assert torch.allclose(paired[:3], first_step_logits(lvlm, batch.inputs), atol=1e-5)
    assert torch.allclose(paired[3:], first_step_logits(lvlm, lvlm.text_only(batch).inputs), atol=1e-5)


def test_text_only_sample_is_untouched(lvlm: LVLM) -> None:
    batch = lvlm.prepare(IMAGES, PROMPTS)
    before = logits(lvlm, batch)
    for method in STRONG:
        assert torch.allclose(logits(lvlm, batch, STRONG[method])[:, 1], before[:, 1], atol=1e-5, equal_nan=True)


def test_pai_cfg(lvlm: LVLM) -> None:
    reference = tokens(lvlm, IMAGES, PROMPTS)
    assert tokens(lvlm, IMAGES, PROMPTS, PAI(alpha=0.0, cfg=True, gamma=1.0, cutoff=0.0)) == reference
    strong = PAI(alpha=0.0, cfg=True, gamma=4.0)
    assert tokens(lvlm, IMAGES, PROMPTS, strong) != reference
    singles = [tokens(lvlm, [image], [prompt], strong)[0] for image, prompt in zip(IMAGES, PROMPTS, strict=True)]
    assert tokens(lvlm, IMAGES, PROMPTS, strong) == singles


def test_text_only_branch_matches_a_text_only_generation() -> None:
    lvlm = build_tiny("qwen2_vl")  # M-RoPE family: position ids must come from the mask
    batch = lvlm.prepare(IMAGES, PROMPTS)
    text = lvlm.text_only(batch)
    recorder = Recorder()
    chosen = lvlm.generate_ids(text, max_new_tokens=3, min_new_tokens=3, logits_processor=[recorder])
    branch = ContrastBranch.text_only(lvlm, batch)
    ids = text.inputs["input_ids"]
    for step in range(3):
        expected = recorder.steps[step]
        visible = expected.isfinite()  # min_new_tokens set EOS to -inf in the recorded scores
        assert torch.allclose(branch.next_logits(ids)[visible], expected[visible], atol=1e-5)
        ids = torch.cat([ids, chosen[:, step : step + 1]], dim=1)


class FixedBranch:
    """A text-only branch stand-in returning fixed logits."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits

    def next_logits(self, input_ids: torch.LongTensor) -> torch.Tensor:
        return self.logits


def test_text_only_guidance_formula_and_validation() -> None:
    generator = torch.Generator().manual_seed(0)
    scores, text_logits = torch.randn(2, 6, generator=generator), torch.randn(2, 6, generator=generator)
    original = scores.clone()
    with_image, text_only = scores.log_softmax(-1), text_logits.log_softmax(-1)
    guided = ContrastiveGuidance(FixedBranch(text_logits), gamma=2.0, cutoff=0.1)(torch.zeros(2, 1), scores)
    expected = text_only + 2.0 * (with_image - text_only)
    plausible = with_image.exp() >= 0.1 * with_image.exp().amax(-1, keepdim=True)
    assert torch.allclose(guided[plausible], expected[plausible]) and (guided[~plausible] == -torch.inf).all()
    assert torch.equal(scores, original), "processors return new tensors"
    neutral = ContrastiveGuidance(FixedBranch(text_logits), gamma=1.0, cutoff=0.0)(torch.zeros(2, 1), scores)
    assert torch.allclose(neutral, with_image)
    for gamma, cutoff, message in ((0.0, 0.1, "gamma must be > 0, got 0.0"), (1.1, 1.0, "cutoff must be in")):
        with pytest.raises(ConfigError, match=message):
            ContrastiveGuidance(FixedBranch(text_logits), gamma=gamma, cutoff=cutoff)


def test_composition_and_nesting_equal_applying_together(lvlm: LVLM) -> None:
    batch = lvlm.prepare(IMAGES, PROMPTS)
    together = [STRONG["vhr"], STRONG["pai"]]
    with apply(lvlm, *together):
        both = logits(lvlm, batch)
    with apply(lvlm, together[0]):
        with apply(lvlm, together[1]):
            nested = logits(lvlm, batch)
        outer_only = logits(lvlm, batch)
    assert torch.equal(both, nested)
    assert torch.equal(outer_only, logits(lvlm, batch, together[0]))
    assert not torch.equal(both, outer_only)
    with apply(lvlm, STRONG["token_emphasis"], STRONG["pai"], STRONG["vhr"]):
        assert logits(lvlm, batch).isfinite().any(dim=-1).all()


@pytest.mark.parametrize(("which", "layer"), [(FIRST_LAYER, 0), (FEATURE_LAYER, -2)])
def test_cls_attention_probe_matches_eager_attention(which: str, layer: int) -> None:
    lvlm = build_tiny("llava")
    assert lvlm.model.config.vision_feature_layer == -2  # the attention inside layers[-2] produced its features
    for family in ("qwen2_vl", "idefics3"):  # no class token
        assert vision_attention(build_tiny(family), which) is None
    captured: list[torch.Tensor] = []
    undo = add_cls_probe(lvlm, captured.append, owner=object(), which=which)
    pixels = lvlm.prepare(IMAGES[:1], PROMPTS[:1]).inputs["pixel_values"]
    vision_config = lvlm.model.config.vision_config
    vision_config._attn_implementation = "eager"
    try:
        out = lvlm.vision_tower(pixels, output_attentions=True)
    finally:
        vision_config._attn_implementation = "sdpa"
        undo()
    expected = out.attentions[layer].mean(dim=1)[:, 0, 1:]  # heads averaged, CLS row, patches only
    assert len(captured) == 1 and torch.allclose(captured[0], expected, atol=1e-6)


def test_analyse_heads(lvlm: LVLM, tmp_path) -> None:
    batch = lvlm.prepare(IMAGES, PROMPTS)
    before = logits(lvlm, batch)
    report = analyse_heads(lvlm, [IMAGES[0], IMAGES[2]], "Describe this image.")
    shape = (lvlm.num_layers, lvlm.num_heads)
    assert np.shape(report.vhd) == shape and np.shape(report.image_attention) == shape
    assert all(v > 0 for row in report.vhd for v in row)
    assert all(0 < v < 1 for row in report.image_attention for v in row)
    assert json.loads(report.to_json())["images"] == 2
    png = report.write_heatmap(tmp_path / "heads.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert lvlm.attn_implementation == "sdpa" and torch.equal(logits(lvlm, batch), before)
