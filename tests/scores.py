"""Recording what generation finally chose from: the scores after every intervention's processors."""

from __future__ import annotations

import torch
from transformers import LogitsProcessor

from halluc.models import LVLM, GenerationHook, PreparedBatch
from interventions import Intervention, apply

__all__ = ["LastScores", "generate_with_scores"]


class LastScores(GenerationHook, LogitsProcessor):
    """A generation hook whose processor runs after every intervention's and keeps each step's scores."""

    edits_forwards = False

    def __init__(self) -> None:
        self.steps: list[torch.Tensor] = []

    def logits_processors(self, lvlm: LVLM, batch: PreparedBatch) -> list[LogitsProcessor]:
        return [self]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.steps.append(scores.clone())
        return scores


def generate_with_scores(
    lvlm: LVLM, images: list, prompts: list[str], config: Intervention | None, steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy new tokens ``[batch, steps]`` (EOS held off) and the final scores ``[steps, batch, vocab]``."""
    recorder = LastScores()
    with apply(lvlm, *([config] if config else [])):
        lvlm.generation_hooks.append(recorder)  # after the intervention's hooks, so its processor runs last
        try:
            ids = lvlm.generate_ids(lvlm.prepare(images, prompts), max_new_tokens=steps, min_new_tokens=steps)
        finally:
            lvlm.generation_hooks.remove(recorder)
    return ids, torch.stack(recorder.steps)
