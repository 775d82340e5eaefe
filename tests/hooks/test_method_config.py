"""Domino and DSpark configs: schema validation per strategy, the real builders, the resume contracts."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("specforge")

import specforge.algorithms.common.dflash_family_model  # noqa: E402,F401  (see test_unified_hook)
import specforge.algorithms.domino.providers  # noqa: E402,F401
import specforge.algorithms.dspark.providers  # noqa: E402,F401
import specforge.algorithms.model_providers  # noqa: E402,F401
import specforge.config.schema  # noqa: E402,F401
from _tiny_methods import tiny_domino, tiny_dspark  # noqa: E402

import specforge_dpace  # noqa: E402
from specforge_dpace import hooks  # noqa: E402

COMPOSITE = "dflash(gamma=7) + 0.3*first-error-focal + 4*chain"


def write_yaml(tmp_path, strategy: str, training: str = "") -> str:
    path = tmp_path / f"{strategy}.yaml"
    path.write_text(
        "model:\n"
        f"  target_model_path: {tmp_path / 'target'}\n"
        "data:\n"
        f"  hidden_states_path: {tmp_path / 'features'}\n"
        "training:\n"
        f"  strategy: {strategy}\n"
        "  attention_backend: sdpa\n" + training
    )
    return str(path)


def load(tmp_path, strategy, training="", overrides=()):
    from specforge.config import load_config

    return load_config(write_yaml(tmp_path, strategy, training), list(overrides))


# -- schema ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["domino", "dspark"])
def test_domino_and_dspark_take_any_objective(specforge_installed, tmp_path, strategy):
    assert load(tmp_path, strategy, f"  loss_type: '{COMPOSITE}'\n").training.loss_type == COMPOSITE
    config = load(tmp_path, strategy, "  loss_type: lk-lambda\n  loss_options: {eta: 1.0}\n")
    assert config.training.loss_options == {"eta": 1.0}
    assert load(tmp_path, strategy, overrides=["training.loss_type=soft-dpace"]).training.loss_type == "soft-dpace"
    assert load(tmp_path, strategy).training.loss_type == "dflash"  # unset: the method's own objective


@pytest.mark.parametrize(
    "strategy,training,error",
    [
        ("domino", "  loss_type: dpace\n  loss_options: {fused: true}\n", "fused=true is refused for.*'domino'.*GRU"),
        ("dspark", "  loss_options: {fused: true}\n", "fused=true is refused for.*'dspark'.*Markov head"),
        (
            "dspark",
            "  loss_type: dpace\n  dspark_l1_loss_alpha: 0.5\n",
            r"training.dspark_l1_loss_alpha=0.5: .*replaces",
        ),
        ("dspark", "  loss_options: {acceptance_metrics: true}\n", "acceptance_metrics does not apply"),
        ("domino", "  loss_type: dpcae\n", "unknown objective 'dpcae'; registered objectives"),
        ("eagle3", "  loss_type: dpace\n", r"training.loss_type='dpace' has no effect with training.strategy='eagle3'"),
        ("eagle3", "  loss_options: {alpha: 0.3}\n", "training.loss_options=.*has no effect.*lk_loss_type"),
        ("peagle", "  loss_type: chain\n", "has no effect with training.strategy='peagle'"),
    ],
)
def test_values_a_strategy_cannot_honour_are_refused_at_validation(
    specforge_installed, tmp_path, strategy, training, error
):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=error):
        load(tmp_path, strategy, training)


def test_other_strategies_keep_the_default_and_round_trip(specforge_installed, tmp_path):
    from specforge.config.schema import Config

    config = load(tmp_path, "eagle3")
    assert config.training.loss_type == "dflash"
    dumped = config.model_dump()  # every field explicit, the default objective included
    assert Config.model_validate(dumped).training.strategy == "eagle3"
    assert load(tmp_path, "eagle3", "  loss_type: dflash\n  loss_options: {}\n").training.loss_type == "dflash"
    assert load(tmp_path, "dspark", "  dspark_l1_loss_alpha: 0.5\n").training.dspark_l1_loss_alpha == 0.5


# -- builders ----------------------------------------------------------------------------------------


def _saved_target(tmp_path):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
    )
    Qwen3ForCausalLM(config).save_pretrained(tmp_path / "target")
    return config


@pytest.mark.parametrize("strategy", ["domino", "dspark"])
def test_the_real_builders_pass_the_objective(specforge_installed, tmp_path, strategy):
    from specforge.algorithms import model_providers

    target_config = _saved_target(tmp_path)
    draft = (tiny_domino if strategy == "domino" else tiny_dspark)()[0].draft_model
    build = getattr(model_providers, f"build_{strategy}_model")

    config = load(tmp_path, strategy, "  loss_type: dpace\n  loss_options: {alpha: 0.25}\n  loss_decay_gamma: 7.0\n")
    model = build(config, draft, draft.config, target_config, None).model
    assert model.loss_type == "dpace(alpha=0.25)" and model.loss_options == {"alpha": 0.25}
    assert model.loss_decay_gamma == 7.0  # still the method's own decay (Domino's base term, DSpark's confidence)

    own = build(load(tmp_path, strategy), draft, draft.config, target_config, None).model
    assert own.loss_type == ("dflash" if strategy == "domino" else "dspark")
    assert own._specforge_dpace_method_plan.passthrough
    gamma = build(load(tmp_path, strategy, "  loss_type: dflash(gamma=5)\n"), draft, draft.config, target_config, None)
    assert gamma.model.loss_decay_gamma == 5.0 and gamma.model._specforge_dpace_method_plan.passthrough
    if strategy == "domino":
        assert model.shift_label is True  # SpecForge's own arguments still reach the model
    else:
        assert model.dspark_confidence_head_alpha == config.training.dspark_confidence_head_alpha


# -- resume contracts ----------------------------------------------------------------------------------


def _contract(strategy, config, model):
    from specforge.algorithms.builtin import builtin_algorithm_registry

    registration = builtin_algorithm_registry().resolve(strategy)
    return registration.providers.step.resume_contract(config, model.draft_model, model)


def _config(tmp_path, strategy, resume_from=None):
    training = "" if resume_from is None else f"  resume_from: {resume_from}\n"
    return load(tmp_path, strategy, training)


@pytest.mark.parametrize("strategy,build", [("domino", tiny_domino), ("dspark", tiny_dspark)])
def test_resume_contracts_record_the_spec_of_a_plugin_objective(specforge_installed, tmp_path, strategy, build):
    model, _ = build(loss_type="dpace + 0.3*first-error-focal", dpace_alpha=0.3)
    contract = _contract(strategy, _config(tmp_path, strategy), model)
    assert contract[f"{strategy}_loss_type"] == "dpace(alpha=0.3) + 0.3*first-error-focal"


@pytest.mark.parametrize("strategy,build", [("domino", tiny_domino), ("dspark", tiny_dspark)])
def test_the_methods_own_objective_keeps_specforges_contract(tmp_path, strategy, build):
    config = _config(tmp_path, strategy)
    hooks.uninstall()
    try:
        model, _ = build()
        upstream = _contract(strategy, config, model)
    finally:
        specforge_dpace.install()
    model, _ = build()
    assert _contract(strategy, config, model) == upstream
    assert f"{strategy}_loss_type" not in upstream


@pytest.mark.parametrize("strategy,build,own", [("domino", tiny_domino, "dflash"), ("dspark", tiny_dspark, "dspark")])
def test_resuming_a_plugin_checkpoint_with_the_own_objective_records_the_key(
    specforge_installed, tmp_path, strategy, build, own
):
    """SpecForge compares only the keys of the current contract: the own-objective run adds the key when the
    checkpoint it resumes records one, so SpecForge's check sees the mismatch."""
    checkpoint = tmp_path / "run" / "run-step6"
    checkpoint.mkdir(parents=True)
    torch.save({f"{strategy}_loss_type": "dpace", "weights": torch.zeros(3)}, checkpoint / "training_state.pt")
    model, _ = build()
    assert _contract(strategy, _config(tmp_path, strategy, checkpoint), model)[f"{strategy}_loss_type"] == own
    plain = tmp_path / "plain" / "plain-step6"
    plain.mkdir(parents=True)
    torch.save({"weights": torch.zeros(3)}, plain / "training_state.pt")  # written without the plugin
    assert f"{strategy}_loss_type" not in _contract(strategy, _config(tmp_path, strategy, plain), model)
    missing = _contract(strategy, _config(tmp_path, strategy, tmp_path / "nowhere"), model)
    assert f"{strategy}_loss_type" not in missing  # unreadable: SpecForge's own resume reports it
