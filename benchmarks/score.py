"""Score outputs one already has (``halluc score``): a caption or answer file in -> a run directory out.

No model is involved: the file's records are read (JSON lines, a JSON array or pretty-printed JSON, gzipped or
not), their id and text fields found (named by the caller or detected from common names), and each record either
scored with :mod:`benchmarks.chair` / :mod:`benchmarks.pope` or turned into an error record:

* ``missing_id`` / ``bad_id``: no id field, or an id that is no integer and no COCO file name;
* ``bad_text``: the caption or answer is not a string;
* ``conflicting_duplicate``: the id repeats with a different text (every record of it; an exact repeat is
  dropped with a warning and counted in ``n_duplicates_dropped``);
* ``missing_gt`` (CHAIR): the image has no ground truth; ``unknown_id`` (POPE, AMBER): no question has that id;
  ``no_label`` (POPE): the question has no yes/no label.

The run directory is the one every job writes (manifest.json with the scored file's path and sha256,
samples.jsonl with one record per input record in file order, error records included, metrics.json with the
error counts), plus ``chair_details.json`` or ``pope_scored.json`` + ``pope_questions.json`` for the dashboard
(AMBER's per-query details are in the samples).
POPE answers are paired with questions by question id; by order only when the file has no ids (with a warning).
The manifest records which official POPE question-file version each split matches
(:func:`benchmarks.protocols.detect_pope_version`), as ``halluc pope`` does.

Scoring has no ``--resume``: it redoes a whole file in seconds, so an ``--out`` that already holds a run is refused
unless ``overwrite`` is set, which replaces a scoring run (never a run whose outputs a model generated).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import amber, chair, pope
from benchmarks.outputs import (
    ANSWER_KEYS,
    ID_KEYS,
    QUESTION_ID_KEYS,
    SPLIT_KEYS,
    TEXT_KEYS,
    coco_image_id,
    dedupe,
    error_record,
    field,
    int_id,
    read_outputs,
    sha256,
)
from halluc.errors import ConfigError, InputDataError, OutputLocationError
from halluc.runs import MANIFEST, METRICS, SAMPLES, RunStore, config_hash, result_config

__all__ = ["ScoreResult", "score_amber_file", "score_chair_file", "score_pope_file"]

_log = logging.getLogger("halluc")


@dataclass(frozen=True)
class ScoreResult:
    """The scoring run: its store, metrics.json's content and the error records by kind."""

    store: RunStore
    metrics: dict[str, Any]
    errors: dict[str, int]


def _existing(path: Path, what: str) -> Path:
    if not Path(path).is_file():
        raise InputDataError(f"{what} {str(path)!r} does not exist (or is not a file)")
    return Path(path)


def _described(path: Path) -> dict[str, str]:
    return {"path": str(Path(path).resolve()), "sha256": sha256(path)}


