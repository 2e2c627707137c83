"""POPE (Li et al. 2023): yes/no object-existence questions, built from COCO-format instances, and their scoring.

Request building is separate from scoring: :func:`build_pope` / :func:`load_questions` give questions,
:func:`pope_prompt` turns one into the model's prompt, :func:`score_answer` judges one response, and
:func:`aggregate` turns judged answers into per-split metrics plus their mean. "yes" is the positive class.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain, zip_longest
from pathlib import Path

from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from benchmarks.chair import PathLike, load_coco, read_json_records
from halluc.errors import ConfigError, InputDataError, OutputLocationError
from halluc.prompts import existence_question

__all__ = [
    "DEFAULT_SUFFIX",
    "SPLITS",
    "PopeQuestion",
    "aggregate",
    "apply_label_set",
    "attach_labels",
    "build_pope",
    "load_questions",
    "parse_answer",
    "pope_metrics",
    "pope_prompt",
    "score_answer",
    "write_questions",
]

SPLITS: tuple[str, ...] = ("random", "popular", "adversarial")
DEFAULT_SUFFIX = "Answer the question using a single word or phrase."  # LLaVA-1.5's POPE prompt
_METRICS = ("accuracy", "precision", "recall", "f1", "yes_ratio")
_LABELS = {"yes": True, "no": False}


@dataclass(frozen=True)
class PopeQuestion:
    """One POPE question; ``label`` is None in files without answers, ``split`` None when unknown."""

    question_id: int
    image: str
    text: str
    label: bool | None
    split: str | None = None

    def to_dict(self) -> dict:
        """The official JSON-lines record ``{question_id, image, text, label}``."""
        label = None if self.label is None else ("yes" if self.label else "no")
        return {"question_id": self.question_id, "image": self.image, "text": self.text, "label": label}


def _ranked(scores: Mapping[str, int], tie_break: Mapping[str, int]) -> list[str]:
    """Names by descending score, then descending ``tie_break``, then name (fully deterministic)."""
    return sorted(scores, key=lambda name: (-scores[name], -tie_break.get(name, 0), name))


def build_pope(
    instances: PathLike,
    *,
    n_images: int = 500,
    n_positive: int = 3,
    n_negative: int = 3,
    seed: int = 0,
    min_objects: int = 3,
) -> dict[str, list[PopeQuestion]]:
    """Build the random/popular/adversarial question sets from a COCO-format instances file.

    Eligible images have >= ``min_objects`` distinct categories (and enough absent ones); ``n_images`` of
    them are drawn with ``random.Random(seed)`` from the sorted ids. Each image gets the same ``n_positive``
    sampled present objects in every split and ``n_negative`` absent ones: uniform (random), most frequent
    by image count (popular), or co-occurring most often with the image's objects (adversarial).
    """
    for name, value in (("n_images", n_images), ("n_positive", n_positive), ("n_negative", n_negative)):
        if value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    coco = load_coco(instances)
    pool = sorted({cat["name"] for cat in coco.cats.values()})
    try:  # annotations of images missing from "images" cannot become questions
        objects = {
            image_id: {coco.cats[ann["category_id"]]["name"] for ann in anns}
            for image_id, anns in coco.imgToAnns.items()
            if image_id in coco.imgs
        }
    except KeyError as exc:
        raise InputDataError(f"{str(instances)!r}: annotation refers to unknown category id {exc}") from None
    popularity = Counter(name for names in objects.values() for name in names)
    cooccur: dict[str, Counter[str]] = {name: Counter() for name in pool}
    for names in objects.values():
        for name in names:
            cooccur[name].update(names - {name})

    need = max(min_objects, n_positive)
    eligible = sorted(i for i, names in objects.items() if len(names) >= need and len(pool) - len(names) >= n_negative)
    if n_images > len(eligible):
        raise ConfigError(
            f"n_images={n_images} but only {len(eligible)} images in {str(instances)!r} have >= {need} "
            f"distinct objects and >= {n_negative} absent categories; use n_images <= {len(eligible)}"
        )
    rng = random.Random(seed)
    splits: dict[str, list[PopeQuestion]] = {split: [] for split in SPLITS}
    for image_id in rng.sample(eligible, n_images):
        present = objects[image_id]
        absent = [name for name in pool if name not in present]
        positives = rng.sample(sorted(present), n_positive)
        adversarial = Counter({name: sum(cooccur[p][name] for p in present) for name in absent})
        negatives = {
            "random": rng.sample(absent, n_negative),
            "popular": _ranked({name: popularity[name] for name in absent}, {})[:n_negative],
            "adversarial": _ranked(adversarial, popularity)[:n_negative],
        }
        file_name = coco.imgs[image_id].get("file_name")
        if not isinstance(file_name, str):
            raise InputDataError(f"{str(instances)!r}: image {image_id} has no file_name")
        for split, questions in splits.items():
            pairs = zip_longest([(p, True) for p in positives], [(n, False) for n in negatives[split]])
            for name, label in (q for q in chain.from_iterable(pairs) if q is not None):
                questions.append(PopeQuestion(len(questions) + 1, file_name, existence_question(name), label, split))
    return splits


def write_questions(questions: Iterable[PopeQuestion], path: PathLike) -> None:
    """Write questions as official POPE JSON lines ``{question_id, image, text, label}``."""
    lines = [json.dumps(q.to_dict()) for q in questions]
    try:
        Path(path).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    except OSError as exc:
        raise OutputLocationError(f"cannot write POPE questions to {str(path)!r}: {exc.strerror}") from None


def _field(record: dict, key: str, where: str) -> str:
    """``record[key]`` as a non-empty string, else InputDataError naming the record."""
    value = record.get(key)
    if not isinstance(value, str) or not value:
        raise InputDataError(f"{where}: field {key!r} must be a non-empty string, got {value!r}")
    return value


def _question_id(record: dict, where: str) -> int:
    """The record's question_id as int (ints and digit strings accepted)."""
    value = record.get("question_id")
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InputDataError(f"{where}: question_id must be an integer, got {value!r}")
    return value


