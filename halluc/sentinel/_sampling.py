"""Sampling the next sentence: n continuations of (image, question, answer so far) that stop at a sentence end.

All contexts of a call and all n samples of each go through one ``model.generate`` (``num_return_sequences=n``,
left padding). A custom stopping criterion ends a row as soon as it emits a token whose text ends a sentence
(``.``, ``!`` or ``?``, optionally followed by closing quotes or brackets); EOS ends the row as usual.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from halluc.objects import split_sentences
from halluc.sentinel._config import SentinelConfig
from halluc.sentinel._prompt import render_prompt

if TYPE_CHECKING:
    from PIL.Image import Image

    from halluc.models import LVLM

__all__ = ["LVLMSentenceSource", "Sample", "SentenceEnd", "SentenceSource", "cut_row", "first_sentence"]

_SENTENCE_END = re.compile(r"[.!?][\"')\]]*\s*$")


@dataclass(frozen=True)
class Sample:
    """One sampled continuation: its first sentence (may be empty), and how the sample stopped."""

    text: str
    ended: bool  # the model emitted EOS: it wants the answer to end here
    complete: bool  # it reached a sentence end or EOS (False: cut by the token limit)


class SentenceSource(Protocol):
    """Anything that proposes next sentences; ``LVLMSentenceSource`` in use, a scripted one in tests."""

    def sample(self, images: Sequence[Image], question: str, contexts: Sequence[str]) -> list[list[Sample]]:
        """Return, per (image, context), the sampled continuations."""
        ...


def first_sentence(text: str) -> str:
    """The first sentence of ``text``, stripped, as the shared extractor splits it ("" for blank text)."""
    spans = split_sentences(text)
    return text[spans[0][0] : spans[0][1]].strip() if spans else ""


def cut_row(row: Sequence[int], end_ids: Collection[int], eos_ids: Collection[int]) -> tuple[int, bool, bool]:
    """Where a generated row stops: (tokens to keep, ended by EOS, complete).

    The first EOS ends the answer (kept tokens exclude it); the first sentence-ending token ends the sentence
    (kept); a row with neither was cut by the token limit. Later tokens are padding and are ignored, which stays
    right when the pad id equals the EOS id.
    """
    for i, token in enumerate(row):
        if token in eos_ids:
            return i, True, True
        if token in end_ids:
            return i + 1, False, True
    return len(row), False, False


class SentenceEnd(StoppingCriteria):
    """Stop a row once its last token ends a sentence; ``ends[i]`` says whether token id ``i`` does."""

    def __init__(self, ends: torch.BoolTensor) -> None:
        self.ends = ends  # [vocab]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: object) -> torch.BoolTensor:
        """Per row: True when the newest token ends a sentence."""
        return self.ends.to(input_ids.device)[input_ids[:, -1]]  # [batch]


class LVLMSentenceSource:
    """Samples next sentences from an LVLM (n, temperature, token limit from the config), batched."""

    def __init__(self, lvlm: LVLM, config: SentinelConfig | None = None) -> None:
        self.lvlm = lvlm
        self.config = config or SentinelConfig()
        tokenizer = lvlm.processor.tokenizer
        size = max(len(tokenizer), int(lvlm.text_config.vocab_size))
        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        ends = torch.zeros(size, dtype=torch.bool)
        ends[: len(texts)] = torch.tensor([bool(_SENTENCE_END.search(t)) for t in texts])
        self._ends = ends
        self._end_ids = set(torch.nonzero(ends).squeeze(-1).tolist())
        eos = lvlm.model.generation_config.eos_token_id
        self._eos = set(eos if isinstance(eos, list) else [tokenizer.eos_token_id if eos is None else eos])

    def sample(self, images: Sequence[Image], question: str, contexts: Sequence[str]) -> list[list[Sample]]:
        """``n_samples`` continuations per (image, context), each cut after its first sentence."""
        processor = self.lvlm.processor
        texts = [render_prompt(processor, question, context) for context in contexts]
        rgb = [image.convert("RGB") for image in images]
        inputs = processor(
            text=texts,
            images=[[image] for image in rgb] if self.lvlm.family.nested_images else rgb,
            padding=True,
            padding_side="left",
            add_special_tokens=False,
            return_tensors="pt",
        ).to(device=self.lvlm.device, dtype=self.lvlm.dtype)
        output = self.lvlm.model.generate(
            **inputs,
            do_sample=True,
            temperature=self.config.temperature,
            num_return_sequences=self.config.n_samples,
            max_new_tokens=self.config.max_sentence_tokens,
            stopping_criteria=StoppingCriteriaList([SentenceEnd(self._ends)]),
            pad_token_id=self.lvlm.pad_token_id,
        )
        new_ids = output[:, inputs["input_ids"].shape[1] :].tolist()  # [contexts * n_samples, new]
        samples = [self._decode(row) for row in new_ids]
        return [samples[i : i + self.config.n_samples] for i in range(0, len(samples), self.config.n_samples)]

    def _decode(self, row: list[int]) -> Sample:
        """Decode one generated row up to its stop (what follows is padding) into a Sample."""
        keep, ended, complete = cut_row(row, self._end_ids, self._eos)
        text = self.lvlm.processor.tokenizer.decode(row[:keep], skip_special_tokens=True)
        return Sample(first_sentence(text), ended=ended, complete=complete)
