"""Reading the output files of other systems: records, their id and text fields, image ids, repeated ids.

Used by :mod:`benchmarks.score`. A record that cannot be scored becomes an *error record*
``{"id": "record-<n>", "record": n, "error_kind": ..., "error": message}`` (n counts records from 1, in file order),
never an exception: only a file that cannot be read at all, or an option naming a field no record has, raises.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.chair import read_json_records
from halluc.errors import ConfigError

__all__ = [
    "ANSWER_KEYS",
    "ID_KEYS",
    "QUESTION_ID_KEYS",
    "SPLIT_KEYS",
    "TEXT_KEYS",
    "coco_image_id",
    "dedupe",
    "error_record",
    "field",
    "int_id",
    "read_outputs",
    "sha256",
]

_log = logging.getLogger("halluc")

# Field names tried, in order, when the caller names none (the first one found in the first 100 records wins).
ID_KEYS = ("image_id", "image", "id", "file_name")
TEXT_KEYS = ("caption", "text", "response", "answer", "output", "description")
QUESTION_ID_KEYS = ("question_id", "qid", "id")
ANSWER_KEYS = ("text", "answer", "response", "output", "prediction")
SPLIT_KEYS = ("split", "category")
_COCO_NAME = re.compile(r"(?:^|_)(\d+)$")  # COCO_val2014_000000012345, 000000012345, world_val_000002000001


def sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, as given (a gzipped file is hashed compressed)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_outputs(path: Path) -> list[dict]:
    """Records of an output file: JSON lines, JSON array, pretty-printed JSON, gz or not. Two wrappers are
    unwrapped: ``{"<key>": [records]}`` (one list of objects) and ``{"<id>": "<text>", ...}`` (id -> text, read as
    records with the fields ``id`` and ``text``)."""
    records = read_json_records(path)
    if len(records) == 1:
        only = records[0]
        lists = [v for v in only.values() if isinstance(v, list) and v and all(isinstance(r, dict) for r in v)]
        if len(only) == 1 and len(lists) == 1:
            return lists[0]
        if len(only) > 1 and all(isinstance(v, str) and coco_image_id(k) is not None for k, v in only.items()):
            return [{"id": key, "text": value} for key, value in only.items()]
    return records


def field(records: Sequence[dict], given: str | None, candidates: Sequence[str], flag: str, *, required: bool) -> Any:
    """``given`` if some record has it (else ConfigError), or the first candidate found in the first 100 records;
    when none is, ConfigError if ``required``, else None."""
    if given is not None:
        if not any(given in r for r in records):
            raise ConfigError(f"{flag} {given!r}: no record has that field; fields of the first: {sorted(records[0])}")
        return given
    found = next((key for key in candidates if any(key in r for r in records[:100])), None)
    if found is None and required:
        raise ConfigError(
            f"the records have none of the fields {', '.join(candidates)} (the first has {sorted(records[0])}); "
            f"name the field with {flag}"
        )
    return found


def coco_image_id(value: object, by_name: Mapping[str, int] | None = None) -> int | None:
    """An image id from an int, a digit string or a file name (``COCO_val2014_000000012345.jpg`` -> 12345, also
    with a directory); ``by_name`` (file name -> id, from COCO annotations) is consulted first. None otherwise."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return int(text)
    name = Path(text).name
    if by_name and name in by_name:
        return by_name[name]
    match = _COCO_NAME.search(Path(name).stem)
    return int(match.group(1)) if match and ("." in name or name.startswith("COCO_")) else None


def error_record(n: int, kind: str, message: str, **fields: Any) -> dict[str, Any]:
    """The samples.jsonl record standing for input record ``n`` that could not be scored."""
    return {"id": f"record-{n}", "record": n, "error_kind": kind, "error": message, **fields}


def dedupe(
    items: Sequence[tuple[int, Any, str]], name: str, where: str
) -> tuple[list[tuple[int, Any, str]], list[dict[str, Any]], int]:
    """(kept, error records, dropped) of ``(record number, key, text)`` items: exact repeats of a key are dropped
    with a warning; a key given different texts becomes an error record for every one of its records."""
    texts: dict[Any, set[str]] = {}
    for _, key, text in items:
        texts.setdefault(key, set()).add(text)
    kept, errors, seen, dropped = [], [], set(), 0
    for n, key, text in items:
        if len(texts[key]) > 1:
            message = f"{name} {key} has {len(texts[key])} different texts in the file; none is scored"
            errors.append(error_record(n, "conflicting_duplicate", message, **{name: key}))
        elif key in seen:
            dropped += 1
        else:
            seen.add(key)
            kept.append((n, key, text))
    if dropped:
        _log.warning("%s: dropped %d exact repeat(s) of a %s with the same text", where, dropped, name)
    return kept, errors, dropped


def int_id(value: object) -> int | None:
    """An int, or a digit string as int (a question id); None for anything else."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return int(value) if isinstance(value, str) and value.strip().isdigit() else None
