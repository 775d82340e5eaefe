"""Every value given to ``train-dflash`` is honoured or refused, in both runtimes (``0`` is a value).

Every number is checked at parse time against its range (``specforge_dpace._numbers``): finite, an
upper bound where it sizes memory or processes, and SpecForge's own lower bound, so a value SpecForge's
real schema would refuse is refused before anything (the range agrees with the schema: checked here by
handing the schema that value directly).  Unified: the value reaches the translated config.  Legacy:
the value reaches the checkout script's command line, or the wrapper refuses it up front naming the
flag.  With a draft config, its own ``block_size`` / ``num_hidden_layers`` win unless a flag is given
(checked with SpecForge's own draft-config resolution).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from specforge_dpace._numbers import Range
from specforge_dpace.train.args import legacy_value_errors
from specforge_dpace.train.cli import configure
from specforge_dpace.train.launch import legacy_argv
from specforge_dpace.train.translate import SchemaError, TranslationError, dump_yaml, unified_config, validate

yaml = pytest.importorskip("yaml")

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "hooks"))
from legacy_standin import write_tree  # noqa: E402

OFFLINE = ("--target-model-path", "Qwen/Qwen3-8B", "--hidden-states-path", "/features", "--output-dir", "/runs/r")

# At 0, SpecForge's schema accepts these (flag -> the config field that must hold the 0) ...
UNIFIED_HONOURED = {
    "--mask-token-id": "model.mask_token_id",
    "--loss-decay-gamma": "training.loss_decay_gamma",  # <= 0: no decay, in SpecForge and in the plugin
    "--dataloader-num-workers": "data.dataloader_num_workers",
    "--warmup-ratio": "training.warmup_ratio",
    "--seed": "training.seed",
    "--eval-interval": "training.eval_interval",  # 0 disables evaluation
    "--save-interval": "training.save_interval",  # 0: checkpoint only at the end
    "--dpace-alpha": "training.dpace_alpha",
}
# ... and refuses these (flag -> the field its error must name).
UNIFIED_REFUSED = {
    "--block-size": "model.draft_block_size",
    "--num-draft-layers": "model.draft_num_hidden_layers",
    "--num-anchors": "training.num_anchors",
    "--build-dataset-num-proc": "data.build_dataset_num_proc",
    "--max-length": "data.max_length",
    "--num-epochs": "training.num_epochs",
    "--batch-size": "training.batch_size",
    "--learning-rate": "training.learning_rate",
    "--max-grad-norm": "training.max_grad_norm",
    "--accumulation-steps": "training.accumulation_steps",
    "--tp-size": "training.tp_size",
    "--dist-timeout": "training.dist_timeout",
    "--log-interval": "training.log_interval",
    "--sglang-mem-fraction-static": "model.sglang_mem_fraction_static",
    "--sglang-context-length": "model.sglang_context_length",
    "--sglang-ep-size": "model.sglang_ep_size",
    "--nproc-per-node": "deployment.trainer.nproc_per_node",
}
UNIFIED_NO_EQUIVALENT = {"--sglang-piecewise-cuda-graph-max-tokens"}
# The legacy script divides by these (or 0 zeroes every gradient): refused at 0; every other flag is forwarded.
LEGACY_REFUSED = {
    "--batch-size",
    "--accumulation-steps",
    "--log-interval",
    "--save-interval",
    "--eval-interval",
    "--max-grad-norm",
}
LEGACY_NOT_FORWARDED = {"--dpace-alpha", "--nproc-per-node"}  # dpace-alpha: see the generation test below


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    configure(parser)
    return parser


def _numeric_flags() -> list[str]:
    return sorted(
        opt
        for action in _parser()._actions
        for opt in action.option_strings
        if opt.startswith("--") and (isinstance(action.type, Range) or action.type in (int, float))
    )


def _action(flag: str) -> argparse.Action:
    return next(a for a in _parser()._actions if flag in a.option_strings)


NUMERIC = _numeric_flags()


def _get(config: dict, dotted: str):
    node = config
    for key in dotted.split("."):
        node = node[key]
    return node


def test_every_numeric_flag_has_a_decision_at_zero():
    decided = set(UNIFIED_HONOURED) | set(UNIFIED_REFUSED) | UNIFIED_NO_EQUIVALENT
    assert set(NUMERIC) == decided, set(NUMERIC) ^ decided
    assert not set(UNIFIED_HONOURED) & set(UNIFIED_REFUSED)


@pytest.mark.parametrize("flag", sorted(UNIFIED_HONOURED))
def test_unified_zero_reaches_the_config_and_specforge_accepts_it(specforge_installed, flag):
    config = unified_config(_parser().parse_args([*OFFLINE, flag, "0"]))
    assert _get(config, UNIFIED_HONOURED[flag]) == 0
    assert _get(yaml.safe_load(dump_yaml(config)), UNIFIED_HONOURED[flag]) == 0
    validated = validate(config)
    section, field = UNIFIED_HONOURED[flag].split(".")
    assert getattr(getattr(validated, section), field) == 0


def test_every_numeric_flag_is_checked_at_parse_time():
    for flag in NUMERIC:  # no bare int / float: inf, nan and absurd sizes pass those (tests/test_numbers.py: --help)
        assert isinstance(_action(flag).type, Range), flag


@pytest.mark.parametrize("flag", sorted(UNIFIED_REFUSED))
def test_a_zero_specforge_refuses_is_refused_at_parse_time_and_the_range_agrees_with_the_schema(
    specforge_installed, flag, capsys
):
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args([*OFFLINE, flag, "0"])
    assert exc.value.code == 2 and f"argument {flag}: 0 is invalid; accepted: " in capsys.readouterr().err
    # SpecForge's real schema refuses the same 0 (handed to it directly), naming the flag and the field ...
    args = _parser().parse_args(list(OFFLINE))
    setattr(args, _action(flag).dest, 0)
    with pytest.raises(SchemaError) as refused:
        validate(unified_config(args))
    message = str(refused.value)
    assert f"{flag} 0" in message and f"({UNIFIED_REFUSED[flag]})" in message and "greater than 0" in message
    # ... and accepts the smallest value the range accepts
    rng = _action(flag).type
    smallest = rng.low if not rng.low_open else (rng.low + 1 if rng.kind is int else rng.low + 1e-9)
    setattr(args, _action(flag).dest, rng.kind(smallest))
    assert _get(validate(unified_config(args)).model_dump(), UNIFIED_REFUSED[flag]) == rng.kind(smallest)


@pytest.mark.parametrize("value", ["inf", "nan", "1e309"])
def test_non_finite_numbers_are_refused_at_parse_time(capsys, value):
    for flag in ("--learning-rate", "--loss-decay-gamma", "--warmup-ratio", "--max-grad-norm", "--dpace-alpha"):
        with pytest.raises(SystemExit):
            _parser().parse_args([*OFFLINE, flag, value])
        assert f"argument {flag}: {value} is invalid (not finite)" in capsys.readouterr().err


def test_unified_value_without_an_equivalent_is_an_error():
    with pytest.raises(TranslationError, match="--sglang-piecewise-cuda-graph-max-tokens: no unified equivalent"):
        unified_config(_parser().parse_args([*OFFLINE, "--sglang-piecewise-cuda-graph-max-tokens", "1"]))


def _zero_parses(flag: str) -> bool:
    return _action(flag).type.contains(0)


@pytest.mark.parametrize("flag", [f for f in NUMERIC if f not in UNIFIED_NO_EQUIVALENT | LEGACY_NOT_FORWARDED])
def test_legacy_zero_is_forwarded_or_refused(flag, capsys):
    if not _zero_parses(flag):
        with pytest.raises(SystemExit):
            _parser().parse_args([*OFFLINE, flag, "0"])
        assert f"argument {flag}: 0 is invalid" in capsys.readouterr().err
        return
    args = _parser().parse_args([*OFFLINE, flag, "0"])
    errors = legacy_value_errors(args)
    if flag in LEGACY_REFUSED:
        assert len(errors) == 1 and errors[0].startswith(f"{flag} 0") and "> 0" in errors[0]
    else:
        assert errors == []
        argv = legacy_argv(args, "dpace")
        assert argv[argv.index(flag) + 1] in ("0", "0.0")


@pytest.mark.parametrize("generation, forwarded", [("dpace", True), ("pre-dpace", False)])
def test_legacy_dpace_alpha_zero_is_forwarded_to_a_script_that_has_the_flag(generation, forwarded):
    argv = legacy_argv(_parser().parse_args([*OFFLINE, "--dpace-alpha", "0"]), generation)
    assert (argv[argv.index("--dpace-alpha") + 1] == "0.0") if forwarded else "--dpace-alpha" not in argv


@pytest.mark.parametrize("flag", ["--output-dir", "--run-id", "--config-out"])
def test_empty_wrapper_values_are_refused_not_replaced(flag):
    with pytest.raises(TranslationError, match=f"{flag} '': empty"):
        unified_config(_parser().parse_args([*OFFLINE, flag, ""]))


def _run(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "specforge_dpace.cli", "train-dflash", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=REPO,
    )


def test_unified_dry_run_keeps_zeros_and_exits_non_zero_when_the_schema_refuses(tmp_path):
    pytest.importorskip("specforge.config.schema")
    base = ["--runtime", "unified", *OFFLINE[:4], "--output-dir", str(tmp_path / "r"), "--dry-run"]
    good = _run(*base, "--seed", "0", "--warmup-ratio", "0", "--dataloader-num-workers", "0", "--save-interval", "0")
    assert good.returncode == 0, good.stderr
    config = yaml.safe_load(good.stdout)
    assert config["training"]["seed"] == 0 and config["training"]["warmup_ratio"] == 0
    assert config["data"]["dataloader_num_workers"] == 0 and config["training"]["save_interval"] == 0
    for flag, value in (("--max-grad-norm", "0"), ("--dpace-alpha", "1.5"), ("--learning-rate", "inf")):
        bad = _run(*base, "--loss-type", "dpace", flag, value)
        assert bad.returncode == 2, (flag, bad.stdout, bad.stderr)
        assert f"argument {flag}: {value} is invalid" in bad.stderr and "accepted: " in bad.stderr
        assert bad.stdout == ""  # no config for a script to consume
    assert not (tmp_path / "r").exists()


def test_legacy_dry_run_forwards_zeros_and_refuses_a_zero_divisor(tmp_path):
    tree = write_tree(tmp_path / "checkout", "dpace")
    base = ["--specforge-root", str(tree), *OFFLINE[:2], "--train-data-path", "d.jsonl"]
    base += ["--output-dir", str(tmp_path / "o"), "--dry-run"]
    good = _run(*base, "--seed", "0", "--warmup-ratio", "0", "--dataloader-num-workers", "0", "--dpace-alpha", "0")
    assert good.returncode == 0, good.stderr
    for fragment in ("--seed 0", "--warmup-ratio 0.0", "--dataloader-num-workers 0", "--dpace-alpha 0.0"):
        assert fragment in good.stdout
    bad = _run(*base, "--save-interval", "0", "--eval-interval", "0")  # 0 parses (unified: off); legacy divides
    assert bad.returncode == 2
    assert "--save-interval 0: accepted: a value > 0" in bad.stderr and "--eval-interval 0" in bad.stderr


# -- the draft config's own values win unless a flag is given ---------------------------------------------------


def _draft_json(tmp_path: Path) -> Path:
    path = tmp_path / "draft.json"
    path.write_text(
        json.dumps(
            {
                "architectures": ["DFlashDraftModel"],
                "model_type": "qwen3",
                "vocab_size": 64,
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 3,
                "num_attention_heads": 2,
                "num_key_value_heads": 1,
                "head_dim": 16,
                "block_size": 8,
                "num_target_layers": 4,
                "dflash_config": {"target_layer_ids": [1, 2], "mask_token_id": 63},
            }
        )
    )
    return path


def _resolved_draft(config: dict):
    """SpecForge's own resolution of the draft config a run of ``config`` trains."""
    from specforge.algorithms.builtin import builtin_algorithm_registry
    from specforge.training.model_loading import resolve_draft_config

    provider = builtin_algorithm_registry().resolve("dflash").providers.model.draft_config
    return resolve_draft_config(validate(config), provider=provider)


