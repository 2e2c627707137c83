"""Head reinforcement, VHR ("Cracking the Code of Hallucination in LVLMs with Vision-aware Head Divergence").

VHD of a head is the L2 distance between its output (the ``o_proj`` input slice) with and without the image, at
the first generated step (the prompt's last position). Per layer and sample, heads whose VHD AND whose text-only
output squared norm both exceed mean + std (over the layer's heads; unbiased std) are outliers and get VHD 0; the
heads with VHD above the layer median are then scaled by ``alpha`` (2.0).

Lockstep design. At the start of each generate call, one extra prefill runs the batch and its text-only twin as a
single batch of 2B rows (the twin left-padded to the same length; position ids and M-RoPE built by
``model.generate`` from the attention mask). A pre-hook on ``o_proj`` of each VHR layer splits the two halves,
computes VHD at the last position, selects the heads and immediately scales them in BOTH halves, so the next
layer's VHD already sees the reinforcement of earlier layers, as in a layer-by-layer lockstep of two branches.
Generation then runs with the selection fixed: every VHR layer scales the selected heads of the generating position
(the prompt's last position in prefill, then each new token), so the prompt's KV cache is that of the plain model
and the selection stays the same for the whole sequence.

Layers: the paper (ACL 2025, section 4.4) reinforces "the second and last 14 layers" of LLaVA-1.5's 32: 0-based
layer 1 plus layers 18..31. The official repository (jinghan1he/VHR) could not be read here, so this follows the
paper's text. Other depths keep layer 1 and scale the rest: ``{1} + last round(14 * L / 32)`` (at least one), so
the first layer, which has no vision-aware heads yet, is never edited. (Before, layer 0 stood in for "layer 1";
``layers="0+18-31"`` gives that reading back.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from halluc.errors import ConfigError
from halluc.models import LVLM, GenerationHook, PreparedBatch
from interventions.base import Handle, Intervention, register
from interventions.batching import add_generation_hook, fit, paired_inputs, run_prefill
from interventions.head_edit import add_head_hooks, scale_last_position
from interventions.layers import check_layer_spec, resolve_layers, scale_to_depth
from interventions.scope import owned_forward

__all__ = ["VHR", "head_divergence", "select_heads", "vhr_layers"]


def vhr_layers(num_layers: int) -> tuple[int, ...]:
    """Default VHR layers: the second layer (index 1) plus the last ``round(14 * L / 32)`` (at least one)."""
    last = max(1, scale_to_depth(14, num_layers))
    return tuple(sorted({min(1, num_layers - 1), *range(num_layers - last, num_layers)}))


def head_divergence(heads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """VHD and text-only squared norm ``[B, heads]`` from ``[2B, heads, head_dim]`` (image half, then text half)."""
    half = heads.shape[0] // 2
    with_image, text_only = heads[:half].float(), heads[half:].float()
    return (with_image - text_only).norm(dim=-1), text_only.pow(2).sum(dim=-1)


def select_heads(vhd: torch.Tensor, text_norm: torch.Tensor) -> torch.Tensor:
    """Heads to reinforce, ``[batch, heads]`` bool: outlier removal, then VHD above the layer median (per sample)."""
    vhd_std, vhd_mean = torch.std_mean(vhd, dim=-1, keepdim=True)
    norm_std, norm_mean = torch.std_mean(text_norm, dim=-1, keepdim=True)
    outlier = (vhd > vhd_mean + vhd_std) & (text_norm > norm_mean + norm_std)
    cleaned = vhd.masked_fill(outlier, 0.0)
    return cleaned > cleaned.median(dim=-1, keepdim=True).values


@register("vhr")
@dataclass(frozen=True)
class VHR(Intervention):
    """Scale vision-aware heads (selected per sample at the first generated step) by ``alpha``."""

    alpha: float = 2.0
    layers: str = "default"

    def check(self) -> None:
        """Check every value, naming the bad one."""
        if not self.alpha >= 0:
            raise ConfigError(f"vhr: alpha must be >= 0, got {self.alpha!r}")
        check_layer_spec(self.layers)

    def install(self, lvlm: LVLM, handle: Handle) -> None:
        """Hook ``o_proj`` of the VHR layers and register the per-call selection."""
        state = _Reinforcement(self.alpha)
        layers = resolve_layers(self.layers, lvlm.num_layers, vhr_layers)
        handle.on_remove(add_head_hooks(lvlm, layers, state.edit, owner=state))
        handle.on_remove(add_generation_hook(lvlm, state))


class _Reinforcement(GenerationHook):
    """VHR's per-call state: the head scales chosen by the paired prefill, used for the rest of the call."""

    def __init__(self, alpha: float) -> None:
        """Idle until a generate call selects heads."""
        self.alpha = alpha
        self.selecting = False
        self.scales: dict[int, torch.Tensor] = {}  # layer -> [batch, heads]: alpha for selected heads, else 1

    def edit(self, layer: int, heads: torch.Tensor) -> torch.Tensor | None:
        """o_proj pre-hook body; ``heads`` is ``[rows, seq, heads, head_dim]``."""
        if self.selecting:  # rows = 2B: image half, then text-only half
            vhd, text_norm = head_divergence(heads[:, -1])  # [B, heads] each
            scale = torch.where(select_heads(vhd, text_norm), self.alpha, 1.0)  # [B, heads]
            self.scales[layer] = scale
            return scale_last_position(heads, scale.repeat(2, 1))
        scale = self.scales.get(layer)
        return None if scale is None else scale_last_position(heads, fit(scale, heads.shape[0]))

    def on_generate_start(self, lvlm: LVLM, batch: PreparedBatch) -> None:
        """Select heads with one paired prefill (skipped when no sample has an image: nothing to compare)."""
        self.scales = {}
        if not any(batch.has_image):
            return
        self.selecting = True
        try:
            with owned_forward(self):
                run_prefill(lvlm, paired_inputs(lvlm, batch))
        finally:
            self.selecting = False

    def report(self, lvlm: LVLM, batch: PreparedBatch) -> list[dict[str, Any]] | None:
        """Per sample: the heads reinforced in each VHR layer (none for a sample without an image)."""
        chosen = {layer: (scale != 1.0).tolist() for layer, scale in self.scales.items()}  # layer -> [B][heads]
        return [
            {
                "vhr": {
                    "heads": {str(layer): [h for h, on in enumerate(rows[i]) if on] for layer, rows in chosen.items()}
                }
            }
            if batch.has_image[i]
            else {"vhr": {"heads": {}}}
            for i in range(len(batch))
        ]

    def on_generate_end(self, lvlm: LVLM) -> None:
        """Forget the selection, so hooks are no-ops between calls."""
        self.scales = {}
