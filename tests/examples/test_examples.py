"""Every example parses: the shell script (bash -n, dry runs of both runtimes) and the YAML configs
through SpecForge's own schema with the specforge-dpace hook installed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
SCRIPT = EXAMPLES / "run_qwen3_8b_dpace_online.sh"
YAMLS = sorted(EXAMPLES.glob("*.yaml"))
sys.path.insert(0, str(REPO / "tests" / "hooks"))
from legacy_standin import write_tree  # noqa: E402

yaml = pytest.importorskip("yaml")
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _dry_run(**env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "DRY_RUN": "1", "PYTHON": sys.executable, "PYTHONPATH": str(REPO), **env}
    return subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=full, timeout=180, cwd=REPO)


def test_the_expected_examples_exist():
    assert SCRIPT.is_file() and {p.name for p in YAMLS} >= {"qwen3_8b_dpace.yaml", "qwen3_8b_three_interventions.yaml"}


def test_shell_script_syntax():
    proc = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_shell_script_unified_dry_run_prints_a_valid_config(specforge_installed):
    from specforge.config.schema import Config

    proc = _dry_run(LOSS_TYPE="dflash(gamma=10) + 0.3*first-error-focal + 40*chain", NUM_GPUS="4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = yaml.safe_load(proc.stdout)
    training = config["training"]
    assert (training["num_anchors"], training["learning_rate"], training["warmup_ratio"]) == (512, 6e-4, 0.04)
    assert (training["max_grad_norm"], training["num_epochs"], config["data"]["max_length"]) == (1.0, 6, 3072)
    assert config["model"]["draft_block_size"] == 16
    assert config["deployment"]["trainer"]["nproc_per_node"] == 4
    validated = Config.model_validate(config)
    assert validated.training.loss_type == "dflash(gamma=10) + 0.3*first-error-focal + 40*chain"


def test_shell_script_legacy_dry_run_names_the_checkout_command(tmp_path):
    tree = write_tree(tmp_path / "SpecForge", "dpace")
    proc = _dry_run(SPECFORGE_ROOT=str(tree), LOSS_OPTIONS="alpha=0.3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"legacy checkout {tree}" in proc.stdout and "loss_options {'alpha': 0.3}" in proc.stdout
    assert "--num-anchors 512" in proc.stdout and "--loss-type dpace" in proc.stdout
    assert f"--draft-config-path {tree}/configs/qwen3-8b-dflash.json" in proc.stdout


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_yaml_configs_pass_specforge_schema_with_the_hook(specforge_installed, path):
    from specforge.config.schema import load_config

    config = load_config(str(path))
    raw = yaml.safe_load(path.read_text())
    assert config.training.loss_type == raw["training"]["loss_type"]
    assert config.training.strategy == "dflash" and config.training.num_anchors == 512
    assert config.mode == "online" and config.deployment.mode == "disaggregated"
