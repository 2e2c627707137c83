"""LVLM adapters on tiny random-weight models of every supported family (CPU, float32, seconds)."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import TINY_FAMILIES, build_tiny
from transformers import LlamaConfig, LogitsProcessor

from halluc.errors import ConfigError, ModelLoadError
from halluc.models import LVLM, GenerationHook, PreparedBatch, family_for_config, load_lvlm

torch.set_num_threads(1)

FAMILY_OF = {
    "llava": "llava",
    "llava_next": "llava_next",
    "qwen2_vl": "qwen2_vl",
    "qwen2_5_vl": "qwen2_vl",
    "idefics3": "idefics3",
    "smolvlm": "idefics3",
}
VARIABLE_TOKEN_COUNT = {"llava_next", "qwen2_vl", "qwen2_5_vl", "idefics3", "smolvlm"}
PROMPTS = [
    "Describe this image in detail.",
    "Is there a dog?",
    "What objects can you see in this picture? List every one of them.",
]


def _image(width: int, height: int, seed: int) -> Image.Image:
    """A reproducible noise image of the given size."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


MIXED_IMAGES = [_image(40, 24, 1), None, _image(24, 56, 2)]  # landscape, text-only, portrait


def _greedy(lvlm: LVLM, batch: PreparedBatch, **kwargs: object) -> list[list[int]]:
    """Exactly 8 greedy new tokens per sample (EOS suppressed so every row has the same length)."""
    return lvlm.generate_ids(batch, max_new_tokens=8, min_new_tokens=8, **kwargs).tolist()


@pytest.fixture(params=TINY_FAMILIES)
def lvlm(request: pytest.FixtureRequest) -> LVLM:
    """The cached tiny LVLM of one model type."""
    return build_tiny(request.param)


def test_family_and_structure(lvlm: LVLM) -> None:
    model_type = lvlm.model.config.model_type
    assert lvlm.family.name == FAMILY_OF[model_type]
    assert isinstance(lvlm.decoder_layers, torch.nn.ModuleList) and lvlm.num_layers == 2
    assert (lvlm.hidden_size, lvlm.num_heads, lvlm.num_kv_heads, lvlm.head_dim) == (64, 4, 2, 16)
    assert lvlm.attention(-1) is lvlm.attention(1)
    assert lvlm.attention(0).layer_idx == 0
    o_proj = lvlm.o_proj(1)
    assert isinstance(o_proj, torch.nn.Linear) and o_proj.in_features == lvlm.num_heads * lvlm.head_dim
    assert lvlm.lm_head.out_features == lvlm.text_config.vocab_size
    assert lvlm.image_token_id == lvlm.processor.image_token_id
    assert not any(p is q for p in lvlm.vision_tower.parameters() for q in lvlm.decoder_layers.parameters())
    with pytest.raises(ConfigError, match="layer 2 is out of range"):
        lvlm.attention(2)


def test_image_positions_follow_processor_expansion(lvlm: LVLM) -> None:
    batch = lvlm.prepare(MIXED_IMAGES, PROMPTS)
    input_ids = batch.inputs["input_ids"]
    assert batch.prompt_length == input_ids.shape[1]
    assert (batch.inputs["attention_mask"][:, -1] == 1).all(), "padding must be on the left"
    assert len(batch.image_positions[1]) == 0
    for i, (image, prompt) in enumerate(zip(MIXED_IMAGES, PROMPTS, strict=True)):
        positions = batch.image_positions[i]
        assert (input_ids[i, positions] == lvlm.image_token_id).all()
        single = lvlm.prepare([image], [prompt])
        shift = batch.prompt_length - single.prompt_length  # left padding moves everything right by this much
        assert torch.equal(positions, single.image_positions[0] + shift)
        if image is not None:
            assert len(positions) == _processor_inserted(lvlm, image, prompt)
    assert batch.image_positions[0][0] != batch.image_positions[2][0]
    if lvlm.model.config.model_type in VARIABLE_TOKEN_COUNT:
        assert len(batch.image_positions[0]) != len(batch.image_positions[2])


def _processor_inserted(lvlm: LVLM, image: Image.Image, prompt: str) -> int:
    """How many image tokens the processor's own placeholder expansion wrote for one image."""
    text = lvlm.processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}],
        add_generation_prompt=True,
    )
    images = [[image]] if lvlm.family.nested_images else [image]
    out = lvlm.processor(text=[text], images=images, return_text_replacement_offsets=True)
    return sum(r["replacement"].count(lvlm.processor.image_token) for r in out["text_replacement_offsets"][0])


def test_batched_greedy_equals_one_by_one(lvlm: LVLM) -> None:
    batched = _greedy(lvlm, lvlm.prepare(MIXED_IMAGES, PROMPTS))
    singles = [_greedy(lvlm, lvlm.prepare([im], [p]))[0] for im, p in zip(MIXED_IMAGES, PROMPTS, strict=True)]
    assert batched == singles


