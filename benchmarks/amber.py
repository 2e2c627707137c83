"""AMBER (Wang et al. 2023): generative CHAIR / Cover / Hal / Cog and discriminative yes/no scoring, as the official
code computes them (github junyangwang0410/AMBER, ``inference.py``; ported, not copied).

The metadata is the official ``data/`` folder, loaded from a directory the user gives: ``annotations.json`` (one
entry per query id: ``type``, ``truth``, for generative entries ``hallu``), ``relation.json`` (object word ->
associated words), ``safe_words.txt`` and ``metrics.txt`` (the counters' start values; 0.001 for every
denominator, which the official numbers include). Choices of the official code kept on purpose:

* a description's object words are NLTK's ``NN*`` tokens, WordNet-lemmatised case-sensitively, that occur in
  ``relation.json`` (keys or values); a safe word counts as an object word but never as a hallucination;
* a word is "covered" (``truth``) or "cognised" (``hallu``) when it or an associated word matches exactly or is
  :func:`similar`; an exact ``hallu`` match still passes the similarity check against ``truth``;
* a discriminative answer counts only when it is exactly ``"Yes"`` or ``"No"``; "precision" and "recall" are those
  of the answer "No", and F1 uses them after rounding to one decimal (+0.0001 in the denominator, +0.001 for
  existence). Every type other than generative, attribute state/number/action and existence
  (``discriminative-hallucination``) is a relation question.

Two additions, neither of which changes an official number: ``yes_ratio`` (share of answers exactly "Yes"; the
official code prints none) and ``None`` instead of 0.0 for a question group the set does not have.
"""

from __future__ import annotations

import ast
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from benchmarks.pope import parse_answer
from halluc.errors import InputDataError
from halluc.objects import lemma, pos_tags, sentence_spans, word_tokens

__all__ = [
    "DATA_FILES",
    "GROUPS",
    "ID_KEYS",
    "AmberData",
    "extract_nouns",
    "load_amber_data",
    "load_queries",
    "official_response",
    "question_group",
    "score_responses",
    "similar",
    "similarity_backend",
    "write_amber_data",
]

_log = logging.getLogger("halluc")

DATA_FILES = ("annotations.json", "relation.json", "safe_words.txt", "metrics.txt")
ID_KEYS = ("id", "question_id")  # the query-id field of a response file, tried in order
SIMILARITY_THRESHOLD = 0.8  # the official --similarity_score default
# annotation type -> counter prefix of the official code; any other non-generative type is a relation question
_PREFIX = {
    "discriminative-attribute-state": "as",
    "discriminative-attribute-number": "an",
    "discriminative-attribute-action": "aa",
    "discriminative-hallucination": "ha",
}
_GROUP_OF_PREFIX = {"as": "state", "an": "number", "aa": "action", "ha": "existence", "asso": "relation"}
_QA_COUNTERS = ("qa_correct_score", "qa_correct_num", "qa_no_score", "qa_no_num", "qa_ans_no_score", "qa_ans_no_num")
_GEN_COUNTERS = ("chair_score", "chair_num", "safe_cover_score", "safe_cover_num", "hallu_cover_score",
                 "hallu_cover_num", "non_hallu_score", "non_hallu_num")  # fmt: skip
# reported groups -> the counter prefixes they add up (attribute = state + number + action, as officially)
GROUPS: dict[str, tuple[str, ...]] = {
    "discriminative": ("all",),  # the official un-prefixed overall counters (aliased "all_..." in _metrics)
    "existence": ("ha",),
    "attribute": ("as", "an", "aa"),
    "state": ("as",),
    "number": ("an",),
    "action": ("aa",),
    "relation": ("asso",),
}


@dataclass(frozen=True)
class AmberData:
    """The official metadata: annotations by query id, word associations, safe words, counter start values."""

    root: Path
    annotations: dict[int, dict[str, Any]]
    association: dict[str, list[str]]
    safe_words: frozenset[str]
    start: dict[str, float]


def question_group(annotation_type: str) -> str:
    """'generative', 'state', 'number', 'action', 'existence' or 'relation' for an annotation's ``type``."""
    if annotation_type == "generative":
        return "generative"
    return _GROUP_OF_PREFIX[_PREFIX.get(annotation_type, "asso")]


def _file(root: Path, name: str) -> Path:
    path = root / name
    if not path.is_file():
        raise InputDataError(
            f"--amber-data {str(root)!r} has no {name}; it needs the official AMBER data/ files "
            f"({', '.join(DATA_FILES)}) from github junyangwang0410/AMBER"
        )
    return path


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputDataError(f"cannot read AMBER file {str(path)!r}: {exc}") from None


