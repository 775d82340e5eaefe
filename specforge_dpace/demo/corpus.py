"""The demo's corpus: Python standard-library source files, a text every machine has offline.

The file list is sorted and filtered deterministically; a file is held out (for evaluation
prompts) by a CRC32 of its relative path, so the split does not depend on the file order or
on which other files exist.
"""

from __future__ import annotations

import sysconfig
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

# Directories skipped: tests (huge, repetitive), vendored or generated code, installed packages
# (plus build-configuration directories ``config-*``).
EXCLUDED_DIRS = frozenset(
    {
        "test",
        "tests",
        "idlelib",
        "lib2to3",
        "site-packages",
        "dist-packages",
        "__pycache__",
        "encodings",
        "pydoc_data",
        "ensurepip",
        "turtledemo",
    }
)
MAX_FILE_CHARS = 200_000  # a few generated files are huge; they would dominate the corpus


@dataclass(frozen=True)
class SourceFile:
    relpath: str
    text: str

    @property
    def held_out(self) -> bool:
        return is_held_out(self.relpath)


def stdlib_root() -> Path:
    """Where this interpreter's standard library lives."""
    return Path(sysconfig.get_paths()["stdlib"])


def is_held_out(relpath: str, every: int = 10) -> bool:
    """True for about one file in ``every``: the evaluation split."""
    return zlib.crc32(relpath.encode("utf-8")) % every == 0


def list_source_files(root: Optional[Path] = None) -> list[str]:
    """Sorted relative paths of the ``.py`` files under ``root`` (default: the stdlib)."""
    root = Path(root) if root is not None else stdlib_root()
    if not root.is_dir():
        raise ValueError(f"corpus root {str(root)!r} is not a directory; accepted: a directory of .py files")
    paths = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if any(part in EXCLUDED_DIRS or part.startswith("config-") for part in rel.parts[:-1]):
            continue
        paths.append(rel.as_posix())
    return sorted(paths)


def load_corpus(
    root: Optional[Path] = None, *, split: str = "train", max_chars: Optional[int] = None
) -> list[SourceFile]:
    """Source files of one split (``train``, ``heldout`` or ``all``), in sorted order.

    ``max_chars`` stops once that many characters were collected (a deterministic prefix)."""
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"split={split!r} is invalid; accepted: 'train', 'heldout', 'all'")
    root = Path(root) if root is not None else stdlib_root()
    files, total = [], 0
    for rel in list_source_files(root):
        if split != "all" and is_held_out(rel) != (split == "heldout"):
            continue
        try:
            text = (root / rel).read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if not text.strip() or len(text) > MAX_FILE_CHARS:
            continue
        files.append(SourceFile(rel, text))
        total += len(text)
        if max_chars is not None and total >= max_chars:
            break
    if not files:
        raise ValueError(f"no usable .py files for split {split!r} under {str(root)!r}")
    return files
