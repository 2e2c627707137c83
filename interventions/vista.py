"""VISTA ("The Hidden Life of Tokens: Reducing Hallucination of Large Vision-Language Models via Visual
Information Steering", Li et al., ICML 2025; official code LzVv123456/VISTA).

Two parts, each optional:

* visual steering vector (VSV): per sample and layer, ``v_l = h_l(image prompt) - h_l(same prompt, no image)``, the
  residual stream after decoder layer ``l`` at the prompt's last position, from one paired prefill per generate
  call (``steering_vector.py``: a rank-1 PCA of one sample, i.e. that difference). While generating, the output
  ``x`` of every layer's MLP, at every position, is steered towards it with its norm kept
  (``llm_layers.py``): ``y = lambda * (1 + max(0, cos(x, -v_l))) * v_l / |v_l|``,
  ``x <- normalize(normalize(x) + y) * |x|``. ``lambda`` 0.17 is the official CHAIR script's (``run_chair.sh``;
  its POPE script uses 0.01).
* self-logits augmentation (SLA): the final logits become ``(1 - alpha) * logits + alpha * mean_l lm_head(h_l)``
  over layers 25..30 of 32 (no final norm on those early exits, ``llava_llama.py``), ``alpha`` 0.3
  (``chair_eval.py``). Other depths scale that range, keeping it below the last layer.

Every layer is steered (the official ``--layers`` default). A sample without an image has ``v = 0`` and is not
steered. The paired prefill runs inside ``owned_forward``, so neither this method's steering nor any other
intervention acts on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LogitsProcessor

from halluc.errors import ConfigError
from halluc.models import LVLM, GenerationHook, PreparedBatch
from interventions.base import Handle, Intervention, StepForwardProcessor, register
from interventions.batching import add_generation_hook, fit, paired_inputs, run_prefill
from interventions.layers import scale_to_depth
from interventions.scope import live, owned_forward

__all__ = ["VISTA", "sla_layers", "steer"]


def sla_layers(num_layers: int) -> tuple[int, ...]:
    """Layers averaged by SLA: 25..30 of 32 scaled to depth, never the last layer (at least one)."""
    last = min(scale_to_depth(30, num_layers), num_layers - 2)
    first = min(scale_to_depth(25, num_layers), last)
    return tuple(range(max(first, 0), max(last, 0) + 1))


def steer(x: torch.Tensor, v: torch.Tensor, strength: float) -> torch.Tensor:
    """VISTA's norm-preserving steering of ``x`` ``[rows, seq, hidden]`` towards ``v`` ``[rows, hidden]``."""
    xf, vf = x.float(), v.float()[:, None]  # [rows, seq, hidden], [rows, 1, hidden]
    direction = F.normalize(vf, dim=-1)
    cos = F.cosine_similarity(xf, -vf, dim=-1)[..., None]  # [rows, seq, 1]
    y = strength * (1 + cos.clamp_min(0)) * direction
    norm = xf.norm(dim=-1, keepdim=True)
    steered = F.normalize(F.normalize(xf, dim=-1) + y, dim=-1) * norm
    keep = vf.norm(dim=-1, keepdim=True) == 0  # no image: nothing to steer towards
    return torch.where(keep, xf, steered).to(x.dtype)


@register("vista")
@dataclass(frozen=True)
class VISTA(Intervention):
    """Steer every layer's MLP output towards the image's steering vector, and mix in early layers' logits."""

    strength: float = 0.17
    alpha: float = 0.3

    def check(self) -> None:
        """Check every value, naming the bad one."""
        if not self.strength >= 0:
            raise ConfigError(f"vista: strength must be >= 0, got {self.strength!r}")
        if not 0 <= self.alpha <= 1:
            raise ConfigError(f"vista: alpha must be in [0, 1], got {self.alpha!r}")

    def reads_step_forward(self) -> bool:
        """SLA (on when ``alpha`` > 0) reads the early layers' states captured in the step's forward."""
        return self.alpha > 0

    def install(self, lvlm: LVLM, handle: Handle) -> None:
        """Capture hooks on every decoder layer, steering hooks on every MLP, and the per-call hook."""
        state = _Steering(self, sla_layers(lvlm.num_layers))
        for layer, block in enumerate(lvlm.decoder_layers):
            handle.on_remove(block.register_forward_hook(state.capture_hook(layer)).remove)
            if self.strength > 0:
                handle.on_remove(block.mlp.register_forward_hook(state.steer_hook(layer)).remove)
        handle.on_remove(add_generation_hook(lvlm, state))