def test_generate_decodes_in_chunks(lvlm: LVLM) -> None:
    whole = lvlm.generate(MIXED_IMAGES, PROMPTS, max_new_tokens=4, min_new_tokens=4)
    chunked = lvlm.generate(MIXED_IMAGES, PROMPTS, max_new_tokens=4, min_new_tokens=4, batch_size=2)
    assert whole == chunked and all(isinstance(t, str) and t == t.strip() for t in whole)


def test_text_only_branch_has_no_image(lvlm: LVLM) -> None:
    batch = lvlm.prepare(MIXED_IMAGES, PROMPTS)
    for text_only in (lvlm.text_only(batch), lvlm.text_only(PROMPTS)):
        assert text_only.prompts == batch.prompts and not any(text_only.has_image)
        assert not (text_only.inputs["input_ids"] == lvlm.image_token_id).any()
        assert "pixel_values" not in text_only.inputs
        assert all(len(p) == 0 for p in text_only.image_positions)
    assert torch.equal(_unpadded(lvlm.text_only(batch), 1), _unpadded(batch, 1))  # sample 1 had no image anyway


def _unpadded(batch: PreparedBatch, i: int) -> torch.Tensor:
    """Sample i's token ids without its left padding."""
    return batch.inputs["input_ids"][i][batch.inputs["attention_mask"][i].bool()]


def test_image_token_grid(lvlm: LVLM) -> None:
    batch = lvlm.prepare(MIXED_IMAGES, PROMPTS)
    grids = [lvlm.image_token_grid(batch, i) for i in range(3)]
    expected = {
        "llava": [(4, 4), None, (4, 4)],  # 28px / 7px patches
        "qwen2_vl": [(3, 5), None, (6, 2)],  # resized to multiples of 8px within 32*32 pixels, 8px per token
    }.get(lvlm.family.name, [None, None, None])  # anyres / tiled layouts are not a single grid
    assert grids == expected
    for i, grid in enumerate(grids):
        if grid is not None:
            assert grid[0] * grid[1] == len(batch.image_positions[i])


def test_attn_implementation_switches_text_model_only(lvlm: LVLM) -> None:
    batch = lvlm.prepare(MIXED_IMAGES, PROMPTS)
    reference = _greedy(lvlm, batch)
    vision_before = lvlm.model.config.vision_config._attn_implementation
    lvlm.set_attn_implementation("eager")
    try:
        assert lvlm.attn_implementation == "eager"
        assert lvlm.model.config.vision_config._attn_implementation == vision_before
        assert _greedy(lvlm, batch) == reference
    finally:
        lvlm.set_attn_implementation("sdpa")
    assert lvlm.attn_implementation == "sdpa"


def test_save_and_load_round_trip(lvlm: LVLM, tmp_path) -> None:
    lvlm.model.save_pretrained(tmp_path)
    lvlm.processor.save_pretrained(tmp_path)
    loaded = load_lvlm(tmp_path, dtype="float32")
    assert loaded.family == lvlm.family and loaded.name_or_path == str(tmp_path)
    assert loaded.dtype == torch.float32 and loaded.device.type == "cpu"
    images, prompts = MIXED_IMAGES[:2], PROMPTS[:2]
    assert _greedy(loaded, loaded.prepare(images, prompts)) == _greedy(lvlm, lvlm.prepare(images, prompts))


class ForceToken(LogitsProcessor):
    """Make one token the only possible choice."""

    def __init__(self, token_id: int) -> None:
        self.token_id = token_id

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        forced = torch.full_like(scores, float("-inf"))
        forced[:, self.token_id] = 0.0
        return forced


class RecordingHook(GenerationHook):
    """A GenerationHook that forces a token and records the calls it receives."""

    def __init__(self, token_id: int) -> None:
        self.token_id = token_id
        self.calls: list[str] = []

    def on_generate_start(self, lvlm: LVLM, batch: PreparedBatch) -> None:
        self.calls.append(f"start:{len(batch)}")

    def logits_processors(self, lvlm: LVLM, batch: PreparedBatch) -> list[LogitsProcessor]:
        self.calls.append("processors")
        return [ForceToken(self.token_id)]

    def on_generate_end(self, lvlm: LVLM) -> None:
        self.calls.append("end")


