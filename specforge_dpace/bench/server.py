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
from typing import Callable, Mapping, Optional, Sequence

DEFAULT_LAUNCHER = (sys.executable, "-m", "sglang.launch_server")
LAUNCHER_ENV = "SPECFORGE_DPACE_BENCH_LAUNCHER"


def sglang_version() -> Optional[str]:
    """The version of the SGLang installed in this Python (what ``python -m sglang.launch_server`` runs),
    None when none is installed."""
    from specforge_dpace._versions import package_version

    return package_version("sglang")


def sglang_rules_for(version: Optional[str]):
    """``(rules, note)``: the serving rule set of SGLang ``version`` (``serving.sglang_rules``); with no
    version (no SGLang installed here, or a stand-in launcher), SGLang 0.5.23's rules and a note saying so."""
    from specforge_dpace import serving

    if version is None:
        rules = serving.rules_for(serving.DEFAULT_SERVER)
        return rules, f"SGLang's version is unknown here (no sglang package; give --sglang-version): {rules.name} rules"
    return serving.sglang_rules(version)


def check_methods_served(drafters: Mapping[str, str], version: Optional[str]) -> dict[str, str]:
    """``{name: method}`` of the drafters, or a ``ValueError`` (before anything is launched) naming every
    drafter whose method SGLang ``version`` does not serve: 0.5.14 serves DFlash only, 0.5.23 DFlash, Domino
    and DSpark (``specforge_dpace.serving``).  The method comes from each draft config's ``architectures``
    (and ``projector_type``); a draft whose config cannot be read is left to the validator, which says why.
    With no version known, Domino and DSpark are refused: which SGLang serves them must be stated."""
    from specforge_dpace import serving

    rules, _ = sglang_rules_for(version)
    methods, problems = {}, []
    for name, path in drafters.items():
        try:
            config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
            method = serving.draft_method(config)
        except (OSError, ValueError):
            continue
        methods[name] = method
        if version is None and method != serving.DFLASH:
            problems.append(
                f"drafter {name!r} ({path}): a {serving.METHOD_NAMES[method]} drafter needs a known SGLang version "
                f"(no sglang package is installed in this Python): give --sglang-version (SGLang versions and the "
                f"methods they serve: {serving.served_text()})"
            )
            continue
        problem = rules.serving_problem(method)
        if problem:
            problems.append(f"drafter {name!r} ({path}): {problem}")
    if problems:
        raise ValueError("SGLang cannot serve these drafters, so nothing was launched:\n  - " + "\n  - ".join(problems))
    return methods


def flag_value(args: Sequence[str], flag: str) -> Optional[str]:
    """The value of ``--flag VALUE`` or ``--flag=VALUE`` in an argument list (the last one), or None."""
    value = None
    for i, item in enumerate(args):
        if item == flag and i + 1 < len(args):
            value = args[i + 1]
        elif item.startswith(flag + "="):
            value = item.split("=", 1)[1]
    return value


def serving_device(extra: Sequence[str], launcher: Optional[str]) -> tuple[str, str]:
    """``(device, how)``: ``--device`` from the server args, else what SGLang's launcher would pick on this
    machine (CUDA when torch sees a CUDA, not ROCm, GPU; else the CPU); a custom launcher (a stand-in)
    without ``--device`` is taken to emulate a CUDA server."""
    given = flag_value(extra, "--device")
    if given:
        return given.split(":")[0].lower(), "--device"
    if launcher or os.environ.get(LAUNCHER_ENV):
        return "cuda", "assumed for a custom launcher without --device"
    try:
        import torch
    except ImportError:
        return "unknown", "torch is not importable here"
    if torch.cuda.is_available():
        return ("rocm" if getattr(torch.version, "hip", None) else "cuda"), "detected"
    return "cpu", "detected (no CUDA device)"


