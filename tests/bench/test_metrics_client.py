"""Metric definitions and explicit sampling parameters."""

import time

import pytest

from specforge_dpace.bench.client import Sampling, run_bounded
from specforge_dpace.bench.metrics import add_speedups, per_position_acceptance, summarize_group


def test_three_tau_definitions_differ_as_defined():
    records = [
        {"completion_tokens": 10, "verify_ct": 5, "latency_s": 1.0},
        {"completion_tokens": 30, "verify_ct": 6, "latency_s": 1.0},
    ]
    out = summarize_group(records, [{"avg": 3.0, "requests": 1}, {"avg": 6.0, "requests": 3}])
    assert out["tau_server_avg"] == pytest.approx((3 * 1 + 6 * 3) / 4)  # no step counts: by requests
    out = summarize_group(
        records, [{"avg": 3.0, "requests": 1, "verify_steps": 5}, {"avg": 6.0, "requests": 3, "verify_steps": 1}]
    )
    assert out["tau_server_avg"] == pytest.approx((3 * 5 + 6 * 1) / 6)
    assert out["tau_mean_per_request"] == pytest.approx((2 + 5) / 2)
    assert out["tau_token_weighted"] == pytest.approx(40 / 11)
    assert out["output_tokens_per_s"] == pytest.approx(20.0)


def test_per_position_acceptance_from_histograms():
    # steps accepting 0, 1, 3, 3 drafts: slot1 in 3/4 steps, slot2 in 2/4, slot3 in 2/4
    acc = per_position_acceptance([[1, 1, 0, 1], [0, 0, 0, 1], None])
    assert acc == [0.75, 0.5, 0.5]
    assert per_position_acceptance([None, []]) is None


def test_speedup_is_relative_to_the_baseline_of_the_same_group():
    rows = [
        {"backend": "s", "dataset": "d", "temperature": 0.0, "drafter": "baseline", "output_tokens_per_s": 10.0},
        {"backend": "s", "dataset": "d", "temperature": 0.0, "drafter": "x", "output_tokens_per_s": 25.0},
        {"backend": "s", "dataset": "d", "temperature": 1.0, "drafter": "x", "output_tokens_per_s": 25.0},
    ]
    add_speedups(rows, "baseline")
    assert [r["speedup"] for r in rows] == [1.0, 2.5, None]


def test_sampling_is_explicit_and_never_silently_greedy():
    params = Sampling(temperature=0.7, max_new_tokens=16).params()
    assert params == {"temperature": 0.7, "top_p": 1.0, "top_k": -1, "max_new_tokens": 16}
    with pytest.warns(UserWarning, match="greedy"):
        Sampling(temperature=0.7, max_new_tokens=16, top_k=1).params()
    with pytest.raises(ValueError, match="temperature"):
        Sampling(temperature=-1, max_new_tokens=16).params()


def test_run_bounded_respects_concurrency_and_time_budget():
    in_flight, peak, seen = [0], [0], []

    def work(i):
        in_flight[0] += 1
        peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.05)
        in_flight[0] -= 1
        return i * 2

    n = run_bounded(range(6), work, lambda i, r: seen.append((i, r)), concurrency=2, deadline_s=30)
    assert n == 6 and sorted(seen) == [(i, 2 * i) for i in range(6)] and peak[0] <= 2
    seen.clear()
    n = run_bounded(range(100), work, lambda i, r: seen.append(i), concurrency=1, deadline_s=0.12)
    assert 1 <= n < 10


def test_run_bounded_propagates_the_first_error():
    def work(i):
        if i == 2:
            raise RuntimeError("boom")
        return i

    with pytest.raises(RuntimeError, match="boom"):
        run_bounded(range(5), work, lambda i, r: None, concurrency=1, deadline_s=30)
