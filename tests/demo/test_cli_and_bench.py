"""Flag handling of ``specforge-dpace demo`` and the arithmetic of scripts/bench_acceptance.py."""

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


def test_bench_summary_uses_per_seed_gains():
    bench = _bench_module()
    per_seed = {0: {"dflash": 2.0, "dpace": 2.2}, 1: {"dflash": 4.0, "dpace": 4.0}, 2: {"dflash": 3.0, "dpace": 3.3}}
    rows = {r["objective"]: r for r in bench.summarize(per_seed, ["dflash", "dpace"], "dflash")}
    assert rows["dflash"]["gain_mean_%"] == 0.0
    assert rows["dpace"]["gain_mean_%"] == pytest.approx(100 * (0.1 + 0.0 + 0.1) / 3)
    assert rows["dpace"]["tau_mean"] == pytest.approx(3.1666667)
    assert rows["dpace"]["gain_min_%"] == pytest.approx(0.0)


def test_bench_help_documents_flags():
    out = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=True).stdout
    for flag in ("--seeds", "--steps", "--objectives", "--output-dir", "--num-train-seqs", "--eval-prompts"):
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