def load_questions(path: PathLike, *, split: str | None = None) -> list[PopeQuestion]:
    """Read a POPE question file (COCO/A-OKVQA/GQA; JSON lines or array; CRLF ok; extra fields ignored).

    Each question's split is ``split`` if given, else the record's ``category`` field (LLaVA's combined
    file), else the one split named in the file name (official files: ``coco_pope_{split}.json``), else None.
    ``label`` may be absent (then None).
    """
    if split is not None and split not in SPLITS:
        raise ConfigError(f"unknown POPE split {split!r}; valid splits: {', '.join(SPLITS)}")
    named = [s for s in SPLITS if s in Path(path).name.lower()]
    default = split or (named[0] if len(named) == 1 else None)
    questions = []
    for n, record in enumerate(read_json_records(path), 1):
        where = f"{str(path)!r} record {n}"
        label = record.get("label")
        if label is not None:
            if not isinstance(label, str) or label.strip().lower() not in _LABELS:
                raise InputDataError(f"{where}: label must be 'yes' or 'no', got {label!r}")
            label = _LABELS[label.strip().lower()]
        category = record.get("category")
        questions.append(
            PopeQuestion(
                _question_id(record, where),
                _field(record, "image", where),
                _field(record, "text", where),
                label,
                split or (category if isinstance(category, str) else default),
            )
        )
    return questions


def _label_key(image: str, text: str) -> tuple[str, str]:
    """What identifies a question across files: its image and its first line (a prompt suffix left out)."""
    return image, text.splitlines()[0].strip() if text.strip() else ""


def attach_labels(questions: Sequence[PopeQuestion], labelled: Sequence[PopeQuestion]) -> list[PopeQuestion]:
    """``questions`` with each missing label taken from the ``labelled`` question of the same split, image and
    question text (first line, so a prompt suffix does not matter), e.g. LLaVA's combined unlabelled file against
    the official per-split files; a question whose split finds no match takes the label its image and text have in
    every labelled file, if they agree. Questions without a match keep ``label=None``."""
    by_split: dict[tuple[str | None, str, str], bool | None] = {}
    by_text: dict[tuple[str, str], list[bool | None]] = {}
    for q in labelled:
        key = _label_key(q.image, q.text)
        by_split[(q.split, *key)] = q.label
        by_text.setdefault(key, []).append(q.label)
    out = []
    for q in questions:
        key = _label_key(q.image, q.text)
        label = q.label
        if label is None:
            label = by_split.get((q.split, *key))
        if label is None and len(set(by_text.get(key, []))) == 1:  # split unknown or unmatched: if unambiguous
            label = by_text[key][0]
        out.append(PopeQuestion(q.question_id, q.image, q.text, label, q.split))
    return out


