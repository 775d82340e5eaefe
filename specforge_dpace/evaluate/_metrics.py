"""Acceptance metrics of speculative decoding: per prompt, overall, and as a printed table.

Two tau conventions, both reported (keys, and labelled rows of the printed table):
- ``tau`` (per verify step, prefill token excluded): tokens emitted per verify step, bonus token
  included, token-weighted over prompts (sum of emitted / sum of verify steps).  The token the
  prefill produces is not a verify step and is not counted; tokens cut by ``max_new_tokens`` or a
  stop token are not counted either.  ``tau_mean_per_prompt``: the same, averaged over prompts.
- ``tau_sglang`` (SGLang's convention, prefill token included): ``completion_tokens / verify
  steps``, what SGLang's per-request ``spec_accept_length`` is (``completion_tokens`` there counts
  the prefill token, ``spec_verify_ct`` does not; see docs/bench.md), token-weighted over the
  prompts with at least one verify step; ``tau_sglang_mean_per_prompt``: averaged over them,
  like the bench's ``tau_mean_per_request``.  Per prompt: ``tau`` and ``tau_sglang``.
- ``accept_hist[a]``: verify steps that accepted exactly ``a`` drafted tokens, ``a`` in 0..K-1
  (before truncation: it describes the drafter, not the length limit).
- ``accept_pos[j-1]``: fraction of verify steps whose drafted token at block slot ``j`` was
  accepted (so ``sum(accept_pos)`` is the mean accepted length); ``accept_pos_conditional``
  divides instead by the steps that reached slot ``j``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence


def accept_histogram(accepted: Sequence[int], block_size: int) -> list[int]:
    hist = [0] * block_size
    for a in accepted:
        if not 0 <= a < block_size:
            raise ValueError(f"accepted length {a} outside 0..{block_size - 1}")
        hist[a] += 1
    return hist


def position_rates(hist: Sequence[int]) -> tuple[list[Optional[float]], list[Optional[float]]]:
    """(unconditional, conditional) acceptance rate per drafted slot 1..K-1 from a histogram."""
    steps = sum(hist)
    k = len(hist)
    at_least = [sum(hist[j:]) for j in range(k)]  # steps with accepted >= j
    uncond = [at_least[j] / steps if steps else None for j in range(1, k)]
    cond = [at_least[j] / at_least[j - 1] if at_least[j - 1] else None for j in range(1, k)]
    return uncond, cond


def _ratio(num: float, den: float) -> Optional[float]:
    return num / den if den else None


def prompt_record(index: int, prompt_len: int, trace, block_size: int) -> dict:
    """Per-prompt metrics from a ``DecodeTrace``."""
    hist = accept_histogram(trace.accepted, block_size)
    uncond, _ = position_rates(hist)
    total_s = trace.prefill_s + trace.draft_s + trace.verify_s
    steps = len(trace.accepted)
    return {
        "prompt_index": index,
        "prompt_tokens": prompt_len,
        "completion_tokens": len(trace.output_ids),
        "verify_steps": steps,
        "tau": _ratio(sum(trace.emitted), steps),
        "tau_sglang": _ratio(len(trace.output_ids), steps),
        "mean_accepted": _ratio(sum(trace.accepted), steps),
        "accept_hist": hist,
        "accept_pos": uncond,
        "stopped": trace.stopped,
        "prefill_s": trace.prefill_s,
        "draft_s": trace.draft_s,
        "verify_s": trace.verify_s,
        "tokens_per_s": _ratio(len(trace.output_ids), total_s),
        "output_ids": list(trace.output_ids),
    }


def overall_metrics(records: Sequence[dict], block_size: int, settings: Optional[dict] = None) -> dict:
    """Aggregate per-prompt records (token-weighted tau, summed histogram, time split)."""
    steps = sum(r["verify_steps"] for r in records)
    emitted = sum(r["completion_tokens"] - 1 for r in records if r["completion_tokens"] > 0 and r["verify_steps"])
    hist = [sum(r["accept_hist"][a] for r in records) for a in range(block_size)]
    uncond, cond = position_rates(hist)
    taus = [r["tau"] for r in records if r["tau"] is not None]
    spec = [r for r in records if r["verify_steps"]]
    sglang_taus = [r["completion_tokens"] / r["verify_steps"] for r in spec]
    completion = sum(r["completion_tokens"] for r in records)
    prefill = sum(r["prefill_s"] for r in records)
    draft = sum(r["draft_s"] for r in records)
    verify = sum(r["verify_s"] for r in records)
    total = prefill + draft + verify
    out = {
        "num_prompts": len(records),
        "block_size": block_size,
        "tau": _ratio(emitted, steps),
        "tau_mean_per_prompt": _ratio(sum(taus), len(taus)),
        "tau_sglang": _ratio(sum(r["completion_tokens"] for r in spec), steps),
        "tau_sglang_mean_per_prompt": _ratio(sum(sglang_taus), len(sglang_taus)),
        "mean_accepted": _ratio(sum(a * n for a, n in enumerate(hist)), steps),
        "accept_hist": hist,
        "accept_pos": uncond,
        "accept_pos_conditional": cond,
        "completion_tokens": completion,
        "verify_steps": steps,
        "tokens_per_s": _ratio(completion, total),
        "prefill_s": prefill,
        "draft_s": draft,
        "verify_s": verify,
        "total_s": total,
    }
    if settings:
        out.update(settings)
    return out


TAU_LABELS = {
    "tau": "tau (per verify step, prefill excluded)",
    "tau_sglang": "tau (SGLang convention: completion_tokens / spec_verify_ct, prefill token included)",
}


@dataclass
class EvalResult:
    """Per-prompt records and the overall metrics of one evaluation."""

    per_prompt: list = field(default_factory=list)
    overall: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"overall": dict(self.overall), "per_prompt": [dict(r) for r in self.per_prompt]}

    def table(self, title: Optional[str] = "DFlash-family offline acceptance") -> str:
        """Summary table, then acceptance per block slot (printed by the CLI and the demo)."""
        from ..report import format_table

        o = self.overall
        summary = {
            "method": o.get("method"),
            "prompts": o.get("num_prompts"),
            "K": o.get("verify_window", o.get("block_size")),
            "convention": o.get("convention"),
            "temp": o.get("temperature"),
            "draft sampling": o.get("draft_sampling") if o.get("temperature") else "greedy (T=0)",
            "tokens": o.get("completion_tokens"),
            "verify steps": o.get("verify_steps"),
            "tok/s": o.get("tokens_per_s"),
            "draft s": o.get("draft_s"),
            "verify s": o.get("verify_s"),
        }
        if o.get("speedup") is not None:
            summary["baseline tok/s"] = o.get("baseline_tokens_per_s")
            summary["speed-up"] = o.get("speedup")
        taus = [
            {
                "tau convention": TAU_LABELS["tau"],
                "token-weighted": o.get("tau"),
                "mean per prompt": o.get("tau_mean_per_prompt"),
                "keys": "tau, tau_mean_per_prompt",
            },
            {
                "tau convention": TAU_LABELS["tau_sglang"],
                "token-weighted": o.get("tau_sglang"),
                "mean per prompt": o.get("tau_sglang_mean_per_prompt"),
                "keys": "tau_sglang, tau_sglang_mean_per_prompt",
            },
        ]
        parts = [
            format_table([summary], floatfmt=".3f", title=title),
            format_table(taus, floatfmt=".3f", title="tau, two conventions"),
        ]
        hist = o.get("accept_hist") or []
        rates = [None] + list(o.get("accept_pos") or [])
        cond = [None] + list(o.get("accept_pos_conditional") or [])
        rows = [
            {"accepted / slot": a, "steps": n, "slot accept rate": rates[a], "given previous": cond[a]}
            for a, n in enumerate(hist)
        ]
        if rows:
            parts.append(format_table(rows, floatfmt=".3f", title="accepted-length histogram and per-slot acceptance"))
        return "\n\n".join(parts)
