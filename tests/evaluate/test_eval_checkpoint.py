"""Servable draft checkpoints: layout, round trip, and validation errors that name the bad value.

The evaluator's loader applies the same rules as the bench validator (``specforge_dpace.serving``):
both are run over the same table of checkpoint variants with SGLang's verdict on each."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("specforge")

from specforge_dpace.evaluate import (  # noqa: E402
    EvalConfig,
    evaluate_drafter,
    evaluate_paths,
    load_draft,
    save_draft_checkpoint,
    tiny_draft,
    tiny_target,
    validate_pair,
)
from tests._servable_variants import BY_NAME, VARIANTS, build_bases, write_variant  # noqa: E402


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    target = tiny_target(vocab_size=64, hidden_size=32, num_hidden_layers=3, seed=0)
    draft = tiny_draft(target, num_hidden_layers=2, block_size=4, target_layer_ids=[0, 1], seed=1)
    target.save_pretrained(root / "target")
    save_draft_checkpoint(draft, root / "draft")
    return root, target, draft


def test_saved_draft_has_the_servable_layout(saved):
    root, target, draft = saved
    config = json.loads((root / "draft" / "config.json").read_text())
    assert config["architectures"] == ["DFlashDraftModel"]
    assert config["block_size"] == 4 and config["num_target_layers"] == 3
    assert config["dflash_config"] == {"target_layer_ids": [0, 1], "mask_token_id": 63}
    assert config["hidden_size"] == 32 and config["vocab_size"] == 64 and config["num_hidden_layers"] == 2
    from safetensors import safe_open

    with safe_open(str(root / "draft" / "model.safetensors"), "pt") as handle:
        names = set(handle.keys())
    assert names == set(draft.state_dict())
    assert {n.split(".")[0] for n in names} == {"layers", "fc", "hidden_norm", "norm"}


def test_round_trip_gives_identical_decoding(saved):
    root, target, draft = saved
    prompts = [[1, 2, 3], [9, 8, 7, 6]]
    config = EvalConfig(max_new_tokens=12, temperature=0.9, seed=3, show_progress=False)
    direct = evaluate_drafter(target, draft, prompts, config)
    loaded = evaluate_paths(root / "target", root / "draft", prompts, config)
    assert [r["output_ids"] for r in direct.per_prompt] == [r["output_ids"] for r in loaded.per_prompt]
    assert direct.overall["accept_hist"] == loaded.overall["accept_hist"]
    reloaded = load_draft(root / "draft", target.config)
    for name, tensor in draft.state_dict().items():
        assert torch.equal(tensor, reloaded.state_dict()[name]), name


def _draft_config(**changes):
    base = {
        "hidden_size": 32,
        "vocab_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "intermediate_size": 64,
        "block_size": 4,
        "num_target_layers": 3,
        "dflash_config": {"target_layer_ids": [0, 1], "mask_token_id": 63},
    }
    base.update(changes)
    return base


TARGET = {"hidden_size": 32, "vocab_size": 64, "num_hidden_layers": 3}


@pytest.mark.parametrize(
    "changes, block_size, pattern",
    [
        ({"hidden_size": 48}, None, r"hidden_size=48 .* hidden_size=32"),
        ({"vocab_size": 65}, None, r"vocab_size=65 .* vocab_size=64"),
        (
            {"dflash_config": {"target_layer_ids": [0, 3], "mask_token_id": 63}},
            None,
            r"\[0, 3\] invalid for the target \(3 layers\): \[3\] out of range.*within 0\.\.1",
        ),
        (
            {"dflash_config": {"target_layer_ids": [0, 2], "mask_token_id": 63}},
            None,
            r"id 2 is the last decoder layer: SGLang captures id i as the input of decoder layer i \+ 1",
        ),
        ({"dflash_config": {"target_layer_ids": [-1], "mask_token_id": 63}}, None, r"\[-1\] out of range"),
        ({"dflash_config": {"target_layer_ids": [0]}}, None, r"mask_token_id is missing \(SGLang 0.5.14 reads"),
        (
            {"dflash_config": {"target_layer_ids": [0], "mask_token_id": 64}},
            None,
            r"mask_token_id=64 is invalid.*\[0, 63\] \(the target's vocab_size=64\)",
        ),
        ({"block_size": 1}, None, r"block size 1 is invalid"),
        ({}, 1, r"block size 1 is invalid \(the given block size\)"),
        ({"block_size": None}, None, r"block_size is missing \(SGLang 0.5.14 reads dflash_config.block_size"),
        (  # sized the draft's buffers: tens of GB before
            {"block_size": 100000},
            None,
            r"block_size \(from the draft's config \(dflash_config.block_size first\)\)=100000 is invalid; "
            r"accepted: an int in \[2, 256\]",
        ),
        ({}, 1000000, r"block_size \(from the given block size\)=1000000 is invalid"),
        ({"num_target_layers": None}, None, r"num_target_layers is missing"),
    ],
)
def test_validation_errors_name_the_bad_value(changes, block_size, pattern):
    with pytest.raises(ValueError, match=pattern):
        validate_pair(TARGET, _draft_config(**changes), block_size)


def test_validation_accepts_a_good_pair_and_block_override():
    expected = {"block_size": 6, "target_layer_ids": [0, 1], "mask_token_id": 63}
    assert validate_pair(TARGET, _draft_config(), 6) == expected


def test_fields_are_read_from_dflash_config_first():
    """SGLang's precedence (parse_dflash_draft_config): dflash_config, then the top level."""
    config = _draft_config(block_size=8, target_layer_ids=[1], num_target_layers=None)
    config["dflash_config"].update(block_size=4, num_target_layers=3)
    assert validate_pair(TARGET, config) == {"block_size": 4, "target_layer_ids": [0, 1], "mask_token_id": 63}
    del config["dflash_config"]["target_layer_ids"]
    assert validate_pair(TARGET, config)["target_layer_ids"] == [1]  # the top-level value, when only it exists


