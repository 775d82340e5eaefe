"""Smoke run of scripts/bench_eval_walk.py at toy sizes: every case runs, the baseline row is 1.00x."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("specforge")

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_eval_walk.py"


def test_every_case_is_timed_next_to_specforges_eval_forward(capsys):
    spec = importlib.util.spec_from_file_location("bench_eval_walk", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    toy = ["--hidden", "32", "--heads", "2", "--vocab", "64", "--seq-len", "24", "--block", "4", "--num-anchors", "8"]
    assert bench.main([*toy, "--chunk", "2", "--strides", "1", "3", "--repeats", "1", "--threads", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines if line.startswith(("dflash", "dspark"))]
    assert len(rows) == 2 * 5  # SpecForge's forward, then T0 and T0 + T1 at two strides, per method
    assert {row[-1] for row in rows if row[1] == "SpecForge"} == {"1.000"}
    assert all(float(row[-2]) > 0 for row in rows)
