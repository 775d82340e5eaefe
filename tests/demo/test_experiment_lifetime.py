"""The experiment's worker processes die with it, and its output directory is its own while it runs.

Real processes: a child Python starts the experiment's worker pool (``experiment.worker_pool``, spawned
interpreters, as ``--jobs 2`` does), the test SIGKILLs that parent and watches the workers go.  Before,
they lived on as orphans (``bench_acceptance.py --jobs 2``: each finished its seed beside the resumed
run, then blocked forever holding about 560 MB).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from specforge_dpace._outdir import OutputDirInUse, locked_output
from specforge_dpace.demo.experiment import ExperimentConfig, run_experiment

REPO = Path(__file__).resolve().parents[2]
PARENT = """
import os, sys, time
from specforge_dpace.demo.experiment import worker_pool
pool = worker_pool(2)
pids = set()
while len(pids) < 2:  # each worker ran its initializer before its first task
    pids |= {f.result() for f in [pool.submit(os.getpid) for _ in range(8)]}
for _ in range(2):
    pool.submit(time.sleep, 600)  # a long task each, like a seed
print(" ".join(map(str, sorted(pids))), flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as handle:
            return "\nState:\tZ" not in handle.read()
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_die_when_their_parent_is_killed():
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True, env=env)
    try:
        workers = [int(p) for p in parent.stdout.readline().split()]
        assert len(workers) == 2 and all(_alive(p) for p in workers)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 15
        while any(_alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(p) for p in workers), "orphaned workers outlived the killed run"
    finally:
        parent.kill()
        for pid in locals().get("workers", []):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_an_experiment_into_a_directory_in_use_is_refused_before_any_work(tmp_path):
    config = ExperimentConfig.quick()
    with locked_output(tmp_path, "another experiment", "--output-dir"):
        with pytest.raises(OutputDirInUse, match=f"is in use by another run: pid {os.getpid()} \\(another"):
            run_experiment(tmp_path, config, show_progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".specforge-dpace.lock"]  # nothing was run


def test_an_experiment_output_path_problem_is_reported_before_any_work(tmp_path):
    (tmp_path / "experiment.json").mkdir()
    with pytest.raises(ValueError, match="experiment.json' is a directory where this run writes its file"):
        run_experiment(tmp_path, ExperimentConfig.quick(), show_progress=False)
    (tmp_path / "experiment.json").rmdir()
    (tmp_path / "seed-0").write_text("x")
    with pytest.raises(ValueError, match="seed-0' is a file where this run keeps its directory seed-0/"):
        run_experiment(tmp_path, ExperimentConfig.quick(), show_progress=False)
