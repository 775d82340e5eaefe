"""Servable draft checkpoints: layout, round trip, and validation errors that name the bad value."""

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


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    target = tiny_target(vocab_size=64, hidden_size=32, num_hidden_layers=3, seed=0)
    draft = tiny_draft(target, num_hidden_layers=2, block_size=4, target_layer_ids=[0, 2], seed=1)
    target.save_pretrained(root / "target")
    save_draft_checkpoint(draft, root / "draft")
    return root, target, draft


def test_saved_draft_has_the_servable_layout(saved):
    root, target, draft = saved
    config = json.loads((root / "draft" / "config.json").read_text())
    assert config["architectures"] == ["DFlashDraftModel"]
    assert config["block_size"] == 4 and config["num_target_layers"] == 3
    assert config["dflash_config"] == {"target_layer_ids": [0, 2], "mask_token_id": 63}
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
        "block_size": 4,
        "dflash_config": {"target_layer_ids": [0, 2], "mask_token_id": 63},
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
            r"\[0, 3\] has \[3\] out of range .*num_hidden_layers=3",
        ),
        ({"dflash_config": {"target_layer_ids": [-1], "mask_token_id": 63}}, None, r"\[-1\] out of range"),
        ({"dflash_config": {"target_layer_ids": [0]}}, None, r"no dflash_config.mask_token_id"),
        (
            {"dflash_config": {"target_layer_ids": [0], "mask_token_id": 64}},
            None,
            r"mask_token_id=64 is invalid.*\[0, 63\]",
        ),
        ({"dflash_config": {"mask_token_id": 3}}, None, r"no dflash_config.target_layer_ids"),
        ({"block_size": 1}, None, r"block size 1 is invalid"),
        ({}, 1, r"block size 1 is invalid"),
        ({"block_size": None}, None, r"no block size"),
    ],
)
def test_validation_errors_name_the_bad_value(changes, block_size, pattern):
    with pytest.raises(ValueError, match=pattern):
        validate_pair(TARGET, _draft_config(**changes), block_size)


def test_validation_accepts_a_good_pair_and_block_override():
    expected = {"block_size": 6, "target_layer_ids": [0, 2], "mask_token_id": 63}
    assert validate_pair(TARGET, _draft_config(), 6) == expected


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
    renamed = {("model." + k if k.startswith("fc") else k): v for k, v in state.items()}
    save_file(renamed, str(bad / "model.safetensors"))
    with pytest.raises(ValueError, match=r"model\.fc\.weight.*not servable"):
        load_draft(bad, target.config)
    state.pop("norm.weight")
    save_file(state, str(bad / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing \['norm.weight'\]"):
        load_draft(bad, target.config)


def test_not_a_dflash_directory(tmp_path, saved):
    root, target, _ = saved
    with pytest.raises(ValueError, match="has no config.json"):
        load_draft(tmp_path, target.config)
    with pytest.raises(ValueError, match=r"architectures=\['Qwen3ForCausalLM'\]"):
        evaluate_paths(root / "target", root / "target", [[1, 2]], EvalConfig(show_progress=False))
