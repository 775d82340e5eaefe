"""Acceptance and speed metrics over per-request records.

Four tau columns in two conventions, always reported side by side and named (DESIGN.md section 5;
the SGLang source facts behind them are in docs/bench.md):

* SGLang's convention, prefill token included (SGLang's ``completion_tokens`` counts the token
  the prefill produces, its ``spec_verify_ct`` counts decode verify steps only):

  * ``tau_mean_per_request``: mean over requests of ``completion_tokens / verify_ct`` (SGLang's
    per-request ``spec_accept_length``); every request counts equally.
  * ``tau_token_weighted``: ``sum completion_tokens / sum verify_ct``; long answers count more.

* Per verify step, prefill token excluded:

  * ``tau_per_step``: ``sum (completion_tokens - 1) / sum verify_ct``; the offline evaluator's
    ``tau``, for either backend.
  * ``tau_server_avg``: ``/server_info`` ``internal_states[0].avg_spec_accept_length`` read after
    each measured group (the cache, and with it this average, is flushed before the group). SGLang
    counts it per verify step before ``max_new_tokens`` truncation and folds steps into it only
    every 40th decode iteration, so it lags (docs/bench.md).
"""

from __future__ import annotations

import statistics
from typing import Any, Iterable, Optional, Sequence


def _percentile(values: Sequence[float], q: float) -> Optional[float]:
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def per_position_acceptance(histograms: Iterable[Optional[Sequence[int]]]) -> Optional[list[float]]:
    """P(draft slot k is accepted) for k = 1.., from summed histograms.

    Histogram index n counts verify steps that accepted exactly n draft tokens (SGLang's
    ``spec_correct_drafts_histogram``), so slot k is accepted in the steps with n >= k.
    """
    total: list[int] = []
    for h in histograms:
        if not h:
            continue
        if len(h) > len(total):
            total += [0] * (len(h) - len(total))
        for i, c in enumerate(h):
            total[i] += int(c)
    steps = sum(total)
    if not steps:
        return None
    return [sum(total[k:]) / steps for k in range(1, len(total))]


def summarize_group(records: Sequence[dict], server_avgs: Sequence[dict] = ()) -> dict[str, Any]:
    """Metrics of one (backend, drafter, dataset, temperature) group of request records."""
    n = len(records)
    tokens = [int(r["completion_tokens"]) for r in records]
    latencies = [float(r["latency_s"]) for r in records]
    out: dict[str, Any] = {
        "requests": n,
        "completion_tokens": sum(tokens),
        "latency_mean_s": statistics.fmean(latencies) if latencies else None,
        "latency_p50_s": _percentile(latencies, 0.5),
        "latency_p90_s": _percentile(latencies, 0.9),
        "output_tokens_per_s": (sum(tokens) / sum(latencies)) if latencies and sum(latencies) > 0 else None,
    }
    spec = [r for r in records if r.get("verify_ct")]
    if spec:
        out["tau_mean_per_request"] = statistics.fmean(r["completion_tokens"] / r["verify_ct"] for r in spec)
        out["tau_token_weighted"] = sum(r["completion_tokens"] for r in spec) / sum(r["verify_ct"] for r in spec)
        out["tau_per_step"] = sum(max(0, r["completion_tokens"] - 1) for r in spec) / sum(r["verify_ct"] for r in spec)
        out["verify_steps"] = sum(r["verify_ct"] for r in spec)
        acc = per_position_acceptance(r.get("histogram") for r in spec)
        out["per_position_acceptance"] = acc
    else:
        out["tau_mean_per_request"] = out["tau_token_weighted"] = out["tau_per_step"] = None
        out["per_position_acceptance"] = None
    # one segment per measured group or resumed part of it: weight each by its verify steps (the
    # server average is itself step-weighted), or by its requests for records without them
    avgs = [
        (s["avg"], s.get("verify_steps") or s["requests"])
        for s in server_avgs
        if s.get("avg") is not None and s.get("requests")
    ]
    out["tau_server_avg"] = (sum(a * k for a, k in avgs) / sum(k for _, k in avgs)) if avgs else None
    out.update(counter_metrics(server_avgs))
    return out


def counter_metrics(stats: Sequence[dict]) -> dict[str, Any]:
    """vLLM's acceptance from its ``/metrics`` counter deltas, summed over measured segments: ``tau_metrics`` =
    1 + accepted / drafts (per verify step, prefill excluded, counted before max_tokens truncation), the draft
    acceptance rate accepted / draft tokens, and (replacing the histogram's) the per-position acceptance
    accepted_per_pos[k] / drafts.  Empty when no segment carries counters (SGLang, hf)."""
    counted = [s for s in stats if s.get("drafts") is not None]
    if not counted:
        return {}
    drafts = sum(int(s["drafts"]) for s in counted)
    accepted = sum(int(s["accepted"]) for s in counted)
    tokens = sum(int(s["draft_tokens"]) for s in counted)
    per_pos: list[int] = []
    for s in counted:
        for k, value in enumerate(s.get("accepted_per_pos") or []):
            per_pos += [0] * (k + 1 - len(per_pos))
            per_pos[k] += int(value)
    out: dict[str, Any] = {
        "tau_metrics": 1 + accepted / drafts if drafts else None,
        "draft_acceptance_rate": accepted / tokens if tokens else None,
        "drafts": drafts,
    }
    if drafts:
        out["per_position_acceptance"] = [a / drafts for a in per_pos]
    return out


def add_speedups(rows: list[dict], baseline_name: str) -> None:
    """``speedup`` = output tokens/s over the baseline's on the same dataset and temperature."""
    base = {
        (r["backend"], r["dataset"], r["temperature"]): r.get("output_tokens_per_s")
        for r in rows
        if r["drafter"] == baseline_name
    }
    for r in rows:
        b = base.get((r["backend"], r["dataset"], r["temperature"]))
        tps = r.get("output_tokens_per_s")
        r["speedup"] = (tps / b) if (b and tps) else None
