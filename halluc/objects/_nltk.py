"""Lazy access to the NLTK pieces the extractor needs, with one clear error when a resource is missing.

Nothing here touches NLTK data at import time. On first use each resource is looked up; if it is missing we
try a quiet ``nltk.download`` once and otherwise raise :class:`halluc.errors.HallucError` naming the resource.
"""

from __future__ import annotations

import io
from functools import cache, lru_cache

import nltk
from nltk.stem import WordNetLemmatizer
from nltk.tag.perceptron import PerceptronTagger
from nltk.tokenize import NLTKWordTokenizer, PunktSentenceTokenizer

from halluc.errors import HallucError

__all__ = ["lemma", "pos_tags", "sentence_spans", "word_tokens"]

# resource id for nltk.download -> path nltk.data.find understands
_RESOURCES = {
    "averaged_perceptron_tagger_eng": "taggers/averaged_perceptron_tagger_eng/",
    "wordnet": "corpora/wordnet",
}
_WORDNET_POS = {"J": "a", "V": "v", "N": "n", "R": "r"}  # Treebank tag initial -> WordNet POS

_SENTENCES = PunktSentenceTokenizer()  # untrained: needs no data, splits like word_tokenize would without punkt
_WORDS = NLTKWordTokenizer()


def _require(name: str) -> None:
    """Make sure NLTK resource ``name`` is present, downloading it quietly once if possible."""
    path = _RESOURCES[name]
    try:
        nltk.data.find(path)
        return
    except LookupError:
        pass
    nltk.download(name, quiet=True, raise_on_error=False, print_error_to=io.StringIO())
    try:
        nltk.data.find(path)
    except LookupError:
        raise HallucError(
            f"NLTK resource {name!r} ({path}) is missing and could not be downloaded; set NLTK_DATA to a "
            f"folder that has it or run `python -m nltk.downloader {name}`"
        ) from None


@cache
def _tagger() -> PerceptronTagger:
    """Load the English averaged-perceptron tagger once per process (loading takes ~0.3 s)."""
    _require("averaged_perceptron_tagger_eng")
    return PerceptronTagger(lang="eng")


@cache
def _lemmatizer() -> WordNetLemmatizer:
    """Create the WordNet lemmatizer once, after checking that WordNet is installed."""
    _require("wordnet")
    return WordNetLemmatizer()


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences of ``text`` as ``nltk.sent_tokenize`` would cut them without punkt data."""
    return list(_SENTENCES.span_tokenize(text))


def word_tokens(sentence: str) -> list[str]:
    """Treebank-style word tokens of one sentence (the tokenizer inside ``nltk.word_tokenize``)."""
    return _WORDS.tokenize(sentence)


def pos_tags(tokens: list[str]) -> list[str]:
    """Penn Treebank tags for ``tokens``, identical to ``nltk.pos_tag`` (same tagger, same context)."""
    return [tag for _, tag in _tagger().tag(tokens)]


@lru_cache(maxsize=200_000)
def lemma(word: str, tag: str) -> str:
    """WordNet lemma of ``word`` for Treebank ``tag`` (J/V/N/R map to their WordNet POS, else noun); cached."""
    return _lemmatizer().lemmatize(word, pos=_WORDNET_POS.get(tag[:1], "n"))
