"""``training.eval_walk`` and ``training.best_metric``: validation in SpecForge's real ``TrainingConfig``, the
refusals at ``resolve_run`` time, the target's last hidden state for T > 0 walks, the resume contract and the
checkpoint manager's metric (real SpecForge 0.2.0 classes; ``specforge train`` runs in tests/e2e)."""

from __future__ import annotations

import pytest

from specforge_dpace.hooks._eval_settings import (
    CONTRACT_KEY,
    EvalWalkSettings,
    parse_eval_walk,
    settings_of_training,
    with_best_metric,
)


def test_defaults_and_every_key():
    assert parse_eval_walk(None) == parse_eval_walk({}) == EvalWalkSettings()
    settings = parse_eval_walk(
        {"enabled": True, "anchor_stride": 4, "temperatures": [0.7, 1], "blocks_per_forward": 64}
    )
    assert (settings.anchor_stride, settings.temperatures, settings.blocks_per_forward) == (4, (0.7, 1.0), 64)
    assert settings.temperatures_required and not EvalWalkSettings().temperatures_required
    assert settings.metric_names() == [
        "eval/tau_walk",
        "eval/tau_walk_sample@T0.7",
        "eval/tau_walk_greedy_draft@T0.7",
        "eval/tau_walk_sample@T1",
        "eval/tau_walk_greedy_draft@T1",
    ]
    assert parse_eval_walk({"enabled": False}).metric_names() == []


@pytest.mark.parametrize(
    "value,bad",
    [
        ({"anchor_stride": 0}, "anchor_stride=0"),
        ({"anchor_stride": True}, "anchor_stride=True"),
        ({"temperatures": [1.0, 1]}, "temperatures=[1.0, 1]"),
        ({"temperatures": [0.0]}, "temperatures=[0.0]"),
        ({"temperatures": 1.0}, "temperatures=1.0"),
        ({"blocks_per_forward": 0}, "blocks_per_forward=0"),
        ({"enabled": "yes"}, "enabled='yes'"),
        ({"stride": 2}, "unknown key(s) ['stride']"),
        ([1], "training.eval_walk=[1]"),
    ],
)
def test_bad_values_are_named_with_what_is_accepted(value, bad):
    with pytest.raises(ValueError) as caught:
        parse_eval_walk(value)
    assert bad in str(caught.value) and "training.eval_walk accepts a mapping with enabled" in str(caught.value)


def test_the_best_metric_must_be_one_the_run_reports_and_higher_is_better():
    settings = parse_eval_walk({"temperatures": [0.5]})
    assert with_best_metric(settings, "eval/tau_walk_sample@T0.5").temperatures_required
    assert with_best_metric(EvalWalkSettings(), "eval/tau_walk").contract_value() == "eval/tau_walk (anchor_stride 1)"
    assert with_best_metric(EvalWalkSettings(), "eval/avg_acc").contract_value() == "eval/avg_acc"
    assert EvalWalkSettings().contract_value() == "eval/simulated_acc_len"
    for metric, why in (
        ("eval/avg_loss", "a loss is better lower"),
        ("eval/tau_walk_sample@T1", "needs that temperature in training.eval_walk.temperatures"),
        ("eval/tau_walk", "training.eval_walk.enabled is false"),
        ("tau_walk", "accepted: eval/tau_walk, eval/tau_walk_sample@T0.5"),
    ):
        walk = settings if metric != "eval/tau_walk" else parse_eval_walk({"enabled": False})
        with pytest.raises(ValueError, match=why.replace("(", r"\(")):
            with_best_metric(walk, metric)


@pytest.fixture(scope="module")
def installed():
    pytest.importorskip("specforge")
    import specforge_dpace

    specforge_dpace.install()


def _config(tmp_path=None, *, strategy="dflash", eval_path="eval", **training):
    from specforge.config.schema import Config

    data = {"hidden_states_path": str(tmp_path or "features"), "max_length": 64}
    if eval_path is not None:
        data["eval_hidden_states_path"] = str(eval_path)
        training.setdefault("eval_interval", 10)
    return Config.model_validate(
        {
            "model": {"target_model_path": "tiny-target", "draft_model_config": "draft/config.json"},
            "data": data,
            "training": {"strategy": strategy, "attention_backend": "sdpa", **training},
        }
    )


def test_specforges_config_takes_and_checks_the_fields(installed):
    cfg = _config(eval_walk={"anchor_stride": 2}, best_metric="eval/tau_walk")
    assert settings_of_training(cfg.training) == EvalWalkSettings(anchor_stride=2, best_metric="eval/tau_walk")
    with pytest.raises(ValueError, match=r"training.eval_walk.anchor_stride=-1 is invalid"):
        _config(eval_walk={"anchor_stride": -1})
    with pytest.raises(ValueError, match=r"training.best_metric='eval/avg_loss' is not accepted"):
        _config(best_metric="eval/avg_loss")
    assert settings_of_training(_config().training) == EvalWalkSettings()  # nothing named: SpecForge's default


