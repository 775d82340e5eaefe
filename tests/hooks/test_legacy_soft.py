"""Soft-label objectives on the legacy layout are refused: the hook's constructor and the train-dflash wrapper.

The legacy forward never receives the target's last hidden state, so a soft-label objective
(``lk-lambda``, ``soft-<name>``, a composite with such a term) cannot be honoured there; both the
patched constructor and ``specforge-dpace train-dflash`` on a legacy checkout refuse it by name,
and hard objectives still build.  Stand-in checkouts of every generation (tests/hooks/legacy_standin).
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("specforge.modeling.draft.dflash")

from legacy_standin import GENERATIONS, build, dflash_source, load_dflash, tiny_parts, write_tree

from specforge_dpace.hooks import _legacy

REPO = Path(__file__).resolve().parents[2]
SOFT = ["lk-lambda", "soft-dpace", "dpace + 0.5*lk-lambda", "kl(temperature=0.5)"]
_counter = itertools.count()


def _fresh(tmp_path, generation):
    path = tmp_path / f"dflash_soft_{next(_counter)}.py"
    path.write_text(dflash_source(generation))
    return load_dflash(path, f"legacy_soft_{generation.replace('-', '_')}_{next(_counter)}")


@pytest.mark.parametrize("generation", GENERATIONS)
@pytest.mark.parametrize("spec", SOFT)
def test_the_patched_constructor_refuses_soft_objectives_by_name(tmp_path, generation, spec):
    module = _fresh(tmp_path, generation)
    _legacy.apply(module)
    try:
        with pytest.raises(ValueError, match="soft-label objectives need the unified runtime") as caught:
            build(module, loss_type=spec, parts=tiny_parts())
        assert "loss_type=" in str(caught.value) and "target_last_hidden_states" in str(caught.value)
        assert build(module, loss_type="chain", parts=tiny_parts())._specforge_dpace_plan.spec == "chain"
    finally:
        _legacy.revert(module)


def test_soft_objective_error_names_the_spec_and_passes_hard_ones():
    message = _legacy.soft_objective_error("dpace + 0.5 * lk-lambda")
    assert message and "'dpace + 0.5*lk-lambda'" in message and "unified runtime" in message
    for hard in ("dflash", "dpace", "chain", "dflash(gamma=10) + 0.3*first-error-focal"):
        assert _legacy.soft_objective_error(hard) is None
    assert _legacy.soft_objective_error("no-such-loss") is None  # the constructor reports it in full


def _wrapper(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "specforge_dpace.cli", "train-dflash", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=REPO,
    )


def test_train_dflash_refuses_a_soft_objective_on_a_legacy_checkout_before_running(tmp_path):
    tree = write_tree(tmp_path / "checkout", "dpace")
    common = ["--specforge-root", str(tree), "--output-dir", str(tmp_path / "out"), "--target-model-path", "tiny"]
    common += ["--train-data-path", "none", "--dry-run"]
    refused = _wrapper(*common, "--loss-type", "lk-lambda")
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert (
        "loss_type='lk-lambda'" in refused.stderr and "soft-label objectives need the unified runtime" in refused.stderr
    )
    assert str(tree) in refused.stderr and "legacy checkout" in refused.stderr
    accepted = _wrapper(*common, "--loss-type", "chain")
    assert accepted.returncode == 0, accepted.stderr[-2000:]
    assert f"legacy checkout {tree}" in accepted.stdout
