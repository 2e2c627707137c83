"""CLS-to-patch attention of the vision encoder, read through a forward pre-hook (no eager switch, no patching).

For a ViT with a class token (CLIP, as in LLaVA), the hook receives the hidden states entering the self-attention
of the layer that produces the LM's image features (``config.vision_feature_layer``) and recomputes only the CLS
query's scores with that module's own ``q_proj``/``k_proj``: ``softmax(q_cls . k / sqrt(d))``, averaged over heads.
The vision tower keeps running with its own attention implementation. Encoders without a class token (Qwen2-VL,
Idefics3/SigLIP) get no probe; token emphasis then falls back to the LM's own attention (see token_emphasis).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from halluc.models import LVLM
from interventions.scope import live

__all__ = ["FIRST_LAYER", "FEATURE_LAYER", "add_cls_probe", "cls_attention", "vision_attention"]

_NEEDED = ("q_proj", "k_proj", "num_heads", "head_dim", "scale")
FIRST_LAYER = "first"  # the encoder's first layer
FEATURE_LAYER = "feature"  # the layer whose output the LM receives (``vision_feature_layer``)


def _has_class_token(vision: nn.Module) -> bool:
    """Whether the encoder's embeddings prepend a learned class token."""
    return any(hasattr(module, "class_embedding") for module in vision.modules())


def vision_attention(lvlm: LVLM, which: str = FEATURE_LAYER) -> nn.Module | None:
    """The self-attention of the encoder's first or feature layer, or None when there is no CLS to read."""
    vision = lvlm.vision_tower
    layers = next((m for m in vision.modules() if isinstance(m, nn.ModuleList)), None)
    if layers is None or not _has_class_token(vision):
        return None
    if which == FIRST_LAYER:
        index = 0
    else:
        feature_layer = getattr(lvlm.model.config, "vision_feature_layer", -1)
        if isinstance(feature_layer, list | tuple):  # several layers concatenated: read the last one listed
            feature_layer = feature_layer[-1]
        if feature_layer == 0:  # the embeddings themselves: no attention produced them
            return None
        # hidden_states[k] is the output of layers[k - 1]; negative k counts from the end of the same list
        index = feature_layer if feature_layer < 0 else feature_layer - 1
    attention = getattr(layers[index], "self_attn", None)
    return attention if attention is not None and all(hasattr(attention, a) for a in _NEEDED) else None


def cls_attention(attention: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """``[images, patches]``: CLS-to-patch attention of ``attention`` for inputs ``[images, 1 + patches, dim]``."""
    images, tokens, _ = hidden.shape
    heads, head_dim = attention.num_heads, attention.head_dim
    query = attention.q_proj(hidden[:, :1]).view(images, 1, heads, head_dim).transpose(1, 2)  # [n, heads, 1, d]
    key = attention.k_proj(hidden).view(images, tokens, heads, head_dim).transpose(1, 2)  # [n, heads, tokens, d]
    weights = ((query @ key.transpose(-1, -2)).float() * attention.scale).softmax(dim=-1)  # [n, heads, 1, tokens]
    return weights.mean(dim=1)[:, 0, 1:]  # heads averaged, CLS itself dropped


def add_cls_probe(
    lvlm: LVLM, sink: Callable[[torch.Tensor], None], owner: object, which: str = FEATURE_LAYER
) -> Callable[[], None] | None:
    """Feed ``sink`` each vision forward's ``[images, patches]`` CLS attention of layer ``which``; the undo, or None."""
    attention = vision_attention(lvlm, which)
    if attention is None:
        return None

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        if live(owner):
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]  # [images, 1 + patches, dim]
            sink(cls_attention(module, hidden))

    return attention.register_forward_pre_hook(hook, with_kwargs=True).remove