def test_missing_target_layer_ids_use_sglangs_default():
    """parse_dflash_draft_config leaves them None and build_target_layer_ids picks them (1 draft layer:
    n // 2); SpecForge's DFlashDraftModel does the same, so such a draft serves as trained."""
    config = _draft_config(num_target_layers=6)
    del config["dflash_config"]["target_layer_ids"]
    assert validate_pair({**TARGET, "num_hidden_layers": 6}, config)["target_layer_ids"] == [3]


def test_mismatched_pair_is_refused_before_decoding():
    target = tiny_target(vocab_size=64, hidden_size=32, num_hidden_layers=2)
    other = tiny_target(vocab_size=64, hidden_size=48, num_hidden_layers=2, num_attention_heads=3)
    draft = tiny_draft(other)
    with pytest.raises(ValueError, match="hidden_size=48"):
        evaluate_drafter(target, draft, [[1, 2]], EvalConfig(show_progress=False))


def test_load_refuses_unknown_and_missing_weights(saved, tmp_path):
    root, target, draft = saved
    from safetensors.torch import load_file, save_file

    state = load_file(str(root / "draft" / "model.safetensors"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((root / "draft" / "config.json").read_text())
    renamed = {("fc.w" if k == "fc.weight" else k): v for k, v in state.items()}
    save_file(renamed, str(bad / "model.safetensors"))
    with pytest.raises(ValueError, match=r"unknown weights SGLang would silently skip .*: fc\.w"):
        load_draft(bad, target.config)
    state.pop("norm.weight")
    save_file(state, str(bad / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing weights .*: norm.weight"):
        load_draft(bad, target.config)


def test_save_refuses_a_drafter_sglang_cannot_serve(tmp_path):
    target = tiny_target(vocab_size=64, hidden_size=32, num_hidden_layers=3, seed=0)
    draft = tiny_draft(target, target_layer_ids=[0, 2])  # 2 is the last of 3 layers
    with pytest.raises(ValueError, match="id 2 is the last decoder layer"):
        save_draft_checkpoint(draft, tmp_path / "d")
    assert not (tmp_path / "d").exists()


def test_evaluate_refuses_a_layer_id_sglang_cannot_capture():
    target = tiny_target(vocab_size=64, hidden_size=32, num_hidden_layers=2)
    draft = tiny_draft(target, target_layer_ids=[0, 1])
    with pytest.raises(ValueError, match=r"id 1 is the last decoder layer.*Accepted: .*within 0\.\.0"):
        evaluate_drafter(target, draft, [[1, 2]], EvalConfig(show_progress=False))


def test_default_tiny_draft_ids_are_servable():
    for n_layers, ids in ((2, [0]), (3, [0, 1]), (4, [0, 2])):
        assert tiny_draft(tiny_target(num_hidden_layers=n_layers)).target_layer_ids == ids


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    return build_bases(tmp_path_factory.mktemp("bases"))


@pytest.mark.parametrize("version", ["0.5.14", "0.5.23"])
@pytest.mark.parametrize("variant", VARIANTS, ids=[v.name for v in VARIANTS])
def test_loader_agrees_with_sglang_on_every_variant(tmp_path, bases, variant, version):
    """The evaluator's loader gives the bench validator's verdict on the same real files; what loads holds
    exactly the trained tensors (a model. prefix, fused tensors, aliases and ignored extras included)."""
    path = write_variant(tmp_path, variant, bases)
    server = f"sglang-{version}"
    if variant.verdict_for(version) == "error":
        with pytest.raises(ValueError) as err:
            load_draft(path, variant.target_config(), server=server)
        assert variant.needle_for(version) in str(err.value)
        return
    draft = load_draft(path, variant.target_config(), server=server)
    state, config = bases[variant.base]
    assert list(draft.target_layer_ids) == [1, 2] and draft.block_size == 4 and draft.mask_token_id == 63
    loaded = draft.state_dict()
    assert set(loaded) == set(state)
    for name, tensor in state.items():
        assert torch.equal(loaded[name], tensor), name


def test_fields_only_in_dflash_config_load_without_attribute_errors(tmp_path, bases):
    path = write_variant(tmp_path, BY_NAME["fields_only_in_dflash_config"], bases)
    config = json.loads((path / "config.json").read_text())
    assert "block_size" not in config and "num_target_layers" not in config
    draft = load_draft(path)
    assert draft.block_size == 4 and draft.config.num_target_layers == 4


def test_not_a_dflash_directory(tmp_path, saved):
    root, target, _ = saved
    with pytest.raises(ValueError, match="has no config.json"):
        load_draft(tmp_path, target.config)
    with pytest.raises(ValueError, match=r"architectures=\['Qwen3ForCausalLM'\]"):
        evaluate_paths(root / "target", root / "target", [[1, 2]], EvalConfig(show_progress=False))