def _start_values(path: Path) -> dict[str, float]:
    """metrics.txt's ``name=value`` lines (the official code evals each value; only numbers are accepted here)."""
    start: dict[str, float] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.strip().split("=")
        if len(parts) != 2:
            continue
        try:
            value = ast.literal_eval(parts[1].strip())
        except (ValueError, SyntaxError):
            value = None
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise InputDataError(f"{str(path)!r} line {n}: {parts[1].strip()!r} is not a number")
        start[parts[0].strip()] = value
    missing = [name for name in _counter_names() if name not in start]
    if missing:
        raise InputDataError(f"{str(path)!r} does not set the counter(s) {', '.join(missing[:5])}")
    return start


def _counter_names() -> list[str]:
    """Every counter metrics.txt must set, in the official file's order."""
    return [*_GEN_COUNTERS, *_QA_COUNTERS, *(f"{p}_{name}" for p in _GROUP_OF_PREFIX for name in _QA_COUNTERS)]


def _check_annotations(path: Path, raw: Any, association: Mapping[str, list[str]]) -> dict[int, dict[str, Any]]:
    """Annotations by id; every generative truth/hallu word must be a key of relation.json (the official code
    would stop with a KeyError mid-run)."""
    if not isinstance(raw, list) or not all(isinstance(e, dict) for e in raw):
        raise InputDataError(f"{str(path)!r} must be a JSON list of annotation objects")
    by_id: dict[int, dict[str, Any]] = {}
    for n, entry in enumerate(raw, 1):
        if entry.get("id") != n:  # the official code looks an id up at position id - 1
            raise InputDataError(f"{str(path)!r}: entry {n} has id {entry.get('id')!r}; ids must be 1, 2, 3, ...")
        if entry.get("type") == "generative":
            words = [*entry.get("truth", []), *entry.get("hallu", [])]
            unknown = [w for w in words if w not in association]
            if unknown:
                raise InputDataError(f"{str(path)!r} id {n}: object word {unknown[0]!r} is not a key of relation.json")
        elif entry.get("truth") not in ("yes", "no"):
            raise InputDataError(f"{str(path)!r} id {n}: truth {entry.get('truth')!r} is neither 'yes' nor 'no'")
        by_id[n] = entry
    return by_id


def load_amber_data(root: Path) -> AmberData:
    """Load and check the official metadata files of ``root``, naming any that is missing or malformed."""
    root = Path(root)
    if not root.is_dir():
        raise InputDataError(f"--amber-data {str(root)!r} is not a directory (the official AMBER data/ folder)")
    paths = {name: _file(root, name) for name in DATA_FILES}
    association = _json(paths["relation.json"])
    if not isinstance(association, dict) or not all(isinstance(v, list) for v in association.values()):
        raise InputDataError(f"{str(paths['relation.json'])!r} must map each word to a list of words")
    annotations = _check_annotations(paths["annotations.json"], _json(paths["annotations.json"]), association)
    safe = paths["safe_words.txt"].read_text(encoding="utf-8").split("\n")
    return AmberData(root, annotations, association, frozenset(safe), _start_values(paths["metrics.txt"]))


def load_queries(root: Path, name: str = "query/query_all.json") -> list[dict[str, Any]]:
    """The official query file ``[{id, image, query}]`` (``query/query_all.json`` by default) of ``root``."""
    queries = _json(_file(Path(root), name))
    if not isinstance(queries, list) or not all(isinstance(q, dict) and {"id", "image", "query"} <= q.keys()
                                                for q in queries):  # fmt: skip
        raise InputDataError(f"{str(Path(root) / name)!r} must be a list of {{id, image, query}} objects")
    return queries


def write_amber_data(
    root: Path,
    annotations: Sequence[dict[str, Any]],
    relation: Mapping[str, list[str]],
    queries: Sequence[dict[str, Any]],
    safe_words: Sequence[str] = (),
) -> Path:
    """Write a metadata set in the official layout (counters start as officially: 0.001 per denominator), so
    :func:`load_amber_data` and ``halluc score amber`` read it like the real one; returns ``root``."""
    root = Path(root)
    (root / "query").mkdir(parents=True, exist_ok=True)
    start = "".join(f"{name}={0.001 if name.endswith('_num') else 0}\n" for name in _counter_names())
    (root / "metrics.txt").write_text(start)
    (root / "safe_words.txt").write_text("\n".join(safe_words))
    for name, content in (("annotations.json", annotations), ("relation.json", relation),
                          ("query/query_all.json", queries)):  # fmt: skip
        (root / name).write_text(json.dumps(content, indent=1), encoding="utf-8")
    return root