def test_unified_keeps_the_draft_configs_block_size_and_layers(specforge_installed, tmp_path):
    draft = _draft_json(tmp_path)
    config = unified_config(_parser().parse_args([*OFFLINE, "--draft-config-path", str(draft)]))
    assert "draft_block_size" not in config["model"] and "draft_num_hidden_layers" not in config["model"]
    resolved = _resolved_draft(config)
    assert (resolved.block_size, resolved.num_hidden_layers) == (8, 3)


def test_unified_flags_given_explicitly_override_the_draft_config(specforge_installed, tmp_path):
    draft = _draft_json(tmp_path)
    argv = [*OFFLINE, "--draft-config-path", str(draft), "--block-size", "4", "--num-draft-layers", "2"]
    with pytest.warns(UserWarning, match="--block-size 4 overrides block_size=8"):
        config = unified_config(_parser().parse_args(argv))
    resolved = _resolved_draft(config)
    assert (resolved.block_size, resolved.num_hidden_layers) == (4, 2)


def test_unified_without_a_draft_config_writes_the_legacy_defaults():
    config = unified_config(_parser().parse_args(list(OFFLINE)))
    assert (config["model"]["draft_block_size"], config["model"]["draft_num_hidden_layers"]) == (16, 1)


def test_legacy_refuses_a_flag_its_script_would_ignore_for_the_draft_config(tmp_path):
    draft = _draft_json(tmp_path)
    same = _parser().parse_args([*OFFLINE, "--draft-config-path", str(draft), "--block-size", "8"])
    assert legacy_value_errors(same) == []
    other = _parser().parse_args([*OFFLINE, "--draft-config-path", str(draft), "--num-draft-layers", "1"])
    (error,) = legacy_value_errors(other)
    assert "--num-draft-layers 1" in error and "num_hidden_layers=3" in error and "ignores the flag" in error
