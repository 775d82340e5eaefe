"""Flag parsing of ``specforge-dpace train-dflash``: every flag documented, objective flags validated."""

from __future__ import annotations

import argparse

import pytest

from specforge_dpace.train import args as train_args
from specforge_dpace.train.cli import DESCRIPTION, configure
from specforge_dpace.train.legacy_args import add_objective_args, option_value, widened_loss_type_choices


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="train-dflash")
    configure(parser)
    return parser


BASE = ["--target-model-path", "t", "--train-data-path", "d.jsonl", "--output-dir", "out"]


def test_every_flag_has_help_and_the_familiar_legacy_flags_exist():
    parser = _parser()
    flags = {opt: action for action in parser._actions for opt in action.option_strings}
    for name in (
        "--target-model-path",
        "--draft-config-path",
        "--train-data-path",
        "--output-dir",
        "--block-size",
        "--num-anchors",
        "--loss-decay-gamma",
        "--attention-backend",
        "--num-epochs",
        "--batch-size",
        "--learning-rate",
        "--loss-type",
        "--loss-option",
        "--dpace-alpha",
        "--specforge-root",
    ):
        assert name in flags, name
    for opt, action in flags.items():
        assert action.help and action.help.strip(), f"{opt} has no help text"
    assert "--loss-type" in DESCRIPTION and "unified" in DESCRIPTION


def test_loss_type_accepts_composites_and_options_collect_into_a_dict():
    args = _parser().parse_args(
        BASE
        + [
            "--loss-type",
            "dflash(gamma=10) + 0.3*first-error-focal + 40*chain",
            "--loss-option",
            "alpha=0.3",
            "--loss-option",
            "flag=true",
        ]
    )
    assert args.loss_type == "dflash(gamma=10) + 0.3*first-error-focal + 40*chain"
    assert args.loss_options == {"alpha": 0.3, "flag": True}


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--loss-type", "dpase"], "registered objectives"),
        (["--loss-type", "dpace +"], "Grammar"),
        (["--loss-option", "alpha"], "KEY=VALUE"),
        (["--loss-option", "alpha=1", "--loss-option", "alpha=2"], "given twice"),
    ],
)
def test_bad_objective_flags_are_usage_errors(capsys, argv, fragment):
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args(BASE + argv)
    assert exc.value.code == 2
    assert fragment in capsys.readouterr().err


def test_gamma_with_a_dpace_objective_warns_and_with_dflash_does_not():
    parser = _parser()
    with pytest.warns(UserWarning, match="ignored"):
        train_args.objective_of(parser.parse_args(BASE + ["--loss-type", "dpace", "--loss-decay-gamma", "7"]))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spec, alpha, options = train_args.objective_of(
            parser.parse_args(BASE + ["--loss-type", "dflash + 0.3*chain", "--loss-decay-gamma", "7"])
        )
    assert (spec, alpha, options) == ("dflash + 0.3*chain", None, {})


@pytest.mark.parametrize(
    "text, value", [("0.3", 0.3), ("7", 7), ("1e-3", 1e-3), ("True", True), ("none", None), ("fast", "fast")]
)
def test_option_values(text, value):
    assert option_value(text) == value


def _legacy_parser(choices=True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    group = parser.add_argument_group("model")
    if choices:
        group.add_argument("--loss-type", type=str, default="dflash", choices=["dflash", "dpace", "vp_drafter"])
    return parser


def test_add_objective_args_widens_an_existing_flag_and_keeps_checkout_names():
    parser = add_objective_args(_legacy_parser())
    assert parser.parse_args(["--loss-type", "auf + chain"]).loss_type == "auf + chain"
    assert parser.parse_args(["--loss-type", "vp_drafter"]).loss_type == "vp_drafter"  # checkout-only name
    args = parser.parse_args(["--loss-option", "alpha=0.2", "--dpace-alpha", "0.4"])
    assert (args.loss_type, args.loss_options, args.dpace_alpha) == ("dflash", {"alpha": 0.2}, 0.4)


def test_add_objective_args_adds_missing_flags_to_a_pre_dpace_parser():
    args = add_objective_args(_legacy_parser(choices=False)).parse_args([])
    assert (args.loss_type, args.dpace_alpha, args.loss_options) == ("dflash", 0.5, None)


def test_widened_choices_only_while_active():
    with widened_loss_type_choices():
        assert _legacy_parser().parse_args(["--loss-type", "first-error-focal"]).loss_type == "first-error-focal"
    with pytest.raises(SystemExit):
        _legacy_parser().parse_args(["--loss-type", "first-error-focal"])
