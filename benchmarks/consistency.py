"""Consistency scoring for CrossCheck: sentences, inconsistency measures, self-consistency weighting, P(no) judges.

The pieces :mod:`benchmarks.crosscheck` puts together, usable on their own and free of any run directory:

* ``sentences_of`` splits a target output where the shared extractor splits and lists each sentence's objects;
* ``explicit_raw`` scores every target sentence against each evidence system's passages with an
  ``InconsistencyMeasure`` (default ``ObjectMentionMeasure``: share of the sentence's objects a passage does not
  mention, averaged over passages);
* ``judge_objects`` asks an LVLM "Is there a/an {object} in the image?" and reads P(no) from its next-token scores
  ("Yes" vs "No" first tokens), batched, with an intervention applied; ``implicit_raw`` averages it per sentence;
* ``aggregate`` weights evidence systems by softmax(-self_inconsistency / T), combines per sentence and ranks.

A system's self-inconsistency is the mean score of its own target sentences against its own evidence; a system
with no scorable sentence counts as 1 (fully inconsistent). Evidence that gives no value for a sentence is left
out and the remaining weights renormalised. A system's score is the mean over its scored sentences.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from transformers import LogitsProcessor

from halluc.errors import ConfigError
from halluc.models import GenerationHook
from halluc.objects import Mode, categories, extract_mentions, split_sentences
from halluc.prompts import existence_question

__all__ = [
    "ImageId",
    "InconsistencyMeasure",
    "ObjectMentionMeasure",
    "Ranking",
    "Raw",
    "Sentence",
    "aggregate",
    "answer_token_ids",
    "explicit_raw",
    "implicit_raw",
    "judge_objects",
    "mean",
    "sentences_of",
    "softmax_weights",
    "weighted_mean",
]

Raw = dict[str, dict[str, list[float | None]]]  # target system -> evidence system -> one score per target sentence
ImageId = int | str


@dataclass(frozen=True)
class Sentence:
    """One sentence of a target output: its image, position, text and the distinct COCO objects it mentions."""

    image_id: ImageId
    index: int
    text: str
    objects: tuple[str, ...]


def sentences_of(image_id: ImageId, text: str, *, mode: Mode = "reference") -> list[Sentence]:
    """Split ``text`` where the shared extractor splits and give each sentence the objects CHAIR would count."""
    mentions = extract_mentions(text, mode=mode)
    return [
        Sentence(image_id, i, text[s:e], tuple(dict.fromkeys(m.category for m in mentions if s <= m.start < e)))
        for i, (s, e) in enumerate(split_sentences(text))
    ]


@runtime_checkable
class InconsistencyMeasure(Protocol):
    """Scores a sentence against an evidence system's passages on the same image (0 = consistent, 1 = not)."""

    name: str

    def __call__(self, sentence: Sentence, passages: Sequence[str]) -> float | None:
        """Inconsistency in [0, 1], or None when the measure cannot judge (e.g. no objects, no passages)."""
        ...


@dataclass(frozen=True)
class ObjectMentionMeasure:
    """Default measure: share of the sentence's objects a passage does not mention, averaged over passages."""

    mode: Mode = "reference"
    name: ClassVar[str] = "object-mention"

    def __call__(self, sentence: Sentence, passages: Sequence[str]) -> float | None:
        """Mean over passages of (objects not mentioned / objects); None without objects or passages."""
        if not sentence.objects or not passages:
            return None
        found = [set(categories(p, mode=self.mode)) for p in passages]
        return sum(sum(o not in f for o in sentence.objects) / len(sentence.objects) for f in found) / len(found)


def explicit_raw(
    targets: Mapping[str, Sequence[Sentence]],
    passages: Mapping[str, Mapping[ImageId, Sequence[str]]],
    measure: InconsistencyMeasure,
) -> Raw:
    """Per target sentence, the measure against each evidence system's passages on the sentence's image."""
    return {
        t: {e: [measure(s, by_image.get(s.image_id, ())) for s in sents] for e, by_image in passages.items()}
        for t, sents in targets.items()
    }


def mean(values: Iterable[float | None]) -> float | None:
    """Mean of the values that are not None, or None when there are none."""
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def implicit_raw(
    targets: Mapping[str, Sequence[Sentence]], p_no: Mapping[str, Mapping[tuple[ImageId, str], float]]
) -> Raw:
    """Per target sentence, each evidence system's mean P(no) over the sentence's objects (None without objects)."""
    return {
        t: {e: [mean(table[(s.image_id, o)] for o in s.objects) for s in sents] for e, table in p_no.items()}
        for t, sents in targets.items()
    }


def softmax_weights(self_scores: Mapping[str, float], temperature: float) -> dict[str, float]:
    """softmax(-self_inconsistency / temperature) over evidence systems: more self-consistent, more weight."""
    if not temperature > 0:
        raise ConfigError(f"the weight temperature must be > 0, got {temperature}")
    if not self_scores:
        raise ConfigError("softmax_weights needs at least one evidence system")
    logits = {k: -v / temperature for k, v in self_scores.items()}
    top = max(logits.values())
    exps = {k: math.exp(v - top) for k, v in logits.items()}
    total = sum(exps.values())
    return {k: v / total for k, v in exps.items()}


