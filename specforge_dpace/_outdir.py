"""An output directory holds one run at a time, and its problems are reported before any work.

:func:`check_output_dir` creates the directory and proves it writable, and checks that every report
file the run will write is not a directory (and, when the run appends to it, writable) and every
sub-directory it fills is not a file, each error naming the flag and the path, so a run never fails
after its work because of where it was asked to save it.

:func:`locked_output` holds ``DIR/.specforge-dpace.lock`` (an exclusive ``flock``) for the length of a
run: a second run into the same directory is refused with the holder's pid and command.  The kernel
drops the lock when its process ends, however it ends; the file keeps the holder's pid, so a run that
finds the lock free but the file naming another pid took over from a process that died without
releasing it, and says so.  The file is emptied (not removed) on release, so every run locks the same
file.  Two runs writing one ``requests.jsonl`` at once would each measure everything and count it
twice; with the lock they cannot.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: runs are not locked
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".specforge-dpace.lock"


class OutputDirInUse(ValueError):
    """Another live run holds the output directory's lock."""


def _problem(flag: str, path: Path, what: str) -> ValueError:
    return ValueError(f"{flag} {str(path)!r}: {what}")


def check_writable_dir(path: Path | str, flag: str) -> Path:
    """Create ``path`` and write + remove a probe file in it; a ``ValueError`` naming ``flag`` and the
    path (the file it sits under, when it does) if that fails."""
    if not str(path).strip():  # before Path(), which reads '' as '.'
        raise ValueError(f"{flag} '' is invalid; accepted: a directory path")
    path = Path(path)
    for ancestor in (path, *path.parents):
        if ancestor.exists():
            if not ancestor.is_dir():
                where = "is a file" if ancestor == path else f"sits under {str(ancestor)!r}, which is a file"
                raise _problem(flag, path, f"{where}; accepted: a directory (or a path where one can be created)")
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=path)
        try:
            os.write(fd, b"probe")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        raise _problem(
            flag,
            path,
            f"is not a writable directory ({exc.strerror or exc}); accepted: a directory this user can create and "
            "write",
        ) from None
    return path


def check_output_dir(
    path: Path | str,
    flag: str,
    *,
    files: Sequence[str] = (),
    appended: Sequence[str] = (),
    directories: Sequence[str] = (),
) -> Path:
    """:func:`check_writable_dir`, then: each of ``files`` (written whole) and ``appended`` (appended to)
    is absent or a regular file, ``appended`` ones writable; each of ``directories`` absent or a directory."""
    path = check_writable_dir(path, flag)
    for name in (*files, *appended):
        target = path / name
        if target.is_dir():
            raise _problem(
                flag, path, f"{str(target)!r} is a directory where this run writes its file {name}; move it away"
            )
        if target.exists() and not target.is_file():
            raise _problem(flag, path, f"{str(target)!r} is not a regular file; this run writes its file {name} there")
    for name in appended:
        target = path / name
        if target.exists() and not os.access(target, os.W_OK):
            raise _problem(flag, path, f"{str(target)!r} is not writable; this run appends its results to it")
    for name in directories:
        target = path / name
        if target.exists() and not target.is_dir():
            raise _problem(flag, path, f"{str(target)!r} is a file where this run keeps its directory {name}/")
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_holder(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = os.read(fd, 65536)
        holder = json.loads(data.decode("utf-8")) if data.strip() else {}
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict) -> str:
    parts = [f"pid {holder.get('pid', '?')}"]
    if holder.get("host") and holder.get("host") != socket.gethostname():
        parts.append(f"on {holder['host']}")
    if holder.get("command"):
        parts.append(f"({holder['command']}")
        if holder.get("started"):
            parts[-1] += f", started {holder['started']}"
        parts[-1] += ")"
    return " ".join(parts)


def _note(message: str) -> None:
    print(f"specforge-dpace: note: {message}", file=sys.stderr)


@contextlib.contextmanager
def locked_output(
    directory: Path | str, command: str, flag: str, *, note: Callable[[str], None] = _note
) -> Iterator[Path]:
    """Hold ``directory``'s lock while the block runs (the directory must exist: see :func:`check_output_dir`).

    Raises :class:`OutputDirInUse` (a ``ValueError``) naming the holder's pid when another process holds
    it; calls ``note`` when taking over the lock of a process that died holding it."""
    directory = Path(directory)
    if fcntl is None:  # pragma: no cover
        yield directory
        return
    lock_path = directory / LOCK_NAME
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder: dict = {}
            for _ in range(20):  # the holder writes its pid right after locking
                holder = _read_holder(fd)
                if holder.get("pid"):
                    break
                time.sleep(0.05)
            raise OutputDirInUse(
                f"{flag} {str(directory)!r} is in use by another run: {_describe(holder)} holds {lock_path}. "
                f"Wait for it to finish, or use another {flag}; two runs in one output directory would both "
                "write (and count) the same results"
            ) from None
        previous = _read_holder(fd)
        if previous.get("pid") and previous.get("pid") != os.getpid():
            alive = "" if not _pid_alive(int(previous["pid"])) else " (a process with that pid runs, but not this lock)"
            note(
                f"{flag} {str(directory)!r}: took over the lock that {_describe(previous)} left in {lock_path}: "
                f"it ended without releasing it{alive}; what it finished is kept"
            )
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": command,
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(record).encode("utf-8"))
        os.fsync(fd)
        try:
            yield directory
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def output_dir(
    path: Optional[Path | str],
    flag: str,
    command: str,
    *,
    files: Sequence[str] = (),
    appended: Sequence[str] = (),
    directories: Sequence[str] = (),
) -> Iterator[Optional[Path]]:
    """:func:`check_output_dir` then :func:`locked_output`, in one ``with`` (``path`` None: nothing to do)."""
    if path is None:
        yield None
        return
    if not str(path).strip():  # before Path(), which reads '' as '.'
        raise ValueError(f"{flag} '' is invalid; accepted: a directory path")
    path = Path(path)
    created = [p for p in (path, *path.parents) if not p.exists()]  # deepest first
    checked = check_output_dir(path, flag, files=files, appended=appended, directories=directories)
    try:
        with locked_output(checked, command, flag):
            yield checked
    except BaseException:
        _remove_if_unused(created)  # a run refused before writing anything leaves no directory behind
        raise


def _remove_if_unused(created: Sequence[Path]) -> None:
    """Remove the directories this run created, deepest first, while they hold nothing but the lock file."""
    for directory in created:
        try:
            if {p.name for p in directory.iterdir()} - {LOCK_NAME}:
                return
            (directory / LOCK_NAME).unlink(missing_ok=True)
            directory.rmdir()
        except OSError:
            return
