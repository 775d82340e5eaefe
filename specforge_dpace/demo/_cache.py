"""Checksummed cache artefacts of the demo: written atomically with a sha256, verified on reuse.

A file artefact ``X`` gets a sidecar ``X.sha256`` (``sha256sum`` format: ``<hex>  X``), written
*before* ``X`` is renamed into place, so an artefact that exists always has its checksum.  A
directory artefact (a drafter, a retrained target) gets ``SHA256SUMS`` listing every file in it,
written before its "done" marker file is renamed into place.  ``sha256sum -c`` checks both.

On reuse, :func:`verify_file` / :func:`verify_directory` return ``None`` when the content matches,
else ``(path, reason)``: the pipeline then recomputes the artefact with a :class:`CacheWarning`
naming the file (content changed, checksum missing or unreadable).  Nothing here decides what to
recompute; it only says whether a cached artefact is still what was written.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Iterable, Optional

from .._atomic import write_text, write_with
from .._hashing import sha256_file

SIDECAR_SUFFIX = ".sha256"
DIRECTORY_SUMS = "SHA256SUMS"


class CacheWarning(UserWarning):
    """A cached demo artefact cannot be reused as it is; it is recomputed."""


def _sums_text(sums: dict[str, str]) -> str:
    return "".join(f"{digest}  {name}\n" for name, digest in sorted(sums.items()))


def _parse_sums(path: Path) -> dict[str, str]:
    """``name -> hex`` from a ``sha256sum`` file; ``ValueError`` for anything malformed."""
    sums = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest) or not name:
            raise ValueError(f"line {number} is not '<sha256>  <name>'")
        sums[name] = digest
    if not sums:
        raise ValueError("it lists no file")
    return sums


def write_file(writer: Callable[[Path], object], path: Path | str) -> Path:
    """``writer(tmp)``, then the sidecar checksum, then ``tmp`` renamed to ``path``.

    An interruption leaves either the previous state or the complete new artefact (a temporary file
    is removed); a stale sidecar without its artefact is harmless (the artefact counts as missing).
    """
    path = Path(path)

    def record_checksum(tmp: Path) -> None:
        write_text(path.with_name(path.name + SIDECAR_SUFFIX), _sums_text({path.name: sha256_file(tmp)}))

    return write_with(path, writer, before_commit=record_checksum)


def verify_file(path: Path | str) -> Optional[tuple[Path, str]]:
    """``None`` when ``path`` matches its recorded sha256, else ``(file, reason)``."""
    path = Path(path)
    sidecar = path.with_name(path.name + SIDECAR_SUFFIX)
    if not sidecar.is_file():
        return path, f"no checksum recorded for it ({sidecar.name} is missing)"
    try:
        recorded = _parse_sums(sidecar).get(path.name)
    except (OSError, ValueError) as exc:
        return sidecar, f"its checksum file cannot be read ({exc})"
    if recorded is None:
        return sidecar, f"its checksum file does not list {path.name}"
    if sha256_file(path) != recorded:
        return path, "its content no longer matches the sha256 recorded when it was written"
    return None


def _files_in(directory: Path, skip: Iterable[str]) -> list[str]:
    skipped = set(skip)
    return sorted(
        str(p.relative_to(directory))
        for p in directory.rglob("*")
        if p.is_file() and p.name not in skipped and not p.name.startswith(".")  # .tmp files of a killed run
    )


def commit_directory(directory: Path | str, marker: str, writer: Callable[[Path], object]) -> Path:
    """Finish a directory artefact: write ``marker`` (its "done" file) through ``writer``, recording the
    sha256 of every file in ``directory`` (the marker included) in ``SHA256SUMS`` before the marker lands."""
    directory = Path(directory)

    def record_checksums(tmp: Path) -> None:
        sums = {name: sha256_file(directory / name) for name in _files_in(directory, (DIRECTORY_SUMS, marker))}
        sums[marker] = sha256_file(tmp)
        write_text(directory / DIRECTORY_SUMS, _sums_text(sums))

    return write_with(directory / marker, writer, before_commit=record_checksums)


def verify_directory(directory: Path | str) -> Optional[tuple[Path, str]]:
    """``None`` when every file ``SHA256SUMS`` lists matches and no file is unlisted, else ``(file, reason)``."""
    directory = Path(directory)
    sums_path = directory / DIRECTORY_SUMS
    if not sums_path.is_file():
        return directory, f"no checksums recorded for it ({DIRECTORY_SUMS} is missing)"
    try:
        sums = _parse_sums(sums_path)
    except (OSError, ValueError) as exc:
        return sums_path, f"its checksum file cannot be read ({exc})"
    for name, digest in sums.items():
        path = directory / name
        if not path.is_file():
            return path, f"it is listed in {DIRECTORY_SUMS} but missing"
        if sha256_file(path) != digest:
            return path, "its content no longer matches the sha256 recorded when it was written"
    extra = sorted(set(_files_in(directory, (DIRECTORY_SUMS,))) - set(sums))
    if extra:
        return directory / extra[0], f"it was not there when {directory.name} was written"
    return None


def content_digest(directory: Path | str, exclude: Iterable[str] = ()) -> str:
    """One sha256 over the recorded checksums of a committed directory (``exclude``: names left out)."""
    skipped = set(exclude)
    sums = {k: v for k, v in _parse_sums(Path(directory) / DIRECTORY_SUMS).items() if k not in skipped}
    return hashlib.sha256(_sums_text(sums).encode()).hexdigest()
