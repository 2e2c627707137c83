"""Tiny random-weight LVLMs with locally built processors, one per supported model type; no downloads.

Each builder returns (model, processor): 2 decoder layers, hidden 64, 4 query heads over 2 KV heads, a 2-layer
vision tower, a byte-level BPE tokenizer trained in-process on a few sentences, the family's own image processor
at toy sizes, and a chat template written in the family's style. Weights come from a fixed seed.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessor,
    Idefics3Processor,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaImageProcessor,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessor,
    LlavaNextProcessor,
    LlavaProcessor,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
)

from halluc.models import LVLM

__all__ = ["TINY_FAMILIES", "build_tiny", "tiny_parts"]

SEED = 0
CORPUS = (
    "Describe this image in detail.",
    "Is there a dog in the image? Please answer yes or no.",
    "A cat is sitting on a wooden table next to a red cup and a laptop.",
    "Two people ride bicycles down a busy street near a bus stop.",
    "What objects can you see? There is a person, a car, a tree and a traffic light.",
)
TEXT = {  # shared language-model sizes (llama-style keys)
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
}
LLAVA_TEMPLATE = (
    "{% for m in messages %}{{ m['role'].upper() + ': ' }}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% if m['role'] == 'user' %} {% else %}</s>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
MISTRAL_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}[INST] {% endif %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% if m['role'] == 'user' %} [/INST]{% else %}</s>{% endif %}{% endfor %}"
)
QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
IDEFICS3_TEMPLATE = (
    "<|begin_of_text|>{% for m in messages %}{{ m['role'] | capitalize }}:{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)


def _tokenizer(special: list[str], **roles: str) -> PreTrainedTokenizerFast:
    """Byte-level BPE over CORPUS (any text encodes, no UNK) with ``special`` as atomic special tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=len(special) + 400,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **roles)


def _vocab(tokenizer: PreTrainedTokenizerFast) -> int:
    """Embedding rows needed for every token id, rounded up to 8."""
    return -(-len(tokenizer) // 8) * 8


def _finish(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast) -> PreTrainedModel:
    """Give the random model the tokenizer's special ids and switch it to inference mode."""
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        setattr(model.generation_config, name, getattr(tokenizer, name))
    return model.eval()


def _llava() -> tuple[PreTrainedModel, ProcessorMixin]:
    """LLaVA-1.5: CLIP 28x28 with 7x7 patches -> 16 image tokens after dropping CLS."""
    tokenizer = _tokenizer(["<pad>", "<s>", "</s>", "<image>"], bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    config = LlavaConfig(
        vision_config={"model_type": "clip_vision_model", "image_size": 28, "patch_size": 7, **vision},
        text_config={"model_type": "llama", "vocab_size": _vocab(tokenizer), **TEXT},
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=16,
    )
    torch.manual_seed(SEED)
    model = LlavaForConditionalGeneration(config)
    image_processor = LlavaImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=7,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_TEMPLATE,
    )
    return _finish(model, tokenizer), processor


def _llava_next() -> tuple[PreTrainedModel, ProcessorMixin]:
    """LLaVA-NeXT anyres: a 28x28 base view plus 1x2 / 2x1 / 2x2 tiles, so token counts vary with aspect ratio."""
    tokenizer = _tokenizer(["<pad>", "<s>", "</s>", "<image>"], bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    pinpoints = [[28, 56], [56, 28], [56, 56]]
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    config = LlavaNextConfig(
        vision_config={"model_type": "clip_vision_model", "image_size": 28, "patch_size": 7, **vision},
        text_config={"model_type": "mistral", "vocab_size": _vocab(tokenizer), **TEXT},
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=pinpoints,
        image_seq_length=16,
    )
    torch.manual_seed(SEED)
    model = LlavaNextForConditionalGeneration(config)
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}, image_grid_pinpoints=pinpoints
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=7,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=MISTRAL_TEMPLATE,
    )
    return _finish(model, tokenizer), processor


