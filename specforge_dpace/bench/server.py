"""Server lifecycle: launch one SGLang server, wait for health, always stop its process group.

A server is started in its own session (so ``killpg`` reaches every child SGLang forks) with
``PR_SET_PDEATHSIG`` on Linux (so even a SIGKILLed runner leaves no server behind); its stdout
and stderr go to a log file whose tail is shown in every error. ``attach`` wraps an already
running server instead, and stopping it does nothing.
"""

from __future__ import annotations

import ctypes
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Mapping, Optional, Sequence

DEFAULT_LAUNCHER = (sys.executable, "-m", "sglang.launch_server")
LAUNCHER_ENV = "SPECFORGE_DPACE_BENCH_LAUNCHER"


def sglang_version() -> Optional[str]:
    """The version of the SGLang installed in this Python (what ``python -m sglang.launch_server`` runs),
    None when none is installed."""
    from specforge_dpace._versions import package_version

    return package_version("sglang")


def check_methods_served(drafters: Mapping[str, str], version: Optional[str]) -> None:
    """Refuse (``ValueError``), before anything is launched, every drafter whose method SGLang ``version``
    cannot serve: SGLang 0.5.14 serves DFlash drafters only (``--speculative-algorithm DFLASH`` loads
    ``DFlashDraftModel``), never Domino or DSpark (``specforge_dpace.draft_methods``).  The method comes from
    each draft config's ``architectures``; a draft whose config cannot be read or names no DFlash-family
    architecture is left to the validator, which says why."""
    from specforge_dpace import draft_methods

    problems = []
    for name, path in drafters.items():
        try:
            config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
            method = draft_methods.draft_method(config)
        except (OSError, ValueError):
            continue
        problem = draft_methods.sglang_serving_problem(method, version)
        if problem:
            problems.append(f"drafter {name!r} ({path}): {problem}")
    if problems:
        raise ValueError("SGLang cannot serve these drafters, so nothing was launched:\n  - " + "\n  - ".join(problems))


