"""SENTINEL: sentence-level, detector-validated preference pairs for hallucination-reducing DPO.

For each image the description grows one sentence at a time. At each step the model continues
"chat prompt + answer so far" ``n_samples`` times (temperature sampling, each sample cut at its first sentence
end); the distinct sentences' objects are checked by a validator (two detectors that must agree), and each
sentence is classified (see ``halluc.sentinel._pairs``). Hallucinated sentences become losers against
context-coherent winners written at the same context; the context then grows by a clean sentence. An image is
finished when more than half of the samples are empty or end the answer.

This package holds the algorithm (sampling, classification, pairing, the output files and their statistics); the
generation job that drives it over an image set is :func:`benchmarks.sentinel.generate_pairs`.

Output directory (``benchmarks.sentinel.generate_pairs``):
    manifest.json   job "sentinel", model, validator, config, image set, config hash
    pairs.jsonl     one pair per line: image_id, image_path, question, context, y_win, y_lose, win_objects,
                    lose_hallucinated, context_objects, step (sentence index), type (PAIR_TYPES)
    images.jsonl    one line per finished image: description, verdicts {object: status}, stop_reason and
                    per-step counts of each sentence kind (KINDS); or image_id, image_path and error
    metrics.json    ``pair_stats``: pairs, pairs by type, hallucination rate of sentences by position
"""

from halluc.sentinel._config import SentinelConfig
from halluc.sentinel._kinds import KINDS, PAIR_TYPES, Kind
from halluc.sentinel._pairs import Candidate, StepResult, candidates, classify, run_step
from halluc.sentinel._prompt import DEFAULT_QUESTION, continuation, render_prompt
from halluc.sentinel._sampling import (
    LVLMSentenceSource,
    Sample,
    SentenceEnd,
    SentenceSource,
    cut_row,
    first_sentence,
)
from halluc.sentinel._stats import pair_stats
from halluc.sentinel._store import IMAGES, PAIRS, PairWriter

__all__ = [
    "DEFAULT_QUESTION",
    "IMAGES",
    "KINDS",
    "PAIRS",
    "PAIR_TYPES",
    "Candidate",
    "Kind",
    "LVLMSentenceSource",
    "PairWriter",
    "Sample",
    "SentenceEnd",
    "SentenceSource",
    "SentinelConfig",
    "StepResult",
    "candidates",
    "classify",
    "continuation",
    "cut_row",
    "first_sentence",
    "pair_stats",
    "render_prompt",
    "run_step",
]
