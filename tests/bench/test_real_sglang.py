"""Opt-in: the runner against a real SGLang on a GPU machine (``pytest -m sglang``).

Needs SGLang >= 0.5.11 installed and:
  SGLANG_BENCH_TARGET   target model directory
  SGLANG_BENCH_DRAFT    a servable draft directory trained for that target (DFlash; Domino or DSpark on
                        SGLang 0.5.23, e.g. written by `specforge-dpace convert --server sglang-0.5.23`)
  SGLANG_BENCH_ARGS     optional extra server flags (e.g. "--mem-fraction-static 0.7")
  SGLANG_BENCH_THINKING optional "on"/"off" (default off)
"""

import json
import os

import pytest

from specforge_dpace.cli import main

pytestmark = pytest.mark.sglang


@pytest.mark.skipif(
    not (os.environ.get("SGLANG_BENCH_TARGET") and os.environ.get("SGLANG_BENCH_DRAFT")),
    reason="set SGLANG_BENCH_TARGET and SGLANG_BENCH_DRAFT on a GPU machine with SGLang",
)
def test_real_sglang_smoke(tmp_path):
    pytest.importorskip("sglang", reason="SGLang is not installed")
    out = tmp_path / "out"
    code = main(
        [
            "bench",
            "--target",
            os.environ["SGLANG_BENCH_TARGET"],
            "--drafter",
            f"draft={os.environ['SGLANG_BENCH_DRAFT']}",
            "--dataset",
            "smoke",
            "--num-prompts",
            "4",
            "--max-new-tokens",
            "128",
            "--temperature",
            "0",
            "--thinking",
            os.environ.get("SGLANG_BENCH_THINKING", "off"),
            "--server-args",
            os.environ.get("SGLANG_BENCH_ARGS", ""),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    rows = {r["drafter"]: r for r in json.loads((out / "summary.json").read_text())["results"]}
    draft = rows["draft"]
    assert draft["requests"] == 4 and draft["tau_token_weighted"] > 1.0
    assert draft["tau_server_avg"] is not None and draft["speedup"] is not None
