"""End to end through SpecForge's own trainer for Domino and DSpark: ``specforge train`` on CPU, offline features.

Real ``python -m specforge.cli train`` child processes (one rank, gloo, sdpa, ``fsdp_sharding: NO_SHARD``) on
the shipped ``examples/cpu_offline/{domino,dspark}*.yaml`` files, with the draft configs of
``make_method_drafts.py``.  The plugin reaches the child only through the installed ``.pth`` autoload.
The features carry ``target_last_hidden_states`` (DSpark reads it always; soft-label objectives under
Domino read it through the composition hook).
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("specforge")
pytest.importorskip(
    "accelerate",
    reason="specforge.cli imports accelerate.utils.set_seed: pip install -c constraints-cpu.txt accelerate",
)

from test_specforge_train_cpu import EXAMPLE, _env, _ok, _state, _steps, _train  # noqa: E402

pytestmark = pytest.mark.slow

DOMINO_COMPOSITE = "dflash(gamma=4) + 0.3*first-error-focal + 4*chain"
DSPARK_COMPOSITE = "dpace(alpha=0.5) + 0.5*lk-lambda + 0.3*first-error-focal"
SCALARS = ("loss", "acc", "grad_norm")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cpu_offline_methods")
    for script, *flags in (("make_tiny_setup.py", "--quiet"), ("make_method_drafts.py",)):
        subprocess.run(
            [sys.executable, str(EXAMPLE / script), str(root / "cpu_offline_run"), *flags],
            check=True,
            env=_env(autoload=False),
            timeout=170,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
    assert (root / "cpu_offline_run" / "draft-domino" / "config.json").is_file()
    assert (root / "cpu_offline_run" / "draft-dspark" / "config.json").is_file()
    return root


def _same_rows(patched: dict, plain: dict) -> None:
    assert sorted(patched) == sorted(plain) == list(range(1, 7))
    for step in patched:
        assert {k for k in patched[step] if not k.startswith("perf/")} == {
            k for k in plain[step] if not k.startswith("perf/")
        }
        for key in plain[step]:
            if not key.startswith("perf/"):
                assert patched[step][key] == plain[step][key], (step, key)


@pytest.mark.parametrize("method", ["domino", "dspark"])
def test_the_methods_own_objective_is_unchanged_by_the_plugin(workdir, method):
    plain = _steps(
        _ok(_train(workdir, f"{method}.yaml", f"output_dir=cpu_offline_run/out-{method}-plain", autoload=False))
    )
    patched = _steps(_ok(_train(workdir, f"{method}.yaml")))
    _same_rows(patched, plain)  # every logged number, bit for bit
    assert "sim_tau" not in patched[6]
    assert f"{method}_loss_type" not in _state(workdir, f"cpu_offline_run/out-{method}", f"cpu-offline-{method}", 6)


def test_domino_dpace_replaces_the_final_term(workdir):
    rows = _steps(_ok(_train(workdir, "domino_dpace.yaml")))
    assert sorted(rows) == list(range(1, 7))
    for row in rows.values():
        assert math.isfinite(row["loss"]) and "sim_tau" in row and "accept_pos_4" in row  # shift_label: 4 drafted
        mixed = (1 - row["lambda_base"]) * row["final_loss"] + row["lambda_base"] * row["base_loss"]
        assert row["loss"] == pytest.approx(mixed, rel=1e-5)
    state = _state(workdir, "cpu_offline_run/out-domino-dpace", "cpu-offline-domino-dpace", 6)
    assert state["domino_loss_type"] == "dpace"


def test_domino_composite_and_soft_objective(workdir):
    rows = _steps(_ok(_train(workdir, "domino_composite.yaml")))
    for row in rows.values():
        parts = row["loss[dflash(gamma=4)]"] + 0.3 * row["loss[first-error-focal]"] + 4 * row["loss[chain]"]
        assert row["final_loss"] == pytest.approx(parts, rel=1e-5, abs=1e-6)
    state = _state(workdir, "cpu_offline_run/out-domino-composite", "cpu-offline-domino-composite", 6)
    assert state["domino_loss_type"] == DOMINO_COMPOSITE
    soft = _steps(_ok(_train(workdir, "domino_lk_lambda.yaml")))  # the key reaches Domino's step and model
    assert sorted(soft) == list(range(1, 7))
    assert all({"soft_tau", "alpha_pos_1", "teacher_agreement"} <= set(row) for row in soft.values())


def test_dspark_lk_lambda_and_composite(workdir):
    rows = _steps(_ok(_train(workdir, "dspark_lk_lambda.yaml")))
    assert sorted(rows) == list(range(1, 7))
    for row in rows.values():
        assert math.isfinite(row["loss"]) and {"soft_tau", "tau_probabilistic", "confidence_loss"} <= set(row)
        assert row["soft_tau"] == pytest.approx(row["tau_probabilistic"], rel=1e-5)  # the same alpha, formed once
    state = _state(workdir, "cpu_offline_run/out-dspark-lk-lambda", "cpu-offline-dspark-lk-lambda", 6)
    assert state["dspark_loss_type"] == "lk-lambda"
    composite = _steps(_ok(_train(workdir, "dspark_composite.yaml")))
    for row in composite.values():  # one rank, one micro-batch: the objective plus DSpark's confidence loss
        parts = row["loss[dpace]"] + 0.5 * row["loss[lk-lambda]"] + 0.3 * row["loss[first-error-focal]"]
        assert row["loss"] == pytest.approx(parts + row["confidence_loss"], rel=1e-5)
    state = _state(workdir, "cpu_offline_run/out-dspark-composite", "cpu-offline-dspark-composite", 6)
    assert state["dspark_loss_type"] == "dpace + 0.5*lk-lambda + 0.3*first-error-focal"


def test_resume_refuses_another_objective_and_accepts_the_same(workdir):
    checkpoint = "training.resume_from=cpu_offline_run/out-dspark-lk-lambda/cpu-offline-dspark-lk-lambda-step6"
    if not (workdir / checkpoint.split("=", 1)[1]).is_dir():
        _ok(_train(workdir, "dspark_lk_lambda.yaml"))
    common = (checkpoint, "training.max_steps=8", "run_id=cpu-offline-dspark-lk-lambda")
    own = _train(workdir, "dspark.yaml", *common, "output_dir=cpu_offline_run/out-resume-own")
    assert own.returncode != 0  # DSpark's own objective on a checkpoint trained with lk-lambda
    assert "dspark_loss_type" in own.stdout and "resume with the original configuration" in own.stdout
    other = _train(workdir, "dspark_lk_lambda.yaml", *common, "training.loss_type=kl", "output_dir=cpu_offline_run/o2")
    assert other.returncode != 0 and "dspark_loss_type=lk-lambda but this run has dspark_loss_type=kl" in other.stdout
    same = _steps(_ok(_train(workdir, "dspark_lk_lambda.yaml", *common, "output_dir=cpu_offline_run/out-resume-same")))
    assert sorted(same) == [7, 8]


def test_train_dflash_wrapper_selects_the_strategy(workdir):
    """``train-dflash --strategy dspark --loss-type lk-lambda`` writes (and SpecForge plans) the config; that config
    trains with CPU settings the wrapper has no flags for."""
    out = "cpu_offline_run/out-wrapper"
    wrapper = subprocess.run(
        [
            sys.executable,
            "-m",
            "specforge_dpace.cli",
            "train-dflash",
            "--runtime",
            "unified",
            "--strategy",
            "dspark",
            "--loss-type",
            "lk-lambda",
            "--target-model-path",
            "cpu_offline_run/target",
            "--draft-config-path",
            "cpu_offline_run/draft-dspark/config.json",
            "--hidden-states-path",
            "cpu_offline_run/features",
            "--output-dir",
            out,
            "--attention-backend",
            "sdpa",
            "--num-epochs",
            "1",
            "--batch-size",
            "2",
            "--max-length",
            "64",
            "--dataloader-num-workers",
            "0",
            "--num-anchors",
            "8",
            "--log-interval",
            "1",
            "--save-interval",
            "3",
            "--plan",
        ],
        cwd=workdir,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=170,
    )
    assert wrapper.returncode == 0, wrapper.stdout[-3000:]
    written = workdir / out / "specforge_config.yaml"
    text = written.read_text()
    assert "strategy: dspark" in text and "loss_type: lk-lambda" in text
    command = [sys.executable, "-m", "specforge.cli", "train", "--config", str(written)]
    cpu = ["training.fsdp_sharding=NO_SHARD", "model.torch_dtype=float32", "training.max_steps=3"]
    result = subprocess.run(
        [*command, *cpu],
        cwd=workdir,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=170,
    )
    rows = _steps(_ok(result))
    assert sorted(rows) == [1, 2, 3] and all("soft_tau" in row for row in rows.values())
    assert _state(workdir, out, "out-wrapper", 3)["dspark_loss_type"] == "lk-lambda"
