"""Content hashes of files, for cache keys and provenance (one implementation for the package)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

_CHUNK = 1 << 22


def update_with_file(digest: Any, path: str | Path) -> Any:
    """Feed ``path``'s bytes into a hashlib object, chunk by chunk; returns the object."""
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's content."""
    return update_with_file(hashlib.sha256(), path).hexdigest()


#: Where :func:`sha256_file_cached` keeps what it computed (``SPECFORGE_DPACE_CACHE_DIR`` overrides).
CACHE_ENV = "SPECFORGE_DPACE_CACHE_DIR"
_CACHE_FILE = "file-sha256.json"


def cache_dir() -> Path:
    """``$SPECFORGE_DPACE_CACHE_DIR``, else ``$XDG_CACHE_HOME/specforge-dpace``, else ``~/.cache/specforge-dpace``."""
    import os

    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "specforge-dpace"


def _stamp(path: Path) -> list:
    """What changes whenever a file's bytes can have changed: size, mtime and ctime (ns), inode, device.
    (ctime cannot be set back by the user, so a file rewritten in place with its old size and mtime
    restored still counts as changed.)"""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def sha256_file_cached(path: str | Path) -> str:
    """:func:`sha256_file`, remembered per absolute path and :func:`_stamp` in :func:`cache_dir` (a 16 GB
    target is read once, not on every run); an unusable cache only means computing the hash again."""
    import json

    from ._atomic import write_text

    path = Path(path).resolve()
    stamp = _stamp(path)
    cache_path = cache_dir() / _CACHE_FILE
    try:
        cache = json.loads(cache_path.read_text(encoding="utf-8"))
        if not isinstance(cache, dict):
            cache = {}
    except (OSError, ValueError):
        cache = {}
    entry = cache.get(str(path))
    if isinstance(entry, dict) and entry.get("stamp") == stamp and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    digest = sha256_file(path)
    if _stamp(path) != stamp:  # changed while it was read: do not remember a hash of mixed content
        return digest
    try:  # re-read just before writing, so entries other processes added meanwhile are kept
        latest = json.loads(cache_path.read_text(encoding="utf-8"))
        cache = latest if isinstance(latest, dict) else cache
    except (OSError, ValueError):
        pass
    cache[str(path)] = {"stamp": stamp, "sha256": digest}
    try:
        write_text(cache_path, json.dumps(cache, sort_keys=True))
    except OSError:
        pass
    return digest
