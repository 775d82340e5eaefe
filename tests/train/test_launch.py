"""The wrapper end to end in real subprocesses: legacy stand-in checkouts in-process, unified via SpecForge."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "hooks"))
from legacy_standin import write_tree  # noqa: E402

TINY = [
    "--target-model-path",
    "tiny",
    "--train-data-path",
    "none",
    "--block-size",
    "4",
    "--num-anchors",
    "4",
    "--attention-backend",
    "sdpa",
    "--num-epochs",
    "2",
]


def _run(*argv: str, entry=("-m", "specforge_dpace.cli", "train-dflash"), timeout=300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, *entry, *argv], capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "generation, flags, expected",
    [
        ("pre-dpace", ["--loss-type", "dpace", "--dpace-alpha", "0.3"], "dpace(alpha=0.3)"),
        ("pre-dpace", ["--loss-type", "auf", "--loss-decay-gamma", "7"], "auf"),
        (
            "dpace",
            ["--loss-type", "dflash(gamma=10) + 0.3*first-error-focal + 40*chain"],
            "dflash(gamma=10) + 0.3*first-error-focal + 40*chain",
        ),
        ("dpace-metrics", ["--loss-type", "dpace", "--loss-option", "alpha=0.2"], "dpace"),
    ],
)
def test_legacy_checkout_script_runs_in_process_with_the_objective(tmp_path, generation, flags, expected):
    tree = write_tree(tmp_path / "checkout", generation)
    out = tmp_path / "out"
    proc = _run("--specforge-root", str(tree), "--output-dir", str(out), *TINY, *flags)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "standin_result.json").read_text())
    assert result["generation"] == generation and result["model_loss_type"] == expected
    assert len(result["losses"]) == 2
    assert result["forward_outputs"] == (3 if generation == "dpace-metrics" else 2)
    if "--loss-option" in flags:
        assert result["loss_options"] == {"alpha": 0.2} and result["plugin_spec"] == "dpace"
    if "--loss-decay-gamma" in flags:
        assert "--loss-decay-gamma 7.0 is ignored" in proc.stderr


def test_scripts_wrapper_forwards_unknown_flags_to_the_checkout(tmp_path):
    tree = write_tree(tmp_path / "checkout", "dpace")
    proc = _run(
        "--specforge-root",
        str(tree),
        "--output-dir",
        str(tmp_path / "o"),
        *TINY,
        "--loss-type",
        "chain",
        "--not-a-legacy-flag",
        "1",
        "--dry-run",
        entry=(str(REPO / "scripts" / "train_dflash.py"),),
    )
    assert proc.returncode == 0, proc.stderr
    assert "--loss-type chain" in proc.stdout and "--not-a-legacy-flag 1" in proc.stdout
    assert "dpace script" in proc.stdout


def test_unified_only_flags_are_refused_for_a_legacy_checkout(tmp_path):
    tree = write_tree(tmp_path / "checkout", "dpace")
    proc = _run("--specforge-root", str(tree), "--output-dir", str(tmp_path / "o"), *TINY, "--nproc-per-node", "2")
    assert proc.returncode == 2 and "--nproc-per-node" in proc.stderr and "unified runtime only" in proc.stderr


def test_not_a_checkout_is_a_clear_error(tmp_path):
    proc = _run("--specforge-root", str(tmp_path), "--output-dir", str(tmp_path / "o"), *TINY)
    assert proc.returncode == 2 and "not a legacy SpecForge checkout" in proc.stderr


def test_unified_writes_the_config_and_specforge_plans_it(tmp_path):
    pytest.importorskip("specforge.config.schema")
    out = tmp_path / "run"
    spec = "dpace(alpha=0.3) + 0.3*first-error-focal"
    proc = _run(
        "--runtime",
        "unified",
        "--target-model-path",
        "Qwen/Qwen3-8B",
        "--hidden-states-path",
        str(tmp_path / "features"),
        "--output-dir",
        str(out),
        "--attention-backend",
        "sdpa",
        "--loss-type",
        spec,
        "--plan",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = (out / "specforge_config.yaml").read_text()
    assert f"loss_type: {spec}" in written
    plan = json.loads(proc.stdout[proc.stdout.index("{") :])  # SpecForge's own `train --plan` output
    assert plan["role"] == "all"


def test_unified_dry_run_prints_yaml_and_errors_are_clear(tmp_path):
    yaml = pytest.importorskip("yaml")
    proc = _run(
        "--runtime",
        "unified",
        "--target-model-path",
        "m",
        "--train-data-path",
        "d.jsonl",
        "--output-dir",
        str(tmp_path / "r"),
        "--server-url",
        "http://127.0.0.1:30000",
        "--loss-type",
        "chain",
        "--dry-run",
    )
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout)["training"]["loss_type"] == "chain"
    assert not (tmp_path / "r").exists()  # a dry run writes nothing
    bad = _run(
        "--runtime",
        "unified",
        "--target-model-path",
        "m",
        "--train-data-path",
        "d.jsonl",
        "--output-dir",
        str(tmp_path / "r"),
        "--server-url",
        "http://x:1",
        "--resume",
    )
    assert bad.returncode == 2 and "--resume: no unified equivalent" in bad.stderr
