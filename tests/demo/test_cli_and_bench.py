"""Flag handling of ``specforge-dpace demo`` and of scripts/bench_acceptance.py."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from specforge_dpace.cli import build_parser
from specforge_dpace.demo.cli import config_from_args
from specforge_dpace.demo.summary import baseline_index, relative_change

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_acceptance.py"


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_acceptance", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_flags_reach_the_experiment_config_and_bad_values_are_refused(capsys):
    bench = _bench_module()
    config = bench.config_from_args(bench.parse_args(["--quick", "--seeds", "3", "4", "--steps", "7"]))
    assert config.seeds == (3, 4) and config.steps == 7
    with pytest.raises(SystemExit) as exc:  # refused at parse time, naming the flag and the range
        bench.main(["--quick", "--steps", "0", "--output-dir", "/nonexistent/never-written"])
    assert exc.value.code == 2 and "argument --steps: 0 is invalid; accepted: an int >= 1" in capsys.readouterr().err
    assert bench.main(["--arms", "dpace", "lk-lambda"]) == 2  # the baseline is not an arm
    assert "baseline='dflash(gamma=7)' is not one of the arms" in capsys.readouterr().err


def test_quick_and_overrides():
    args = build_parser().parse_args(["demo", "--quick", "--steps", "7", "--objectives", "dpace", "dflash"])
    config = config_from_args(args)
    assert config.steps == 7 and config.num_train_seqs == 96 and config.objectives == ("dpace", "dflash")
    full = config_from_args(build_parser().parse_args(["demo", "--seed", "3"]))
    assert full.seed == 3 and full.steps == 600 and len(full.objectives) == 3


def test_baseline_is_first_plain_dflash():
    assert baseline_index(["dpace", "dflash(gamma=7)", "dflash"]) == 1
    assert baseline_index(["dflash(gamma=10) + 40*chain", "dpace"]) == 0
    assert relative_change(2.2, 2.0) == pytest.approx(0.1)
    assert relative_change(None, 2.0) is None


def test_bench_help_documents_flags():
    out = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=True).stdout
    for flag in ("--seeds", "--steps", "--arms", "--output-dir", "--num-train-seqs", "--eval-prompts", "--quick"):
        assert flag in out


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (dict(retrain_target=True, target_steps=0), "target_steps=0 is invalid"),  # was silently the default
        (dict(target_steps=5), "applies only with retrain_target"),  # was silently ignored
        (dict(target_dir=""), "target_dir='' is invalid"),  # was silently the shipped assets
    ],
)
def test_target_settings_are_honoured_or_refused(overrides, fragment):
    from specforge_dpace.demo.pipeline import DemoConfig

    with pytest.raises(ValueError, match=fragment):
        DemoConfig(**overrides).validate()
