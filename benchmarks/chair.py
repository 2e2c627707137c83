"""CHAIR (Rohrbach et al. 2018): how many generated captions/mentions name COCO objects absent from the image.

Ground truth per image = categories of its instance annotations + objects mentioned in its reference captions
(extracted with the same :mod:`halluc.objects` extractor), as the reference CHAIR code builds it. Counting
follows the reference (LisaAnne/Hallucination as extended for OPERA/PAI):

* CHAIR_s = captions with at least one hallucinated mention / captions;
* CHAIR_i = hallucinated mentions / mentions, every mention counted, repeats included;
* recall (micro) = sum over captions of distinct GT objects mentioned / sum of GT-set sizes;
* precision (micro) = the same numerator / sum over captions of distinct categories mentioned; F1 from both;
* avg_len = mean caption length in tokens after phrase merging, punctuation included (the reference "Len").

Beside them, so no effect can hide in repetition (a caption saying "a fork" ten times counts ten mentions):

* CHAIR_i_distinct = distinct hallucinated categories / distinct mentioned categories, summed over captions (each
  object counted once per caption; this equals 1 - precision);
* mentions_per_caption = mentions / captions (the CHAIR_i denominator per caption);
* degenerate_share = share of degenerate (repetitive) captions: rep-2 >= 0.4.

Ground-truth sets are deduplicated per image; mentions are not. Metrics are fractions in [0, 1] except avg_len and
mentions_per_caption.

Degenerate captions use rep-n of Welleck et al. 2019, "Neural Text Generation with Unlikelihood Training" (ICLR 2020,
arXiv:1908.04319): rep-n = 1 - unique word n-grams / word n-grams, over one caption's lowercase words.

* REPETITION_N = 2, not their headline 4: the loops that inflate CHAIR_i are short and noisy ("a yellow couch couch
  couch bus couch bus couch couch", "pink person lor pink person lorr"), which rep-4 scores near 0 (0.06, 0.04),
  while rep-1 is driven by function words (median 0.40 on real LLaVA-1.5 captions).
* DEGENERATE_REPETITION = 0.4: one sentence of L >= 3 words said twice scores 1 - L / (2L - 1) >= 0.4, so a caption
  made of a repeated sentence is degenerate, while normal descriptions stay below: max 0.37 over the 1,500
  LLaVA-1.5 captions of the OPERA logs (~95 words, tests/fixtures/realdata/chair) and over 200 toy LLaVA v10
  baseline captions (toy val + shift), max 0.22 over 1,500 world reference descriptions (up to 75 words). The toy
  v10 with PAI alpha=2 on 20 shift images: 65% degenerate, 27 mentions per caption against 3.
* DEGENERATE_SETTING_SHARE = 0.05: a setting (a method at a strength) with >= 5% degenerate captions is degenerate.
  Such captions carry ~9x the mentions, so 5% of them already hold a third of all mentions, enough to move CHAIR_i
  by more than the methods' effects; normal settings have ~0%.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pycocotools.coco import COCO

from halluc.errors import InputDataError, OutputLocationError
from halluc.objects import Mention, Mode, analyse

_log = logging.getLogger("halluc")

__all__ = [
    "DEGENERATE_REPETITION",
    "DEGENERATE_SETTING_SHARE",
    "REPETITION_LEGEND",
    "REPETITION_N",
    "CaptionScore",
    "GroundTruth",
    "MentionVerdict",
    "chair_metrics",
    "degenerate_setting",
    "load_coco",
    "load_ground_truth",
    "load_ground_truth_file",
    "read_json_records",
    "repetition",
    "save_ground_truth_file",
    "score_caption",
    "score_records",
]

GroundTruth = dict[int, frozenset[str]]
PathLike = str | Path

REPETITION_N = 2  # n of rep-n (Welleck et al. 2019); the module docstring gives the reasons for all three
DEGENERATE_REPETITION = 0.4  # a caption is degenerate from this rep-2 on
DEGENERATE_SETTING_SHARE = 0.05  # a setting is degenerate from this share of degenerate captions on
_WORD = re.compile(r"\w+")
# The key under every table that shows the repetition columns (short headers CHs, CHi, CHi-d, men/cap, degen%).
REPETITION_LEGEND = (
    "CHs, CHi: CHAIR_s, CHAIR_i (%); CHi-d: CHAIR_i counting each object once per caption; men/cap: object "
    f"mentions per caption; degen%: repetitive captions (rep-{REPETITION_N} >= {DEGENERATE_REPETITION}); "
    f"! = degenerate setting (>= {DEGENERATE_SETTING_SHARE:.0%} degenerate captions: its CHAIR reflects repetition)"
)


def repetition(text: str, n: int = REPETITION_N) -> float:
    """Welleck et al.'s rep-n of ``text``: the share of its lowercase word n-grams that repeat an earlier one."""
    words = _WORD.findall(text.lower())
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


