"""SGLang's DFlash backbone rules (both versions): layer ids, field precedence, weight shapes (pure Python)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from specforge_dpace import serving
from specforge_dpace.serving import (
    ServableError,
    accepted_layer_ids_text,
    capturable_layer_ids,
    check_layer_ids,
    default_target_layer_ids,
    expected_weight_shapes,
)
from specforge_dpace.serving._backbone import QWEN3_DEFAULT_HEAD_DIM, check_backbone_weights
from specforge_dpace.serving._sglang import BACKBONE_0_5_14, BACKBONE_0_5_23


def check_config(config, target=None, server="sglang-0.5.14"):
    return serving.check_draft(config, None, server=server, target=target)


def check_weights(shapes, spec, rules=BACKBONE_0_5_14):
    return check_backbone_weights(shapes, spec, rules)


def test_importing_the_rules_imports_no_torch():
    code = "import sys, specforge_dpace.serving; print('torch' in sys.modules or 'sglang' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("n, ids", [(1, []), (2, [0]), (4, [0, 1, 2]), (36, list(range(35)))])
def test_capturable_ids_stop_before_the_last_layer(n, ids):
    assert capturable_layer_ids(n) == ids


def test_accepted_text_names_the_range_and_the_recipes():
    assert "within 0..34 for a 36-layer target (never its last layer, 35)" in accepted_layer_ids_text(36)
    assert "upstream recipes pick ids in 1..33" in accepted_layer_ids_text(36)
    assert "recipes" not in accepted_layer_ids_text(3)
    assert accepted_layer_ids_text(1).startswith("none: a 1-layer target has no layer SGLang can capture")


@pytest.mark.parametrize(
    "ids, needle",
    [
        ([1, 3], "id 3 is the last decoder layer"),
        ([1, 4], "[4] out of range: the target has decoder layers 0..3"),
        ([-1], "[-1] out of range"),
        ([2, 1], "not in increasing order"),
        ([1, 1], "[1] repeated"),
        ([], "is empty"),
        ([1.0], "must be a list of ints"),
        ([True], "must be a list of ints"),
        ("1,2", "must be a list of ints"),
    ],
)
def test_unservable_ids_are_refused_with_the_reason_and_the_accepted_ids(ids, needle):
    with pytest.raises(ServableError) as err:
        check_layer_ids(ids, 4)
    assert needle in str(err.value)
    assert "Accepted: distinct ids in increasing order within 0..2 for a 4-layer target" in str(err.value)
    assert isinstance(err.value, ValueError)


def test_servable_ids_pass():
    assert check_layer_ids((1, 2), 4) == [1, 2]
    assert check_layer_ids([0], 2) == [0]


def test_default_ids_follow_sglangs_build_target_layer_ids():
    # sglang/srt/speculative/dflash_utils.py build_target_layer_ids: n // 2 for one draft layer, else spread
    # over [1, n - 3]; it raises for fewer than 4 target layers when the draft has several layers.
    assert default_target_layer_ids(36, 1) == [18]
    assert default_target_layer_ids(36, 5) == [1, 9, 17, 25, 33]
    assert default_target_layer_ids(8, 2) == [1, 5]
    with pytest.raises(ServableError, match="at least 4 layers"):
        default_target_layer_ids(3, 2)


def test_fields_resolve_dflash_config_first_then_top_level():
    # dflash_utils.parse_dflash_draft_config: dflash_cfg.get(name, top-level) (0.5.14: 480-519, 0.5.23: 596-674)
    config = {"block_size": 8, "num_target_layers": 4, "dflash_config": {"block_size": 16, "mask_token_id": 5}}
    for rules in (BACKBONE_0_5_14, BACKBONE_0_5_23):
        assert rules.read(config, "block_size") == (16, "dflash_config.block_size")
        assert rules.read(config, "num_target_layers") == (4, "top-level num_target_layers")
        assert rules.read(config, "target_layer_ids") == (None, None)
    # mask_token_id: 0.5.14 reads dflash_config only (530); 0.5.23 then the top level too (688-690)
    assert BACKBONE_0_5_14.read({"mask_token_id": 5}, "mask_token_id") == (None, None)
    assert BACKBONE_0_5_23.read({"mask_token_id": 5}, "mask_token_id") == (5, "top-level mask_token_id")
    with pytest.raises(ServableError, match="dflash_config must be a mapping"):
        BACKBONE_0_5_14.read({"dflash_config": [1]}, "block_size")


@pytest.mark.parametrize("server", ["sglang-0.5.14", "sglang-0.5.23"])
def test_an_explicit_null_in_dflash_config_does_not_fall_back(server):
    # dict.get(key, default) returns the null when the key is present: SGLang then uses its default of 16
    config = _config(block_size=4)
    config["dflash_config"]["block_size"] = None
    assert BACKBONE_0_5_23.read(config, "block_size") == (None, "dflash_config.block_size")
    errors = check_config(config, server=server).errors
    assert any(
        "dflash_config.block_size is null, which ends SGLang's lookup" in e and "fall back to 16" in e for e in errors
    )


def test_activations_are_the_versions_dflash_mlp_builds():
    # models/dflash.py DFlashMLP: 0.5.14 builds silu only (449-520); 0.5.23 silu and swigluoai (493-510)
    for act, v14, v23 in (("silu", True, True), ("swigluoai", False, True), ("gelu", False, False)):
        verdicts = [
            not any("hidden_act" in e for e in check_config(_config(hidden_act=act), server=server).errors)
            for server in ("sglang-0.5.14", "sglang-0.5.23")
        ]
        assert verdicts == [v14, v23], act
    errors = check_config(_config(hidden_act="gelu"), server="sglang-0.5.23").errors
    assert any("hidden_act='gelu': SGLang 0.5.23's DFlash MLP supports silu and swigluoai" in e for e in errors)


def _config(**changes):
    config = {
        "architectures": ["DFlashDraftModel"],
        "model_type": "qwen3",
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "intermediate_size": 64,
        "vocab_size": 64,
        "block_size": 4,
        "num_target_layers": 4,
        "dflash_config": {"target_layer_ids": [1, 2], "mask_token_id": 63},
    }
    config.update(changes)
    return config


def test_a_missing_field_is_named_with_where_sglang_looks():
    config = _config()
    del config["num_target_layers"], config["block_size"], config["dflash_config"]["target_layer_ids"]
    errors = check_config(config).errors
    assert (
        "num_target_layers is missing (SGLang 0.5.14 reads dflash_config.num_target_layers, then top-level" in errors[1]
    )
    assert errors[0].startswith("block_size is missing (SGLang 0.5.14 reads dflash_config.block_size")
    assert any("target_layer_ids is missing" in e for e in errors)


def test_missing_ids_fall_back_like_sglang_and_are_checked():
    config = _config(num_hidden_layers=1, num_target_layers=8, layer_types=["full_attention"])
    del config["dflash_config"]["target_layer_ids"]
    verdict = check_config(config, target={"hidden_size": 32, "vocab_size": 64, "num_hidden_layers": 8})
    assert verdict.ok and verdict.spec.target_layer_ids == [4]
    assert "build_target_layer_ids(8, 1) = [4]" in verdict.notes[0]
    # 2 target layers, 1 draft layer: SGLang's default n // 2 = 1 is the last layer, never captured.
    config["num_target_layers"] = 2
    assert "id 1 is the last decoder layer" in " ".join(check_config(config).errors)
    # The runtime target and num_target_layers give different fallbacks: target capture and fc disagree.
    config["num_target_layers"] = 6
    errors = check_config(config, target={"hidden_size": 32, "vocab_size": 64, "num_hidden_layers": 8}).errors
    assert "fallback ids would differ" in " ".join(errors)


def test_the_target_wins_over_num_target_layers_for_the_layer_check():
    config = _config(dflash_config={"target_layer_ids": [1, 2], "mask_token_id": 63})
    assert check_config(config).ok
    verdict = check_config(config, target={"hidden_size": 32, "vocab_size": 64, "num_hidden_layers": 3})
    assert "id 2 is the last decoder layer" in verdict.errors[0] and "for the target (3 layers)" in verdict.errors[0]


def test_a_multimodal_target_is_read_through_its_text_config():
    target = {"text_config": {"hidden_size": 32, "vocab_size": 64, "num_hidden_layers": 4}, "vision_config": {}}
    assert check_config(_config(), target=target).ok


def test_expected_shapes_follow_the_config():
    spec = check_config(_config(attention_bias=True)).spec
    shapes = expected_weight_shapes(spec)
    assert shapes["fc.weight"] == (32, 64)  # [hidden, len(ids) * hidden]
    assert shapes["layers.1.self_attn.q_proj.weight"] == (32, 32)
    assert shapes["layers.1.self_attn.k_proj.weight"] == (16, 32)
    assert shapes["layers.1.self_attn.o_proj.bias"] == (32,)
    assert shapes["layers.0.self_attn.k_norm.weight"] == (16,)
    assert shapes["layers.0.mlp.down_proj.weight"] == (32, 64)
    assert len(shapes) == 3 + 2 * (11 + 4)


def test_head_dim_defaults_like_the_config_class():
    config = _config()
    del config["head_dim"]
    verdict = check_config(config)
    assert verdict.spec.head_dim == QWEN3_DEFAULT_HEAD_DIM and "head_dim not given" in verdict.notes[0]
    config["model_type"] = "llama"
    assert check_config(config).spec.head_dim == 16


def test_weight_checker_separates_errors_from_notes():
    spec = check_config(_config()).spec
    shapes = {("model." + k): v for k, v in expected_weight_shapes(spec).items()}
    shapes["lm_head.weight"] = (64, 32)
    errors, notes = check_weights(shapes, spec)
    assert errors == [] and len(notes) == 2
    shapes["fc.weight"] = (32, 64)  # the same tensor without the prefix: SGLang loads both into one parameter
    errors, _ = check_weights(shapes, spec)
    assert "given twice" in errors[0] and "model.fc.weight / fc.weight" in errors[0]


def test_0_5_23_resolves_the_native_encoder_names():
    # models/dflash.py:900-903 (0.5.23 _VENDOR_ENCODER_ALIASES); 0.5.14 has no alias and skips the names
    spec = check_config(_config()).spec
    shapes = dict(expected_weight_shapes(spec))
    shapes["encoder.fc.weight"] = shapes.pop("fc.weight")
    errors, notes = check_weights(shapes, spec, BACKBONE_0_5_23)
    assert errors == [] and "encoder.fc.weight -> fc.weight" in " ".join(notes)
    errors, _ = check_weights(shapes, spec, BACKBONE_0_5_14)
    assert any("encoder.fc.weight" in e for e in errors) and any("missing weights" in e for e in errors)
