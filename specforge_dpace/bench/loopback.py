"""Loopback stand-in for ``python -m sglang.launch_server`` (CPU tests and smoke runs only).

SGLang cannot serve DFlash on a CPU (DESIGN.md section 5), so the runner's own lifecycle code
launches this module instead when asked (``--launcher "python -m specforge_dpace.bench.loopback"``).
It accepts the flags SGLang gets, speaks ``/health``, ``/generate``, ``/server_info``
(and the older ``/get_server_info``), ``/flush_cache`` and ``/get_model_info`` on 127.0.0.1, and
produces acceptance with a known pattern, like SGLang's ``SGLANG_SIMULATE_ACC_LEN``:

* ``SGLANG_SIMULATE_ACC_LEN``: tokens a verify step accepts (accepted drafts + 1 bonus),
  either one integer or a comma list cycled step by step from the start of each request
  (default 3). A step never accepts more than the block size.
* A request emits ``min(max_new_tokens, characters of the prompt)`` tokens (or of
  ``input_ids``), so per-request tau differs between prompts of different lengths.
* Counted the way SGLang 0.5.14 counts (docs/bench.md): the first token comes from the prefill
  and is in ``completion_tokens`` but not in ``spec_verify_ct``; the remaining tokens come from
  verify steps, the last one cut to ``max_new_tokens``; ``spec_accept_length`` =
  ``completion_tokens / spec_verify_ct``; the histogram, ``spec_num_correct_drafts`` and the
  ``/server_info`` average count each step's accepted tokens before the cut, prefill excluded;
  a request with no verify step carries no ``spec_*`` fields.
* The server average is folded in every ``SPECFORGE_DPACE_LOOPBACK_LOG_INTERVAL`` decode steps
  since the last ``/flush_cache`` (default 1: no lag; SGLang's ``--decode-log-interval`` is 40,
  and its average lags by up to that many steps).
* Without ``--speculative-algorithm`` every step emits one token (the no-speculation baseline).
* ``--speculative-algorithm DFLASH`` verifies blocks of ``--speculative-num-draft-tokens`` (alias
  ``--speculative-dflash-block-size``, else the draft config's ``block_size``); ``DSPARK`` (the 0.5.23
  dialect) drafts gamma = ``--speculative-dspark-block-size`` (else the draft config's ``block_size``,
  else 7) tokens and verifies gamma + 1, refusing a disagreeing ``--speculative-num-draft-tokens``
  (``arg_groups/speculative_hook.py``); ``spec_num_proposed_drafts`` = ``spec_verify_ct * gamma``.
* ``/flush_cache`` answers HTTP 400 ("pending requests") while the server is busy; with ``?timeout=S``
  (0.5.14 and later) it waits for idle instead, as SGLang's ``SchedulerFlushWrapper`` does.

Test hooks (environment): ``SPECFORGE_DPACE_LOOPBACK_VERSION`` (SGLang field dialect,
default 0.5.14), ``..._STEP_S`` (sleep per verify step, default 0.001), ``..._STARTUP_S``
(delay before ``/health`` is OK), ``..._NEVER_HEALTHY=1``, ``..._CRASH_AFTER=N`` (the process
exits during the N+1-th ``/generate``), ``..._MALFORMED=json|fields`` (bad ``/generate`` bodies),
``..._BUSY_FLUSHES=N`` (the first N ``/flush_cache`` calls find a request still pending: without a
timeout, or on the 0.5.11 dialect, which ignores it, they answer 400; with one they wait).
It is not SGLang and measures nothing about a real model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional

from specforge_dpace.bench.fields import profile_for

FLUSH_BUSY = "Cache not flushed because there are pending requests."  # managers/scheduler.py flush_cache
ENV = "SPECFORGE_DPACE_LOOPBACK_"


def parse_pattern(text: str) -> list[int]:
    """Step lengths of ``SGLANG_SIMULATE_ACC_LEN`` (``"4"`` or ``"3,5,2"``)."""
    try:
        steps = [int(float(p)) for p in text.split(",") if p.strip()]
    except ValueError:
        raise ValueError(f"SGLANG_SIMULATE_ACC_LEN={text!r}: expected an integer or a comma list of integers") from None
    if not steps or any(s < 1 for s in steps):
        raise ValueError(f"SGLANG_SIMULATE_ACC_LEN={text!r}: every step length must be >= 1")
    return steps


def simulate(num_tokens: int, pattern: list[int], block_size: int) -> list[int]:
    """Tokens emitted by each verify step until ``num_tokens`` are out."""
    return [emitted for emitted, _ in simulate_steps(num_tokens, pattern, block_size)]


def simulate_steps(num_tokens: int, pattern: list[int], block_size: int) -> list[tuple[int, int]]:
    """(emitted, accepted) per verify step until ``num_tokens`` are out: ``accepted`` is what the
    step accepted (drafts + bonus), ``emitted`` the part of it kept under the token limit."""
    steps, left, i = [], num_tokens, 0
    while left > 0:
        accepted = min(pattern[i % len(pattern)], block_size)
        steps.append((min(accepted, left), accepted))
        left -= steps[-1][0]
        i += 1
    return steps


class _State:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.speculative = bool(args.speculative_algorithm)
        self.block_size = args.block_size if self.speculative else 1  # the verify window
        self.pattern = parse_pattern(os.environ.get("SGLANG_SIMULATE_ACC_LEN", "3")) if self.speculative else [1]
        self.version = os.environ.get(ENV + "VERSION", "0.5.14")
        self.fields = profile_for(self.version)
        self.step_s = float(os.environ.get(ENV + "STEP_S", "0.001"))
        self.ready_at = time.monotonic() + float(os.environ.get(ENV + "STARTUP_S", "0"))
        self.never_healthy = os.environ.get(ENV + "NEVER_HEALTHY") == "1"
        crash = os.environ.get(ENV + "CRASH_AFTER")
        self.crash_after = int(crash) if crash else None
        self.malformed = os.environ.get(ENV + "MALFORMED", "")
        self.busy_flushes = int(os.environ.get(ENV + "BUSY_FLUSHES", "0"))
        self.log_interval = int(os.environ.get(ENV + "LOG_INTERVAL", "1"))
        if self.log_interval < 1:
            raise SystemExit(f"{ENV}LOG_INTERVAL={self.log_interval}: must be >= 1")
        self.lock = threading.Lock()
        self.generated = 0
        self.next_id = 0
        self.flush()

    def healthy(self) -> bool:
        return not self.never_healthy and time.monotonic() >= self.ready_at

    def generate(self, body: dict) -> dict:
        params = body.get("sampling_params") or {}
        max_new = int(params.get("max_new_tokens", 128))
        if body.get("input_ids") is not None:
            prompt_len = len(body["input_ids"])
        else:
            prompt_len = len(str(body.get("text", "")))
        num_tokens = max(1, min(max_new, prompt_len))
        # the prefill emits the first token; verify steps emit the rest (the baseline: one a step)
        steps = simulate_steps(num_tokens - 1, self.pattern, self.block_size)
        started = time.monotonic()
        time.sleep(self.step_s * (len(steps) + 1))
        with self.lock:
            if self.crash_after is not None and self.generated >= self.crash_after:
                sys.stderr.write("loopback: simulated crash\n")
                sys.stderr.flush()
                os._exit(3)
            self.generated += 1
            for _, accepted in steps:  # SGLang's metrics reporter: one decode iteration per step here
                self.pending_accepted += accepted
                self.pending_steps += 1
                self.iterations += 1
                if self.iterations % self.log_interval == 0:
                    self.total_accepted += self.pending_accepted
                    self.total_steps += self.pending_steps
                    self.pending_accepted = self.pending_steps = 0
            self.next_id += 1
            rid = self.next_id
        meta: dict[str, Any] = {
            "id": f"loopback-{rid}",
            "prompt_tokens": prompt_len,
            "finish_reason": {"type": "length", "length": num_tokens},
            "e2e_latency": time.monotonic() - started,
        }
        values: dict[str, Any] = {"completion_tokens": num_tokens}
        if self.speculative and steps:  # SGLang sets spec_* only when spec_verify_ct > 0
            histogram = [0] * self.block_size
            for _, accepted in steps:
                histogram[accepted - 1] += 1
            values.update(
                verify_ct=len(steps),
                accept_length=num_tokens / len(steps),
                num_correct_drafts=sum(accepted - 1 for _, accepted in steps),
                num_proposed_drafts=len(steps) * (self.block_size - 1),  # tokenizer_manager: verify_ct * (window - 1)
                histogram=histogram,
            )
            values["accept_rate"] = values["num_correct_drafts"] / values["num_proposed_drafts"]  # 0.5.14 and 0.5.23
        for canonical, value in values.items():
            key = self.fields.get(canonical)
            if key:
                meta[key] = value
        return {"text": " ".join("tok" for _ in range(num_tokens)), "output_ids": [7] * num_tokens, "meta_info": meta}

    def server_info(self) -> dict:
        with self.lock:
            avg = self.total_accepted / self.total_steps if self.total_steps else None
        state: dict[str, Any] = {}
        if self.speculative and avg is not None:
            state["avg_spec_accept_length"] = avg
        return {
            "version": f"{self.version}+loopback",
            "model_path": self.args.model_path,
            "speculative_algorithm": self.args.speculative_algorithm,
            "speculative_draft_model_path": self.args.speculative_draft_model_path,
            "speculative_num_draft_tokens": self.block_size if self.speculative else None,
            "internal_states": [state],
        }

    def try_flush(self, timeout_s: float) -> bool:
        """SGLang's flush: refused while a request is pending, unless a timeout lets it wait for idle (a
        0.5.11 dialect ignores the timeout)."""
        with self.lock:
            busy = self.busy_flushes > 0
            self.busy_flushes = max(0, self.busy_flushes - 1)
        waits = timeout_s > 0 and profile_for(self.version) is not profile_for("0.5.11")
        if busy and not waits:
            return False
        if busy:
            time.sleep(min(timeout_s, 0.05))  # the pending request finishes; the deferred flush runs
        self.flush()
        return True

    def flush(self) -> None:
        with self.lock:  # SGLang's flush_cache -> metrics_reporter.reset_metrics()
            self.iterations = 0
            self.pending_accepted = self.pending_steps = 0
            self.total_accepted = self.total_steps = 0


def _handler(state: _State):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt: str, *args: Any) -> None:  # keep logs short but present
            sys.stderr.write("loopback: " + (fmt % args) + "\n")

        def _send(self, code: int, payload: Any, raw: Optional[bytes] = None) -> None:
            data = raw if raw is not None else json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> dict:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b"{}"
            return json.loads(raw or b"{}")

        def do_GET(self) -> None:
            if self.path == "/health":
                if state.healthy():
                    self._send(200, {})
                else:
                    self._send(503, {"error": "not ready"})
            elif self.path in ("/server_info", "/get_server_info"):
                self._send(200, state.server_info())
            elif self.path == "/get_model_info":
                self._send(200, {"model_path": state.args.model_path, "is_generation": True})
            else:
                self._send(404, {"error": f"no route {self.path}"})

        def do_POST(self) -> None:
            path, _, query = self.path.partition("?")
            if path == "/flush_cache":
                body = self._body()
                del body
                params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
                try:
                    timeout = float(params.get("timeout", "0"))
                except ValueError:
                    self._send(422, {"error": f"timeout={params.get('timeout')!r} is not a number"})
                    return
                if state.try_flush(timeout):
                    self._send(200, None, raw=b"Cache flushed.")
                else:
                    self._send(400, None, raw=FLUSH_BUSY.encode())
            elif self.path == "/generate":
                if not state.healthy():
                    self._send(503, {"error": "not ready"})
                    return
                body = self._body()
                result = state.generate(body)
                if state.malformed == "json":
                    self._send(200, None, raw=b"{not json")
                elif state.malformed == "fields":
                    keep = ("id", "completion_tokens")  # as if speculation were off or renamed
                    meta = {k: v for k, v in result["meta_info"].items() if k in keep}
                    self._send(200, {"text": result["text"], "meta_info": meta})
                else:
                    self._send(200, result)
            else:
                self._send(404, {"error": f"no route {self.path}"})

    return Handler


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Loopback stand-in for sglang.launch_server (tests, smoke runs).")
    p.add_argument("--model-path", "--model", required=True, help="target path (only echoed back)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (loopback only)")
    p.add_argument("--port", type=int, default=30000, help="port")
    p.add_argument("--speculative-algorithm", default=None, help="DFLASH or DSPARK enables simulated speculation")
    p.add_argument("--speculative-draft-model-path", default=None, help="draft directory (block size read here)")
    p.add_argument("--speculative-num-draft-tokens", type=int, default=None, help="block size")
    p.add_argument("--speculative-dflash-block-size", type=int, default=None, help="alias of the block size")
    p.add_argument("--speculative-dspark-block-size", type=int, default=None, help="DSPARK: gamma (window gamma + 1)")
    return p


def _draft_block_size(args: argparse.Namespace):
    if not args.speculative_draft_model_path:
        return None
    with open(os.path.join(args.speculative_draft_model_path, "config.json"), encoding="utf-8") as fh:
        config = json.load(fh)
    nested = config.get("dflash_config") or {}
    return nested["block_size"] if "block_size" in nested else config.get("block_size")


def _resolve_dspark_window(args: argparse.Namespace) -> int:
    """gamma + 1, as SGLang 0.5.23's speculative_hook resolves it (explicit gamma, else the config's, else 7)."""
    gamma = args.speculative_dspark_block_size
    if gamma is not None and gamma <= 0:
        raise SystemExit(f"DSpark requires --speculative-dspark-block-size to be positive, got {gamma}")
    if gamma is None:
        gamma = _draft_block_size(args) or 7
    window = int(gamma) + 1
    given = args.speculative_num_draft_tokens
    if given is not None and given != window:
        raise SystemExit(f"DSpark speculative_num_draft_tokens must equal gamma + 1 (= {window}), but got {given}")
    return window


def _resolve_block_size(args: argparse.Namespace) -> int:
    if args.speculative_algorithm.upper() == "DSPARK":
        return _resolve_dspark_window(args)
    a, b = args.speculative_num_draft_tokens, args.speculative_dflash_block_size
    if a is not None and b is not None and a != b:
        raise SystemExit(f"--speculative-num-draft-tokens={a} and --speculative-dflash-block-size={b} disagree")
    size = a if a is not None else b
    if size is None:
        size = _draft_block_size(args)
    return int(size or 16)


def main(argv: Optional[list[str]] = None) -> int:
    args, unknown = build_parser().parse_known_args(argv)
    if args.host not in ("127.0.0.1", "localhost"):
        raise SystemExit(f"loopback stand-in binds 127.0.0.1 only, got --host {args.host}")
    if args.speculative_algorithm and args.speculative_algorithm.upper() not in ("DFLASH", "DSPARK"):
        raise SystemExit(
            f"loopback supports --speculative-algorithm DFLASH or DSPARK, got {args.speculative_algorithm}"
        )
    version = os.environ.get(ENV + "VERSION", "0.5.14")
    if (args.speculative_algorithm or "").upper() == "DSPARK" and profile_for(version) is not profile_for("0.5.23"):
        raise SystemExit(f"SGLang {version} has no DSPARK speculative algorithm (0.5.23 has)")
    args.block_size = _resolve_block_size(args) if args.speculative_algorithm else 1
    state = _State(args)
    banner = (
        f"loopback: pid={os.getpid()} serving {args.model_path} on 127.0.0.1:{args.port} "
        f"(speculative={state.speculative}, block={state.block_size}, pattern={state.pattern}, "
        f"fields={state.version}, ignored args={unknown})"
    )
    return serve(args.port, _handler(state), banner)


def serve(port: int, handler, banner: str) -> int:
    """Log ``banner`` (the tests read the pid from it) and answer on 127.0.0.1:``port`` until stopped."""
    sys.stderr.write(banner + "\n")
    sys.stderr.flush()
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    try:
        server.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