@cache
def _spacy_model() -> Any:
    """spaCy's ``en_core_web_lg`` (the official model) when installed, else None."""
    try:
        import spacy

        return spacy.load("en_core_web_lg")
    except (ImportError, OSError):
        return None


def similarity_backend() -> str:
    """Which rule :func:`similar` applies here, for the manifest."""
    return "spacy:en_core_web_lg" if _spacy_model() is not None else "wordnet-synonyms"


@cache
def similar(word1: str, word2: str, threshold: float = SIMILARITY_THRESHOLD) -> bool:
    """The official near-synonym test: cosine of spaCy ``en_core_web_lg`` vectors > ``threshold``.

    Fallback without that model (it is not on PyPI): True when the words are equal or share a WordNet noun
    synset (multi-word names joined by "_"); ``threshold`` is then unused. Unlike the vectors it never joins
    related but distinct words (hypernyms, co-hyponyms) and knows no word WordNet lacks."""
    nlp = _spacy_model()
    if nlp is not None:
        return nlp(word1).similarity(nlp(word2)) > threshold
    if word1 == word2:
        return True
    from nltk.corpus import wordnet

    def senses(word: str) -> set[Any]:
        return set(wordnet.synsets(word.replace(" ", "_"), pos=wordnet.NOUN))

    return bool(senses(word1) & senses(word2))


def extract_nouns(text: str) -> list[str]:
    """The official object-word candidates: ``nltk.word_tokenize`` tokens tagged ``NN*`` by ``nltk.pos_tag`` over
    the whole text, WordNet-lemmatised as nouns with case kept (sentences cut by untrained Punkt, see
    :mod:`halluc.objects._nltk`)."""
    tokens = [token for start, end in sentence_spans(text) for token in word_tokens(text[start:end])]
    return [lemma(word, "NN") for word, tag in zip(tokens, pos_tags(tokens), strict=True) if tag.startswith("NN")]


def _expanded(words: Sequence[str], association: Mapping[str, list[str]]) -> tuple[list[str], list[int]]:
    """(candidates, owner index) in the official order: every word's associations first, then the words."""
    pairs = [(a, i) for i, w in enumerate(words) for a in association[w]] + [(w, i) for i, w in enumerate(words)]
    return [a for a, _ in pairs], [i for _, i in pairs]


def _first(noun: str, candidates: Sequence[str], test: Callable[[str, str], bool]) -> int | None:
    return next((j for j, c in enumerate(candidates) if test(noun, c)), None)


def score_description(response: str, entry: Mapping[str, Any], data: AmberData) -> dict[str, Any]:
    """One description's object words, hallucinated words and covered truth / cognised hallu indices."""
    vocabulary = set(data.association) | {w for ws in data.association.values() for w in ws}
    nouns = [n for n in extract_nouns(response) if n in vocabulary]
    truth, hallu = list(entry.get("truth", [])), list(entry.get("hallu", []))
    safe, safe_owner = _expanded(truth, data.association)
    risky, risky_owner = _expanded(hallu, data.association)
    covered, cognised, hallucinated = set(), set(), []
    for noun in nouns:
        if noun in data.safe_words:
            continue
        if noun in safe:
            covered.add(safe_owner[safe.index(noun)])
            continue
        if noun in risky:
            cognised.add(risky_owner[risky.index(noun)])
        j = _first(noun, risky, similar)
        if j is not None:
            cognised.add(risky_owner[j])
        j = _first(noun, safe, similar)
        if j is not None:
            covered.add(safe_owner[j])
            continue
        hallucinated.append(noun)
    return {"objects": nouns, "hallucinated": hallucinated, "covered": sorted(covered), "cognised": sorted(cognised),
            "n_truth": len(truth), "n_hallu": len(hallu)}  # fmt: skip


def _judge(entry: Mapping[str, Any], response: str) -> dict[str, Any]:
    """One yes/no answer judged the official way (only "Yes" and "No" exactly count as answers)."""
    answer = response if response in ("Yes", "No") else None
    return {"truth": entry["truth"], "answer": answer, "correct": (answer or "").lower() == entry["truth"]}


def official_response(entry: Mapping[str, Any], response: str, parse_answers: bool) -> str:
    """The response the official rule sees: a yes/no answer whose first word is yes or no (any case) becomes
    "Yes"/"No" when ``parse_answers`` (the official code itself counts only those exact strings)."""
    if not parse_answers or entry["type"] == "generative":
        return response
    verdict = parse_answer(response, strict=True)
    return response if verdict is None else ("Yes" if verdict else "No")


