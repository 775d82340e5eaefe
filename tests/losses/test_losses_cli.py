"""`specforge-dpace losses` as a real console-script process."""

import json
import subprocess
import sys

from specforge_dpace.losses import BUILTIN_NAMES


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "specforge_dpace", "losses", *args], capture_output=True, text=True, timeout=120
    )


def test_listing_shows_every_objective_options_and_source():
    result = run_cli("--json")
    assert result.returncode == 0, result.stderr
    rows = {row["objective"]: row for row in json.loads(result.stdout)}
    assert set(BUILTIN_NAMES) <= set(rows)
    assert rows["dpace"]["options (defaults)"] == "alpha=0.5, labels='data'"  # labels: every hard objective's
    assert rows["dflash"]["options (defaults)"] == "gamma=None, labels='data'"
    assert rows["topk-kl"]["options (defaults)"] == "k=20, gamma=None, temperature=1.0"
    assert rows["renyi-half"]["needs target hidden"] and not rows["dpace"]["needs target hidden"]
    assert all(rows[name]["source"] == "built-in" for name in BUILTIN_NAMES)


def test_try_prints_a_table_for_each_objective_and_the_composite():
    result = run_cli("--try", "--blocks", "4", "--block-size", "8")
    assert result.returncode == 0, result.stderr
    for name in BUILTIN_NAMES:
        assert name in result.stdout
    assert "dflash(gamma=10) + 0.3*first-error-focal + 40*chain" in result.stdout


def test_bad_spec_is_reported():
    result = run_cli("--try", "--spec", "dpaec")
    assert result.returncode != 0
    assert "unknown objective 'dpaec'" in result.stderr


def test_try_takes_specs_directly_and_spec_implies_try():
    result = run_cli("--try", "dpace(alpha=0.3)", "chain", "--spec", "dpace + 0.3*first-error-focal", "--blocks", "4")
    assert result.returncode == 0, result.stderr
    assert "registered objectives" not in result.stdout  # particular specs: no listing
    for spec in ("dpace(alpha=0.3)", "chain", "dpace + 0.3*first-error-focal"):
        assert spec in result.stdout
    assert "auf" not in result.stdout and "Warning" not in result.stderr
    alone = run_cli("--spec", "dpace(alpha=2)")
    assert alone.returncode == 2 and "alpha=2.0 is out of range" in alone.stderr