def _resolve(cfg):
    from specforge.application import composition

    return composition.resolve_run(cfg)


@pytest.mark.parametrize(
    "kwargs,error",
    [
        (dict(eval_path=None, best_metric="eval/tau_walk"), "has no effect without SpecForge's offline evaluation"),
        (dict(eval_path=None, eval_walk={"anchor_stride": 2}), "set data.eval_hidden_states_path and"),
    ],
)
def test_settings_a_run_would_ignore_are_refused(installed, kwargs, error):
    with pytest.raises(ValueError, match=error):
        _resolve(_config(**kwargs))


def test_walks_at_a_temperature_ask_dflash_and_domino_for_the_targets_last_hidden_state(installed, tmp_path):
    import torch

    from specforge_dpace.evaluate import tiny_target
    from specforge_dpace.features.capture import capture_offline_features
    from specforge_dpace.hooks import _composition, _target_hidden

    target = tiny_target(vocab_size=32, hidden_size=32, num_hidden_layers=3)
    records = [{"input_ids": torch.arange(10), "loss_mask": torch.ones(10, dtype=torch.long)}]
    capture_offline_features(target, records, tmp_path / "with", [0, 1], progress=False, last_hidden=True)
    capture_offline_features(target, records, tmp_path / "without", [0, 1], progress=False)
    from specforge.algorithms.builtin import builtin_algorithm_registry

    registry = builtin_algorithm_registry()
    for strategy in ("dflash", "domino"):
        plain = registry.resolve(strategy)
        default = _config(tmp_path / "without", strategy=strategy, eval_path=tmp_path / "without")
        assert _composition.registration_for(default, plain) is plain  # the default asks for nothing
        for training in ({"eval_walk": {"temperatures": [1.0]}}, {"best_metric": "eval/tau_walk_greedy_draft@T1"}):
            cfg = _config(tmp_path / "with", strategy=strategy, eval_path=tmp_path / "with", **training)
            assert _target_hidden.carries_target_hidden(_composition.registration_for(cfg, plain))
    cfg = _config(tmp_path / "with", eval_path=tmp_path / "without", eval_walk={"temperatures": [1.0]})
    with pytest.raises(ValueError, match=r"the eval walks at T = 1 .* need the target's distribution p") as caught:
        _resolve(cfg)
    assert "data.eval_hidden_states_path" in str(caught.value)


@pytest.mark.parametrize("method", ["dflash", "domino", "dspark"])
def test_the_resume_contract_records_a_named_metric(installed, method, tmp_path):
    import importlib

    import torch
    from _tiny_methods import tiny_domino, tiny_dspark
    from _tiny_specforge import tiny_online_model

    providers = importlib.import_module(f"specforge.algorithms.{method}.providers")
    model, _ = {"dflash": tiny_online_model, "domino": tiny_domino, "dspark": tiny_dspark}[method]()
    named = _config(best_metric="eval/tau_walk", eval_walk={"anchor_stride": 3})
    contract = providers.resume_contract(named, model.draft_model, model)
    assert contract[CONTRACT_KEY] == "eval/tau_walk (anchor_stride 3)"
    assert CONTRACT_KEY not in providers.resume_contract(_config(), model.draft_model, model)
    # resuming a checkpoint that records a metric without naming one: SpecForge's default is compared
    (tmp_path / "run-step1").mkdir()
    torch.save({CONTRACT_KEY: "eval/tau_walk (anchor_stride 1)"}, tmp_path / "run-step1" / "training_state.pt")
    resumed = _config(resume_from=str(tmp_path / "run-step1"))
    assert providers.resume_contract(resumed, model.draft_model, model)[CONTRACT_KEY] == "eval/simulated_acc_len"


def test_the_checkpoint_manager_keeps_the_named_metric_from_construction(installed, tmp_path):
    import json

    from specforge.training.checkpoint import CheckpointManager

    from specforge_dpace.hooks import _evaluation

    assert CheckpointManager(str(tmp_path), "run").best_metric == "eval/simulated_acc_len"
    (tmp_path / "run-step4").mkdir()
    (tmp_path / "run-step4" / "training_state.pt").write_bytes(b"x")
    meta = {"run_id": "run", "step": 4, "score": 1.7, "metric": "eval/tau_walk", "metrics": {}}
    (tmp_path / "run.best_meta.json").write_text(json.dumps(meta))
    token = _evaluation._BEST_METRIC.set("eval/tau_walk")
    try:
        manager = CheckpointManager(str(tmp_path), "run")
        explicit = CheckpointManager(str(tmp_path), "run", best_metric="eval/avg_acc")
    finally:
        _evaluation._BEST_METRIC.reset(token)
    assert (manager.best_metric, manager.best_score, manager.best_step) == ("eval/tau_walk", 1.7, 4)
    assert explicit.best_metric == "eval/avg_acc" and explicit.best_score is None  # an explicit argument wins
