"""One step of SENTINEL on one image: classify the sampled sentences, pair them, pick the sentence to keep.

Sentence kinds, from the objects a sentence mentions and their cross-check verdicts:

    hallucinated   >= 1 object judged hallucinated
    coherent       >= 1 object, all present, at least one already mentioned in the context
    exploratory    >= 1 object, all present, none mentioned in the context yet
    uncertain      no object hallucinated, but >= 1 uncertain (discarded)
    no_objects     mentions no object (discarded; may still extend the context, it claims nothing)
    repeat         repeats a sentence of the context verbatim (discarded)

Pairs share the context: each hallucinated sentence is the loser against a positive of each enabled pair type
(``coherent`` by default; ``exploratory`` optional), positives taken in turn. The context grows by an exploratory
sentence, else a coherent one, else an object-free one, never by a hallucinated or uncertain one.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from halluc.objects import categories
from halluc.sentinel._kinds import KINDS, Kind

if TYPE_CHECKING:
    from halluc.sentinel._sampling import Sample

__all__ = ["Candidate", "StepResult", "candidates", "classify", "run_step"]

_EXTEND_ORDER: tuple[Kind, ...] = ("exploratory", "coherent", "no_objects")


@dataclass(frozen=True)
class Candidate:
    """A distinct sampled sentence and the COCO categories it mentions (in order of first mention)."""

    text: str
    objects: tuple[str, ...]


@dataclass(frozen=True)
class StepResult:
    """What one step decided: the pairs (winner, loser, type), each candidate's kind, and how to go on."""

    pairs: list[tuple[Candidate, Candidate, str]]
    kinds: dict[str, Kind]  # candidate text -> kind
    next_sentence: Candidate | None  # None: the image is finished
    stop_reason: str | None  # "answer_end" or "no_clean_sentence" when finished here


def candidates(samples: Sequence[Sample]) -> list[Candidate]:
    """Distinct non-empty complete sentences among ``samples`` (whitespace-normalised), in sample order."""
    seen: dict[str, Candidate] = {}
    for sample in samples:
        text = " ".join(sample.text.split())
        if sample.complete and text and text not in seen:
            seen[text] = Candidate(text, tuple(categories(text)))
    return list(seen.values())


def classify(
    candidate: Candidate, statuses: Mapping[str, str], context_objects: Collection[str], context: Collection[str]
) -> Kind:
    """The kind of one sentence given per-object verdict statuses, the context's objects and sentences."""
    if candidate.text in context:
        return "repeat"
    if not candidate.objects:
        return "no_objects"
    found = {statuses.get(obj, "uncertain") for obj in candidate.objects}  # no verdict counts as uncertain
    if "hallucinated" in found:
        return "hallucinated"
    if found != {"present"}:
        return "uncertain"
    return "coherent" if any(obj in context_objects for obj in candidate.objects) else "exploratory"


def run_step(
    samples: Sequence[Sample],
    statuses: Mapping[str, str],
    context_objects: Collection[str],
    context: Collection[str],
    pair_types: Sequence[str] = ("coherent",),
) -> StepResult:
    """Classify this step's samples, pair positives with hallucinated negatives, and choose the next sentence.

    The image finishes when more than half of the samples are empty or end the answer (EOS).
    """
    found = candidates(samples)
    kinds = {c.text: classify(c, statuses, context_objects, context) for c in found}
    by_kind = {kind: [c for c in found if kinds[c.text] == kind] for kind in KINDS}
    negatives = by_kind["hallucinated"]
    pairs = [
        (positives[i % len(positives)], negative, pair_type)
        for pair_type in pair_types
        if (positives := by_kind[pair_type])
        for i, negative in enumerate(negatives)
    ]
    if sum(1 for s in samples if s.ended or not s.text.strip()) * 2 > len(samples):
        return StepResult(pairs, kinds, None, "answer_end")
    keep = next((by_kind[kind][0] for kind in _EXTEND_ORDER if by_kind[kind]), None)
    return StepResult(pairs, kinds, keep, None if keep is not None else "no_clean_sentence")
