"""Run store: one directory per run that never loses work.

Layout of ``<root>/<run-id>/``:
    manifest.json   everything needed to reproduce the run (command, config, model, seed, versions, git commit, times)
    samples.jsonl   one immutable record per sample, appended and flushed as produced; resume appends new ones only
    metrics.json    written atomically (temp file + rename) once scored
    writer.lock     held (``flock``) by the one process writing the run; names its pid, host and command
Extra artefacts (per-caption details, heatmaps) live beside them and are also written atomically.

One writer per run: a second process that opens the run for writing gets OutputLocationError naming the writer.
The kernel drops the lock when its holder dies, so a ``kill -9`` leaves a stale lock file whose pid is no
longer alive; the next writer reports it and takes over. :func:`run_status` tells a live run ("running") from one
whose writer died ("interrupted") by that pid, not by the manifest alone (the lock lives in halluc/runlock.py).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from halluc.errors import InputDataError, OutputLocationError
from halluc.records import append_records, read_records, repair_tail, write_records
from halluc.runlock import LOCK, WriterLock, acquire, busy_message, run_status, writer_alive, writer_info

__all__ = [
    "LOCK",
    "MANIFEST",
    "METRICS",
    "NOT_HASHED",
    "SAMPLES",
    "RunStore",
    "atomic_write_json",
    "config_diff",
    "config_hash",
    "environment_info",
    "list_runs",
    "read_json",
    "result_config",
    "resume_command",
    "run_status",
    "writer_info",
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


def read_json(path: Path) -> Any:
    """Parse a JSON file, or raise InputDataError naming the file and the problem."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputDataError(f"cannot read {path}: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputDataError(f"{path} is not valid JSON ({exc})") from None


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write JSON to ``path`` via a temp file and ``os.replace`` so readers never see a partial file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=2, sort_keys=True, default=str)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise OutputLocationError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None


# Manifest keys that describe the run's life, not its configuration, and options that do not change results
# (batch size, device, progress): left out of the config hash and of the resume comparison.
_LIFECYCLE = ("environment", "started_at", "resumed_at", "finished_at", "status", "command", "config_hash", "error")
NOT_HASHED = ("settings.batch_size", "device", "progress", "n_errors")


def _flatten(obj: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def result_config(manifest: dict[str, Any]) -> dict[str, Any]:
    """The part of a manifest that changes results, flattened to dotted keys: what the config hash covers."""
    flat = _flatten({k: v for k, v in manifest.items() if k not in _LIFECYCLE})
    return {k: v for k, v in flat.items() if k not in NOT_HASHED}


def config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for every result-changing option that differs between two manifests."""
    a, b = result_config(old), result_config(new)
    missing = object()
    diffs = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, missing), b.get(key, missing)
        if json.dumps(va, default=str, sort_keys=True) != json.dumps(vb, default=str, sort_keys=True):
            shown = ["(absent)" if v is missing else json.dumps(v, default=str) for v in (va, vb)]
            diffs.append(f"{key}: {shown[0]} -> {shown[1]}")
    return diffs


def _make_writable_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise OutputLocationError(f"cannot write to output directory {str(path)!r}: {exc.strerror}") from None


def _occupied_message(path: Path, manifest: dict[str, Any], *, locked: bool = False) -> str:
    """The refusal to start over a run; ``locked``: we hold its lock, so a "running" one has lost its writer."""
    status = run_status(path, manifest)
    state = "an interrupted run" if status == "interrupted" or (locked and status == "running") else "a run"
    return f"run directory {str(path)!r} already holds {state}; pass --resume to continue it or choose another --out"


def resume_command(path: Path, manifest: dict[str, Any]) -> str | None:
    """The ``halluc ...`` command that continues a run: its recorded command plus ``--resume`` (and ``--out``)."""
    command = manifest.get("command")
    if not isinstance(command, list) or len(command) < 2:
        return None
    args = [str(a) for a in command[1:]]
    if "--out" not in args:
        args += ["--out", str(path)]
    if "--resume" not in args:
        args.append("--resume")
    return shlex.join(["halluc", *args])


@dataclass
class RunStore:
    """A run directory: manifest, append-only samples and atomically written metrics.

    A store made by :meth:`create` holds the run's writer lock until :meth:`finish` or :meth:`close` (or the
    process ends); use it as a context manager so an exception records the run as failed and frees the lock.
    """

    path: Path
    manifest: dict[str, Any] = field(default_factory=dict)
    _lock: WriterLock | None = field(default=None, repr=False, compare=False)

    @classmethod
    def check_output(cls, path: Path, *, resume: bool = False) -> None:
        """Refuse, before any model loads, an output directory that cannot be written or is not free to write."""
        path = Path(path)
        _make_writable_dir(path)
        if os.environ.get("RANK", "0").strip() not in ("", "0"):
            return  # a launched process other than the main one: the main one checks, then takes the lock
        info = writer_info(path)
        if info is not None and info.get("pid") != os.getpid() and writer_alive(info) is not False:
            raise OutputLocationError(busy_message(path))
        if (path / MANIFEST).exists() and not resume and (path / SAMPLES).exists():
            raise OutputLocationError(_occupied_message(path, cls.open(path).manifest))

    @classmethod
    def create(cls, path: Path, manifest: dict[str, Any], *, resume: bool = False) -> RunStore:
        """Open ``path`` as a new run, or continue it when ``resume`` is set and it already holds samples."""
        path = Path(path)
        _make_writable_dir(path)
        lock, acquired = acquire(path)
        store = cls(path=path, _lock=lock)
        try:
            store.manifest = store._start(manifest, resume)
            repair_tail(path / SAMPLES)
            store.write_manifest()
        except BaseException:
            if acquired:
                lock.release()
            raise
        return store

    def _start(self, manifest: dict[str, Any], resume: bool) -> dict[str, Any]:
        """The manifest of a new run, or the old one of a run continued with ``resume``; refuses mismatches."""
        existing = self.path / MANIFEST
        if existing.exists() and not resume and (self.path / SAMPLES).exists():
            raise OutputLocationError(_occupied_message(self.path, self.read_manifest(), locked=True))
        if existing.exists() and resume:
            old = self.read_manifest()
            new_hash = manifest.get("config_hash")
            if old.get("config_hash") not in (None, new_hash) and config_hash(result_config(old)) != new_hash:
                diffs = config_diff(old, manifest)
                shown = "; ".join(diffs[:4]) + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else "")
                raise OutputLocationError(
                    f"cannot resume {str(self.path)!r}: "
                    + (f"options differ from the original run ({shown})" if diffs else
                       f"its config hash {old['config_hash']} differs from this command's {new_hash}")
                    + "; rerun with the original options or choose a new --out"
                )  # fmt: skip
            manifest = {**old, "status": "running", "resumed_at": [*old.get("resumed_at", []), _now()]}
            manifest.pop("error", None)
        else:
            manifest = {**manifest, "environment": environment_info(), "started_at": _now(), "status": "running"}
        manifest.setdefault("command", sys.argv)
        return manifest

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
        """Record the end time and final status (plus e.g. the error count) in the manifest; frees the lock."""
        self.manifest.update(extra, status=status, finished_at=_now())
        self.write_manifest()
        self.close()

    def close(self) -> None:
        """Free the writer lock (idempotent); the run stays as it is."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc is not None and self._lock is not None and self.manifest.get("status") == "running":
            interrupted = isinstance(exc, KeyboardInterrupt)
            line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            with contextlib.suppress(OSError):
                self.finish(status="interrupted" if interrupted else "failed", error=line)
        self.close()


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
