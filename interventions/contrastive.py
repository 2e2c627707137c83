"""Mechanism 3: contrastive logits against a second branch of the same batch, as a ``LogitsProcessor``.

A ``ContrastBranch`` is a twin of the batch with different inputs (PAI's CFG: no image, ``text_only``; VCD: a
noised image) and its own KV cache. It advances in step with generation: on the first call it runs its own
prefill, then feeds each newly chosen token. Its forwards are its own (``owned_forward``), so no other
intervention edits them. ``ContrastiveGuidance`` mixes its log-probabilities with the main branch's. A fresh
branch and processor are built for every generate call.

Positions are those ``generate`` would give the twin (``LVLM.prefill_positions``): from its own left-padded
attention mask, or the 3-D image-grid positions of M-RoPE families (Qwen2-VL) when the twin has images.
"""

from __future__ import annotations

import math

import torch
from transformers import Cache, LogitsProcessor

from halluc.errors import ConfigError
from halluc.models import LVLM, PreparedBatch
from interventions.scope import owned_forward

__all__ = ["ContrastBranch", "ContrastiveGuidance"]


class ContrastBranch:
    """A twin of a batch with its own inputs and KV cache, stepped alongside generation."""

    def __init__(self, lvlm: LVLM, inputs: dict[str, torch.Tensor]) -> None:
        """Keep the twin's prefill inputs (``input_ids``, ``attention_mask``, any image tensors); nothing runs yet."""
        self.model = lvlm.model
        self.prefill = dict(inputs)
        self.input_ids: torch.Tensor = inputs["input_ids"]  # [batch, prompt]
        self.attention_mask: torch.Tensor = inputs["attention_mask"]  # [batch, prompt + generated]
        self.positions, self.offsets = lvlm.prefill_positions(inputs)  # [(3,) batch, prompt], [batch, 1]
        self.cache: Cache | None = None

    @classmethod
    def text_only(cls, lvlm: LVLM, batch: PreparedBatch) -> ContrastBranch:
        """The batch's prompts with no image at all (PAI's CFG branch)."""
        return cls(lvlm, lvlm.text_only(batch).inputs)

    def next_logits(self, input_ids: torch.LongTensor) -> torch.Tensor:
        """Next-token logits ``[batch, vocab]`` of the twin, given the main branch's ``input_ids``."""
        if input_ids.shape[0] != self.input_ids.shape[0]:
            raise ConfigError(
                f"a contrast branch follows one row per sample ({self.input_ids.shape[0]}), got "
                f"{input_ids.shape[0]} rows; use greedy or sampling with one sequence per prompt"
            )
        if self.cache is None:
            step = {**self.prefill, "position_ids": self.positions}
        else:
            new = input_ids[:, -1:]  # the token the main branch just chose
            self.attention_mask = torch.cat([self.attention_mask, torch.ones_like(new)], dim=1)
            position = self.attention_mask.sum(dim=-1, keepdim=True) - 1 + self.offsets  # [batch, 1]
            if self.positions.dim() == 3:
                position = position[None].expand(3, -1, -1)
            step = {"input_ids": new, "attention_mask": self.attention_mask, "position_ids": position}
        with owned_forward(self), torch.no_grad():
            out = self.model(**step, cache=self.cache, use_cache=True, logits_to_keep=1)
        self.cache = out.cache
        return out.logits[:, -1]


class ContrastiveGuidance(LogitsProcessor):
    """``gamma * (log p(y|main) - log p(y|twin)) + log p(y|twin)`` on plausible tokens, -inf elsewhere.

    Plausible: image-conditioned probability at least ``cutoff`` times the top one. PAI's CFG is this with the
    text-only twin; VCD's ``(1 + alpha) * logits - alpha * logits_noised`` is this with ``gamma = 1 + alpha`` and
    the noised-image twin (the same up to a per-row constant, so the same after softmax).
    """

    def __init__(self, branch: ContrastBranch, gamma: float, cutoff: float) -> None:
        """Validate the strengths; ``branch`` supplies the twin's logits each step."""
        if not gamma > 0:
            raise ConfigError(f"gamma must be > 0, got {gamma!r}")
        if not 0 <= cutoff < 1:
            raise ConfigError(f"cutoff must be in [0, 1), got {cutoff!r}")
        self.branch = branch
        self.gamma = gamma
        self.log_cutoff = math.log(cutoff) if cutoff > 0 else -math.inf

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """Return new scores ``[batch, vocab]``; the inputs are not modified."""
        main = torch.log_softmax(scores.float(), dim=-1)
        twin = torch.log_softmax(self.branch.next_logits(input_ids).float(), dim=-1)
        guided = twin + self.gamma * (main - twin)
        implausible = main < main.amax(dim=-1, keepdim=True) + self.log_cutoff
        return guided.masked_fill(implausible, -math.inf).to(scores.dtype)
