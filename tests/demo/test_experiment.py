"""The acceptance experiment: its analysis on hand-built cells, its --quick run, and a killed run resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from specforge_dpace.demo.experiment import PREDICTORS, SETTINGS, ExperimentConfig, analyse, main_table, title

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_acceptance.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "SPECFORGE_DPACE_THREADS": "1"}


def _cells(taus: dict, predicted=None):
    """``taus[arm][seed] -> tau`` for every setting; predicted tau = measured unless given."""
    cells = []
    for arm, by_seed in taus.items():
        for seed, tau in by_seed.items():
            for setting in SETTINGS:
                guess = tau if predicted is None else predicted[arm][seed]
                cells.append(
                    {
                        "seed": seed,
                        "arm": arm,
                        "setting": setting.name,
                        "tau": tau,
                        "predicted": dict.fromkeys(PREDICTORS, guess),
                    }
                )
    return cells


def test_a_known_paired_change_a_constant_arm_and_a_perfect_predictor():
    base = {0: 2.0, 1: 2.5, 2: 3.0}
    taus = {"dflash(gamma=7)": base, "dpace": {s: 1.1 * t for s, t in base.items()}, "kl": dict(base)}
    config = ExperimentConfig(arms=tuple(taus), seeds=(0, 1, 2))
    result = analyse(_cells(taus), config)
    rows = {(r["setting"], r["arm"]): r for r in result["rows"]}
    gain = rows["T0", "dpace"]
    assert gain["change"] == pytest.approx(0.1) and gain["change_ci"] == pytest.approx([0.1, 0.1])
    assert gain["excludes_zero"] and gain["tau_mean"] == pytest.approx(1.1 * 2.5)
    same = rows["T0", "kl"]
    assert same["change"] == 0.0 and not same["excludes_zero"]
    assert "change" not in rows["T0", "dflash(gamma=7)"]  # the baseline
    for setting in SETTINGS:  # predicted == measured: every predictor ranks perfectly and errs by 0
        verdict = result["verdicts"][setting.name]
        assert all(s["spearman_drafters"] == pytest.approx(1.0) for s in verdict["scores"])
        assert all(s["mean_abs_relative_error"] == 0.0 for s in verdict["scores"])
    table = main_table(result)
    assert table[1]["objective"] == "dpace" and table[1]["T=0 vs baseline, % [CI]"] == "+10.0 [+10.0, +10.0] *"


def test_the_predictor_that_ranks_the_arms_is_trusted():
    base = {0: 2.0, 1: 2.4}
    taus = {"dflash(gamma=7)": base, "a": {0: 2.2, 1: 2.6}, "b": {0: 2.6, 1: 3.0}}
    predicted = {arm: dict(by_seed) for arm, by_seed in taus.items()}
    cells = _cells(taus, predicted)
    for cell in cells:  # make one predictor rank the arms backwards
        cell["predicted"]["soft_tau@T1"] = 5.0 - cell["tau"]
    result = analyse(cells, ExperimentConfig(arms=tuple(taus), seeds=(0, 1)))
    verdict = result["verdicts"]["T0"]
    scores = {s["predictor"]: s for s in verdict["scores"]}
    assert scores["soft_tau@T1"]["spearman_arms"] == pytest.approx(-1.0)
    assert verdict["best"] != "soft_tau@T1"


@pytest.mark.parametrize(
    "overrides,error",
    [
        (dict(arms=("dpace",)), "needs the baseline and at least one more arm"),
        (dict(arms=("dflash(gamma=7)", "dpace", "dpace")), "arm 'dpace' given twice"),
        (dict(arms=("dflash(gamma=7)", "dpace", "dpace(alpha=0.5)")), r"arm 'dpace\(alpha=0.5\)' repeats 'dpace'"),
        (dict(arms=("dpace", "kl")), "is not one of the arms"),
        (dict(seeds=(0, 0)), "seed 0 given twice"),
        (dict(seeds=(2**40,)), r"seed=1099511627776 is invalid; accepted: an int in \[0, 4294967295\]"),
        (dict(lr=float("inf")), r"lr=inf is invalid \(not finite\)"),
        (dict(confidence=1.0), r"confidence=1.0"),
        (dict(steps=0), "steps=0 is invalid"),
        (dict(data_temperature=float("nan")), "data_temperature=nan is invalid"),
        (dict(arms=("dflash(gamma=7)", "nonsense")), "unknown objective 'nonsense'"),
    ],
)
def test_bad_settings_are_refused_by_name(overrides, error):
    with pytest.raises(ValueError, match=error):
        ExperimentConfig.quick(**overrides).validate()


def test_the_new_objectives_are_accepted_as_arms():
    """Renyi-1/2, top-k KL, labels=target and normalized composites are arms like any spec; they read the
    target's distribution, so the demo captures the target's last hidden state for them."""
    from specforge_dpace.demo.pipeline import DemoPipeline

    arms = (
        "dflash(gamma=7)",
        "renyi-half",
        "topk-kl(k=8)",
        "dflash(labels=target)",
        "dpace + 0.5*lk-lambda; normalize=true",
    )
    config = ExperimentConfig.quick(arms=arms)
    config.validate()
    for spec in arms[1:]:
        pipeline = DemoPipeline(Path("/nonexistent"), config.demo_config(0).__class__(objectives=(spec,)))
        assert pipeline.needs_target_hidden, spec


def _run(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--output-dir", str(out), "--no-progress", *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=900,
    )


def _taus(out: Path) -> dict:
    cells = json.loads((out / "experiment.json").read_text())["cells"]
    return {(c["seed"], c["arm"], c["setting"]): (c["tau"], c["predicted"]) for c in cells}


@pytest.mark.slow
def test_quick_experiment_writes_tables_plots_and_json(tmp_path):
    proc = _run(tmp_path, "--quick")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "experiment.json").read_text())
    assert len(result["cells"]) == 2 * 3 * len(SETTINGS)  # 2 seeds x 3 arms x settings
    assert {c["arm"] for c in result["cells"]} == set(ExperimentConfig.quick().arms)
    assert all(c["tau"] >= 1.0 and c["teacher_agreement"] == 1.0 for c in result["cells"])
    for name in ("experiment.md", "experiment.png", "calibration.png"):
        assert (tmp_path / name).stat().st_size > 500
    assert "trust" in proc.stdout and "vs baseline" in proc.stdout


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_numbers(tmp_path):
    small = ("--quick", "--seeds", "0", "--arms", "dflash(gamma=7)", "lk-lambda")
    reference = tmp_path / "reference"
    assert _run(reference, *small).returncode == 0
    resumed = tmp_path / "resumed"
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--output-dir", str(resumed), "--no-progress", *small],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 600
    while time.time() < deadline and not list((resumed / "seed-0" / "eval").glob("*.json")):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)  # a hard kill in the middle of the first arm's evaluations
    proc.wait()
    assert not (resumed / "experiment.json").exists()
    again = _run(resumed, *small, "--jobs", "2")  # resumed in a worker process: the numbers do not change
    assert again.returncode == 0, again.stderr[-3000:]
    assert _taus(resumed) == _taus(reference)


def test_one_seed_reports_no_interval_and_says_why():
    """Before: a zero-width "95 % interval" [x, x] printed as if it were a result."""
    taus = {"dflash(gamma=7)": {0: 2.0}, "dpace": {0: 2.2}}
    result = analyse(_cells(taus), ExperimentConfig(arms=tuple(taus), seeds=(0,)))
    row = next(r for r in result["rows"] if r["arm"] == "dpace" and r["setting"] == "T0")
    assert row["change"] == pytest.approx(0.1)
    assert row["change_ci"] == [None, None] and row["change_bootstrap_ci"] == [None, None]
    assert row["tau_ci"] == [None, None] and "one seed" in row["interval_note"] and not row["excludes_zero"]
    table = main_table(result)
    assert table[1]["T=0 vs baseline, % [CI]"] == "+10.0 [no interval: 1 seed]"
    assert "no interval: one value (one seed) says nothing about the spread" in title(result)


def test_each_method_is_measured_in_the_settings_its_server_performs():
    """SGLang 0.5.23's Domino rollout is argmax only (no sampled-proposal setting); DFlash and DSpark keep all
    three; SpecForge's classes sample any way."""
    names = {m: [s.name for s in ExperimentConfig(method=m).settings] for m in ("dflash", "domino", "dspark")}
    assert names == {
        "dflash": ["T0", "T1", "T1-greedy-draft"],
        "domino": ["T0", "T1-greedy-draft"],
        "dspark": ["T0", "T1", "T1-greedy-draft"],
    }
    assert len(ExperimentConfig(method="domino", convention="specforge-0.2.0").settings) == 3
    assert ExperimentConfig(method="dspark").demo_config(0).eval_convention == "sglang-0.5.23"
