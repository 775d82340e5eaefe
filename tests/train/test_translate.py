"""Legacy flags -> SpecForge unified YAML, checked through SpecForge's own schema (hook installed)."""

from __future__ import annotations

import argparse

import pytest

from specforge_dpace.train.cli import configure
from specforge_dpace.train.translate import TranslationError, dump_yaml, unified_config, validate

yaml = pytest.importorskip("yaml")


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    configure(parser)
    return parser.parse_args(["--target-model-path", "Qwen/Qwen3-8B", "--output-dir", "/runs/qwen3-dpace", *argv])


ONLINE = ("--train-data-path", "data.jsonl", "--server-url", "http://127.0.0.1:30000")


def test_legacy_defaults_and_given_flags_land_in_their_sections():
    config = unified_config(
        _args(
            *ONLINE,
            "--block-size",
            "16",
            "--num-anchors",
            "256",
            "--batch-size",
            "4",
            "--loss-type",
            "dpace",
            "--dpace-alpha",
            "0.3",
            "--report-to",
            "wandb",
            "--wandb-project",
            "p",
            "--nproc-per-node",
            "8",
        )
    )
    assert config["model"] == {
        "target_model_path": "Qwen/Qwen3-8B",
        "draft_block_size": 16,
        "draft_num_hidden_layers": 1,
    }
    training = config["training"]
    assert training["strategy"] == "dflash" and training["num_anchors"] == 256 and training["batch_size"] == 4
    assert (training["learning_rate"], training["warmup_ratio"], training["max_grad_norm"]) == (6e-4, 0.04, 1.0)
    assert training["num_epochs"] == 6 and config["data"]["max_length"] == 3072  # legacy defaults
    assert (training["loss_type"], training["dpace_alpha"]) == ("dpace", 0.3)
    assert "eval_interval" not in training  # SpecForge wants eval data and eval_interval together
    assert config["tracking"] == {"report_to": "wandb", "wandb_project": "p"}
    assert config["run_id"] == "qwen3-dpace" and config["output_dir"] == "/runs/qwen3-dpace"
    deployment = config["deployment"]
    assert deployment["mode"] == "disaggregated" and deployment["trainer"]["nproc_per_node"] == 8
    assert deployment["disaggregated"]["server_urls"] == ["http://127.0.0.1:30000"]


def test_offline_features_train_colocated():
    config = unified_config(_args("--hidden-states-path", "/features", "--attention-backend", "sdpa"))
    assert config["data"]["hidden_states_path"] == "/features"
    assert config["deployment"] == {"mode": "local_colocated", "trainer": {"nnodes": 1, "nproc_per_node": 1}}


def test_composite_and_options_are_emitted_as_plugin_keys():
    config = unified_config(_args(*ONLINE, "--loss-type", "dpace", "--loss-option", "alpha=0.2"))
    assert config["training"]["loss_options"] == {"alpha": 0.2}
    spec = "dflash(gamma=10) + 0.3*first-error-focal + 40*chain"
    assert unified_config(_args(*ONLINE, "--loss-type", spec))["training"]["loss_type"] == spec


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (("--resume",), "--resume: no unified equivalent"),
        (("--target-model-backend", "hf"), "SGLang only"),
        (("--sglang-enable-piecewise-cuda-graph",), "no unified equivalent"),
    ],
)
def test_flags_without_unified_equivalent_are_errors(argv, fragment):
    with pytest.raises(TranslationError, match=fragment):
        unified_config(_args(*ONLINE, *argv))


def test_online_without_a_capture_server_is_an_error():
    with pytest.raises(TranslationError, match="--server-url"):
        unified_config(_args("--train-data-path", "data.jsonl"))


def test_passthrough_flags_are_rejected():
    args = _args(*ONLINE)
    args.passthrough = ["--tp-size-foo", "2"]
    with pytest.raises(TranslationError, match="legacy checkout"):
        unified_config(args)


@pytest.mark.parametrize("loss", ["dflash", "dpace", "dflash(gamma=10) + 0.3*first-error-focal + 40*chain"])
def test_yaml_round_trips_through_specforge_schema(specforge_installed, loss):
    config = unified_config(_args(*ONLINE, "--loss-type", loss))
    text = dump_yaml(config)
    assert yaml.safe_load(text) == config
    validated = validate(yaml.safe_load(text))
    assert validated.training.loss_type == loss


def test_schema_rejects_an_unknown_objective_in_yaml(specforge_installed):
    config = unified_config(_args(*ONLINE))
    config["training"]["loss_type"] = "dpase"
    with pytest.raises(ValueError, match="dpase"):
        validate(config)
