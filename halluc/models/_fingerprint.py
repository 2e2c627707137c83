"""Which weights a run used: the model id plus a hash of local weight files or the hub revision, for manifests."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any

__all__ = ["model_fingerprint"]


@functools.lru_cache(maxsize=8)
def _weights_digest(files: tuple[tuple[str, int, int], ...]) -> str:
    """SHA-256 prefix of the weight files, streamed; cached on (path, size, mtime) because every job of a suite
    fingerprints the same multi-gigabyte checkpoint."""
    h = hashlib.sha256()
    for path, _size, _mtime in files:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 24):
                h.update(chunk)
    return h.hexdigest()[:16]


def model_fingerprint(lvlm: Any) -> dict[str, str | None]:
    """Model id plus a weight hash (local safetensors) or hub revision, recorded in the manifest."""
    name = str(getattr(lvlm, "name_or_path", "") or "")
    local = Path(name)
    digest = None
    if local.is_dir():
        files = sorted(local.glob("*.safetensors"))
        digest = _weights_digest(tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files))
    revision = getattr(getattr(lvlm.model, "config", None), "_commit_hash", None)
    return {"model": name, "weights_sha256": digest, "revision": revision}
