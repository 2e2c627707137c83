"""Mechanism 3: contrastive logits against a text-only branch, as a ``LogitsProcessor``.

``TextOnlyBranch`` is the text-only twin of a batch (same prompts, no image) with its own KV cache. It advances
in step with generation: on the first call it runs its own prefill, then feeds each newly chosen token, with
position ids from its own (left-padded) attention mask. Its forwards are its own (``owned_forward``), so no
other intervention edits them. A fresh branch and processor are built for every generate call.
"""

from __future__ import annotations

import math

import torch
from transformers import Cache, LogitsProcessor

from halluc.errors import ConfigError
from halluc.models import LVLM, PreparedBatch
from interventions.scope import owned_forward

__all__ = ["TextOnlyBranch", "TextOnlyGuidance"]


class TextOnlyBranch:
    """The text-only twin of a batch, stepped alongside generation with its own KV cache."""

    def __init__(self, lvlm: LVLM, batch: PreparedBatch) -> None:
        """Prepare the twin's inputs; nothing runs until the first ``next_logits``."""
        text = lvlm.text_only(batch).inputs
        self.model = lvlm.model
        self.input_ids: torch.Tensor = text["input_ids"]  # [batch, text_prompt]
        self.attention_mask: torch.Tensor = text["attention_mask"]  # [batch, text_prompt + generated]
        self.cache: Cache | None = None

    def next_logits(self, input_ids: torch.LongTensor) -> torch.Tensor:
        """Next-token logits ``[batch, vocab]`` of the text-only branch, given the main branch's ``input_ids``."""
        if input_ids.shape[0] != self.input_ids.shape[0]:
            raise ConfigError(
                f"the text-only branch follows one row per sample ({self.input_ids.shape[0]}), got "
                f"{input_ids.shape[0]} rows; use greedy or sampling with one sequence per prompt"
            )
        if self.cache is None:
            step = self.input_ids
        else:
            step = input_ids[:, -1:]  # the token the main branch just chose
            self.attention_mask = torch.cat([self.attention_mask, torch.ones_like(step)], dim=1)
        positions = (self.attention_mask.cumsum(-1) - 1).clamp_min(0)[:, -step.shape[1] :]
        with owned_forward(self), torch.no_grad():
            out = self.model(
                input_ids=step,
                attention_mask=self.attention_mask,
                position_ids=positions,
                cache=self.cache,
                use_cache=True,
                logits_to_keep=1,
            )
        self.cache = out.cache
        return out.logits[:, -1]


class TextOnlyGuidance(LogitsProcessor):
    """PAI's logit refinement: ``gamma * (log p(y|v,x) - log p(y|x)) + log p(y|x)`` on plausible tokens.

    Tokens whose image-conditioned probability is below ``cutoff`` times the top one are set to -inf.
    """

    def __init__(self, branch: TextOnlyBranch, gamma: float, cutoff: float) -> None:
        """Validate the strengths; ``branch`` supplies log p(y|x) each step."""
        if not gamma > 0:
            raise ConfigError(f"gamma must be > 0, got {gamma!r}")
        if not 0 <= cutoff < 1:
            raise ConfigError(f"cutoff must be in [0, 1), got {cutoff!r}")
        self.branch = branch
        self.gamma = gamma
        self.log_cutoff = math.log(cutoff) if cutoff > 0 else -math.inf

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """Return new scores ``[batch, vocab]``; the inputs are not modified."""
        with_image = torch.log_softmax(scores.float(), dim=-1)
        text_only = torch.log_softmax(self.branch.next_logits(input_ids).float(), dim=-1)
        guided = text_only + self.gamma * (with_image - text_only)
        implausible = with_image < with_image.amax(dim=-1, keepdim=True) + self.log_cutoff
        return guided.masked_fill(implausible, -math.inf).to(scores.dtype)
