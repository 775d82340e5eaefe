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