def _qwen(config_class: type, model_class: type, processor_class: type, vision: dict) -> Callable:
    """Builder for a Qwen2-VL-style model: 4px patches merged 2x2, so an HxW image gives (H/8)*(W/8) tokens."""

    def build() -> tuple[PreTrainedModel, ProcessorMixin]:
        special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>"]
        special += ["<|image_pad|>", "<|video_pad|>"]
        tokenizer = _tokenizer(special, eos_token="<|im_end|>", pad_token="<|endoftext|>")
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in special}
        config = config_class(
            text_config={
                "vocab_size": _vocab(tokenizer),
                "bos_token_id": None,
                "eos_token_id": tokenizer.eos_token_id,
                "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3]},  # sums to head_dim / 2
                **TEXT,
            },
            vision_config={"depth": 2, "num_heads": 4, "patch_size": 4, "spatial_merge_size": 2, **vision},
            image_token_id=ids["<|image_pad|>"],
            video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"],
            vision_end_token_id=ids["<|vision_end|>"],
        )
        torch.manual_seed(SEED)
        model = model_class(config)
        sizes = {"patch_size": 4, "merge_size": 2, "size": {"shortest_edge": 8 * 8, "longest_edge": 32 * 32}}
        processor = processor_class(
            image_processor=Qwen2VLImageProcessor(**sizes),
            tokenizer=tokenizer,
            video_processor=Qwen2VLVideoProcessor(**sizes),
            chat_template=QWEN_TEMPLATE,
        )
        return _finish(model, tokenizer), processor

    return build


def _idefics3_style(config_class: type, model_class: type) -> Callable:
    """Builder for Idefics3 / SmolVLM: 32px tiles of 8px patches, pixel-shuffled 2x -> 4 tokens per tile."""

    def build() -> tuple[PreTrainedModel, ProcessorMixin]:
        grid_tokens = [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
        special = ["<|begin_of_text|>", "<|end_of_text|>", "<end_of_utterance>", "<fake_token_around_image>"]
        special += ["<image>", "<global-img>", *grid_tokens]
        tokenizer = _tokenizer(
            special, bos_token="<|begin_of_text|>", eos_token="<end_of_utterance>", pad_token="<|end_of_text|>"
        )
        vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
        config = config_class(
            text_config={"model_type": "llama", "vocab_size": _vocab(tokenizer), **TEXT},
            vision_config={"image_size": 32, "patch_size": 8, **vision},
            scale_factor=2,
            image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        )
        torch.manual_seed(SEED)
        model = model_class(config)
        image_processor = Idefics3ImageProcessor(size={"longest_edge": 64}, max_image_size={"longest_edge": 32})
        processor = Idefics3Processor(
            image_processor=image_processor, tokenizer=tokenizer, image_seq_len=4, chat_template=IDEFICS3_TEMPLATE
        )
        return _finish(model, tokenizer), processor

    return build


QWEN2_VISION = {"embed_dim": 32, "hidden_size": 64}  # hidden_size = merger output = text width
QWEN25_VISION = {"hidden_size": 32, "intermediate_size": 64, "out_hidden_size": 64, "window_size": 16}
QWEN25_VISION["fullatt_block_indexes"] = [1]

BUILDERS: dict[str, Callable[[], tuple[PreTrainedModel, ProcessorMixin]]] = {
    "llava": _llava,
    "llava_next": _llava_next,
    "qwen2_vl": _qwen(Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor, QWEN2_VISION),
    "qwen2_5_vl": _qwen(Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor, QWEN25_VISION),
    "idefics3": _idefics3_style(Idefics3Config, Idefics3ForConditionalGeneration),
    # SmolVLMProcessor needs the optional `num2words` package, so the tiny SmolVLM model is paired with the
    # Idefics3 processor, whose image expansion (tiles, <global-img>, <row_r_col_c>) is the same.
    "smolvlm": _idefics3_style(SmolVLMConfig, SmolVLMForConditionalGeneration),
}
TINY_FAMILIES: tuple[str, ...] = tuple(BUILDERS)


def tiny_parts(family: str) -> tuple[PreTrainedModel, ProcessorMixin]:
    """A fresh tiny (model, processor) pair for a model type in TINY_FAMILIES."""
    if family not in BUILDERS:
        raise KeyError(f"unknown tiny family {family!r}; choose one of: {', '.join(TINY_FAMILIES)}")
    return BUILDERS[family]()


@cache
def build_tiny(family: str) -> LVLM:
    """The tiny LVLM for ``family``, built once per test session (treat it as read-only)."""
    model, processor = tiny_parts(family)
    return LVLM.from_parts(model, processor, name_or_path=f"tiny-{family}")