def apply_label_set(
    questions: Sequence[PopeQuestion], label_set: Sequence[PopeQuestion], *, name: str = "label set"
) -> tuple[list[PopeQuestion], dict]:
    """``questions`` relabelled by an alternative label set in POPE's own format, e.g. RePOPE's
    ``coco_repope_{split}.json`` (YanNeu/RePOPE: the current POPE files with wrong labels corrected and ambiguous
    questions removed).

    Questions are matched by split, image and question text (first line, so a prompt suffix does not matter); a
    question the label set leaves out is dropped, as RePOPE drops ambiguous ones. Every label-set question of the
    splits asked must match one question, else the set belongs to other question files (RePOPE relabels
    RUCAIBox/POPE @ 3df3ba1, not the e3e3926 files LLaVA uses) and InputDataError says so. Returns the kept
    questions in their order and ``{"n_kept", "n_dropped", "n_relabelled"}``."""
    wanted = {(q.split, *_label_key(q.image, q.text)): q.label for q in label_set}
    asked = {(q.split, *_label_key(q.image, q.text)) for q in questions}
    splits = {q.split for q in questions}
    unmatched = [key for key in wanted if key[0] in splits and key not in asked]
    if unmatched:
        split, image, text = unmatched[0]
        raise InputDataError(
            f"{len(unmatched)} questions of the {name} are not among the questions asked (e.g. {split}: {image} "
            f"{text!r}); it was made for other question files (RePOPE relabels RUCAIBox/POPE @ 3df3ba1)"
        )
    kept, relabelled = [], 0
    for q in questions:
        key = (q.split, *_label_key(q.image, q.text))
        if key in wanted:
            relabelled += q.label is not None and wanted[key] != q.label
            kept.append(PopeQuestion(q.question_id, q.image, q.text, wanted[key], q.split))
    return kept, {"n_kept": len(kept), "n_dropped": len(questions) - len(kept), "n_relabelled": relabelled}


def pope_prompt(question: str, suffix: str = DEFAULT_SUFFIX) -> str:
    """The prompt sent to the model: the question, then ``suffix`` on its own line (LLaVA-1.5's format)."""
    return f"{question}\n{suffix}" if suffix else question


def parse_answer(text: str, *, strict: bool = False) -> bool | None:
    """Map a free-text answer to yes (True) / no (False).

    Default = the official rule: keep the text before the first '.', drop commas, split on spaces; "No",
    "not" or "no" among the words means no, anything else yes. ``strict`` accepts only an answer whose first
    word is yes or no (any case) and returns None otherwise, so unparseable answers can be counted.
    """
    if strict:
        first = re.match(r"\W*([A-Za-z]+)", text)
        return _LABELS.get(first.group(1).lower()) if first else None
    words = text.split(".")[0].replace(",", "").split(" ")
    return not {"No", "not", "no"}.intersection(words)


def score_answer(question: PopeQuestion, answer: str, *, strict: bool = False) -> dict:
    """Judge one response: a JSON-ready record with the parsed prediction and correctness."""
    if question.label is None:
        raise InputDataError(f"question {question.question_id} has no label; load a labelled POPE file")
    prediction = parse_answer(answer, strict=strict)
    return {
        "question_id": question.question_id,
        "split": question.split,
        "label": question.label,
        "prediction": prediction,
        "correct": None if prediction is None else prediction == question.label,
    }


def pope_metrics(labels: Sequence[bool], predictions: Sequence[bool | None]) -> dict:
    """Accuracy, precision, recall, F1 (yes = positive), yes-ratio and the confusion counts tp/fp/tn/fn.

    The yes-ratio is the share of *predictions* that are yes (some harnesses report the labels' share).
    Unparsed predictions (None) are left out of every metric and counted in ``n_unparsed``; ``n`` counts all.
    """
    if len(labels) != len(predictions):
        raise InputDataError(f"{len(labels)} labels but {len(predictions)} predictions; they must pair up")
    pairs = [(int(y), int(p)) for y, p in zip(labels, predictions, strict=True) if p is not None]
    if not pairs:
        raise InputDataError(f"no parseable predictions among {len(labels)} answers")
    y_true, y_pred = zip(*pairs, strict=True)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "precision": float(precision_score(y_true, y_pred, zero_division=0)),
        "recall": float(recall_score(y_true, y_pred, zero_division=0)),
        "f1": float(f1_score(y_true, y_pred, zero_division=0)),
        "yes_ratio": sum(y_pred) / len(y_pred),
        "tp": sum(y and p for y, p in pairs),
        "fp": sum(p and not y for y, p in pairs),
        "tn": sum(not (y or p) for y, p in pairs),
        "fn": sum(y and not p for y, p in pairs),
        "n": len(labels),
        "n_unparsed": len(labels) - len(pairs),
    }


def aggregate(scored: Iterable[dict]) -> dict:
    """Metrics per split (records from :func:`score_answer`; split None -> "all") plus their "mean"."""
    by_split: dict[str, list[dict]] = {}
    for record in scored:
        by_split.setdefault(record["split"] or "all", []).append(record)
    if not by_split:
        raise InputDataError("no scored POPE answers to aggregate")
    report = {
        split: pope_metrics([r["label"] for r in records], [r["prediction"] for r in records])
        for split, records in by_split.items()
    }
    report["mean"] = {key: sum(m[key] for m in report.values()) / len(report) for key in _METRICS}
    return report