def _rates(c: Mapping[str, float], prefixes: Iterable[str], f1_eps: float) -> dict[str, float]:
    """Accuracy, precision and recall of "No", F1 and yes-ratio of summed counters, rounded as officially."""

    def total(name: str) -> float:
        return sum(c[f"{p}_{name}"] for p in prefixes)

    accuracy = round(total("qa_correct_score") / total("qa_correct_num") * 100, 1)
    precision = round(total("qa_ans_no_score") / total("qa_ans_no_num") * 100, 1)
    recall = round(total("qa_no_score") / total("qa_no_num") * 100, 1)
    f1 = round(2 * (precision / 100) * (recall / 100) / ((precision / 100) + (recall / 100) + f1_eps) * 100, 1)
    yes_ratio = round(total("yes") / total("n") * 100, 1)
    return {"accuracy": accuracy, "precision": precision, "recall": recall, "f1": f1, "yes_ratio": yes_ratio}


def score_responses(responses: Mapping[int, str], data: AmberData) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
    """(metrics, per-id details) of responses by query id; every id must be in ``data.annotations``."""
    c: dict[str, float] = dict(data.start)
    for prefix in _GROUP_OF_PREFIX:
        c.update({f"{prefix}_yes": 0, f"{prefix}_n": 0})
    details: dict[int, dict[str, Any]] = {}
    for qid, response in responses.items():
        entry = data.annotations[qid]
        if entry["type"] == "generative":
            d = details[qid] = score_description(response, entry, data)
            c["chair_score"] += len(d["hallucinated"])
            c["chair_num"] += len(d["objects"])
            c["safe_cover_score"] += len(d["covered"])
            c["safe_cover_num"] += d["n_truth"]
            c["hallu_cover_score"] += len(d["cognised"])
            c["hallu_cover_num"] += d["n_hallu"]
            c["non_hallu_score"] += not d["hallucinated"]
            c["non_hallu_num"] += 1
            continue
        prefix = _PREFIX.get(entry["type"], "asso")
        d = details[qid] = {"group": _GROUP_OF_PREFIX[prefix], **_judge(entry, response)}
        no_truth, no_answer = entry["truth"] == "no", d["answer"] == "No"
        for p in ("", f"{prefix}_"):
            c[f"{p}qa_correct_num"] += 1
            c[f"{p}qa_correct_score"] += d["correct"]
            c[f"{p}qa_no_num"] += no_truth
            c[f"{p}qa_no_score"] += no_truth and no_answer
            c[f"{p}qa_ans_no_num"] += no_answer
            c[f"{p}qa_ans_no_score"] += no_answer and no_truth
        c[f"{prefix}_yes"] += d["answer"] == "Yes"
        c[f"{prefix}_n"] += 1
    return _metrics(c, details), details


def _metrics(c: Mapping[str, float], details: Mapping[int, dict[str, Any]]) -> dict[str, Any]:
    """The official figures (flat keys) for the groups present; absent groups are None."""
    generative = sum("objects" in d for d in details.values())
    metrics: dict[str, Any] = {"n_generative": generative}
    metrics.update(
        chair=round(c["chair_score"] / c["chair_num"] * 100, 1) if generative else None,
        cover=round(c["safe_cover_score"] / c["safe_cover_num"] * 100, 1) if generative else None,
        hal=round(100 - c["non_hallu_score"] / c["non_hallu_num"] * 100, 1) if generative else None,
        cog=round(c["hallu_cover_score"] / c["hallu_cover_num"] * 100, 1) if generative else None,
    )
    answered = [d for d in details.values() if "objects" not in d]
    metrics["n_unparsed_answers"] = sum(d["answer"] is None for d in answered)
    if metrics["n_unparsed_answers"]:
        _log.warning(
            "%d of %d yes/no responses are neither exactly 'Yes' nor 'No'; the official rule counts them wrong",
            metrics["n_unparsed_answers"], len(answered),
        )  # fmt: skip
    # the official overall counters are un-prefixed; alias them so _rates reads every group alike
    overall = {f"all_{k}": v for k, v in c.items() if k.startswith("qa_")}
    overall.update(
        all_yes=sum(c[f"{p}_yes"] for p in _GROUP_OF_PREFIX), all_n=sum(c[f"{p}_n"] for p in _GROUP_OF_PREFIX)
    )
    counters = {**c, **overall}
    for group, prefixes in GROUPS.items():
        n = sum(counters[f"{p}_n"] for p in prefixes)
        eps = 0.001 if group == "existence" else 0.0001
        rates = _rates(counters, prefixes, eps) if n else dict.fromkeys(("accuracy", "precision", "recall", "f1",
                                                                         "yes_ratio"))  # fmt: skip
        metrics.update({f"{group}_{k}": v for k, v in rates.items()}, **{f"{group}_n": int(n)})
    return metrics