def _counts(metrics: dict[str, Any], n_records: int, errors: Sequence[dict], dropped: int) -> dict[str, int]:
    """Add the record and error counts to ``metrics`` (flat keys, so the dashboard reads them as numbers)."""
    by_kind = dict(sorted(Counter(e["error_kind"] for e in errors).items()))
    metrics.update(n_records=n_records, n_errors=len(errors), n_duplicates_dropped=dropped)
    metrics.update({f"n_errors_{kind}": count for kind, count in by_kind.items()})
    if errors:
        shown = ", ".join(f"{count} {kind}" for kind, count in by_kind.items())
        _log.warning("%d of %d records are error records (%s); see samples.jsonl", len(errors), n_records, shown)
    return by_kind


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse, before any scoring, an ``out`` that cannot be written, has a live writer, or holds a run (unless
    ``overwrite`` and that run is a scoring run)."""
    RunStore.check_output(out, resume=True)  # writable, no live writer; whether it holds a run is decided here
    if not (Path(out) / MANIFEST).exists():
        return
    old = RunStore.open(out).manifest
    what = f"{str(out)!r} already holds a {old.get('job', '?')} run"
    if not overwrite:
        raise OutputLocationError(
            f"{what}; scoring does not resume (it redoes the file in seconds): pass --overwrite to replace it, or "
            "choose another --out"
        )
    if old.get("source") != "score":
        raise OutputLocationError(f"{what} with model-generated outputs; --overwrite replaces only scoring runs")


_RUN_FILES = (MANIFEST, SAMPLES, METRICS, "chair_details.json", "pope_scored.json", "pope_questions.json")


def _write_run(
    out: Path,
    manifest: dict[str, Any],
    samples: list[dict[str, Any]],
    scored: tuple[dict, dict[str, Any]] | None,
    overwrite: bool,
) -> RunStore:
    """Create the run (first removing the files of the scoring run it replaces, with ``overwrite``), append the
    samples in record order, then write ``scored`` = (metrics, {artefact: content}); None when no record could be
    scored: the run then fails with one line pointing at its error records."""
    manifest["config_hash"] = config_hash(result_config(manifest))
    if overwrite:
        for name in _RUN_FILES:
            (Path(out) / name).unlink(missing_ok=True)
    with RunStore.create(out, manifest) as store:
        store.append(sorted(samples, key=lambda s: s["record"]))
        if scored is None:
            raise InputDataError(
                f"none of the {len(samples)} records of {manifest['scored_file']['path']!r} could be scored; "
                f"the error records in {store.samples_path()} say why"
            )
        metrics, artefacts = scored
        for name, content in artefacts.items():
            store.write_artifact(name, content)
        store.write_metrics(metrics)
        store.finish(n_errors=metrics["n_errors"])
    return store


def _check_gt_source(gt_file: Path | None, instances: Path | None, captions: Path | None, images: str | None) -> None:
    """Refuse, before any work, anything but exactly one ground-truth source that exists."""
    given = [flag for flag, v in (("--gt-file", gt_file), ("--annotations/--captions", instances or captions),
                                  ("--images", images)) if v]  # fmt: skip
    if len(given) != 1:
        raise ConfigError(
            "CHAIR ground truth comes from exactly one of --gt-file, --annotations/--captions (COCO files) or "
            f"--images toy:val|toy:shift; got {' and '.join(given) if given else 'none'}"
        )
    for path, flag in ((gt_file, "--gt-file"), (instances, "--annotations"), (captions, "--captions")):
        if path is not None:
            _existing(path, f"{flag} file")
    if images is not None:
        from halluc.imagesets import TOY_SPLITS

        if not images.startswith("toy:") or images.removeprefix("toy:") not in TOY_SPLITS:
            valid = ", ".join(f"toy:{s}" for s in TOY_SPLITS)
            raise ConfigError(f"--images {images!r}: scoring knows {valid}; for COCO pass --annotations/--captions")


def _chair_ground_truth(
    gt_file: Path | None, instances: Path | None, captions: Path | None, images: str | None, mode: chair.Mode
) -> tuple[chair.GroundTruth, Callable[[], dict[str, int]], dict[str, Any]]:
    """(ground truth, loader of file name -> id, manifest entry) from the one source :func:`_check_gt_source` let
    through. The name table is only read when some id is a file name, not a number."""
    if gt_file is not None:
        return chair.load_ground_truth_file(gt_file), dict, {"name": Path(gt_file).name, "gt_file": _described(gt_file)}
    if images is not None:
        from halluc.imagesets import resolve_images

        image_set = resolve_images(images)
        instances, captions = image_set.instances, image_set.captions
        entry: dict[str, Any] = image_set.describe()
    else:
        entry = {"name": Path(instances or captions).name, "instances": str(instances) if instances else None,
                 "captions": str(captions) if captions else None}  # fmt: skip
    files = [p for p in (instances, captions) if p is not None]
    entry["sha256"] = {str(p): sha256(p) for p in files}

    def names() -> dict[str, int]:
        return {img["file_name"]: i for p in files for i, img in chair.load_coco(p).imgs.items() if "file_name" in img}

    return chair.load_ground_truth(instances, captions, mode=mode), names, entry


def score_chair_file(
    path: Path,
    out: Path,
    *,
    gt_file: Path | None = None,
    instances: Path | None = None,
    captions: Path | None = None,
    images: str | None = None,
    id_key: str | None = None,
    text_key: str | None = None,
    mode: chair.Mode = "reference",
    model: str | None = None,
    overwrite: bool = False,
) -> ScoreResult:
    """Score the captions of ``path`` with CHAIR against one ground-truth source into the run directory ``out``."""
    _existing(path, "caption file")
    _check_gt_source(gt_file, instances, captions, images)
    records = read_outputs(path)
    if not records:
        raise InputDataError(f"caption file {str(path)!r} holds no records")
    id_key = field(records, id_key, ID_KEYS, "--id-key", required=True)
    text_key = field(records, text_key, TEXT_KEYS, "--text-key", required=True)
    _check_out(out, overwrite)
    gt, names, gt_entry = _chair_ground_truth(gt_file, instances, captions, images, mode)
    by_name: dict[str, int] | None = None
    errors: list[dict[str, Any]] = []
    items, file_names = [], {}
    for n, record in enumerate(records, 1):
        raw, text = record.get(id_key), record.get(text_key)
        if isinstance(raw, str) and not raw.strip().isdigit() and by_name is None:
            by_name = names()  # file names: the annotations' own table first, COCO's naming rule after it
        image_id = coco_image_id(raw, by_name)
        if raw is None:
            errors.append(error_record(n, "missing_id", f"record {n} has no {id_key!r} field"))
        elif image_id is None:
            errors.append(error_record(n, "bad_id", f"{id_key} {raw!r} is no COCO image id or file name", image=raw))
        elif not isinstance(text, str):
            got = "nothing" if text is None else type(text).__name__
            errors.append(error_record(n, "bad_text", f"{text_key!r} must be a string, got {got}", image_id=image_id))
        else:
            items.append((n, image_id, text))
            if isinstance(raw, str) and not raw.strip().isdigit():
                file_names[image_id] = raw
    kept, conflicts, dropped = dedupe(items, "image_id", str(path))
    errors += conflicts
    good = [(n, i, text) for n, i, text in kept if i in gt]
    errors += [error_record(n, "missing_gt", f"image_id {i} has no ground truth", image_id=i)
               for n, i, _ in kept if i not in gt]  # fmt: skip
    samples, scored = list(errors), None
    if good:
        metrics, details = chair.score_records([{"image_id": i, "caption": t} for _, i, t in good], gt, mode=mode)
        for (n, i, text), detail in zip(good, details, strict=True):
            rest = {k: v for k, v in detail.items() if k != "caption"}
            image = {"image": file_names[i]} if i in file_names else {}
            samples.append({"id": str(i), "record": n, **image, "response": text, **rest})
        scored = metrics, {"chair_details.json": details}
    by_kind = _counts(scored[0] if scored else {}, len(records), errors, dropped)
    manifest = {
        "job": "chair",
        "source": "score",
        "model": model or Path(path).name,
        "scored_file": {**_described(path), "n_records": len(records), "id_key": id_key, "text_key": text_key},
        "images": gt_entry,
        "chair_mode": mode,
    }
    store = _write_run(out, manifest, samples, scored, overwrite)
    return ScoreResult(store, scored[0] if scored else {}, by_kind)


def _pope_questions(files: Sequence[Path], labels: Sequence[Path]) -> tuple[list[pope.PopeQuestion], dict[str, Any]]:
    """The questions of ``files`` in order, labels completed from ``labels``, and their manifest entry."""
    if not files:
        raise ConfigError("POPE scoring needs the questions the answers reply to: pass --questions FILE")
    for path in files:
        _existing(path, "--questions file")
    for path in labels:
        _existing(path, "--labels file")
    questions = [q for path in files for q in pope.load_questions(path)]
    if labels:
        questions = pope.attach_labels(questions, [q for path in labels for q in pope.load_questions(path)])
    if not questions:
        raise InputDataError(f"the --questions files hold no questions: {', '.join(map(str, files))}")
    if all(q.label is None for q in questions):
        hint = "none matched a labelled question of --labels" if labels else "pass the labelled files with --labels"
        raise InputDataError(f"none of the {len(questions)} questions has a yes/no 'label'; {hint}")
    from benchmarks.protocols import detect_pope_version

    entry = {"questions": [_described(p) for p in files], "labels": [_described(p) for p in labels],
             "question_versions": detect_pope_version(questions)}  # fmt: skip
    return questions, entry


def _question_index(
    questions: Sequence[pope.PopeQuestion], split_key: str | None
) -> tuple[dict[Any, pope.PopeQuestion], bool]:
    """Questions by id, or by (split, id) when ids repeat across files (each official file numbers from 1)."""
    by_id = {q.question_id: q for q in questions}
    if len(by_id) == len(questions):
        return by_id, False
    if split_key is None:
        repeated = Counter(q.question_id for q in questions).most_common(1)[0][0]
        raise ConfigError(
            f"question_id {repeated} names several questions (each official split file numbers from 1), and the "
            f"answers carry no {' or '.join(SPLIT_KEYS)} field to tell the splits apart; score each split's "
            "answers against its own --questions file"
        )
    by_split = {(q.split, q.question_id): q for q in questions}
    if len(by_split) < len(questions):
        raise InputDataError("question ids repeat within one split of the --questions files; they cannot pair")
    return by_split, True


def _keyed_answers(
    path: Path, records: Sequence[dict], asked: Sequence[pope.PopeQuestion], qid_key: str | None, answer_key: str
) -> tuple[dict[Any, pope.PopeQuestion], list[tuple[int, Any, object]], list[dict[str, Any]]]:
    """(questions by key, (record number, key, answer) per record, error records) with keys = question ids, (split,
    id) when ids repeat across question files, or positions when the answers carry no ids (paired by order)."""
    if qid_key is None:
        if len(records) != len(asked):
            raise InputDataError(
                f"{str(path)!r} has {len(records)} answers without question ids but there are {len(asked)} "
                "questions; answers without ids pair only by order, one per question (name the id field with "
                "--question-id-key)"
            )
        _log.warning("%s: the answers carry no question id; paired with the questions by order", path)
        return dict(enumerate(asked, 1)), [(n, n, r.get(answer_key)) for n, r in enumerate(records, 1)], []
    split_key = field(records, None, SPLIT_KEYS, "", required=False)
    index, by_split = _question_index(asked, split_key)
    keyed, errors = [], []
    for n, record in enumerate(records, 1):
        qid = int_id(record.get(qid_key))
        if record.get(qid_key) is None:
            errors.append(error_record(n, "missing_id", f"record {n} has no {qid_key!r} field"))
        elif qid is None:
            errors.append(error_record(n, "bad_id", f"{qid_key} {record[qid_key]!r} is not an integer id"))
        else:
            keyed.append((n, (record.get(split_key), qid) if by_split else qid, record.get(answer_key)))
    return index, keyed, errors


def _sample_id(key: Any) -> str:
    return "/".join(map(str, key)) if isinstance(key, tuple) else str(key)


def score_pope_file(
    path: Path,
    out: Path,
    *,
    questions: Sequence[Path],
    labels: Sequence[Path] = (),
    question_id_key: str | None = None,
    answer_key: str | None = None,
    strict: bool = False,
    model: str | None = None,
    overwrite: bool = False,
) -> ScoreResult:
    """Score the answers of ``path`` against POPE ``questions`` (labels optionally from ``labels``) into ``out``."""
    _existing(path, "answer file")
    asked, entry = _pope_questions(questions, labels)
    records = read_outputs(path)
    if not records:
        raise InputDataError(f"answer file {str(path)!r} holds no records")
    answer_key = field(records, answer_key, ANSWER_KEYS, "--answer-key", required=True)
    qid_key = field(records, question_id_key, QUESTION_ID_KEYS, "--question-id-key", required=False)
    index, keyed, errors = _keyed_answers(path, records, asked, qid_key, answer_key)
    _check_out(out, overwrite)
    items = []
    for n, key, text in keyed:
        if isinstance(text, str):
            items.append((n, key, text))
        else:
            got = "nothing" if text is None else type(text).__name__
            errors.append(error_record(n, "bad_text", f"{answer_key!r} must be a string, got {got}", question=str(key)))
    if sum(text.rstrip().endswith("?") for _, _, text in items) > len(items) / 2:
        _log.warning("%s: most %r values end in '?' and look like questions; is --answer-key right?", path, answer_key)
    kept, conflicts, dropped = dedupe(items, "question_id", str(path))
    errors += conflicts
    judged, good = [], []
    for n, key, text in kept:
        question = index.get(key)
        if question is None:
            errors.append(error_record(n, "unknown_id", f"no question has id {_sample_id(key)}", question=str(key)))
        elif question.label is None:
            errors.append(
                error_record(n, "no_label", f"question {_sample_id(key)} has no yes/no label", question=str(key))
            )
        else:
            verdict = pope.score_answer(question, text, strict=strict)
            judged.append((key, verdict))
            good.append({"id": _sample_id(key), "record": n, "image": question.image, "question": question.text,
                         "response": text, **verdict})  # fmt: skip
    answered = {key for _, key, _ in kept}
    unanswered = [_sample_id(k) for k, q in index.items() if q.label is not None and k not in answered]
    scored = None
    if judged:
        rank = {key: i for i, key in enumerate(index)}  # question order: the answers' order changes nothing
        judged = [verdict for _, verdict in sorted(judged, key=lambda kv: rank[kv[0]])]
        metrics = {**pope.aggregate(judged), "n_unanswered": len(unanswered)}
        if unanswered:
            _log.warning("%d labelled questions have no answer in %s, e.g. %s", len(unanswered), path, unanswered[:3])
        asked_records = [{**q.to_dict(), "split": q.split} for q in asked]
        scored = metrics, {"pope_scored.json": judged, "pope_questions.json": asked_records}
    by_kind = _counts(scored[0] if scored else {}, len(records), errors, dropped)
    manifest = {
        "job": "pope",
        "source": "score",
        "model": model or Path(path).name,
        "scored_file": {
            **_described(path),
            "n_records": len(records),
            "question_id_key": qid_key,
            "answer_key": answer_key,
        },
        "pairing": "order" if qid_key is None else "question_id",
        "images": {"name": ", ".join(Path(p).name for p in questions)},
        **entry,
        "n_questions": len(asked),
        "strict": strict,
    }
    store = _write_run(out, manifest, errors + good, scored, overwrite)
    return ScoreResult(store, scored[0] if scored else {}, by_kind)


def score_amber_file(
    path: Path,
    out: Path,
    *,
    amber_data: Path,
    id_key: str | None = None,
    text_key: str | None = None,
    parse_answers: bool = False,
    model: str | None = None,
    overwrite: bool = False,
) -> ScoreResult:
    """Score AMBER responses ``[{id, response}]`` against the official metadata in ``amber_data`` into ``out``;
    ``parse_answers`` first maps yes/no answers whose first word is yes or no (any case) to "Yes"/"No"."""
    _existing(path, "response file")
    data = amber.load_amber_data(amber_data)
    records = read_outputs(path)
    if not records:
        raise InputDataError(f"response file {str(path)!r} holds no records")
    id_key = field(records, id_key, amber.ID_KEYS, "--id-key", required=True)
    text_key = field(records, text_key, TEXT_KEYS, "--text-key", required=True)
    _check_out(out, overwrite)
    errors: list[dict[str, Any]] = []
    items = []
    for n, record in enumerate(records, 1):
        raw, text = record.get(id_key), record.get(text_key)
        if raw is None:
            errors.append(error_record(n, "missing_id", f"record {n} has no {id_key!r} field"))
        elif int_id(raw) is None:
            errors.append(error_record(n, "bad_id", f"{id_key} {raw!r} is not an integer AMBER query id"))
        elif not isinstance(text, str):
            got = "nothing" if text is None else type(text).__name__
            errors.append(error_record(n, "bad_text", f"{text_key!r} must be a string, got {got}", query=raw))
        else:
            items.append((n, int_id(raw), text))
    kept, conflicts, dropped = dedupe(items, "query", str(path))
    errors += conflicts
    errors += [error_record(n, "unknown_id", f"no AMBER annotation has id {q}", query=q)
               for n, q, _ in kept if q not in data.annotations]  # fmt: skip
    good = [(n, q, text) for n, q, text in kept if q in data.annotations]
    scored, samples = None, list(errors)
    if good:
        responses = {q: amber.official_response(data.annotations[q], text, parse_answers) for _, q, text in good}
        metrics, details = amber.score_responses(responses, data)
        samples += [{"id": str(q), "record": n, "response": text, "type": data.annotations[q]["type"], **details[q]}
                    for n, q, text in good]  # fmt: skip
        scored = metrics, {}
    by_kind = _counts(scored[0] if scored else {}, len(records), errors, dropped)
    manifest = {
        "job": "amber",
        "source": "score",
        "model": model or Path(path).name,
        "scored_file": {**_described(path), "n_records": len(records), "id_key": id_key, "text_key": text_key},
        "images": {"name": Path(amber_data).name},
        "amber_data": {name: _described(Path(amber_data) / name) for name in amber.DATA_FILES},
        "similarity": amber.similarity_backend(),
        "parse_answers": parse_answers,
    }
    store = _write_run(out, manifest, samples, scored, overwrite)
    return ScoreResult(store, scored[0] if scored else {}, by_kind)