class ServerError(RuntimeError):
    """The server died, never became healthy, or answered nonsense; the message has its log tail."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def log_tail(path: Optional[Path], lines: int = 30) -> str:
    if path is None or not Path(path).exists():
        return "(no log)"
    text = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join(text[-lines:]) or "(log is empty)"


def launcher_command(launcher: Optional[str]) -> list[str]:
    """The command that starts a server: ``--launcher``, else $SPECFORGE_DPACE_BENCH_LAUNCHER, else SGLang."""
    text = launcher or os.environ.get(LAUNCHER_ENV)
    if not text:
        return list(DEFAULT_LAUNCHER)
    parts = shlex.split(text)
    if parts and parts[0] in ("python", "python3"):
        parts[0] = sys.executable
    return parts


def server_args(
    model_path: str,
    port: int,
    *,
    draft_path: Optional[str] = None,
    block_size: Optional[int] = None,
    extra: Sequence[str] = (),
    host: str = "127.0.0.1",
) -> list[str]:
    """SGLang flags for a DFlash (draft given) or a no-speculation baseline server."""
    args = ["--model-path", str(model_path), "--host", host, "--port", str(port)]
    extra = list(extra)
    for flag in ("--model-path", "--host", "--port", "--speculative-algorithm", "--speculative-draft-model-path"):
        if flag in extra:
            raise ValueError(f"--server-args must not set {flag}: the runner sets it (got {extra})")
    if draft_path is not None:
        args += ["--speculative-algorithm", "DFLASH", "--speculative-draft-model-path", str(draft_path)]
        for alias in ("--speculative-num-draft-tokens", "--speculative-dflash-block-size"):
            if alias in extra:
                i = extra.index(alias)
                given = extra[i + 1] if i + 1 < len(extra) else None
                if block_size is not None and given is not None and int(given) != int(block_size):
                    raise ValueError(
                        f"--server-args sets {alias} {given} but the draft config has block_size {block_size}; "
                        "SGLang rejects disagreeing block sizes"
                    )
                block_size = None  # the user's flag stands
        if block_size is not None:
            args += ["--speculative-num-draft-tokens", str(block_size)]
    else:
        spec_flags = [f for f in extra if f.startswith("--speculative")]
        if spec_flags:
            extra = _drop_flags(extra, spec_flags)
    return args + extra


def _drop_flags(extra: list[str], flags: list[str]) -> list[str]:
    out, skip = [], False
    for item in extra:
        if skip:
            skip = False
            continue
        if item in flags:
            skip = True
            continue
        out.append(item)
    return out


def _pdeathsig() -> None:  # runs in the child between fork and exec
    os.setsid()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def http_get_json(url: str, timeout: float = 5.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read() or b"{}")


class ManagedServer:
    """A running server (launched or attached). Use as a context manager; ``stop`` is idempotent."""

    def __init__(
        self,
        name: str,
        url: str,
        process: Optional[subprocess.Popen] = None,
        log_path: Optional[Path] = None,
        command: Optional[list[str]] = None,
    ):
        self.name = name
        self.url = url.rstrip("/")
        self.process = process
        self.log_path = log_path
        self.command = command
        self._log_handle = None
        self.exit_code: Optional[int] = None

    @property
    def pid(self) -> Optional[int]:
        return self.process.pid if self.process else None

    def alive(self) -> bool:
        return self.process is None or self.process.poll() is None

    def describe_failure(self, what: str) -> str:
        code = None if self.process is None else self.process.poll()
        status = "" if code is None else f" (exit code {code})"
        return f"server {self.name!r} at {self.url} {what}{status}. Log {self.log_path}:\n{log_tail(self.log_path)}"

    def wait_healthy(self, timeout: float, poll: float = 0.2) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if not self.alive():
                raise ServerError(self.describe_failure("exited before becoming healthy"))
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=min(5.0, timeout)) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError) as exc:
                last = str(exc)
            time.sleep(poll)
        raise ServerError(self.describe_failure(f"not healthy after {timeout:.0f}s (last error: {last})"))

    def stop(self, grace: float = 10.0) -> None:
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=grace)
        elif proc is not None:
            try:  # leader gone; children of the group may remain
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        if proc is not None:
            self.exit_code = proc.returncode

    def __enter__(self) -> "ManagedServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def launch(
    name: str,
    model_path: str,
    log_path: Path,
    *,
    draft_path: Optional[str] = None,
    block_size: Optional[int] = None,
    extra_args: Sequence[str] = (),
    launcher: Optional[str] = None,
    health_timeout: float = 600.0,
    env: Optional[dict] = None,
) -> ManagedServer:
    """Start a server on a free 127.0.0.1 port and return it once ``/health`` answers 200.

    Call from the main thread (the death signal follows the launching thread). On any failure
    the process group is stopped before the :class:`ServerError` propagates.
    """
    port = free_port()
    command = launcher_command(launcher) + server_args(
        model_path, port, draft_path=draft_path, block_size=block_size, extra=extra_args
    )
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    handle = log_path.open("ab")
    handle.write(f"$ {shlex.join(command)}\n".encode())
    handle.flush()
    process = subprocess.Popen(
        command,
        stdout=handle,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        preexec_fn=_pdeathsig,
        env={**os.environ, **(env or {})},
    )
    server = ManagedServer(name, f"http://127.0.0.1:{port}", process, log_path, command)
    server._log_handle = handle
    try:
        server.wait_healthy(health_timeout)
    except BaseException:
        server.stop()
        raise
    return server


def attach(name: str, url: str, health_timeout: float = 30.0) -> ManagedServer:
    """Use an already running server; the runner never stops it."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"server URL for {name!r} must start with http:// or https://, got {url!r}")
    server = ManagedServer(name, url)
    server.wait_healthy(health_timeout)
    return server
