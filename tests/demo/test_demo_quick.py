"""``specforge-dpace demo --quick`` end to end in a fresh process (the CI run of the demo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SPECFORGE_DPACE_THREADS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "specforge_dpace", "demo", "--quick", "--no-progress", "--output-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    objectives = [r["objective"] for r in report["rows"]]
    assert objectives == ["dflash(gamma=7)", "dpace", "dflash(gamma=10) + 0.3*first-error-focal + 40*chain"]
    for row in report["rows"]:
        assert row["tau"] is not None and 1.0 <= row["tau"] <= report["config"]["block_size"]
        assert row["objective"] in proc.stdout
    assert report["rows"][0]["tau"] > 1.0  # the drafter predicts something the target accepts
    assert (tmp_path / "report.png").stat().st_size > 1000
    print(f"quick demo wall {wall:.1f}s (budget 120 s on an unloaded 2-core machine)")
