"""MME (Fu et al. 2023) yes/no scoring as its official eval tool computes it (github BradyFU/Awesome-Multimodal-Large-
Language-Models, branch Evaluation, ``tools/eval_tool.zip`` -> ``calculation.py``; ported, not copied).

Each image of a subset has two questions, one answered yes and one no. An answer is lower-cased; "yes"/"no" are
taken as they are, else "yes" within its first four characters means yes, else "no" there means no, else it is
"other" (always wrong). Per subset: ``acc`` (share of questions right), ``acc_plus`` (share of images with both
right), both in percent, ``score = acc + acc_plus`` (at most 200), and precision/recall of "yes" over the answers
that are not "other"; ``total_score`` adds the subsets (at most 800 for the four hallucination subsets).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from sklearn.metrics import accuracy_score, confusion_matrix, precision_score, recall_score

from halluc.errors import InputDataError

__all__ = ["SUFFIX", "parse_answer", "score"]

SUFFIX = "Please answer yes or no."  # MME's questions end with this instruction
_LABEL = {"yes": 1, "no": 0, "other": -1}


def parse_answer(text: str) -> str:
    """'yes', 'no' or 'other' for a response, by the official rule (first four characters, yes before no)."""
    text = text.lower()
    if text in ("yes", "no"):
        return text
    return "yes" if "yes" in text[:4] else "no" if "no" in text[:4] else "other"


def _subset_metrics(pairs: Mapping[Any, list[tuple[bool, str]]]) -> dict[str, Any]:
    """The official figures of one subset from image -> [(label, response), (label, response)]."""
    gts = [_LABEL["yes" if label else "no"] for answers in pairs.values() for label, _ in answers]
    preds = [_LABEL[parse_answer(response)] for answers in pairs.values() for _, response in answers]
    clean = [(g, p) for g, p in zip(gts, preds, strict=True) if p != -1]
    clean_gts, clean_preds = [g for g, _ in clean], [p for _, p in clean]
    (tp, fn), (fp, tn) = confusion_matrix(clean_gts, clean_preds, labels=[1, 0]).tolist() if clean else ((0, 0), (0, 0))
    both = sum(all(parse_answer(r) == ("yes" if label else "no") for label, r in answers) for answers in pairs.values())
    acc = accuracy_score(gts, preds) * 100
    acc_plus = both / len(pairs) * 100
    return {
        "acc": acc,
        "acc_plus": acc_plus,
        "score": acc + acc_plus,
        "precision": precision_score(clean_gts, clean_preds, zero_division=0) * 100 if clean else 0.0,
        "recall": recall_score(clean_gts, clean_preds, zero_division=0) * 100 if clean else 0.0,
        "tp": tp, "fn": fn, "tn": tn, "fp": fp,
        "other": preds.count(-1),
        "n_images": len(pairs),
    }  # fmt: skip


def score(records: Sequence[Mapping[str, Any]], subsets: Sequence[str]) -> dict[str, Any]:
    """Flat metrics (``<subset>_acc``, ``<subset>_acc_plus``, ``<subset>_score``, ... and ``total_score``) of
    records ``{subset, image, label (bool), response}``; an image whose pair is incomplete is left out and
    counted in ``<subset>_incomplete_pairs``."""
    grouped: dict[str, dict[Any, list[tuple[bool, str]]]] = {s: defaultdict(list) for s in subsets}
    for r in records:
        if r["subset"] not in grouped:
            raise InputDataError(f"record of subset {r['subset']!r}; the subsets scored are {', '.join(subsets)}")
        grouped[r["subset"]][r["image"]].append((r["label"], r["response"]))
    metrics: dict[str, Any] = {"total_score": 0.0}
    for subset, pairs in grouped.items():
        complete = {image: a for image, a in pairs.items() if sorted(label for label, _ in a) == [False, True]}
        metrics[f"{subset}_incomplete_pairs"] = len(pairs) - len(complete)
        if not complete:
            metrics[f"{subset}_score"] = None
            continue
        metrics.update({f"{subset}_{k}": v for k, v in _subset_metrics(complete).items()})
        metrics["total_score"] += metrics[f"{subset}_score"]
    return metrics
