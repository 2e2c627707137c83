"""Caption -> COCO object mentions, following the reference CHAIR algorithm; the one extractor halluc uses.

The pipeline reproduces ``caption_to_words`` of the reference CHAIR code (LisaAnne/Hallucination, in the NLTK
variant used by OPERA and PAI), with character spans added:

1. lower-case the caption; split sentences with an untrained Punkt tokenizer and word-tokenise each sentence
   with the Treebank tokenizer (what ``nltk.word_tokenize`` does);
2. POS-tag all tokens of the caption together and WordNet-lemmatise each (J/V/N/R tags -> adjective, verb,
   noun, adverb; anything else -> noun);
3. merge two-word phrases greedily, left to right: COCO multi-word names ("hot dog", "teddy bear", "motor
   bike", ...), "baby X"/"adult X" -> X for animals, "passenger jet/train" -> jet/train, "bow tie" -> tie,
   "toilet seat" -> toilet, and "home plate"/"train track", which are kept as non-objects so that they do
   not fire "plate"/"train";
4. if "toilet" occurs anywhere, drop every "seat" (a toilet seat is not a chair);
5. keep the units found in the synonym list, in order and with repeats, mapped to their COCO category.

``mode="reference"`` keeps the reference's quirks so that published numbers reproduce:

* synonym entries written after a double space keep a leading space (" motor bike", " cheesecake") and can
  never match a token;
* "iPhone" is the only mixed-case entry and never matches the lower-cased caption;
* "stove top oven" is listed as a phrase but only pairs are merged, so it never matches as one unit
  (it counts as two "oven" mentions, from "stove" and "oven");
* the reference also maps "wine glas" -> "wine glass" (a fix for the pattern singulariser); WordNet keeps
  "glass", so that rule never fires in either mode.

``mode="corrected"`` strips and lower-cases synonym entries and merges three-word phrases before pairs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources
from typing import Literal

from halluc.errors import ConfigError
from halluc.objects import _nltk

__all__ = [
    "MODES",
    "Analysis",
    "Mention",
    "Mode",
    "analyse",
    "categories",
    "clear_caches",
    "extract_mentions",
    "split_sentences",
]

Mode = Literal["reference", "corrected"]
MODES: tuple[str, ...] = ("reference", "corrected")

_COCO_PHRASES = (
    "motor bike", "motor cycle", "air plane", "traffic light", "street light", "traffic signal", "stop light",
    "fire hydrant", "stop sign", "parking meter", "suit case", "sports ball", "baseball bat", "baseball glove",
    "tennis racket", "wine glass", "hot dog", "cell phone", "mobile phone", "teddy bear", "hair drier",
    "potted plant", "laptop computer", "stove top oven", "home plate", "train track",
)  # fmt: skip
_ANIMALS = ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "animal", "cub")
_RENAMES = {
    "passenger jet": "jet",
    "passenger train": "train",
    "bow tie": "tie",
    "toilet seat": "toilet",
    "wine glas": "wine glass",
}
_QUOTE_TOKENS = frozenset({"``", "''"})  # the Treebank tokenizer's rewrites of a straight double quote


@dataclass(frozen=True)
class Mention:
    """One object mention: surface text, COCO category and its [start, end) span in the original caption."""

    word: str
    category: str
    start: int
    end: int


@dataclass(frozen=True)
class Analysis:
    """Everything CHAIR needs from one caption: its mentions and its length in merged tokens."""

    mentions: tuple[Mention, ...]
    n_words: int  # tokens after phrase merging, punctuation included (the reference's caption length)


@dataclass(frozen=True)
class _Vocabulary:
    """Synonym table and phrase rules for one mode."""

    category_of: dict[str, str]  # synonym (lemma form) -> COCO category
    phrases: dict[tuple[str, ...], str]  # lemma sequence -> the unit it becomes
    sizes: tuple[int, ...]  # phrase lengths to try at each position, longest first

    def merge(self, lemmas: list[str]) -> Iterator[tuple[str, int, int]]:
        """Yield (unit, first token, last token) after greedy left-to-right phrase merging."""
        i = 0
        while i < len(lemmas):
            for size in self.sizes:
                unit = self.phrases.get(tuple(lemmas[i : i + size])) if i + size <= len(lemmas) else None
                if unit is not None:
                    yield unit, i, i + size - 1
                    i += size
                    break
            else:
                yield lemmas[i], i, i
                i += 1


@cache
def _vocabulary(mode: str) -> _Vocabulary:
    """Build the synonym table and phrase rules for ``mode`` from the shipped synonyms.txt."""
    text = resources.files("halluc.objects").joinpath("synonyms.txt").read_text(encoding="utf-8")
    category_of: dict[str, str] = {}
    for line in text.splitlines():
        entries = line.strip().split(", ")
        if mode == "corrected":
            entries = [e.strip().lower() for e in entries]
        for entry in entries:
            category_of[entry] = entries[0]
    phrases = {tuple(p.split(" ")): p for p in _COCO_PHRASES}
    for animal in _ANIMALS:
        phrases[("baby", animal)] = phrases[("adult", animal)] = animal
    phrases |= {tuple(p.split(" ")): unit for p, unit in _RENAMES.items()}
    sizes = (3, 2) if mode == "corrected" else (2,)
    return _Vocabulary(category_of, phrases, sizes)


def _check_mode(mode: str) -> str:
    """Return ``mode`` if valid, else raise ConfigError listing the valid modes."""
    if mode not in MODES:
        raise ConfigError(f"unknown extraction mode {mode!r}; valid modes: {', '.join(MODES)}")
    return mode


def _locate(sentence: str, token: str, pos: int) -> tuple[int, int]:
    """Span of ``token`` in ``sentence`` at or after ``pos``; tolerant of the tokenizer's quote rewrites."""
    while pos < len(sentence) and sentence[pos].isspace():
        pos += 1
    if sentence.startswith(token, pos):
        return pos, pos + len(token)
    if token in _QUOTE_TOKENS and sentence.startswith('"', pos):
        return pos, pos + 1
    found = sentence.find(token, pos)
    return (found, found + len(token)) if found >= 0 else (pos, pos)