def launch_refusals(
    rules, methods: Mapping[str, str], extra: Sequence[str], temperatures: Sequence[float], launcher: Optional[str]
) -> list[str]:
    """Why ``rules``' server would crash or measure the wrong thing with these flags (checked before launch):
    a ``--dtype`` a method refuses (float32 DFLASH on 0.5.23: ``model_runner.py`` casts input embeddings to
    bf16; Domino needs bf16), and temperature > 0 for DFLASH-verified methods on a device whose build lacks
    the target-only sampling kernel (``verify_sampling.py``: CUDA only), where SGLang silently verifies
    greedily after the first token (``dflash_worker_v2.py:2300-2320``)."""
    problems = []
    dtype = flag_value(extra, "--dtype")
    hot = sorted({t for t in temperatures if t > 0})
    device, how = serving_device(extra, launcher)
    for method in sorted(set(methods.values())):
        mrules = rules.method(method)
        names = sorted(n for n, m in methods.items() if m == method)
        if dtype is not None and dtype.lower() in mrules.dtypes:
            problems.append(f"--dtype {dtype} with {mrules.name} drafters {names}: {mrules.dtypes[dtype.lower()]}")
        if hot and mrules.sampling_verify and device not in rules.sampling_verify_devices:
            problems.append(
                f"temperature {hot} with {mrules.name} drafters {names} on device {device!r} ({how}): {rules.name}'s "
                "DFLASH verifies non-greedy requests with the target-only sampling kernel, which this device's build "
                "lacks (kernels/ops/speculative/verify_sampling.py), and then silently verifies greedily after the "
                f"first token; accepted: temperature 0 here, or a device in {list(rules.sampling_verify_devices)}"
            )
    return problems


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


def launcher_command(
    launcher: Optional[str], *, default: Sequence[str] = DEFAULT_LAUNCHER, env: str = LAUNCHER_ENV
) -> list[str]:
    """The command that starts a server: ``--launcher``, else ``$env`` ($SPECFORGE_DPACE_BENCH_LAUNCHER for
    SGLang), else ``default`` (SGLang's ``python -m sglang.launch_server``; vLLM's ``vllm serve``)."""
    text = launcher or os.environ.get(env)
    if not text:
        return list(default)
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
    method_rules=None,
) -> list[str]:
    """SGLang flags for a drafter's server (draft given; ``method_rules`` is its method's
    ``serving.MethodRules``, default SGLang 0.5.23's DFlash) or a no-speculation baseline server.

    The block size goes in the method's flag (DFLASH: ``--speculative-num-draft-tokens K``; DSPARK:
    ``--speculative-dspark-block-size gamma``); a block flag in ``extra`` stands instead when it agrees."""
    from specforge_dpace import serving

    args = ["--model-path", str(model_path), "--host", host, "--port", str(port)]
    extra = list(extra)
    for flag in ("--model-path", "--host", "--port", "--speculative-algorithm", "--speculative-draft-model-path"):
        if flag in extra:
            raise ValueError(f"--server-args must not set {flag}: the runner sets it (got {extra})")
    if draft_path is not None:
        rules = method_rules or serving.rules_for(serving.DEFAULT_SERVER).method(serving.DFLASH)
        for flag, expected in rules.block_flags.items():
            given = flag_value(extra, flag)
            if given is None:
                continue
            if block_size is not None and int(given) != expected(int(block_size)):
                raise ValueError(
                    f"--server-args sets {flag} {given} but the draft config's block_size {block_size} means "
                    f"{flag} {expected(int(block_size))} for {rules.name} ({rules.algorithm}); SGLang rejects "
                    "disagreeing block sizes"
                )
            block_size = None  # the user's flag stands
        args += rules.launch(str(draft_path), block_size)
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
    method_rules=None,
    build_args: Optional[Callable[[int], list]] = None,
    launcher_default: Sequence[str] = DEFAULT_LAUNCHER,
    launcher_env: str = LAUNCHER_ENV,
) -> ManagedServer:
    """Start a server on a free 127.0.0.1 port and return it once ``/health`` answers 200.

    ``build_args(port)`` gives another server's flags (vLLM's); by default SGLang's (:func:`server_args`).
    Call from the main thread (the death signal follows the launching thread). On any failure
    the process group is stopped before the :class:`ServerError` propagates.
    """
    port = free_port()
    if build_args is not None:
        args = list(build_args(port))
    else:
        args = server_args(
            model_path, port, draft_path=draft_path, block_size=block_size, extra=extra_args, method_rules=method_rules
        )
    command = launcher_command(launcher, default=launcher_default, env=launcher_env) + args
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