def test_generation_hooks_are_called() -> None:
    lvlm = build_tiny("llava")
    token_id = lvlm.processor.tokenizer.convert_tokens_to_ids("a")
    hook = RecordingHook(token_id)
    batch = lvlm.prepare(MIXED_IMAGES, PROMPTS)
    lvlm.generation_hooks.append(hook)
    try:
        forced = lvlm.generate_ids(batch, max_new_tokens=3)
        with pytest.raises(ValueError, match="boom"):
            lvlm.generate_ids(batch, max_new_tokens=3, logits_processor=[_Boom()])
    finally:
        lvlm.generation_hooks.remove(hook)
    assert (forced == token_id).all()
    assert hook.calls == ["start:3", "processors", "end"] * 2  # end also runs when generation fails
    assert not (lvlm.generate_ids(batch, max_new_tokens=3) == token_id).all()


def test_the_generation_hook_base_is_a_no_op() -> None:
    lvlm = build_tiny("llava")
    batch = lvlm.prepare(MIXED_IMAGES, PROMPTS)
    plain = lvlm.generate_ids(batch, max_new_tokens=3)
    lvlm.generation_hooks.append(GenerationHook())
    try:
        assert torch.equal(lvlm.generate_ids(batch, max_new_tokens=3), plain)
    finally:
        lvlm.generation_hooks.clear()


class _Boom(LogitsProcessor):
    """A processor that fails, to prove hooks are ended in a finally."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        raise ValueError("boom")


class HookIntervention:
    """A minimal intervention: ``apply`` attaches a hook for the duration of the context."""

    def __init__(self, hook: RecordingHook) -> None:
        self.hook = hook
        self.entered = 0

    @contextmanager
    def apply(self, lvlm: LVLM):
        self.entered += 1
        lvlm.generation_hooks.append(self.hook)
        try:
            yield self
        finally:
            lvlm.generation_hooks.remove(self.hook)


def test_intervention_wraps_generate_once() -> None:
    lvlm = build_tiny("qwen2_vl")
    token_id = lvlm.processor.tokenizer.convert_tokens_to_ids("a")
    intervention = HookIntervention(RecordingHook(token_id))
    replies = lvlm.generate(MIXED_IMAGES, PROMPTS, max_new_tokens=2, batch_size=2, intervention=intervention)
    assert replies == ["aa"] * 3
    assert intervention.entered == 1 and intervention.hook.calls.count("start:2") == 1
    assert lvlm.generation_hooks == []
    ids = lvlm.generate_ids(lvlm.prepare(MIXED_IMAGES, PROMPTS), max_new_tokens=2, intervention=intervention)
    assert (ids == token_id).all() and lvlm.generation_hooks == []


def test_unsupported_architecture_lists_supported(tmp_path) -> None:
    LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match=r"unsupported architecture: model_type 'llama'.*llava, llava_next"):
        load_lvlm(tmp_path)
    with pytest.raises(ModelLoadError, match="qwen2_5_vl, idefics3, smolvlm"):
        family_for_config(LlamaConfig())


def test_missing_model_is_one_clear_line(tmp_path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelLoadError, match="no such directory") as error:
        load_lvlm(missing)
    assert str(missing) in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(ModelLoadError, match="has no config.json"):
        load_lvlm(tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"dtype": "float64"}, "unsupported dtype 'float64'.*bfloat16"), ({"device": "gpu"}, "unknown device 'gpu'")],
)
def test_bad_load_options(kwargs: dict, message: str, tmp_path) -> None:
    with pytest.raises(ConfigError, match=message):
        load_lvlm(tmp_path, **kwargs)


def test_moved_module_path_is_reported() -> None:
    lvlm = build_tiny("llava")
    moved = replace(lvlm.family, layers_path="model.decoder.layers")
    with pytest.raises(ModelLoadError, match="no attribute path 'model.decoder.layers'"):
        LVLM(lvlm.model, lvlm.processor, moved)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_load_on_cuda(tmp_path) -> None:
    lvlm = build_tiny("qwen2_vl")
    lvlm.model.save_pretrained(tmp_path)
    lvlm.processor.save_pretrained(tmp_path)
    loaded = load_lvlm(tmp_path, device="cuda", dtype="bfloat16")
    batch = loaded.prepare(MIXED_IMAGES, PROMPTS)
    assert loaded.device.type == "cuda" and batch.inputs["pixel_values"].dtype == torch.bfloat16
    assert all(p.device.type == "cuda" for p in batch.image_positions)
    assert len(loaded.generate(MIXED_IMAGES, PROMPTS, max_new_tokens=4)) == 3


def test_bad_inputs_name_the_value() -> None:
    lvlm = build_tiny("llava")
    with pytest.raises(ConfigError, match="got 2 images but 3 prompts"):
        lvlm.prepare(MIXED_IMAGES[:2], PROMPTS)
    with pytest.raises(ConfigError, match=r"images\[0\] is a str"):
        lvlm.prepare(["cat.jpg"], PROMPTS[:1])
    with pytest.raises(ConfigError, match="batch_size must be a positive integer"):
        lvlm.generate(MIXED_IMAGES, PROMPTS, batch_size=0)
