"""Run store: one directory per run that never loses work.

Layout of ``<root>/<run-id>/``:
    manifest.json   everything needed to reproduce the run (command, config, model, seed, versions, git commit, times)
    samples.jsonl   one immutable record per sample, appended and flushed as produced; resume appends new ones only
    metrics.json    written atomically (temp file + rename) once scored
Extra artefacts (per-caption details, heatmaps) live beside them and are also written atomically.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from halluc.errors import InputDataError, OutputLocationError
from halluc.records import append_records, read_records, repair_tail, write_records

__all__ = [
    "MANIFEST",
    "METRICS",
    "SAMPLES",
    "RunStore",
    "atomic_write_json",
    "config_hash",
    "environment_info",
    "list_runs",
]

MANIFEST = "manifest.json"
SAMPLES = "samples.jsonl"
METRICS = "metrics.json"
_TRACKED_PACKAGES = ("halluc", "torch", "transformers", "accelerate", "ultralytics", "nltk", "pycocotools")


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def config_hash(obj: Any) -> str:
    """Stable short hash of a JSON-serialisable object, so runs with equal inputs/config diff cleanly."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment_info() -> dict[str, Any]:
    """Package versions, Python and git commit recorded in every manifest."""
    versions: dict[str, str | None] = {}
    for name in _TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"python": platform.python_version(), "packages": versions, "git_commit": _git_commit()}


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write JSON to ``path`` via a temp file and ``os.replace`` so readers never see a partial file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True, default=str)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@dataclass
class RunStore:
    """A run directory: manifest, append-only samples and atomically written metrics."""

    path: Path
    manifest: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, path: Path, manifest: dict[str, Any], *, resume: bool = False) -> RunStore:
        """Open ``path`` as a new run, or continue it when ``resume`` is set and it already holds samples."""
        path = Path(path)
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe = path / f".write-test-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise OutputLocationError(f"cannot write to output directory {str(path)!r}: {exc.strerror}") from None
        existing = path / MANIFEST
        if existing.exists() and not resume and (path / SAMPLES).exists():
            raise OutputLocationError(
                f"run directory {str(path)!r} already holds a run; pass --resume to continue it or choose another --out"
            )
        store = cls(path=path)
        if existing.exists() and resume:
            old = store.read_manifest()
            if old.get("config_hash") and old["config_hash"] != manifest.get("config_hash"):
                raise OutputLocationError(
                    f"cannot resume {str(path)!r}: its config hash {old['config_hash']} differs from this "
                    f"command's {manifest.get('config_hash')}; rerun with the original options or a new --out"
                )
            manifest = {**old, "resumed_at": [*old.get("resumed_at", []), _now()]}
        else:
            manifest = {**manifest, "environment": environment_info(), "started_at": _now(), "status": "running"}
        manifest.setdefault("command", sys.argv)
        store.manifest = manifest
        repair_tail(path / SAMPLES)
        store.write_manifest()
        return store

    @classmethod
    def open(cls, path: Path) -> RunStore:
        """Open an existing run directory for reading."""
        path = Path(path)
        if not (path / MANIFEST).exists():
            raise InputDataError(f"{str(path)!r} is not a run directory (no {MANIFEST})")
        store = cls(path=path)
        store.manifest = store.read_manifest()
        return store

    def read_manifest(self) -> dict[str, Any]:
        try:
            return json.loads((self.path / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise InputDataError(f"cannot read {self.path / MANIFEST}: {exc}") from None

    def write_manifest(self) -> None:
        atomic_write_json(self.path / MANIFEST, self.manifest)

    def samples_path(self, shard: str | None = None) -> Path:
        """Path of the samples file, or of one process's shard file in a multi-process run."""
        return self.path / (SAMPLES if shard is None else f"samples.{shard}.jsonl")

    def samples(self, shard: str | None = None) -> list[dict[str, Any]]:
        return read_records(self.samples_path(shard))

    def done_ids(self) -> set[str]:
        """Ids of samples already recorded in the main file or any shard file (for resume)."""
        ids: set[str] = set()
        for file in [self.samples_path(), *sorted(self.path.glob("samples.*.jsonl"))]:
            ids.update(str(rec["id"]) for rec in read_records(file))
        return ids

    def append(self, records: Iterable[dict[str, Any]], shard: str | None = None) -> None:
        """Append records, flushed and fsynced so a kill loses at most the record being written."""
        append_records(self.samples_path(shard), records)

    def merge_shards(self, order: list[str]) -> None:
        """Fold shard files into samples.jsonl, in request ``order``, then delete them."""
        shard_files = sorted(self.path.glob("samples.*.jsonl"))
        if not shard_files:
            return
        by_id = {str(r["id"]): r for r in read_records(self.samples_path())}
        for file in shard_files:
            by_id.update({str(r["id"]): r for r in read_records(file)})
        rank = {sample_id: i for i, sample_id in enumerate(order)}
        merged = sorted(by_id.values(), key=lambda r: rank.get(str(r["id"]), len(rank)))
        write_records(self.samples_path(), merged)
        for file in shard_files:
            file.unlink()

    def write_artifact(self, name: str, obj: Any) -> Path:
        """Write an extra JSON artefact atomically (e.g. per-caption CHAIR details)."""
        target = self.path / name
        atomic_write_json(target, obj)
        return target

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        atomic_write_json(self.path / METRICS, metrics)

    def metrics(self) -> dict[str, Any] | None:
        file = self.path / METRICS
        return json.loads(file.read_text(encoding="utf-8")) if file.exists() else None

    def finish(self, *, status: str = "finished", **extra: Any) -> None:
        """Record the end time and final status (plus e.g. the error count) in the manifest."""
        self.manifest.update(extra, status=status, finished_at=_now())
        self.write_manifest()


def list_runs(root: Path) -> list[RunStore]:
    """All run directories under ``root``, at any depth (newest first); unreadable ones are skipped."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = []
    for manifest in root.rglob(MANIFEST):
        with contextlib.suppress(InputDataError):
            runs.append(RunStore.open(manifest.parent))
    return sorted(runs, key=lambda r: r.manifest.get("started_at", ""), reverse=True)
