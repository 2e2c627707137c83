"""Supported LVLM families as data: where each architecture keeps its layers, heads and image tokens.

Interventions never branch on the family; they ask the adapter, which reads these attribute paths. The paths
are those of transformers 5.x ``*ForConditionalGeneration`` classes (checked against the installed source).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from halluc.errors import ModelLoadError

__all__ = ["FAMILIES", "FamilySpec", "family_for_config", "supported_model_types"]

GridKind = Literal["square", "thw"]


@dataclass(frozen=True)
class FamilySpec:
    """Where one architecture family keeps the parts interventions touch, as dotted attribute paths."""

    name: str
    model_types: tuple[str, ...]
    layers_path: str  # the language model's decoder nn.ModuleList, from the top-level model
    vision_path: str  # the vision encoder module
    lm_head_path: str = "lm_head"
    attention_attr: str = "self_attn"  # self-attention module inside one decoder layer
    o_proj_attr: str = "o_proj"  # output projection inside that attention module
    nested_images: bool = False  # the processor wants one image list per sample (empty for text-only)
    grid: GridKind | None = None  # how an image's token grid is known: sqrt of count, or image_grid_thw


FAMILIES: tuple[FamilySpec, ...] = (
    FamilySpec(
        name="llava",
        model_types=("llava",),
        layers_path="model.language_model.layers",
        vision_path="model.vision_tower",
        grid="square",
    ),
    FamilySpec(
        name="llava_next",
        model_types=("llava_next",),
        layers_path="model.language_model.layers",
        vision_path="model.vision_tower",
    ),
    FamilySpec(
        name="qwen2_vl",
        model_types=("qwen2_vl", "qwen2_5_vl"),
        layers_path="model.language_model.layers",
        vision_path="model.visual",
        grid="thw",
    ),
    FamilySpec(
        name="idefics3",
        model_types=("idefics3", "smolvlm"),
        layers_path="model.text_model.layers",
        vision_path="model.vision_model",
        nested_images=True,
    ),
)


def supported_model_types() -> tuple[str, ...]:
    """All config ``model_type`` values halluc can adapt, for error messages and docs."""
    return tuple(t for spec in FAMILIES for t in spec.model_types)


def family_for_config(config: object) -> FamilySpec:
    """Pick the family from a model config's ``model_type`` (never from the checkpoint name)."""
    model_type = getattr(config, "model_type", None)
    for spec in FAMILIES:
        if model_type in spec.model_types:
            return spec
    architectures = getattr(config, "architectures", None) or []
    found = f"model_type {model_type!r}" + (f" (architectures {', '.join(architectures)})" if architectures else "")
    raise ModelLoadError(
        f"unsupported architecture: {found}; supported model types: {', '.join(supported_model_types())}"
    )