def weighted_mean(values: Mapping[str, float | None], weights: Mapping[str, float]) -> float | None:
    """Weighted mean over the evidence systems that gave a value (weights renormalised), or None."""
    kept = [(weights[e], v) for e, v in values.items() if v is not None]
    total = sum(w for w, _ in kept)
    return sum(w * v for w, v in kept) / total if kept and total > 0 else None


@dataclass(frozen=True)
class Ranking:
    """Aggregated CrossCheck scores of one kind (explicit or implicit)."""

    self_inconsistency: dict[str, float]
    weights: dict[str, float]
    sentence_scores: dict[str, list[float | None]]  # target -> combined score per sentence
    scores: dict[str, float | None]  # target -> mean over its scored sentences
    ranking: list[str]  # best (lowest score) first; unscored systems last


def aggregate(raw: Raw, temperature: float) -> Ranking:
    """Weight evidence systems by self-consistency, combine per sentence, average per system and rank."""
    evidence = list(dict.fromkeys(e for by_evidence in raw.values() for e in by_evidence))
    self_scores: dict[str, float] = {}
    for e in evidence:
        own = mean(raw.get(e, {}).get(e, ()))
        self_scores[e] = 1.0 if own is None else own
    weights = softmax_weights(self_scores, temperature)
    combined = {
        t: [
            weighted_mean({e: column[i] for e, column in by_e.items()}, weights)
            for i in range(len(next(iter(by_e.values()), [])))
        ]
        for t, by_e in raw.items()
    }
    scores = {t: mean(values) for t, values in combined.items()}
    ranking = sorted(scores, key=lambda t: (scores[t] is None, scores[t] or 0.0))
    return Ranking(self_scores, weights, combined, scores, ranking)


# ----- implicit judgements: P("no") from an LVLM's next-token scores -----------------------------------------------
def answer_token_ids(tokenizer: Any) -> tuple[list[int], list[int]]:
    """First token ids of "Yes"/"yes" and "No"/"no" (with and without a leading space); shared ids dropped."""

    def first_ids(words: tuple[str, ...]) -> set[int]:
        encoded = (tokenizer.encode(w, add_special_tokens=False) for w in words)
        return {ids[0] for ids in encoded if ids}

    yes, no = first_ids(("Yes", " Yes", "yes", " yes")), first_ids(("No", " No", "no", " no"))
    shared = yes & no
    if not yes - shared or not no - shared:
        raise ConfigError(f"the tokenizer has no distinct first tokens for Yes/No (yes {yes}, no {no})")
    return sorted(yes - shared), sorted(no - shared)


class _FirstScores(LogitsProcessor):
    """Records the scores it is shown at the first generation step and returns them unchanged."""

    def __init__(self) -> None:
        self.scores: torch.Tensor | None = None  # [batch, vocab]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """Keep a float copy of the first step's scores; pass them on untouched."""
        if self.scores is None:
            self.scores = scores.detach().float().clone()
        return scores


@dataclass(frozen=True, eq=False)
class _LastProcessor(GenerationHook):
    """A generation hook added after the intervention's hooks, so its processor sees their final scores."""

    edits_forwards: ClassVar[bool] = False
    processor: LogitsProcessor

    def logits_processors(self, lvlm: Any, batch: Any) -> list[LogitsProcessor]:
        """The recording processor, last in the list."""
        return [self.processor]


def judge_objects(
    lvlm: Any, images: Sequence[Any], objects: Sequence[str], *, intervention: Any = None, batch_size: int = 16
) -> list[float]:
    """P("no") per (image, object): "Yes"/"No" next-token scores after the question, intervention applied, batched.

    The scores are those the model would sample from with the intervention (its logits processors included);
    when those mask both answers (e.g. a plausibility cut-off), the raw logits decide.
    """
    if len(images) != len(objects):
        raise ConfigError(f"got {len(images)} images but {len(objects)} objects; pass one image per object")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    yes_ids, no_ids = answer_token_ids(lvlm.processor.tokenizer)
    result: list[float] = []
    with intervention.apply(lvlm) if intervention is not None else nullcontext():
        for start in range(0, len(objects), batch_size):
            stop = start + batch_size
            batch = lvlm.prepare(list(images[start:stop]), [existence_question(o) for o in objects[start:stop]])
            raw, final = _FirstScores(), _FirstScores()
            hook = _LastProcessor(final)
            lvlm.generation_hooks.append(hook)
            try:
                lvlm.generate_ids(batch, max_new_tokens=1, logits_processor=[raw])
            finally:
                lvlm.generation_hooks.remove(hook)
            answers = yes_ids + no_ids
            usable = torch.isfinite(final.scores[:, answers]).any(dim=1, keepdim=True)  # [batch, 1]
            scores = torch.where(usable, final.scores, raw.scores)  # [batch, vocab]
            margin = torch.logsumexp(scores[:, no_ids], -1) - torch.logsumexp(scores[:, yes_ids], -1)  # [batch]
            result.extend(torch.sigmoid(margin).tolist())
    return result
