"""Caption -> COCO object mentions: the one implementation shared by CHAIR, detectors and SENTINEL; its NLTK steps
(tokens, tags, lemmas, sentences) are public for benchmarks that follow the same text processing (AMBER)."""

from halluc.objects._nltk import lemma, pos_tags, sentence_spans, word_tokens
from halluc.objects.coco import COCO_CATEGORIES, COCO_NAMES, Category, category_by_name
from halluc.objects.extractor import (
    MODES,
    Analysis,
    Mention,
    Mode,
    analyse,
    categories,
    clear_caches,
    extract_mentions,
    split_sentences,
)

__all__ = [
    "COCO_CATEGORIES",
    "COCO_NAMES",
    "MODES",
    "Analysis",
    "Category",
    "Mention",
    "Mode",
    "analyse",
    "categories",
    "category_by_name",
    "clear_caches",
    "extract_mentions",
    "lemma",
    "pos_tags",
    "sentence_spans",
    "split_sentences",
    "word_tokens",
]
