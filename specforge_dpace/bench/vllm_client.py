"""HTTP client for vLLM's OpenAI-compatible completions endpoint and its Prometheus ``/metrics``.

Acceptance comes from vLLM's speculative-decoding counters (``v1/spec_decode/metrics.py:198-281``), read as
deltas around each measured set: tau = 1 + accepted / drafts, per position accepted_per_pos / drafts.  The
counters are server-wide (summed over data-parallel engines): nothing else may use the server while it is
measured.  Sampling parameters are always sent explicitly.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from specforge_dpace.bench.client import RequestError, SGLangClient, check_sampling

COUNTERS = {
    "vllm:spec_decode_num_drafts_total": "drafts",
    "vllm:spec_decode_num_draft_tokens_total": "draft_tokens",
    "vllm:spec_decode_num_accepted_tokens_total": "accepted",
}
PER_POS = "vllm:spec_decode_num_accepted_tokens_per_pos_total"
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\S+)?$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass
class SpecCounters:
    """vLLM's speculative-decoding counters at one moment (or a difference of two)."""

    drafts: int = 0
    draft_tokens: int = 0
    accepted: int = 0
    accepted_per_pos: list[int] = field(default_factory=list)

    def __sub__(self, other: "SpecCounters") -> "SpecCounters":
        n = max(len(self.accepted_per_pos), len(other.accepted_per_pos))
        mine = self.accepted_per_pos + [0] * (n - len(self.accepted_per_pos))
        theirs = other.accepted_per_pos + [0] * (n - len(other.accepted_per_pos))
        return SpecCounters(
            self.drafts - other.drafts,
            self.draft_tokens - other.draft_tokens,
            self.accepted - other.accepted,
            [a - b for a, b in zip(mine, theirs)],
        )


def parse_counters(text: str) -> SpecCounters:
    """The speculative counters of a Prometheus text exposition, summed over engines (all zero when the server
    exports none: no speculative config).  A malformed sample of those names is a ``ValueError``."""
    out = SpecCounters()
    per_pos: dict[int, float] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if not match:
            continue
        name, labels, value = match.groups()
        if name not in COUNTERS and name != PER_POS:
            continue
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"/metrics sample {line!r}: value {value!r} is not a number") from None
        if name == PER_POS:
            found = dict(_LABEL.findall(labels or ""))
            if "position" not in found or not found["position"].isdigit():
                raise ValueError(f"/metrics sample {line!r} has no integer position label")
            pos = int(found["position"])
            per_pos[pos] = per_pos.get(pos, 0.0) + number
        else:
            attr = COUNTERS[name]
            setattr(out, attr, getattr(out, attr) + int(round(number)))
    if per_pos:
        out.accepted_per_pos = [int(round(per_pos.get(i, 0.0))) for i in range(max(per_pos) + 1)]
    return out


@dataclass(frozen=True)
class CompletionSampling:
    """The sampling fields of a completions request, always explicit (``top_k`` -1 is sent as 0, vLLM's
    "disabled", ``sampling_params.py:681-684``)."""

    temperature: float
    max_tokens: int
    top_p: float = 1.0
    top_k: int = -1
    seed: Optional[int] = None

    def params(self) -> dict[str, Any]:
        check_sampling(self.temperature, self.max_tokens, self.top_k)
        out: dict[str, Any] = {
            "temperature": float(self.temperature),
            "top_p": float(self.top_p),
            "top_k": 0 if self.top_k == -1 else int(self.top_k),
            "max_tokens": int(self.max_tokens),
            "n": 1,
        }
        if self.seed is not None:
            out["seed"] = int(self.seed)
        return out


class VLLMClient(SGLangClient):
    """``/v1/completions``, ``/v1/models`` and ``/metrics`` of one vLLM server (the HTTP plumbing is shared)."""

    def model_id(self) -> str:
        out = self._json("GET", "/v1/models", timeout=30)
        data = out.get("data") if isinstance(out, dict) else None
        if not data or not isinstance(data[0], dict) or not data[0].get("id"):
            raise RequestError(f"GET /v1/models: no model listed: {str(out)[:200]}")
        return str(data[0]["id"])

    def complete(self, model: str, prompt: str, sampling: CompletionSampling) -> dict:
        out = self._json("POST", "/v1/completions", {"model": model, "prompt": prompt, **sampling.params()})
        usage = out.get("usage") if isinstance(out, dict) else None
        if not isinstance(usage, dict) or not isinstance(usage.get("completion_tokens"), int):
            raise RequestError(f"POST /v1/completions: response has no usage.completion_tokens: {str(out)[:200]}")
        return out

    def counters(self) -> SpecCounters:
        raw = self._request("GET", "/metrics", timeout=30)
        try:
            return parse_counters(raw.decode("utf-8", errors="replace"))
        except ValueError as exc:
            raise RequestError(f"GET /metrics: {exc}") from exc

    def settled_counters(self, timeout_s: float = 10.0, poll_s: float = 0.2) -> SpecCounters:
        """The counters once two reads ``poll_s`` apart agree: vLLM's output loop records a step's statistics
        beside its outputs, so the last answers' counts may land a moment after them."""
        deadline = time.monotonic() + timeout_s
        last = self.counters()
        while time.monotonic() < deadline:
            time.sleep(poll_s)
            now = self.counters()
            if now == last:
                return now
            last = now
        return last


def request_spec_metrics(out: dict) -> Optional[dict]:
    """vLLM's per-request ``metrics.speculative_decoding`` (``entrypoints/generate/base/protocol.py:100-129``),
    or None when the server sends none."""
    metrics = out.get("metrics") if isinstance(out, dict) else None
    spec = metrics.get("speculative_decoding") if isinstance(metrics, dict) else None
    return spec if isinstance(spec, dict) else None
