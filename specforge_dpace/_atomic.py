"""Atomic file writes, one implementation for the package.

A file is written under a temporary name in its own directory, flushed to disk, then renamed over
its final name: a reader (or a rerun) sees the old file or the complete new one, never a torn or
empty one.  When writing fails (a full disk, a file-size limit, Ctrl-C) the temporary file is
removed, the old file stays as it was and the error names the file that could not be written.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

_counter = itertools.count()


def temporary_path(path: Path) -> Path:
    """A hidden sibling of ``path``, unique per process and thread (hidden: directory checksums and
    listings skip names that start with a dot)."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}-{threading.get_ident()}-{next(_counter)}")


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


class WriteError(OSError):
    """A file could not be written; the message names it (the previous version, if any, is intact)."""


def write_with(
    path: Path | str, writer: Callable[[Path], Any], *, before_commit: Optional[Callable[[Path], Any]] = None
) -> Path:
    """``writer(tmp)``, fsync, ``before_commit(tmp)`` (e.g. record its checksum), then rename to ``path``.

    Any failure removes the temporary file and leaves ``path`` untouched; an ``OSError`` is re-raised
    as :class:`WriteError` naming ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        writer(tmp)
        _fsync(tmp)
        if before_commit is not None:
            before_commit(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, WriteError):
            raise WriteError(exc.errno, f"could not write {path}: {exc.strerror or exc}") from exc
        raise
    return path


def write_bytes(path: Path | str, data: bytes) -> Path:
    return write_with(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: Path | str, text: str) -> Path:
    return write_with(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_jsonl(path: Path | str, records: Iterable[Any], dumps: Callable[[Any], str] = json.dumps) -> Path:
    """One JSON line per record, the whole file at once (an empty iterable writes an empty file)."""

    def writer(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            for record in records:
                handle.write(dumps(record) + "\n")

    return write_with(path, writer)
