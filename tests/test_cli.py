"""The ``specforge-dpace`` dispatcher (``specforge_dpace/cli.py``)."""

from __future__ import annotations

import subprocess
import sys
import warnings

from specforge_dpace import cli

DPACE_WITH_GAMMA = [
    "train-dflash",
    "--target-model-path",
    "/t",
    "--draft-config-path",
    "/d",
    "--train-data-path",
    "/x.jsonl",
    "--output-dir",
    "/tmp/o",
    "--loss-type",
    "dpace",
    "--loss-decay-gamma",
    "7",
    "--dry-run",
]


def test_help_lists_every_sub_command():
    result = subprocess.run([sys.executable, "-m", "specforge_dpace", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for name in cli.COMMANDS:
        assert name in result.stdout


def test_own_warnings_are_one_plain_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "specforge_dpace", *DPACE_WITH_GAMMA], capture_output=True, text=True, cwd=tmp_path
    )
    line = "specforge-dpace train-dflash: warning: --loss-decay-gamma 7.0 is ignored"
    assert line in result.stderr
    assert "UserWarning" not in result.stderr and "translate.py" not in result.stderr


def test_warning_display_is_restored_after_a_command(capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # shown even if an earlier test triggered it from the same line
        before = warnings.showwarning
        cli.main(DPACE_WITH_GAMMA)
        assert warnings.showwarning is before
    assert "train-dflash: warning:" in capsys.readouterr().err


def test_a_value_error_is_a_clean_exit_2(capsys):
    assert cli.main(["losses", "--try", "dpace(alpha=2)"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("specforge-dpace losses: error:") and "Traceback" not in err
