"""``train-dflash --strategy domino|dspark``: the objective flags reach SpecForge's Domino and DSpark configs."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from specforge_dpace.train.cli import configure
from specforge_dpace.train.translate import SchemaError, unified_config, validate

REPO = Path(__file__).resolve().parents[2]


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    configure(parser)
    return parser.parse_args(
        ["--target-model-path", "t", "--output-dir", "/runs/r", "--hidden-states-path", "/features", *argv]
    )


@pytest.mark.parametrize("strategy", ["domino", "dspark"])
def test_strategy_and_objective_land_in_the_config_and_validate(specforge_installed, strategy):
    config = unified_config(_args("--strategy", strategy, "--loss-type", "lk-lambda", "--loss-option", "eta=1.0"))
    training = config["training"]
    assert (training["strategy"], training["loss_type"], training["loss_options"]) == (
        strategy,
        "lk-lambda",
        {"eta": 1},
    )
    assert validate(config).training.strategy == strategy


def test_strategy_defaults_to_dflash():
    assert unified_config(_args())["training"]["strategy"] == "dflash"


def test_schema_refusals_name_the_flag(specforge_installed):
    config = unified_config(_args("--strategy", "domino", "--loss-type", "dpace", "--loss-option", "fused=true"))
    with pytest.raises(SchemaError, match=r"--loss-option .*fused=true is refused for training.strategy='domino'"):
        validate(config)


def test_gamma_is_not_reported_ignored_for_domino_and_dspark(recwarn):
    unified_config(_args("--strategy", "dspark", "--loss-type", "dpace", "--loss-decay-gamma", "7"))
    assert not [w for w in recwarn if "is ignored" in str(w.message)]  # DSpark's confidence loss decays with it
    with pytest.warns(UserWarning, match="--loss-decay-gamma 7.0 is ignored"):
        unified_config(_args("--loss-type", "dpace", "--loss-decay-gamma", "7"))


def test_a_legacy_checkout_refuses_other_strategies(tmp_path):
    sys.path.insert(0, str(REPO / "tests" / "hooks"))
    from legacy_standin import write_tree

    tree = write_tree(tmp_path / "checkout", "dpace")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    argv = ["--specforge-root", str(tree), "--output-dir", str(tmp_path / "o"), "--target-model-path", "t"]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "specforge_dpace.cli",
            "train-dflash",
            *argv,
            "--train-data-path",
            "d",
            "--strategy",
            "dspark",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode == 2 and "--strategy dspark" in proc.stderr and "trains DFlash only" in proc.stderr
