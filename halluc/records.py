"""JSONL record files: one JSON object per line, appended and flushed as produced, with one torn-line policy.

A writer killed mid-record leaves a torn last line. Every JSONL file halluc writes or reads (run samples, SENTINEL
pairs and images, the cross-check cache, the dashboard's readers) goes through this module, so the policy is one:

* reading: a last line that is not a complete JSON object is skipped and reported, by a message naming the file
  and line (:func:`load_records`) or a :class:`TornRecordWarning` (:func:`read_records`);
* appending (resume): that torn last line is truncated first, so new records never follow a broken one;
* a bad line that is *not* the last cannot come from an interrupted append: it raises :class:`InputDataError`
  naming ``file:line``.

Blank lines are ignored. A missing file holds no records.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from halluc.errors import InputDataError, OutputLocationError

__all__ = ["TornRecordWarning", "append_records", "load_records", "read_records", "repair_tail", "write_records"]

_BLOCK = 1 << 16


class TornRecordWarning(UserWarning):
    """A JSONL file's last line was torn (a writer was interrupted); it was skipped or truncated."""


def _line(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, default=str) + "\n"


def _parse(raw: bytes) -> tuple[dict[str, Any] | None, str]:
    """The JSON object on one line, or None and why it is not one."""
    try:
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return None, f"not UTF-8 text ({exc.reason})"
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON ({exc.msg})"
    if not isinstance(value, dict):
        return None, f"expected a JSON object, got {type(value).__name__}"
    return value, ""


def load_records(path: Path) -> tuple[list[dict[str, Any]], str | None]:
    """The records of a JSONL file and, when its last line is torn, a message naming file and line (skipped)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], None
    except OSError as exc:
        raise InputDataError(f"cannot read {path}: {exc.strerror}") from None
    lines = data.split(b"\n")
    last = max((i for i, raw in enumerate(lines) if raw.strip()), default=-1)
    records: list[dict[str, Any]] = []
    for index, raw in enumerate(lines[: last + 1]):
        if not raw.strip():
            continue
        record, problem = _parse(raw)
        if record is not None:
            records.append(record)
        elif index == last:
            return records, f"{path}:{index + 1}: torn last line skipped ({problem})"
        else:
            raise InputDataError(f"{path}:{index + 1}: {problem}")
    return records, None


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a JSONL file; a torn last line is skipped with a :class:`TornRecordWarning`."""
    records, torn = load_records(path)
    if torn is not None:
        warnings.warn(torn, TornRecordWarning, stacklevel=2)
    return records


def _tail_start(fh: Any, size: int) -> int:
    """Offset where the file's last non-empty line starts (scanning back from its end in blocks)."""
    end = size
    while end > 0 and _read_at(fh, end - 1, 1) in (b"\n", b"\r", b" ", b"\t"):
        end -= 1
    pos = end
    while pos > 0:
        start = max(0, pos - _BLOCK)
        cut = _read_at(fh, start, pos - start).rfind(b"\n")
        if cut >= 0:
            return start + cut + 1
        pos = start
    return 0


def _read_at(fh: Any, offset: int, n: int) -> bytes:
    fh.seek(offset)
    return fh.read(n)


def repair_tail(path: Path) -> None:
    """Make ``path`` safe to append to: truncate a torn last line (with a warning), end a whole one with a newline."""
    path = Path(path)
    if not path.exists():
        return
    try:
        with path.open("r+b") as fh:
            size = fh.seek(0, os.SEEK_END)
            start = _tail_start(fh, size)
            tail = _read_at(fh, start, size - start)
            if not tail.strip():
                return
            record, problem = _parse(tail)
            if record is None:
                lineno = _read_at(fh, 0, start).count(b"\n") + 1
                fh.truncate(start)
                warnings.warn(f"{path}:{lineno}: torn last line removed ({problem})", TornRecordWarning, stacklevel=2)
            elif not tail.endswith(b"\n"):
                fh.seek(0, os.SEEK_END)
                fh.write(b"\n")
    except OSError as exc:
        raise OutputLocationError(f"cannot repair {path}: {exc.strerror}") from None


def append_records(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Append records after :func:`repair_tail`, flushed and fsynced: a kill loses at most the record being written."""
    path = Path(path)
    repair_tail(path)
    try:
        with path.open("a", encoding="utf-8") as fh:
            fh.writelines(_line(rec) for rec in records)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise OutputLocationError(f"cannot append to {path}: {exc.strerror}") from None


def write_records(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Replace ``path`` by ``records`` atomically (temp file, fsync, ``os.replace``)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            fh.writelines(_line(rec) for rec in records)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputLocationError(f"cannot write {path}: {exc.strerror}") from None
