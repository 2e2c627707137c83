"""Modality rebalancing, PAI ("Paying More Attention to Image", Liu et al., ECCV 2024).

Two parts, each optional:

* attention: on the last query row of layers ``layers``, every image key's score ``a`` becomes ``a + alpha * |a|``
  through the registered attention function (SDPA elsewhere; only that row is recomputed);
* CFG: the next-token log-probabilities are refined against a text-only branch,
  ``gamma * (log p(y|v,x) - log p(y|x)) + log p(y|x)``, tokens with ``p(y|v,x)`` below ``cutoff`` times the top
  probability masked.

Defaults are the official code's published CHAIR and POPE commands (LALBJ/PAI README: ``--use-attn --alpha 0.2
--use-cfg --gamma 1.1``; ``chair_eval.py`` argparse alpha 0.2; cut-off 0.1 in ``CFG.py``): ``alpha`` 0.2, CFG on,
``gamma`` 1.1. ``cfg=False`` gives the attention edit alone. One quirk of the official code is not reproduced: its
CFG processor re-enables the attention edit only after its first call, so there the first generated token gets no
attention boost; here every token does.

Layers: the reference code edits 0-based layers ``range(2, 32)`` of the 32-layer LLaVA-1.5 language model, i.e. it
leaves the first two layers alone. ``layers="default"`` scales that start to the model's depth,
``round(2 * L / 32)`` (half up) but at least 1, so a shallow model keeps an unedited first layer as every paper's
setting does, and edits every layer from there to the last.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import LogitsProcessor

from halluc.errors import ConfigError
from halluc.models import LVLM, GenerationHook, PreparedBatch
from interventions.base import Handle, Intervention, register
from interventions.batching import add_generation_hook, fit, image_key_mask
from interventions.contrastive import ContrastBranch, ContrastiveGuidance
from interventions.layers import check_layer_spec, resolve_layers, scale_to_depth
from interventions.row_edit import add_row_edit

__all__ = ["PAI", "pai_layers"]


def pai_layers(num_layers: int) -> tuple[int, ...]:
    """Default PAI layers: from ``max(1, round(2 * L / 32))`` to the last (0-based 2..31 of a 32-layer model)."""
    return tuple(range(max(1, scale_to_depth(2, num_layers)), num_layers))


@register("pai")
@dataclass(frozen=True)
class PAI(Intervention):
    """Amplify attention to image tokens on the generating row and refine logits against text only (CFG)."""

    alpha: float = 0.2
    layers: str = "default"
    cfg: bool = True
    gamma: float = 1.1
    cutoff: float = 0.1

    def check(self) -> None:
        """Check every value, naming the bad one."""
        if not self.alpha >= 0:
            raise ConfigError(f"pai: alpha must be >= 0, got {self.alpha!r}")
        if not self.gamma > 0:
            raise ConfigError(f"pai: gamma must be > 0, got {self.gamma!r}")
        if not 0 <= self.cutoff < 1:
            raise ConfigError(f"pai: cutoff must be in [0, 1), got {self.cutoff!r}")
        check_layer_spec(self.layers)

    def follows_one_row_per_sample(self) -> bool:
        """CFG's text-only branch steps with one sequence per prompt (when on)."""
        return self.cfg

    def install(self, lvlm: LVLM, handle: Handle) -> None:
        """Attach the score edit (unless alpha is 0) and the per-call hook that arms it and adds CFG."""
        state = _Rebalance(self)
        if self.alpha > 0:
            state.layers = resolve_layers(self.layers, lvlm.num_layers, pai_layers)
            handle.on_remove(add_row_edit(lvlm, state.layers, state))
        handle.on_remove(add_generation_hook(lvlm, state))


class _Rebalance(GenerationHook):
    """PAI's per-call state: a ``RowEdit`` (image keys scaled by alpha) and a ``GenerationHook`` (arming, CFG)."""

    def __init__(self, config: PAI) -> None:
        """Idle until a generate call provides a batch."""
        self.config = config
        self.layers: tuple[int, ...] = ()  # edited layers (none when alpha is 0)
        self._strength: torch.Tensor | None = None  # [batch, 1, prompt]: alpha at image keys, else 0
        self._fitted: tuple[tuple[int, int], torch.Tensor] | None = None

    @property
    def armed(self) -> bool:
        """Whether a generate call is running."""
        return self._strength is not None

    def strength(self, layer: int, scores: torch.Tensor) -> torch.Tensor:
        """``alpha`` at each row's image keys, 0 elsewhere, ``[rows, 1, keys]`` (same for every layer and head)."""
        shape = (scores.shape[0], scores.shape[-1])
        if self._fitted is None or self._fitted[0] != shape:
            self._fitted = (shape, fit(self._strength, *shape))
        return self._fitted[1]

    def on_generate_start(self, lvlm: LVLM, batch: PreparedBatch) -> None:
        """Arm the edit with this batch's image-key positions."""
        self._strength = image_key_mask(batch).float()[:, None, :] * self.config.alpha
        self._fitted = None

    def logits_processors(self, lvlm: LVLM, batch: PreparedBatch) -> list[LogitsProcessor]:
        """A fresh CFG processor with its own text-only branch when ``cfg`` is on."""
        if not self.config.cfg:
            return []
        return [ContrastiveGuidance(ContrastBranch.text_only(lvlm, batch), self.config.gamma, self.config.cutoff)]

    def report(self, lvlm: LVLM, batch: PreparedBatch) -> list[dict[str, Any]] | None:
        """Per sample: the layers edited, how many image keys each edit raised, and whether CFG ran."""
        return [
            {
                "pai": {
                    "layers": list(self.layers),
                    "image_keys": len(positions) if self.layers else 0,
                    "cfg": self.config.cfg,
                }
            }
            for positions in batch.image_positions
        ]

    def on_generate_end(self, lvlm: LVLM) -> None:
        """Disarm, so the layers are plain SDPA between calls."""
        self._strength = None
        self._fitted = None
