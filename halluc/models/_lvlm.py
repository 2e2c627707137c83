"""The LVLM adapter: one object that prepares batches, generates, and exposes structure for interventions."""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import ExitStack
from functools import reduce
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn
from transformers import LogitsProcessor, LogitsProcessorList, PreTrainedConfig, PreTrainedModel, ProcessorMixin

from halluc.errors import ConfigError, ModelLoadError
from halluc.models._families import FamilySpec, family_for_config
from halluc.models._hooks import GenerationHook, InterventionArg, applied
from halluc.models._inputs import PreparedBatch, build_batch, check_inputs

__all__ = ["LVLM"]


def _resolve(root: nn.Module, path: str) -> Any:
    """Follow a dotted attribute path from ``root`` (numeric parts index ModuleLists)."""
    return reduce(getattr, path.split("."), root)


class LVLM:
    """A loaded vision-language model with its processor, family-agnostic generation and structural access."""

    def __init__(
        self, model: PreTrainedModel, processor: ProcessorMixin, family: FamilySpec, name_or_path: str = ""
    ) -> None:
        """Wrap parts whose family is already known; prefer ``from_parts`` or ``load_lvlm``."""
        self.model = model
        self.processor = processor
        self.family = family
        self.name_or_path = name_or_path
        self.generation_hooks: list[GenerationHook] = []
        for path in (family.layers_path, family.vision_path, family.lm_head_path):
            try:
                _resolve(model, path)
            except AttributeError:
                raise ModelLoadError(
                    f"{type(model).__name__} has no attribute path {path!r} expected for family {family.name!r}; "
                    "this transformers version may have moved it"
                ) from None

    @classmethod
    def from_parts(cls, model: PreTrainedModel, processor: ProcessorMixin, *, name_or_path: str | Path = "") -> LVLM:
        """Adapt an in-memory model and processor, detecting the family from ``model.config``; sets eval mode."""
        model.eval()
        return cls(model, processor, family_for_config(model.config), str(name_or_path))

    # ----- identity -------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Device of the model's parameters (inputs are moved here)."""
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the model's parameters (pixel values are cast to it)."""
        return self.model.dtype

    def __repr__(self) -> str:
        """Short identity for logs."""
        return f"LVLM({self.name_or_path!r}, family={self.family.name}, device={self.device}, dtype={self.dtype})"

    # ----- structure ------------------------------------------------------------------------------------------
    @property
    def text_config(self) -> PreTrainedConfig:
        """The language model's sub-config (layers, heads, vocabulary)."""
        return self.model.config.get_text_config(decoder=True)

    @property
    def image_token_id(self) -> int:
        """Id of the placeholder token the processor expands once per image feature."""
        return int(self.model.config.image_token_id)

    @property
    def decoder_layers(self) -> nn.ModuleList:
        """The language model's decoder layers."""
        return _resolve(self.model, self.family.layers_path)

    @property
    def num_layers(self) -> int:
        """Number of decoder layers."""
        return len(self.decoder_layers)

    @property
    def hidden_size(self) -> int:
        """Width of the language model's residual stream."""
        return int(self.text_config.hidden_size)

    @property
    def num_heads(self) -> int:
        """Query heads per decoder attention layer."""
        return int(self.text_config.num_attention_heads)

    @property
    def num_kv_heads(self) -> int:
        """Key/value heads per decoder attention layer (fewer than ``num_heads`` under GQA)."""
        return int(getattr(self.text_config, "num_key_value_heads", None) or self.num_heads)

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return int(getattr(self.text_config, "head_dim", None) or self.hidden_size // self.num_heads)

    @property
    def pad_token_id(self) -> int:
        """The id generation pads with: the generation config's, else the tokenizer's, else 0."""
        for candidate in (self.model.generation_config.pad_token_id, self.processor.tokenizer.pad_token_id):
            if candidate is not None:
                return int(candidate)
        return 0

    def attention(self, layer: int) -> nn.Module:
        """The self-attention module of decoder layer ``layer`` (negative indices count from the end)."""
        if not -self.num_layers <= layer < self.num_layers:
            raise ConfigError(f"layer {layer} is out of range; this model has layers 0..{self.num_layers - 1}")
        return getattr(self.decoder_layers[layer], self.family.attention_attr)

    def o_proj(self, layer: int) -> nn.Linear:
        """The attention output projection of decoder layer ``layer``; its input is the concatenated heads."""
        return getattr(self.attention(layer), self.family.o_proj_attr)

    @property
    def vision_tower(self) -> nn.Module:
        """The vision encoder."""
        return _resolve(self.model, self.family.vision_path)

    @property
    def lm_head(self) -> nn.Linear:
        """The output projection from hidden states to vocabulary logits."""
        return _resolve(self.model, self.family.lm_head_path)

    @property
    def attn_implementation(self) -> str:
        """Attention implementation the language model currently uses (e.g. "sdpa", "eager", a registered name)."""
        return self.text_config._attn_implementation

    def set_attn_implementation(self, name: str) -> None:
        """Switch the language model's attention only (the vision tower keeps its own), e.g. to a custom function."""
        self.model.set_attn_implementation({"text_config": name})

    # ----- inputs ---------------------------------------------------------------------------------------------
    def prepare(self, images: Sequence[Image.Image | None], prompts: Sequence[str]) -> PreparedBatch:
        """Chat-template and left-pad a batch; a ``None`` image makes that sample text-only."""
        return build_batch(
            self.processor,
            self.family,
            self.image_token_id,
            images,
            prompts,
            device=self.device,
            dtype=self.dtype,
        )

    def text_only(self, batch_or_prompts: PreparedBatch | Sequence[str]) -> PreparedBatch:
        """The same prompts with no image at all (no placeholder, no pixels), for contrastive branches."""
        prompts = batch_or_prompts.prompts if isinstance(batch_or_prompts, PreparedBatch) else batch_or_prompts
        return self.prepare([None] * len(prompts), prompts)

    def prefill_positions(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Position ids of a left-padded prefill as ``generate`` builds them, and each row's offset ``[batch, 1]``.

        A later token's position is its running count in the attention mask minus one, plus the offset. 1-D RoPE:
        positions ``[batch, seq]`` from the mask, offset 0. M-RoPE families with images (Qwen2-VL): the model's own
        3-D image-grid positions ``[3, batch, seq]`` and the offsets it computes with them (``get_rope_index``).
        """
        mask = inputs["attention_mask"]
        if self.family.grid == "thw" and "image_grid_thw" in inputs:
            return self.model.model.get_rope_index(
                inputs["input_ids"],
                mm_token_type_ids=inputs["mm_token_type_ids"],
                image_grid_thw=inputs["image_grid_thw"],
                attention_mask=mask,
            )
        positions = (mask.long().cumsum(-1) - 1).clamp_min(0)
        return positions, torch.zeros(mask.shape[0], 1, dtype=positions.dtype, device=positions.device)

    def image_token_grid(self, batch: PreparedBatch, i: int) -> tuple[int, int] | None:
        """(rows, cols) of sample ``i``'s image-token grid in sequence order, or None when it is not one grid."""
        count = len(batch.image_positions[i])
        if count == 0 or self.family.grid is None:
            return None
        if self.family.grid == "square":
            side = math.isqrt(count)
            return (side, side) if side * side == count else None
        image_index = sum(batch.has_image[:i])  # image_grid_thw has one row per image, in sample order
        merge = int(self.model.config.vision_config.spatial_merge_size)
        _, height, width = (int(v) for v in batch.inputs["image_grid_thw"][image_index])
        rows, cols = height // merge, width // merge
        return (rows, cols) if rows * cols == count else None

    # ----- generation -----------------------------------------------------------------------------------------
    def generate_ids(
        self,
        batch: PreparedBatch,
        *,
        max_new_tokens: int = 64,
        do_sample: bool = False,
        logits_processor: Sequence[LogitsProcessor] | None = None,
        intervention: InterventionArg = None,
        firing: list[dict[str, Any]] | None = None,
        **generation_kwargs: Any,
    ) -> torch.LongTensor:
        """Run ``model.generate`` on a prepared batch and return only the new tokens, ``[batch, new]``.

        ``intervention``: an Intervention, a spec string such as ``"vhr:alpha=2"``, or a list of them (applied in
        order for this call). Each hook in ``generation_hooks`` is started first, may add logits processors or (one
        hook at most) replace the decoding loop (``GenerationHook.decoding``), and is always ended. ``firing``: when
        a list, one dict per sample is appended, merging what each hook reports it did (``GenerationHook.report``).
        """
        with applied(self, intervention), ExitStack() as ended:
            processors = LogitsProcessorList(logits_processor or [])
            decoders = []  # (hook, custom decoding loop)
            for hook in list(self.generation_hooks):
                hook.on_generate_start(self, batch)
                ended.callback(hook.on_generate_end, self)
                processors.extend(hook.logits_processors(self, batch))
                decoders += [(hook, fn)] if (fn := hook.decoding(self, batch)) is not None else []
            if len(decoders) > 1:
                names = ", ".join(type(hook).__name__ for hook, _ in decoders)
                raise ConfigError(f"several attached methods replace the decoding loop ({names}); attach one of them")
            if decoders:
                generation_kwargs["custom_generate"] = decoders[0][1]
            generation_kwargs.setdefault("pad_token_id", self.pad_token_id)
            output = self.model.generate(
                **batch.inputs,
                max_new_tokens=max_new_tokens,
                do_sample=do_sample,
                logits_processor=processors,
                **generation_kwargs,
            )
            if firing is not None:
                firing.extend(self._reports(batch))
        return output[:, batch.prompt_length :]

    def _reports(self, batch: PreparedBatch) -> list[dict[str, Any]]:
        """One dict per sample: every generation hook's report of the call just made, merged in hook order."""
        merged: list[dict[str, Any]] = [{} for _ in range(len(batch))]
        for hook in self.generation_hooks:
            for sample, entry in zip(merged, hook.report(self, batch) or [{}] * len(batch), strict=True):
                sample.update(entry)
        return merged

    def generate(
        self,
        images: Sequence[Image.Image | None],
        prompts: Sequence[str],
        *,
        max_new_tokens: int = 64,
        do_sample: bool = False,
        batch_size: int | None = None,
        logits_processor: Sequence[LogitsProcessor] | None = None,
        intervention: InterventionArg = None,
        firing: list[dict[str, Any]] | None = None,
        **generation_kwargs: Any,
    ) -> list[str]:
        """Generate a reply per (image, prompt) in chunks of ``batch_size``; returns decoded new text, stripped.

        ``intervention`` is attached once around all chunks (see ``generate_ids`` for what it accepts).
        """
        if batch_size is not None and batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer or None (one batch), got {batch_size}")
        check_inputs(images, prompts)  # fail before any chunk runs
        step = batch_size or len(prompts)
        replies: list[str] = []
        with applied(self, intervention):
            for start in range(0, len(prompts), step):
                batch = self.prepare(images[start : start + step], prompts[start : start + step])
                new_ids = self.generate_ids(
                    batch,
                    max_new_tokens=max_new_tokens,
                    do_sample=do_sample,
                    logits_processor=logits_processor,
                    firing=firing,
                    **generation_kwargs,
                )
                texts = self.processor.batch_decode(new_ids, skip_special_tokens=True)
                replies.extend(text.strip() for text in texts)
        return replies
