"""JSONL records: one torn-line policy for every reader and writer (halluc.records)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from halluc.errors import InputDataError
from halluc.records import TornRecordWarning, append_records, load_records, read_records, repair_tail, write_records


def test_append_then_read_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    append_records(path, [{"b": 1, "a": [1, 2]}])
    append_records(path, [{"c": None}, {"d": "é"}])
    assert read_records(path) == [{"b": 1, "a": [1, 2]}, {"c": None}, {"d": "é"}]
    assert path.read_text(encoding="utf-8").splitlines()[0] == '{"a": [1, 2], "b": 1}'  # keys sorted: runs diff


def test_missing_file_and_blank_lines(tmp_path: Path) -> None:
    assert read_records(tmp_path / "none.jsonl") == []
    path = tmp_path / "r.jsonl"
    path.write_text('\n{"a": 1}\n\n{"b": 2}\r\n\n')
    assert read_records(path) == [{"a": 1}, {"b": 2}]


@pytest.mark.parametrize("tail", ['{"id": 3, "x', "[1, 2]", '{"id": 3, "x":\n', "\xff"])
def test_torn_last_line_is_reported_and_skipped(tmp_path: Path, tail: str) -> None:
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"id": 1}\n{"id": 2}\n' + tail.encode("latin-1"))
    records, torn = load_records(path)
    assert records == [{"id": 1}, {"id": 2}]
    assert torn is not None and torn.startswith(f"{path}:3: torn last line skipped")
    with pytest.warns(TornRecordWarning, match="r.jsonl:3: torn last line skipped"):
        assert read_records(path) == records


def test_bad_line_before_the_last_is_an_error_naming_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('{"id": 1}\n{"id": 2, \n{"id": 3}\n')
    with pytest.raises(InputDataError, match=r"r.jsonl:2: not valid JSON"):
        read_records(path)
    path.write_text('{"id": 1}\n[2]\n{"id": 3}\n')
    with pytest.raises(InputDataError, match=r"r.jsonl:2: expected a JSON object, got list"):
        load_records(path)


def test_append_truncates_a_torn_tail_first(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    append_records(path, [{"id": 1}])
    with path.open("a") as fh:
        fh.write('{"id": 2, "x')  # a writer killed mid-record
    with pytest.warns(TornRecordWarning, match="r.jsonl:2: torn last line removed"):
        append_records(path, [{"id": 3}])
    assert path.read_text() == '{"id": 1}\n{"id": 3}\n'


def test_a_complete_last_line_without_newline_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('{"id": 1}\n{"id": 2}')
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_records(path) == [{"id": 1}, {"id": 2}]
        append_records(path, [{"id": 3}])
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"id": 1}, {"id": 2}, {"id": 3}]


def test_repair_tail_scans_back_over_long_lines(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    long = {"text": "x" * 200_000}
    write_records(path, [long, long])
    with path.open("a") as fh:
        fh.write(json.dumps(long)[:150_000])
    with pytest.warns(TornRecordWarning, match="r.jsonl:3"):
        repair_tail(path)
    assert read_records(path) == [long, long]
    assert not list(tmp_path.glob(".*tmp*"))
