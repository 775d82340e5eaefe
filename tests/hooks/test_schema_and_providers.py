"""The patched config schema and model builder of SpecForge's unified runtime."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("specforge")

import specforge.algorithms.model_providers  # noqa: E402,F401  (see test_unified_hook: import before tests)
import specforge.config.schema  # noqa: E402,F401

COMPOSITE = "dflash(gamma=10) + 0.3*first-error-focal + 40*chain"


def write_yaml(tmp_path, training: str):
    path = tmp_path / "run.yaml"
    path.write_text(
        "model:\n"
        f"  target_model_path: {tmp_path / 'target'}\n"
        "data:\n"
        f"  hidden_states_path: {tmp_path / 'features'}\n"
        "training:\n"
        "  strategy: dflash\n"
        "  attention_backend: sdpa\n" + training
    )
    return str(path)


def test_yaml_with_plugin_objective_and_options_validates(specforge_installed, tmp_path):
    from specforge.config import load_config

    config = load_config(write_yaml(tmp_path, f"  loss_type: '{COMPOSITE}'\n"))
    assert config.training.loss_type == COMPOSITE
    config = load_config(write_yaml(tmp_path, "  loss_type: chain\n  loss_options: {fused: false}\n"))
    assert config.training.loss_options == {"fused": False}
    overridden = load_config(write_yaml(tmp_path, "  loss_type: dflash\n"), ["training.loss_type=auf"])
    assert overridden.training.loss_type == "auf"
    with_options = load_config(
        write_yaml(tmp_path, "  loss_type: dpace\n"), ["training.loss_options={alpha: 0.25, fused: false}"]
    )
    assert with_options.training.loss_options == {"alpha": 0.25, "fused": False}


@pytest.mark.parametrize(
    "training,error",
    [
        ("  loss_type: dpcae\n", "unknown objective 'dpcae'; registered objectives: auf, chain, dflash, dpace"),
        ("  loss_type: 'dpace +'\n", "malformed objective spec"),
        ("  loss_type: dpace\n  loss_options: {alpha: 3}\n", r"alpha=3.0 is out of range"),
        ("  loss_type: dpace\n  loss_options: {beta: 1}\n", r"unknown option\(s\) \['beta'\]"),
        ("  loss_type: dpace\n  loss_optoins: {}\n", "Extra inputs are not permitted"),
    ],
)
def test_bad_objectives_fail_validation_with_the_list(specforge_installed, tmp_path, training, error):
    from pydantic import ValidationError
    from specforge.config import load_config

    with pytest.raises(ValidationError, match=error):
        load_config(write_yaml(tmp_path, training))


def test_without_the_hook_specforge_rejects_plugin_names(tmp_path):
    from pydantic import ValidationError
    from specforge.config import load_config

    import specforge_dpace

    specforge_dpace.uninstall()
    try:
        with pytest.raises(ValidationError, match="loss_type"):
            load_config(write_yaml(tmp_path, "  loss_type: chain\n"))
    finally:
        specforge_dpace.install()


def test_build_dflash_model_forwards_loss_options(specforge_installed, tmp_path):
    """The real SpecForge builder, reading a real saved tiny target, gets loss_options to the model."""
    from specforge.algorithms.model_providers import build_dflash_model
    from specforge.config import load_config
    from specforge.modeling.draft.dflash import DFlashDraftModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    target_config = Qwen3Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
    )
    Qwen3ForCausalLM(target_config).save_pretrained(tmp_path / "target")
    draft_config = Qwen3Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
    )
    draft_config.block_size = 4
    draft_config.num_target_layers = 2
    draft_config.dflash_config = {"target_layer_ids": [0, 1], "mask_token_id": 63}
    draft_config._attn_implementation = "sdpa"
    draft = DFlashDraftModel(draft_config)

    config = load_config(
        write_yaml(tmp_path, "  loss_type: dpace\n  loss_options: {alpha: 0.25, acceptance_metrics: true}\n")
    )
    parts = build_dflash_model(config, draft, draft_config, target_config, None)
    model = parts.model
    assert model.loss_type == "dpace" and model.dpace_alpha == 0.25
    assert model.loss_options == {"alpha": 0.25, "acceptance_metrics": True}
    batch = {
        "input_ids": torch.randint(0, 63, (1, 16)),
        "hidden_states": torch.randn(1, 16, 64, dtype=next(model.draft_model.parameters()).dtype),
        "loss_mask": torch.ones(1, 16),
    }
    _, _, metrics = model(**batch)
    assert "sim_tau" in metrics["ratio_metrics"]

    plain = build_dflash_model(
        load_config(write_yaml(tmp_path, f"  loss_type: '{COMPOSITE}'\n")), draft, None, None, None
    )
    assert plain.model.loss_type == COMPOSITE