@dataclass(frozen=True)
class MentionVerdict:
    """One mention of a generated caption and whether its category is absent from the ground truth."""

    mention: Mention
    hallucinated: bool


@dataclass(frozen=True)
class CaptionScore:
    """CHAIR verdicts for one caption, with what the aggregate metrics need."""

    caption: str
    gt_objects: frozenset[str]
    verdicts: tuple[MentionVerdict, ...]
    n_words: int

    @property
    def hallucinated(self) -> bool:
        """True when any mention is hallucinated (the caption counts towards CHAIR_s)."""
        return any(v.hallucinated for v in self.verdicts)

    @property
    def generated(self) -> frozenset[str]:
        """Distinct categories the caption mentions."""
        return frozenset(v.mention.category for v in self.verdicts)

    @property
    def covered(self) -> frozenset[str]:
        """Distinct ground-truth categories the caption mentions (the recall numerator)."""
        return self.generated & self.gt_objects

    @property
    def degenerate(self) -> bool:
        """True when the caption is repetitive (rep-2 >= 0.4), so its mention counts say little about grounding."""
        return repetition(self.caption) >= DEGENERATE_REPETITION

    def to_dict(self) -> dict:
        """JSON-serialisable per-caption details for the run store and dashboard."""
        return {
            "caption": self.caption,
            "mentions": [
                {
                    "word": v.mention.word,
                    "category": v.mention.category,
                    "start": v.mention.start,
                    "end": v.mention.end,
                    "hallucinated": v.hallucinated,
                }
                for v in self.verdicts
            ],
            "gt_objects": sorted(self.gt_objects),
            "hallucinated": self.hallucinated,
        }


def _read_bytes(path: PathLike) -> str:
    """Text of ``path`` (gzip detected by magic bytes, UTF-8 with optional BOM) or InputDataError."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        return raw.decode("utf-8-sig")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise InputDataError(f"cannot read {str(path)!r}: {exc}") from None


def _parse_json(text: str, where: str) -> object:
    """``json.loads`` that reports a malformed document as InputDataError naming ``where``."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputDataError(f"malformed JSON in {where}: {exc}") from None


def _json_values(text: str, where: str) -> list[object]:
    """The whitespace-separated JSON values of ``text`` (pretty-printed objects one after another, or one object),
    or InputDataError naming ``where`` and the line of the first malformed value."""
    decoder = json.JSONDecoder()
    values, pos = [], 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos == len(text):
            return values
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise InputDataError(f"malformed JSON in {where} line {exc.lineno}: {exc.msg}") from None
        values.append(value)


def read_json_records(path: PathLike) -> list[dict]:
    """Records of a JSON-array, JSON-lines or pretty-printed JSON file (objects one after another, each spanning
    lines), optionally gzipped; CRLF and blank lines tolerated."""
    text = _read_bytes(path)
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if text.lstrip().startswith("["):
        data = _parse_json(text, repr(str(path)))
    elif lines and not _is_json(lines[0][1]):  # the first line is no whole value: pretty-printed JSON
        data = _json_values(text, repr(str(path)))
    else:
        data = [_parse_json(line, f"{str(path)!r} line {n}") for n, line in lines]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise InputDataError(f"{str(path)!r} must hold JSON objects (one per line, or a JSON array of them)")
    return data


