"""Objective options and weights: NaN, infinities, wrong types and negative weights are refused by
name in the Python API, the spec grammar, the `losses` CLI and SpecForge's YAML schema."""

from __future__ import annotations

import subprocess
import sys

import pytest

from specforge_dpace.losses import BlockObjective, CompositeObjective, SpecError, build_loss
from specforge_dpace.losses._base import OptionError

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    "name,key,value",
    [("dpace", "alpha", NAN), ("dflash", "gamma", INF), ("dflash", "gamma", -INF), ("dpace", "alpha", INF)],
)
def test_python_api_refuses_non_finite_options_by_name(name, key, value):
    with pytest.raises(OptionError, match=rf"{name}: option {key}={value!r} is not a finite number"):
        build_loss(name, **{key: value})


@pytest.mark.parametrize(
    "spec,error",
    [
        ("dpace(alpha=nan)", "option alpha=nan is not a finite number"),
        ("dflash(gamma=inf)", "option gamma=inf is not a finite number"),
        ("dflash(gamma=-inf)", "option gamma=-inf is not a finite number"),
        ("1e400*chain", "weight 1e400 is not a finite number"),
        ("dpace + 1e999*chain", "weight 1e999 is not a finite number"),
        ("nan*chain", "weight 'nan' is not a finite number"),
        ("-0.5*chain", "weight -0.5 is negative; weights must be >= 0"),
        ("dpace + -2*chain", "weight -2 is negative; weights must be >= 0"),
    ],
)
def test_spec_strings_refuse_non_finite_values_and_negative_weights(spec, error):
    with pytest.raises(ValueError, match=error):
        build_loss(spec)


def test_a_spec_error_is_a_value_error_with_the_grammar():
    with pytest.raises(SpecError, match="Grammar: spec :="):
        build_loss("1e400*chain")


@pytest.mark.parametrize("weight,error", [(-1.0, "is negative"), (NAN, "not a finite"), (INF, "not a finite")])
def test_composites_built_in_python_check_their_weights(weight, error):
    with pytest.raises(ValueError, match=error):
        CompositeObjective([(1.0, build_loss("dpace")), (weight, build_loss("chain"))])


def test_zero_weight_is_a_value_and_is_honoured():
    composite = build_loss("dpace + 0*chain")
    assert composite.weights == [1.0, 0.0]
    assert composite.spec() == "dpace + 0*chain"


@pytest.mark.parametrize("value", [True, "0.3", [0.3]])
def test_wrong_types_are_value_errors_too(value):
    """So pydantic turns them into a validation error on the field instead of a TypeError traceback."""
    with pytest.raises(ValueError, match="option alpha=.* has type"):
        build_loss("dpace", alpha=value)
    with pytest.raises(TypeError):  # and still a TypeError for callers that catch that
        build_loss("dpace", alpha=value)


def test_objective_constructor_applies_the_same_checks():
    class Plugin(BlockObjective):
        name = "plugin"
        from specforge_dpace.losses import Option

        options = {"scale": Option(1.0)}

    with pytest.raises(ValueError, match="scale=nan is not a finite number"):
        Plugin(scale=NAN)


@pytest.mark.parametrize(
    "spec,error",
    [("dpace(alpha=nan)", "alpha=nan is not a finite number"), ("1e400*chain", "weight 1e400 is not a finite")],
)
def test_cli_refuses_them_with_the_message_and_a_nonzero_exit(spec, error):
    result = subprocess.run(
        [sys.executable, "-m", "specforge_dpace", "losses", "--try", spec],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert error in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "training,error",
    [
        ("  loss_type: dpace\n  loss_options: {alpha: .nan}\n", "alpha=nan is not a finite number"),
        ("  loss_type: 'dflash(gamma=inf)'\n", "gamma=inf is not a finite number"),
        ("  loss_type: '1e400*chain'\n", "weight 1e400 is not a finite number"),
        ("  loss_type: dpace\n  loss_options: {alpha: true}\n", "option alpha=True has type bool"),
        ("  loss_type: dpace\n  loss_options: {alpha: 'x'}\n", "option alpha='x' has type str"),
        ("  loss_type: chain\n  loss_options: {fused: 3}\n", "option fused=3 has type int"),
        ("  loss_type: dpace\n  dpace_alpha: 1.5\n", "dpace_alpha"),
    ],
)
def test_yaml_values_become_validation_errors_on_the_field(specforge_installed, tmp_path, training, error):
    from pydantic import ValidationError
    from specforge.config import load_config

    path = tmp_path / "run.yaml"
    path.write_text(
        f"model:\n  target_model_path: {tmp_path / 'target'}\ndata:\n  hidden_states_path: {tmp_path / 'f'}\n"
        "training:\n  strategy: dflash\n  attention_backend: sdpa\n" + training
    )
    with pytest.raises(ValidationError, match=error):
        load_config(str(path))
