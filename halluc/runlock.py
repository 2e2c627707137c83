"""The one-writer lock of a run directory, and run status read from it.

``<run>/writer.lock`` is held with ``flock`` by the one process writing the run and names its pid, host, start
time and command. The kernel drops the lock when its holder dies, so a ``kill -9`` leaves a stale file whose pid is
no longer alive: the next writer reports it and takes over, and :func:`run_status` calls such a run "interrupted".
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import json
import logging
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from halluc.errors import OutputLocationError

__all__ = ["LOCK", "WriterLock", "acquire", "busy_message", "run_status", "writer_alive", "writer_info"]

LOCK = "writer.lock"
_log = logging.getLogger("halluc")


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def writer_info(path: Path) -> dict[str, Any] | None:
    """The writer named in a run directory's lock file (pid, host, started_at, command), or None."""
    try:
        info = json.loads((Path(path) / LOCK).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def writer_alive(info: dict[str, Any]) -> bool | None:
    """Whether the named writer still runs; None when it ran on another host (cannot tell from here)."""
    if info.get("host") != socket.gethostname():
        return None
    pid = info.get("pid")
    return isinstance(pid, int) and _pid_alive(pid)


def run_status(path: Path, manifest: dict[str, Any]) -> str:
    """The manifest's status, except that a "running" run whose writer is gone is "interrupted"."""
    status = str(manifest.get("status", "unknown"))
    if status != "running":
        return status
    info = writer_info(path)
    return "running" if info is not None and writer_alive(info) is not False else "interrupted"


@dataclass
class WriterLock:
    """An exclusive ``flock`` on ``<run>/writer.lock``; ``release`` removes the file, then drops the lock."""

    path: Path
    fd: int

    def release(self) -> None:
        if self.fd < 0:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self.fd)
        self.fd = -1
        _HELD.pop(self.path, None)


_HELD: dict[Path, WriterLock] = {}  # locks this process holds; a newer store of the same run takes the lock over


def busy_message(run_dir: Path) -> str:
    info = writer_info(run_dir) or {}
    who = f"pid {info.get('pid', '?')} on {info.get('host', '?')}, since {info.get('started_at', '?')}"
    return (
        f"run directory {str(run_dir)!r} is being written by another process ({who}); "
        "wait for it to finish, stop it, or choose another --out"
    )


def acquire(run_dir: Path) -> tuple[WriterLock, bool]:
    """Take the run's writer lock (or reuse this process's); report a stale lock left by a dead writer."""
    lock_path = run_dir.resolve() / LOCK
    held = _HELD.get(lock_path)
    if held is not None and held.fd >= 0:
        return held, False
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputLocationError(f"cannot create {str(lock_path)!r}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OutputLocationError(busy_message(run_dir)) from None
            raise OutputLocationError(f"cannot lock {str(lock_path)!r}: {exc.strerror}") from None
        try:
            current = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)  # the previous writer removed the file between our open and flock: lock the new one
    previous = os.read(fd, 4096)
    with contextlib.suppress(ValueError):
        old = json.loads(previous) if previous.strip() else None
        if isinstance(old, dict) and old.get("pid") != os.getpid():
            _log.warning(
                "run %s: its previous writer (pid %s on %s, started %s) stopped without finishing; "
                "taking over its stale lock",
                run_dir, old.get("pid"), old.get("host"), old.get("started_at"),
            )  # fmt: skip
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started_at": _now(), "command": sys.argv}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    lock = WriterLock(lock_path, fd)
    _HELD[lock_path] = lock
    return lock, True