def _is_json(line: str) -> bool:
    try:
        json.loads(line)
    except json.JSONDecodeError:
        return False
    return True


def _as_paths(paths: PathLike | Sequence[PathLike] | None) -> list[PathLike]:
    """Normalise one path, several paths or None to a list."""
    if paths is None:
        return []
    return [paths] if isinstance(paths, str | Path) else list(paths)


def load_coco(path: PathLike) -> COCO:
    """Load a COCO-format annotation file with pycocotools, silencing its prints, or raise InputDataError."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(path))
    except (OSError, ValueError, AssertionError, KeyError, TypeError) as exc:
        raise InputDataError(f"cannot load COCO annotation file {str(path)!r}: {exc!r}") from None


def _add_objects(gt: dict[int, set[str]], path: PathLike, objects_of: Callable[[COCO, dict], Iterable[str]]) -> None:
    """Add every image of a COCO file to ``gt`` with the objects ``objects_of(coco, annotation)`` names."""
    coco = load_coco(path)
    for image_id in coco.getImgIds():
        gt.setdefault(image_id, set())
    try:
        for ann in coco.dataset.get("annotations", []):
            gt.setdefault(ann["image_id"], set()).update(objects_of(coco, ann))
    except (KeyError, TypeError, AttributeError) as exc:
        raise InputDataError(f"malformed annotation in {str(path)!r}: {exc!r}") from None


def load_ground_truth(
    instances: PathLike | Sequence[PathLike] | None = None,
    captions: PathLike | Sequence[PathLike] | None = None,
    *,
    mode: Mode = "reference",
) -> GroundTruth:
    """Per-image GT objects from COCO instances_*.json and/or captions_*.json files (e.g. train + val).

    Instance categories are taken by name (COCO names are their own CHAIR categories); caption objects are
    extracted with :func:`halluc.objects.analyse` in ``mode``. Building from all of COCO 2014 takes minutes:
    save the result with :func:`save_ground_truth_file` and reload it with :func:`load_ground_truth_file`.
    """
    if instances is None and captions is None:
        raise InputDataError("load_ground_truth needs instances=..., captions=... or both; got neither")
    gt: dict[int, set[str]] = {}
    for path in _as_paths(instances):
        _add_objects(gt, path, lambda coco, ann: [coco.cats[ann["category_id"]]["name"]])
    for path in _as_paths(captions):
        _add_objects(gt, path, lambda coco, ann: [m.category for m in analyse(ann["caption"], mode=mode).mentions])
    return {image_id: frozenset(objects) for image_id, objects in gt.items()}


def _image_id(value: object, where: str) -> int:
    """An image id as int (ints and digit strings accepted) or InputDataError naming ``where``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise InputDataError(f"{where}: image id {value!r} is not an integer COCO image id")


def load_ground_truth_file(path: PathLike) -> GroundTruth:
    """Read a precomputed ``{image_id: [categories]}`` JSON file (optionally .gz), e.g. a saved COCO build."""
    data = _parse_json(_read_bytes(path), repr(str(path)))
    if not isinstance(data, dict):
        raise InputDataError(f"{str(path)!r} must hold a JSON object {{image_id: [categories]}}")
    gt: GroundTruth = {}
    for key, objects in data.items():
        if not isinstance(objects, list) or not all(isinstance(o, str) for o in objects):
            raise InputDataError(f"{str(path)!r}: image {key!r} must map to a list of category names")
        gt[_image_id(key, repr(str(path)))] = frozenset(objects)
    return gt


