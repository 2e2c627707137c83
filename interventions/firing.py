"""Proof of firing: how much the attached interventions changed the model's first step, per sample.

``interventions.apply`` adds one ``FiringMonitor`` after the methods it attaches. At the start of each generate call
the monitor runs one unedited prefill of the batch (inside ``owned_forward``, so no intervention acts on it); its
processor, running after every method's, compares the first step's final log-probabilities with the unedited ones.
Each sample's report (``LVLM.generate(..., firing=[])``) gets ``first_step_change``, the mean absolute change of
the log-probabilities over the tokens both keep finite, and ``top1_changed``. When the methods changed nothing on
any sample of a batch, a warning names them, so a method that silently did nothing is seen.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from transformers import LogitsProcessor

from halluc.models import LVLM, GenerationHook, PreparedBatch
from interventions.scope import owned_forward

__all__ = ["FiringMonitor"]

_log = logging.getLogger("halluc")


class FiringMonitor(GenerationHook, LogitsProcessor):
    """Measures the first-step effect of the interventions named ``methods``; a processor that must run last."""

    edits_forwards = False  # its unedited prefill runs apart, before generation

    def __init__(self, methods: list[str]) -> None:
        """Idle until a generate call starts."""
        self.methods = methods
        self.unedited: torch.Tensor | None = None  # [batch, vocab] log-probs of the unedited first step
        self.change: torch.Tensor | None = None  # [batch] mean |delta log p| at the first step
        self.top1_changed: torch.Tensor | None = None  # [batch] bool

    def on_generate_start(self, lvlm: LVLM, batch: PreparedBatch) -> None:
        """One unedited prefill: the first step's log-probabilities without any intervention."""
        positions, _ = lvlm.prefill_positions(batch.inputs)
        with owned_forward(self), torch.no_grad():
            out = lvlm.model(**batch.inputs, position_ids=positions, use_cache=False, logits_to_keep=1)
        self.unedited = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
        self.change = self.top1_changed = None

    def logits_processors(self, lvlm: LVLM, batch: PreparedBatch) -> list[LogitsProcessor]:
        """Itself: it sees the final scores of every step and measures the first."""
        return [self]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """Record the first step's change against the unedited prefill; scores pass unchanged."""
        if self.change is None and self.unedited is not None:
            per_sample = scores.shape[0] // self.unedited.shape[0]
            final = torch.log_softmax(scores.float(), dim=-1)[::per_sample]  # first row of each sample
            both = final.isfinite() & self.unedited.isfinite()
            delta = torch.where(both, (final - self.unedited).abs(), 0.0)
            self.change = delta.sum(dim=-1) / both.sum(dim=-1).clamp_min(1)
            self.top1_changed = final.argmax(dim=-1) != self.unedited.argmax(dim=-1)
        return scores

    def report(self, lvlm: LVLM, batch: PreparedBatch) -> list[dict[str, Any]] | None:
        """Per sample: ``first_step_change`` and ``top1_changed``; warns when nothing changed anywhere."""
        if self.change is None:
            return None
        if not bool((self.change > 0).any()):
            _log.warning(
                "%s changed nothing on this batch of %d samples: the first step's log-probabilities equal the "
                "unedited model's (no image tokens, a neutral strength, or layers without effect?)",
                "+".join(self.methods),
                len(batch),
            )
        return [
            {
                "first_step_change": round(float(change), 6) if math.isfinite(change) else None,
                "top1_changed": bool(flip),
            }
            for change, flip in zip(self.change.tolist(), self.top1_changed.tolist(), strict=True)
        ]

    def on_generate_end(self, lvlm: LVLM) -> None:
        """Forget this call."""
        self.unedited = self.change = self.top1_changed = None
