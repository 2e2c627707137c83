"""Turning (image, prompt) pairs into left-padded model inputs with the image-token positions of each sample."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from transformers import BatchFeature, ProcessorMixin

from halluc.errors import ConfigError
from halluc.models._families import FamilySpec

__all__ = ["PreparedBatch", "build_batch", "check_inputs"]


@dataclass(frozen=True)
class PreparedBatch:
    """Model-ready inputs for a batch plus where each sample's image tokens sit in ``input_ids``."""

    inputs: BatchFeature  # input_ids, attention_mask, pixel_values and family extras, on the model's device
    image_positions: list[torch.LongTensor]  # per sample: indices into input_ids of its image tokens (may be empty)
    prompt_length: int  # padded length of input_ids; generated tokens start here
    prompts: tuple[str, ...]  # the raw user prompts, so the text-only branch can be rebuilt
    has_image: tuple[bool, ...]  # which samples carry an image, in order (the i-th image belongs to the i-th True)

    def __len__(self) -> int:
        """Number of samples in the batch."""
        return len(self.prompts)


def check_inputs(images: Sequence[Image.Image | None], prompts: Sequence[str]) -> None:
    """Reject mismatched lengths, empty batches and non-image items with a message naming the bad value."""
    if isinstance(prompts, str):
        raise ConfigError("prompts must be a sequence of strings, got a single string; wrap it in a list")
    if len(images) != len(prompts):
        raise ConfigError(f"got {len(images)} images but {len(prompts)} prompts; pass one image (or None) per prompt")
    if not prompts:
        raise ConfigError("cannot prepare an empty batch: got 0 prompts")
    for i, image in enumerate(images):
        if image is not None and not isinstance(image, Image.Image):
            raise ConfigError(f"images[{i}] is a {type(image).__name__}; expected a PIL.Image.Image or None")


def _render(processor: ProcessorMixin, image: Image.Image | None, prompt: str) -> str:
    """Apply the checkpoint's chat template to one user turn of [image, text] (text only when image is None)."""
    content: list[dict[str, str]] = [{"type": "image"}] if image is not None else []
    content.append({"type": "text", "text": prompt})
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)


def build_batch(
    processor: ProcessorMixin,
    family: FamilySpec,
    image_token_id: int,
    images: Sequence[Image.Image | None],
    prompts: Sequence[str],
    *,
    device: torch.device,
    dtype: torch.dtype,
) -> PreparedBatch:
    """Template, tokenize with LEFT padding and locate image tokens by id (never by offset or count)."""
    check_inputs(images, prompts)
    texts = [_render(processor, image, prompt) for image, prompt in zip(images, prompts, strict=True)]
    rgb = [image.convert("RGB") if image is not None else None for image in images]
    present = [image for image in rgb if image is not None]
    if not present:
        image_arg = None
    elif family.nested_images:
        image_arg = [[image] if image is not None else [] for image in rgb]
    else:
        image_arg = present
    bos = processor.tokenizer.bos_token
    # Templates that already write BOS must not get a second one from the tokenizer (as transformers does).
    add_special_tokens = not (bos is not None and texts[0].startswith(bos))
    inputs = processor(
        text=texts,
        images=image_arg,
        padding=True,
        padding_side="left",
        add_special_tokens=add_special_tokens,
        return_tensors="pt",
    )
    inputs = inputs.to(device=device, dtype=dtype)
    input_ids = inputs["input_ids"]  # [batch, seq]
    positions = [torch.nonzero(row == image_token_id).squeeze(-1) for row in input_ids]
    return PreparedBatch(
        inputs=inputs,
        image_positions=positions,
        prompt_length=input_ids.shape[1],
        prompts=tuple(prompts),
        has_image=tuple(image is not None for image in images),
    )
