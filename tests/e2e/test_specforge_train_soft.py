"""Soft-label objectives through SpecForge's own trainer: ``specforge train`` on CPU, strategy dflash.

Real ``python -m specforge.cli train`` subprocesses (one rank, gloo, sdpa, ``NO_SHARD``) on the shipped
``examples/cpu_offline`` configs ``lk_lambda.yaml`` and ``dpace_lk_lambda.yaml``, over offline features
that carry ``target_last_hidden_states`` (``make_tiny_setup.py`` stores it by default).  The plugin
reaches the processes only through the ``.pth`` autoload; the runs exercise the unified runtime's soft
path end to end: the composition hook's registration, SpecForge's reader / loader / collator, the step
that passes the key, the patched model, the logged metrics, the checkpoint's resume contract.
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from test_specforge_train_cpu import EXAMPLE, STEP_LINE, _env, _ok, _state, _steps, _train

pytestmark = pytest.mark.slow

KEY = "target_last_hidden_states"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cpu_offline_soft")
    subprocess.run(
        [sys.executable, str(EXAMPLE / "make_tiny_setup.py"), str(root / "cpu_offline_run"), "--quiet"],
        check=True,
        env=_env(autoload=False),
        timeout=170,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    files = sorted((root / "cpu_offline_run" / "features").glob("*.ckpt"))
    assert len(files) == 16 and all(KEY in torch.load(f, weights_only=True) for f in files)
    # The same features as captured without the option: every key but the last hidden state.
    (root / "nokey").mkdir()
    for path in files:
        record = torch.load(path, weights_only=True)
        del record[KEY]
        torch.save(record, root / "nokey" / path.name)
    return root


@pytest.fixture(scope="module")
def lk_lambda_run(workdir):
    return _ok(_train(workdir, "lk_lambda.yaml"))


def _soft_rows_are_sane(rows: dict[int, dict], block_size: int = 4) -> None:
    assert sorted(rows) == list(range(1, 7))
    for row in rows.values():
        assert math.isfinite(row["loss"]) and math.isfinite(row["grad_norm"])
        assert 1.0 <= row["soft_tau"] <= block_size and 0.0 <= row["teacher_agreement"] <= 1.0
        assert {f"alpha_pos_{k}" for k in range(1, block_size)} <= set(row)
        assert all(0.0 <= row[f"alpha_pos_{k}"] <= 1.0 for k in range(1, block_size))


def test_lk_lambda_trains_from_features_with_the_last_hidden_state(workdir, lk_lambda_run):
    rows = _steps(lk_lambda_run)
    _soft_rows_are_sane(rows)
    assert rows[6]["loss"] < rows[1]["loss"]  # six steps of lr 1e-3 on one tiny batch stream
    state = _state(workdir, "cpu_offline_run/out-lk-lambda", "cpu-offline-lk-lambda", 6)
    assert state["dflash_loss_type"] == "lk-lambda"


def test_hard_plus_soft_composite_trains_and_records_its_spec(workdir):
    rows = _steps(_ok(_train(workdir, "dpace_lk_lambda.yaml")))
    _soft_rows_are_sane(rows)
    for row in rows.values():
        assert row["loss"] == pytest.approx(row["loss[dpace]"] + 0.5 * row["loss[lk-lambda]"], rel=1e-5, abs=1e-6)
        assert "sim_tau" in row and "accept_pos_1" in row  # the hard term's acceptance metrics too
    state = _state(workdir, "cpu_offline_run/out-dpace-lk-lambda", "cpu-offline-dpace-lk-lambda", 6)
    assert state["dflash_loss_type"] == "dpace + 0.5*lk-lambda"


def test_resuming_a_soft_checkpoint_with_another_objective_is_refused(workdir, lk_lambda_run):
    other = _train(
        workdir,
        "dpace_lk_lambda.yaml",
        "training.resume_from=cpu_offline_run/out-lk-lambda/cpu-offline-lk-lambda-step6",
        "training.max_steps=8",
        "run_id=cpu-offline-lk-lambda",
        "output_dir=cpu_offline_run/out-resume-other",
    )
    assert other.returncode != 0
    assert "dflash_loss_type=lk-lambda" in other.stdout and "resume with the original configuration" in other.stdout
    assert STEP_LINE.search(other.stdout) is None


def test_features_without_the_key_fail_before_training_with_the_fix(workdir):
    result = _train(workdir, "lk_lambda.yaml", f"data.hidden_states_path={workdir / 'nokey'}", "output_dir=out-nokey")
    assert result.returncode != 0
    assert STEP_LINE.search(result.stdout) is None
    assert f"has no '{KEY}'" in result.stdout and "training.loss_type='lk-lambda'" in result.stdout
    assert "capture_offline_features(" in result.stdout and "last_hidden=True" in result.stdout
    assert not (workdir / "out-nokey").exists()  # refused while resolving the run, before any worker started
