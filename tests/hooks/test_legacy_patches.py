"""``patches/*.diff`` apply to the stand-in checkout of their generation and make it train any objective.

The stand-in script keeps the lines the diffs anchor on; the real revisions are checked by the
opt-in ``legacy_checkout`` tests (tests/README.md).  Runs are real subprocesses with the
start-up auto-loader switched off, so the patch alone must activate the plugin.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from legacy_standin import GENERATIONS, write_tree

REPO = Path(__file__).resolve().parents[2]
PATCHES = {"pre-dpace": REPO / "patches" / "legacy-pre-dpace.diff", "dpace": REPO / "patches" / "legacy-dpace.diff"}
pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _family(generation: str) -> str:
    return "pre-dpace" if generation == "pre-dpace" else "dpace"


def _git_apply(tree: Path, patch: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "apply", *flags, str(patch)], cwd=tree, capture_output=True, text=True)


def _run_script(tree: Path, out: Path, *flags: str) -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tree), str(REPO)]),
        "SPECFORGE_DPACE_AUTOLOAD": "0",
        "OMP_NUM_THREADS": "1",
    }
    cmd = [
        sys.executable,
        str(tree / "scripts" / "train_dflash.py"),
        "--target-model-path",
        "tiny",
        "--train-data-path",
        "none",
        "--output-dir",
        str(out),
        "--block-size",
        "4",
        "--num-anchors",
        "4",
        "--attention-backend",
        "sdpa",
        "--num-epochs",
        "2",
        *flags,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "standin_result.json").read_text())


@pytest.mark.parametrize("generation", GENERATIONS)
def test_exactly_the_matching_patch_applies(tmp_path, generation):
    tree = write_tree(tmp_path / "checkout", generation)
    for family, patch in PATCHES.items():
        result = _git_apply(tree, patch, "--check")
        assert (result.returncode == 0) == (family == _family(generation)), (family, result.stderr)


@pytest.mark.slow
@pytest.mark.parametrize("generation", ["pre-dpace", "dpace"])
def test_patched_script_trains_registered_objectives(tmp_path, generation):
    tree = write_tree(tmp_path / "checkout", generation)
    applied = _git_apply(tree, PATCHES[_family(generation)])
    assert applied.returncode == 0, applied.stderr

    composite = _run_script(tree, tmp_path / "composite", "--loss-type", "dflash + 0.5*chain")
    assert composite["model_loss_type"] == composite["plugin_spec"] == "dflash + 0.5*chain"
    assert len(composite["losses"]) == 2 and all(v == v for v in composite["losses"])

    with_option = _run_script(tree, tmp_path / "option", "--loss-type", "dpace", "--loss-option", "alpha=0.3")
    assert with_option["loss_options"] == {"alpha": 0.3}
    if generation == "pre-dpace":  # the registry's D-PACE
        assert with_option["model_loss_type"] == "dpace(alpha=0.3)"
    else:  # the checkout's own D-PACE with dpace_alpha=0.3
        assert with_option["model_loss_type"] == "dpace" and with_option["plugin_spec"] == "dpace"


def test_patched_script_rejects_unknown_objectives_listing_registered_ones(tmp_path):
    tree = write_tree(tmp_path / "checkout", "dpace")
    assert _git_apply(tree, PATCHES["dpace"]).returncode == 0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), str(REPO)]), "SPECFORGE_DPACE_AUTOLOAD": "0"}
    proc = subprocess.run(
        [
            sys.executable,
            str(tree / "scripts" / "train_dflash.py"),
            "--target-model-path",
            "t",
            "--train-data-path",
            "d",
            "--output-dir",
            str(tmp_path / "o"),
            "--loss-type",
            "dpase",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "dpase" in proc.stderr and "first-error-focal" in proc.stderr
