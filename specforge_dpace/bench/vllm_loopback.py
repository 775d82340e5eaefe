"""Loopback stand-in for ``vllm serve`` (CPU tests and smoke runs only), written from vLLM 0.33's source.

vLLM needs CUDA, so the tests launch this module through the runner's own lifecycle code
(``--launcher "python -m specforge_dpace.bench.vllm_loopback"``).  It is not vLLM and measures nothing about a
model; it reproduces what the runner reads, with vLLM's semantics:

* ``vllm serve MODEL --host --port [--served-model-name NAME] [--speculative-config JSON]`` (a leading ``serve``
  is accepted; other flags are logged and ignored).  The speculative config is validated as
  ``config/speculative.py`` does: ``method`` ``dflash`` or ``dspark``; ``num_speculative_tokens`` > 0, required for
  DFlash (1614-1618), DSpark's default the draft config's top-level ``block_size`` (1596-1602);
  ``draft_sample_method`` in ``greedy`` / ``probabilistic`` (84); ``rejection_sample_method`` in ``standard`` /
  ``synthetic`` / ``block`` / ``fly`` (83); ``synthetic`` needs exactly one of ``synthetic_acceptance_rates`` /
  ``synthetic_acceptance_length`` and neither is allowed otherwise (600-632, 1973-1988).
* Acceptance: ``rejection_sample_method: "synthetic"`` accepts draft position i with the conditional rate
  ``p_i / p_{i-1}`` of the unconditional rates ``p`` (``v1/spec_decode/utils.py:848-851``,
  ``v1/sample/rejection_sampler.py:820-835``); ``synthetic_acceptance_length`` L resolves to the minimum-variance
  rates ``[1] * floor(L - 1) + [frac] + [0] * ...`` (``speculative.py:588-598``), so an integral L accepts exactly
  L - 1 drafts a step.  Without a model the other methods cannot decide acceptance: they accept
  ``SPECFORGE_DPACE_VLLM_LOOPBACK_ACCEPT`` (default 2) drafts a step, a stand-in for the drafter's quality.
* A request emits ``min(max_tokens, characters of the prompt)`` tokens (or of a token-id prompt).  The prefill
  emits the first; every later step drafts ``num_speculative_tokens`` tokens and emits the accepted ones plus
  one, cut to ``max_tokens``.  Counted as the scheduler counts (``v1/core/sched/scheduler.py:2346-2370``): one
  draft per step, its draft tokens, the accepted tokens before the cut, each accepted position.
* ``POST /v1/completions`` answers OpenAI's completion object with ``usage`` and, for speculative requests,
  ``metrics.speculative_decoding`` (``entrypoints/generate/base/protocol.py:100-129``); ``GET /metrics`` the
  Prometheus text format with ``vllm:spec_decode_num_drafts_total``, ``..._num_draft_tokens_total``,
  ``..._num_accepted_tokens_total`` and ``..._num_accepted_tokens_per_pos_total{position=...}`` labelled
  ``engine`` / ``model_name`` (``v1/spec_decode/metrics.py:198-281``, ``v1/metrics/loggers.py:499``; none without a
  speculative config); ``GET /health``, ``/v1/models``, ``/version``.

Test hooks (environment, ``SPECFORGE_DPACE_VLLM_LOOPBACK_``): ``ACCEPT`` (above), ``SEED`` (the synthetic
sampler's seed, default 0), ``ENGINES`` (data-parallel engines the counters are split over, default 1),
``STEP_S`` (sleep per step, default 0.001), ``NEVER_HEALTHY=1``, ``CRASH_AFTER=N``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler
from typing import Any, Optional

from specforge_dpace.bench.loopback import serve

ENV = "SPECFORGE_DPACE_VLLM_LOOPBACK_"
VERSION = "0.33.0+loopback"
SPEC_KEYS = (
    "method",
    "model",
    "num_speculative_tokens",
    "draft_sample_method",
    "rejection_sample_method",
    "synthetic_acceptance_rates",
    "synthetic_acceptance_length",
)


def length_to_rates(length: float, n: int) -> list[float]:
    """``SpeculativeConfig._acceptance_length_to_rates`` (speculative.py:588-598)."""
    drafts = length - 1
    full = int(drafts)
    return ([1.0] * full + [drafts - full] + [0.0] * (n - full - 1))[:n]


def conditional_rates(rates: list[float]) -> list[float]:
    """``unconditional_to_conditional_rates`` (v1/spec_decode/utils.py:848-851)."""
    return [p / q if q > 0.0 else 0.0 for p, q in zip(rates, [1.0, *rates[:-1]])]


def resolve_speculative(spec: dict) -> dict:
    """The speculative config as vLLM 0.33 validates it; a SystemExit naming the bad value otherwise."""
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise SystemExit(f"loopback knows the speculative-config keys {list(SPEC_KEYS)}, got {unknown}")
    method = spec.get("method")
    if method not in ("dflash", "dspark"):
        raise SystemExit(f"loopback serves method 'dflash' or 'dspark', got {method!r}")
    with open(os.path.join(str(spec.get("model")), "config.json"), encoding="utf-8") as fh:
        draft = json.load(fh)
    n = spec.get("num_speculative_tokens")
    if n is None and method == "dspark":
        n = draft.get("block_size")
    if n is None:
        raise SystemExit("A speculative model was provided, but `num_speculative_tokens` was not provided")
    if not isinstance(n, int) or n <= 0:
        raise SystemExit(f"Expected num_speculative_tokens to be greater than zero ({n}).")
    draft_sample = spec.get("draft_sample_method", "greedy")
    if draft_sample not in ("greedy", "probabilistic"):
        raise SystemExit(f"draft_sample_method {draft_sample!r}: accepted 'greedy', 'probabilistic'")
    rejection = spec.get("rejection_sample_method", "standard")
    if rejection not in ("standard", "synthetic", "block", "fly"):
        raise SystemExit(f"rejection_sample_method {rejection!r}: accepted 'standard', 'synthetic', 'block', 'fly'")
    rates, length = spec.get("synthetic_acceptance_rates"), spec.get("synthetic_acceptance_length")
    if rejection == "synthetic":
        if (rates is None) == (length is None):
            raise SystemExit(
                "rejection_sample_method='synthetic' requires exactly one of synthetic_acceptance_rates or "
                "synthetic_acceptance_length."
            )
        if rates is not None:
            if len(rates) != n or not all(0.0 <= r <= 1.0 for r in rates):
                raise SystemExit(
                    f"synthetic_acceptance_rates must have length {n} with entries in [0, 1], got {rates}."
                )
            if any(rates[i] > rates[i - 1] for i in range(1, n)):
                raise SystemExit(f"synthetic_acceptance_rates must be non-increasing, got {rates}.")
        else:
            if not 1.0 <= float(length) <= n + 1:
                raise SystemExit(f"synthetic_acceptance_length must be in [1, {n + 1}], got {length}.")
            rates = length_to_rates(float(length), n)
    elif rates is not None or length is not None:
        raise SystemExit(
            "synthetic_acceptance_rates / synthetic_acceptance_length are only valid with "
            "rejection_sample_method='synthetic'."
        )
    return {"method": method, "n": n, "draft_sample_method": draft_sample, "rejection": rejection, "rates": rates}


class _State:
    def __init__(self, args: argparse.Namespace):
        self.model = args.model
        self.served = args.served_model_name or args.model
        self.spec = resolve_speculative(json.loads(args.speculative_config)) if args.speculative_config else None
        self.conditional = conditional_rates(self.spec["rates"]) if self.spec and self.spec["rates"] else None
        self.fixed_accept = int(os.environ.get(ENV + "ACCEPT", "2"))
        self.rng = random.Random(int(os.environ.get(ENV + "SEED", "0")))
        self.engines = max(1, int(os.environ.get(ENV + "ENGINES", "1")))
        self.step_s = float(os.environ.get(ENV + "STEP_S", "0.001"))
        self.never_healthy = os.environ.get(ENV + "NEVER_HEALTHY") == "1"
        crash = os.environ.get(ENV + "CRASH_AFTER")
        self.crash_after = int(crash) if crash else None
        self.lock = threading.Lock()
        self.generated = 0
        n = self.spec["n"] if self.spec else 0
        self.counters = [
            {"drafts": 0, "draft_tokens": 0, "accepted": 0, "per_pos": [0] * n} for _ in range(self.engines)
        ]

    def accept(self) -> int:
        """Drafts one step accepts (the rejection loop stops at the first rejection)."""
        n = self.spec["n"]
        if self.conditional is None:
            return min(self.fixed_accept, n)
        accepted = 0
        for rate in self.conditional:
            if not self.rng.random() < rate:
                break
            accepted += 1
        return accepted

    def complete(self, body: dict) -> tuple[int, dict]:
        if body.get("model") not in (None, self.served):
            return 404, {"error": {"message": f"The model `{body.get('model')}` does not exist.", "code": 404}}
        prompt = body.get("prompt", "")
        prompt_len = len(prompt) if isinstance(prompt, (str, list)) else 0
        max_tokens = int(body.get("max_tokens", 16))
        total = max(1, min(max_tokens, prompt_len))
        steps = []  # (accepted drafts, emitted tokens) per step after the prefill
        with self.lock:
            if self.crash_after is not None and self.generated >= self.crash_after:
                sys.stderr.write("vllm loopback: simulated crash\n")
                sys.stderr.flush()
                os._exit(3)
            left = total - 1
            while left > 0:
                a = self.accept() if self.spec else 0
                steps.append((a, min(a + 1, left)))
                left -= steps[-1][1]
            engine = self.counters[self.generated % self.engines]
            self.generated += 1
            if self.spec:
                for a, _ in steps:
                    engine["drafts"] += 1
                    engine["draft_tokens"] += self.spec["n"]
                    engine["accepted"] += a
                    for i in range(a):
                        engine["per_pos"][i] += 1
        time.sleep(self.step_s * (len(steps) + 1))
        out: dict[str, Any] = {
            "id": f"cmpl-loopback-{self.generated}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.served,
            "choices": [
                {"index": 0, "text": " tok" * total, "logprobs": None, "finish_reason": "length", "stop_reason": None}
            ],
            "usage": {"prompt_tokens": prompt_len, "completion_tokens": total, "total_tokens": prompt_len + total},
        }
        if self.spec and steps:
            histogram = [0] * (self.spec["n"] + 1)
            for a, _ in steps:
                histogram[a] += 1
            accepted = sum(a for a, _ in steps)
            out["metrics"] = {
                "speculative_decoding": {
                    "mean_acceptance_length": 1 + accepted / len(steps),
                    "draft_acceptance_rate": accepted / (len(steps) * self.spec["n"]),
                    "acceptance_histogram": histogram,
                    "num_spec_steps": len(steps),
                    "num_accepted_draft_tokens": accepted,
                    "num_draft_tokens": len(steps) * self.spec["n"],
                }
            }
        return 200, out

    def metrics_text(self) -> str:
        """The Prometheus text exposition of the speculative counters (prometheus_client's format)."""
        if not self.spec:
            return "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
        lines = []
        with self.lock:
            counters = [dict(c, per_pos=list(c["per_pos"])) for c in self.counters]
        for key, name, doc in (
            ("drafts", "vllm:spec_decode_num_drafts", "Number of spec decoding drafts."),
            ("draft_tokens", "vllm:spec_decode_num_draft_tokens", "Number of draft tokens."),
            ("accepted", "vllm:spec_decode_num_accepted_tokens", "Number of accepted tokens."),
        ):
            lines += [f"# HELP {name}_total {doc}", f"# TYPE {name}_total counter"]
            for i, c in enumerate(counters):
                lines.append(f'{name}_total{{engine="{i}",model_name="{self.served}"}} {float(c[key])}')
                lines.append(f'{name}_created{{engine="{i}",model_name="{self.served}"}} 1.7e+09')
        name = "vllm:spec_decode_num_accepted_tokens_per_pos"
        lines += [f"# HELP {name}_total Accepted tokens per draft position.", f"# TYPE {name}_total counter"]
        for i, c in enumerate(counters):
            for pos, value in enumerate(c["per_pos"]):
                labels = f'engine="{i}",model_name="{self.served}",position="{pos}"'
                lines.append(f"{name}_total{{{labels}}} {float(value)}")
        return "\n".join(lines) + "\n"


def _handler(state: _State):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt: str, *args: Any) -> None:
            sys.stderr.write("vllm loopback: " + (fmt % args) + "\n")

        def _send(self, code: int, payload: Any, text: Optional[str] = None) -> None:
            data = text.encode() if text is not None else json.dumps(payload).encode()
            self.send_response(code)
            ctype = "text/plain; version=0.0.4; charset=utf-8" if text is not None else "application/json"
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/health":
                self._send(503 if state.never_healthy else 200, {})
            elif self.path == "/metrics":
                self._send(200, None, text=state.metrics_text())
            elif self.path == "/v1/models":
                card = {"id": state.served, "object": "model", "root": state.model, "owned_by": "vllm"}
                self._send(200, {"object": "list", "data": [card]})
            elif self.path == "/version":
                self._send(200, {"version": VERSION})
            else:
                self._send(404, {"error": f"no route {self.path}"})

        def do_POST(self) -> None:
            if self.path != "/v1/completions":
                self._send(404, {"error": f"no route {self.path}"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            code, out = state.complete(body)
            self._send(code, out)

    return Handler


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Loopback stand-in for `vllm serve` (tests, smoke runs).")
    p.add_argument("model", help="target path (only echoed back)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--speculative-config", default=None, help="JSON, as vllm serve takes it")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        argv = argv[1:]
    args, unknown = build_parser().parse_known_args(argv)
    if args.host not in ("127.0.0.1", "localhost"):
        raise SystemExit(f"vllm loopback binds 127.0.0.1 only, got --host {args.host}")
    state = _State(args)
    banner = (
        f"vllm loopback: pid={os.getpid()} serving {args.model} as {state.served} on 127.0.0.1:{args.port} "
        f"(speculative={state.spec}, ignored args={unknown})"
    )
    return serve(args.port, _handler(state), banner)


if __name__ == "__main__":
    sys.exit(main())
