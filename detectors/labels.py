"""Match the free-text phrase an open-vocabulary detector returns to one of the labels that were asked for.

Grounding DINO reports, per box, the prompt tokens whose score passed the text threshold, decoded back to text:
usually the asked label ("dining table"), but sometimes a fragment ("table"), a merge of two neighbours
("cat dog"), or the label with stray punctuation or special tokens ("traffic light ."). ``match_label`` resolves a
phrase in three steps and returns the first that succeeds:

1. exact: the normalised phrase equals a normalised label;
2. containment: a label occurs in the phrase as whole words, or the phrase occurs in a label as whole words; the
   longest such label wins, then the one occurring earliest in the phrase, then the earliest asked;
3. token overlap: the label sharing the largest fraction of (crudely singularised) words with the phrase
   (Jaccard index); ties go to the longer label, then the earliest asked.

A phrase that shares no word with any label matches nothing (None). Normalising lower-cases, drops bracketed
special tokens such as ``[SEP]`` and turns every non-alphanumeric character into a space.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["match_label", "normalize_phrase"]

_SPECIAL_TOKEN = re.compile(r"\[[A-Za-z]+\]")
_NON_WORD = re.compile(r"[^0-9a-z]+")


def normalize_phrase(text: str) -> str:
    """Lower-case ``text``, drop special tokens and punctuation, and collapse whitespace, for comparisons."""
    text = _SPECIAL_TOKEN.sub(" ", text).lower()
    return " ".join(_NON_WORD.sub(" ", text).split())


def _singular(word: str) -> str:
    """Strip a regular English plural ending, enough to let "cups" meet "cup" and "glasses" meet "glass"."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("sses", "shes", "ches", "xes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def _words(normalized: str) -> set[str]:
    """Return the singularised words of an already normalised phrase."""
    return {_singular(word) for word in normalized.split()}


def match_label(phrase: str, labels: Sequence[str]) -> str | None:
    """Return the asked label (as given) that ``phrase`` names, or None; see the module docstring for the rule."""
    text = normalize_phrase(phrase)
    if not text:
        return None
    normalized = [(label, normalize_phrase(label)) for label in labels]
    for label, norm in normalized:
        if norm == text:
            return label

    padded = f" {text} "
    contained = []
    for order, (label, norm) in enumerate(normalized):
        if not norm:
            continue
        if f" {norm} " in padded:
            contained.append((-len(norm), padded.index(f" {norm} "), order, label))
        elif padded in f" {norm} ":
            contained.append((-len(norm), 0, order, label))
    if contained:
        return min(contained)[3]

    phrase_words = _words(text)
    best: tuple[float, int, int] | None = None
    best_label = None
    for order, (label, norm) in enumerate(normalized):
        label_words = _words(norm)
        shared = len(phrase_words & label_words)
        if not shared:
            continue
        key = (-shared / len(phrase_words | label_words), -len(norm), order)
        if best is None or key < best:
            best, best_label = key, label
    return best_label