def _tokenize(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Tokens of ``text`` as ``nltk.word_tokenize`` makes them, with their spans in ``text``."""
    tokens: list[str] = []
    spans: list[tuple[int, int]] = []
    for s_start, s_end in _nltk.sentence_spans(text):
        sentence = text[s_start:s_end]
        pos = 0
        for token in _nltk.word_tokens(sentence):
            start, pos = _locate(sentence, token, pos)
            tokens.append(token)
            spans.append((s_start + start, s_start + pos))
    return tokens, spans


class _Lowered:
    """A lower-cased text plus the map of its offsets back to the original (lower() can lengthen a char)."""

    def __init__(self, original: str) -> None:
        self.text = original.lower()
        self._offsets: list[int] | None = None
        if len(self.text) != len(original):  # some character grew, e.g. U+0130 -> "i" + U+0307
            self._offsets = [i for i, ch in enumerate(original) for _ in ch.lower()] + [len(original)]

    def original_span(self, start: int, end: int) -> tuple[int, int]:
        """The [start, end) span in the original text that covers lowered[start:end]."""
        if self._offsets is None:
            return start, end
        return self._offsets[start], (self._offsets[end - 1] + 1 if end > start else self._offsets[start])


def analyse(caption: str, *, mode: Mode = "reference") -> Analysis:
    """Extract object mentions and the merged-token length of ``caption`` in one pass (used by CHAIR)."""
    return _analyse(caption, _check_mode(mode))


@lru_cache(maxsize=50_000)
def _analyse(caption: str, mode: str) -> Analysis:
    """The extraction itself; results are immutable, so re-scoring a caption is a cache hit."""
    vocab = _vocabulary(mode)
    lowered = _Lowered(caption)
    tokens, spans = _tokenize(lowered.text)
    lemmas = [_nltk.lemma(tok, tag) for tok, tag in zip(tokens, _nltk.pos_tags(tokens), strict=True)]
    units = list(vocab.merge(lemmas))
    names = {unit for unit, _, _ in units}
    mentions = []
    for unit, first, last in units:
        category = vocab.category_of.get(unit)
        if category is None or (unit == "seat" and "toilet" in names):
            continue
        start, end = lowered.original_span(spans[first][0], spans[last][1])
        mentions.append(Mention(caption[start:end], category, start, end))
    return Analysis(tuple(mentions), len(units))


def extract_mentions(caption: str, *, mode: Mode = "reference") -> list[Mention]:
    """COCO object mentions of ``caption`` in order, repeats kept (CHAIR_i counts every mention)."""
    return list(analyse(caption, mode=mode).mentions)


def categories(caption: str, *, mode: Mode = "reference") -> list[str]:
    """Distinct COCO categories mentioned in ``caption``, in order of first mention."""
    return list(dict.fromkeys(m.category for m in analyse(caption, mode=mode).mentions))


def split_sentences(text: str) -> list[tuple[int, int]]:
    """[start, end) sentence spans of ``text``, cut exactly where the extractor cuts (on the lower-cased text)."""
    lowered = _Lowered(text)
    return [lowered.original_span(s, e) for s, e in _nltk.sentence_spans(lowered.text)]


def clear_caches(*, lemmas: bool = True) -> None:
    """Forget cached caption analyses and, unless ``lemmas=False``, lemmas (for cold-start benchmarks)."""
    _analyse.cache_clear()
    if lemmas:
        _nltk.lemma.cache_clear()
