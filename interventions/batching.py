"""Per-sample batch plumbing shared by the methods: image-key masks, row/key fitting, paired prefills, hooks.

Everything is per sample and per position: image tokens are located by ``PreparedBatch.image_positions`` (never
by offsets), left padding is kept, and generation rows that repeat a sample (beams, several return sequences)
reuse that sample's values.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from halluc.errors import ConfigError
from halluc.models import LVLM, GenerationHook, PreparedBatch

__all__ = ["add_generation_hook", "fit", "image_key_mask", "paired_inputs", "run_prefill"]


def image_key_mask(batch: PreparedBatch) -> torch.Tensor:
    """``[batch, prompt]`` bool: True at each sample's image-token positions."""
    mask = torch.zeros(batch.inputs["input_ids"].shape, dtype=torch.bool, device=batch.inputs["input_ids"].device)
    for row, positions in enumerate(batch.image_positions):
        mask[row, positions] = True
    return mask


def fit(values: torch.Tensor, rows: int, keys: int | None = None) -> torch.Tensor:
    """Per-sample ``values`` ([samples, ...]) expanded to ``rows`` generation rows, last dim zero-padded to ``keys``.

    Generated tokens are appended after the prompt, so prompt-indexed values stay aligned with cache keys.
    """
    samples = values.shape[0]
    if rows != samples:
        if rows % samples:
            raise ConfigError(f"generation has {rows} rows for {samples} samples; expected a multiple")
        values = values.repeat_interleave(rows // samples, dim=0)
    if keys is not None and keys != values.shape[-1]:
        values = F.pad(values, (0, keys - values.shape[-1]))
    return values


def _left_pad(values: torch.Tensor, length: int, fill: int) -> torch.Tensor:
    """``[rows, seq]`` padded on the left to ``length`` with ``fill``."""
    return F.pad(values, (length - values.shape[1], 0), value=fill)


def paired_inputs(lvlm: LVLM, batch: PreparedBatch) -> dict[str, torch.Tensor]:
    """Model inputs of 2B rows: the batch, then its text-only twin left-padded to the same length.

    Sequence tensors are concatenated; per-image tensors (one row per image) are kept as they are, since the
    text-only half adds no image; per-sample image tensors (families with ``nested_images``) get all-zero rows,
    which those models treat as "no image".
    """
    image = batch.inputs
    text = lvlm.text_only(batch).inputs
    sequence_shape = image["input_ids"].shape
    paired: dict[str, torch.Tensor] = {}
    for name, value in image.items():
        if value.dim() == 2 and value.shape == sequence_shape:
            twin = text[name] if name in text else torch.zeros_like(text["input_ids"])
            fill = lvlm.pad_token_id if name == "input_ids" else 0
            paired[name] = torch.cat([value, _left_pad(twin.to(value.dtype), sequence_shape[1], fill)])
        elif lvlm.family.nested_images:
            paired[name] = torch.cat([value, torch.zeros_like(value)])
        else:
            paired[name] = value
    return paired


def run_prefill(lvlm: LVLM, inputs: dict[str, torch.Tensor]) -> None:
    """One prefill forward through ``model.generate`` (which builds position ids and M-RoPE for every family)."""
    lvlm.model.generate(**inputs, max_new_tokens=1, do_sample=False, pad_token_id=lvlm.pad_token_id)


def add_generation_hook(lvlm: LVLM, hook: GenerationHook) -> Callable[[], None]:
    """Register ``hook`` with the adapter's generate calls; returns the undo (removes this object only)."""
    lvlm.generation_hooks.append(hook)

    def undo() -> None:
        lvlm.generation_hooks[:] = [h for h in lvlm.generation_hooks if h is not hook]

    return undo