def save_ground_truth_file(gt: GroundTruth, path: PathLike) -> None:
    """Write ``gt`` as sorted JSON (gzipped when the name ends in .gz) so building from COCO happens once."""
    text = json.dumps({str(i): sorted(gt[i]) for i in sorted(gt)}, separators=(",", ":"))
    data = gzip.compress(text.encode(), mtime=0) if str(path).endswith(".gz") else text.encode()
    try:
        Path(path).write_bytes(data)
    except OSError as exc:
        raise OutputLocationError(f"cannot write ground truth to {str(path)!r}: {exc.strerror}") from None


def score_caption(caption: str, gt_objects: Iterable[str], *, mode: Mode = "reference") -> CaptionScore:
    """Judge every object mention of ``caption`` against the image's ground-truth categories."""
    gt = frozenset(gt_objects)
    analysis = analyse(caption, mode=mode)
    verdicts = tuple(MentionVerdict(m, m.category not in gt) for m in analysis.mentions)
    return CaptionScore(caption, gt, verdicts, analysis.n_words)


def chair_metrics(scores: Sequence[CaptionScore]) -> dict:
    """Aggregate CHAIR_s, CHAIR_i, recall, precision, F1, avg_len, the repetition checks and counts over captions."""
    if not scores:
        raise InputDataError("no captions to score: CHAIR needs at least one caption")
    n_mentions = sum(len(s.verdicts) for s in scores)
    n_hallucinated = sum(v.hallucinated for s in scores for v in s.verdicts)
    covered = sum(len(s.covered) for s in scores)
    n_gt = sum(len(s.gt_objects) for s in scores)
    n_generated = sum(len(s.generated) for s in scores)
    recall = covered / n_gt if n_gt else 0.0
    precision = covered / n_generated if n_generated else 0.0
    return {
        "CHAIR_s": sum(s.hallucinated for s in scores) / len(scores),
        "CHAIR_i": n_hallucinated / n_mentions if n_mentions else 0.0,
        "recall": recall,
        "precision": precision,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "avg_len": sum(s.n_words for s in scores) / len(scores),
        "CHAIR_i_distinct": (n_generated - covered) / n_generated if n_generated else 0.0,
        "mentions_per_caption": n_mentions / len(scores),
        "degenerate_share": sum(s.degenerate for s in scores) / len(scores),
        "n_captions": len(scores),
        "n_mentions": n_mentions,
        "n_hallucinated_mentions": n_hallucinated,
    }


def degenerate_setting(metrics: Mapping[str, float]) -> bool:
    """True when a setting's CHAIR metrics come from >= 5% degenerate captions, so its CHAIR_i is not comparable."""
    return metrics["degenerate_share"] >= DEGENERATE_SETTING_SHARE


def score_records(records: Iterable[dict], gt: GroundTruth, *, mode: Mode = "reference") -> tuple[dict, list[dict]]:
    """Score ``{image_id, caption}`` records: (aggregate metrics, JSON-ready per-caption details)."""
    scores: list[CaptionScore] = []
    details: list[dict] = []
    captions: dict[int, str] = {}
    for n, record in enumerate(records):
        where = f"caption record {n}"
        if not isinstance(record, dict) or "image_id" not in record or "caption" not in record:
            raise InputDataError(f"{where} must be an object with 'image_id' and 'caption'; got {record!r:.200}")
        image_id = _image_id(record["image_id"], where)
        if image_id in captions:
            if captions[image_id] != record["caption"]:
                raise InputDataError(f"{where}: image_id {image_id} has two different captions; keep one per image")
            _log.warning("%s: image_id %s repeats an identical caption; scored once", where, image_id)
            continue
        captions[image_id] = record["caption"]
        if image_id not in gt:
            raise InputDataError(f"{where}: image_id {image_id} has no ground truth ({len(gt)} images known)")
        if not isinstance(record["caption"], str):
            raise InputDataError(f"{where}: caption must be a string, got {type(record['caption']).__name__}")
        score = score_caption(record["caption"], gt[image_id], mode=mode)
        scores.append(score)
        details.append({"image_id": image_id, **score.to_dict()})
    return chair_metrics(scores), details
