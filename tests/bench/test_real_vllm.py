"""Opt-in: the runner against a real vLLM 0.33 on a GPU machine (``pytest -m vllm``).

Needs ``vllm serve`` on PATH (vLLM 0.33) and:
  VLLM_BENCH_TARGET   target model directory
  VLLM_BENCH_DRAFT    a drafter vLLM 0.33 loads, trained for that target (DFlash in the z-lab or speculators
                      layout, or DSpark; e.g. written by `specforge-dpace convert --server vllm-0.33.0`)
  VLLM_BENCH_ARGS     optional extra `vllm serve` flags (e.g. "--gpu-memory-utilization 0.7")

Both draft sample methods run; a third run with vLLM's synthetic rejection sampler checks the counters'
arithmetic on the real server: an integral synthetic_acceptance_length L must read back as tau = L exactly.
"""

import json
import os

import pytest

from specforge_dpace.cli import main

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(
        not (os.environ.get("VLLM_BENCH_TARGET") and os.environ.get("VLLM_BENCH_DRAFT")),
        reason="set VLLM_BENCH_TARGET and VLLM_BENCH_DRAFT on a GPU machine with vLLM 0.33",
    ),
]


def _run(out, *extra):
    return main(
        [
            "bench", "--backend", "vllm", "--target", os.environ["VLLM_BENCH_TARGET"],
            "--drafter", f"draft={os.environ['VLLM_BENCH_DRAFT']}", "--dataset", "smoke", "--num-prompts", "4",
            "--max-new-tokens", "128", "--temperature", "0", "--temperature", "1",
            "--server-args", os.environ.get("VLLM_BENCH_ARGS", ""), "--out", str(out), *extra,
        ]
    )  # fmt: skip


@pytest.mark.parametrize("method", ["greedy", "probabilistic"])
def test_real_vllm_both_draft_sample_methods(tmp_path, method):
    out = tmp_path / "out"
    assert _run(out, "--draft-sample-method", method) == 0
    rows = {(r["drafter"], r["temperature"]): r for r in json.loads((out / "summary.json").read_text())["results"]}
    for t in (0.0, 1.0):
        draft = rows[("draft", t)]
        assert draft["requests"] == 4 and draft["tau_metrics"] > 1.0 and draft["speedup"] is not None
        assert len(draft["per_position_acceptance"]) >= 1


def test_real_vllm_counters_read_back_the_synthetic_length(tmp_path):
    out = tmp_path / "out"
    assert (
        _run(out, "--no-baseline", "--rejection-sample-method", "synthetic", "--synthetic-acceptance-length", "2") == 0
    )
    for row in json.loads((out / "summary.json").read_text())["results"]:
        assert row["tau_metrics"] == pytest.approx(2.0)