def _hidden(output: Any) -> torch.Tensor:
    """A decoder layer's hidden states, whether it returns them alone or first in a tuple."""
    return output[0] if isinstance(output, tuple) else output


class _Steering(GenerationHook):
    """Per-call state: the steering vectors of this batch, and the SLA layers' last positions of the current step."""

    def __init__(self, config: VISTA, sla: tuple[int, ...]) -> None:
        """Idle until a generate call starts."""
        self.config, self.sla = config, sla
        self.armed = self.measuring = False
        self.vectors: dict[int, torch.Tensor] = {}  # layer -> [batch, hidden]
        self.last: dict[int, torch.Tensor] = {}  # SLA layer -> [rows, hidden] of the current step

    def capture_hook(self, layer: int):
        """Forward hook of decoder layer ``layer``: the last position, for VSV (paired prefill) or SLA."""

        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            hidden = _hidden(output)
            if self.measuring and live(self):
                half = hidden.shape[0] // 2
                self.vectors[layer] = (hidden[:half, -1] - hidden[half:, -1]).detach().float()
            elif layer in self.sla and self.armed and live(self):
                self.last[layer] = hidden[:, -1].detach()

        return hook

    def steer_hook(self, layer: int):
        """Forward hook of layer ``layer``'s MLP: steer its output while a generate call is armed."""

        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
            vector = self.vectors.get(layer)
            if self.measuring or vector is None or not live(self):
                return None
            return steer(output, fit(vector, output.shape[0]).to(output.device), self.config.strength)

        return hook

    def on_generate_start(self, lvlm: LVLM, batch: PreparedBatch) -> None:
        """Steering vectors from one paired prefill (image rows, then their text-only twins), unsteered; none
        without images or without steering (strength 0)."""
        self.vectors, self.last, self.armed = {}, {}, True
        if not any(batch.has_image) or self.config.strength == 0:
            return
        self.measuring = True
        try:
            with owned_forward(self):
                run_prefill(lvlm, paired_inputs(lvlm, batch))
        finally:
            self.measuring = False
        no_image = torch.tensor([not has for has in batch.has_image], device=next(iter(self.vectors.values())).device)
        for layer, vector in self.vectors.items():
            self.vectors[layer] = vector.masked_fill(no_image[:, None], 0.0)

    def logits_processors(self, lvlm: LVLM, batch: PreparedBatch) -> list[LogitsProcessor]:
        """SLA's processor when ``alpha`` > 0."""
        return [_SelfLogits(self, lvlm.lm_head)] if self.config.alpha > 0 and self.sla else []

    def report(self, lvlm: LVLM, batch: PreparedBatch) -> list[dict[str, Any]] | None:
        """Per sample: whether it was steered (it had an image) and the SLA layers."""
        return [{"vista": {"steered": has, "sla_layers": list(self.sla)}} for has in batch.has_image]

    def on_generate_end(self, lvlm: LVLM) -> None:
        """Forget this call's vectors, so the hooks are no-ops between calls."""
        self.vectors, self.last, self.armed = {}, {}, False


class _SelfLogits(StepForwardProcessor):
    """``(1 - alpha) * logits + alpha * mean_l lm_head(h_l)`` over the SLA layers' last positions."""

    def __init__(self, state: _Steering, lm_head: nn.Module) -> None:
        """One generate call's processor."""
        self.state, self.lm_head = state, lm_head

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """Return new scores ``[rows, vocab]``; the inputs are not modified."""
        hidden = torch.stack([self.state.last.pop(layer) for layer in self.state.sla])  # [layers, rows, hidden]
        weight = self.lm_head.weight
        with torch.no_grad():
            early = self.lm_head(hidden.to(weight.device, weight.dtype)).float().mean(dim=0)  # [rows, vocab]
        alpha = self.state.config.alpha
        return ((1 - alpha) * scores.float() + alpha * early.to(scores.device)).to(scores.dtype)
