"""The captured feature files are exactly what SpecForge's own offline DFlash reader consumes.

Real parts only: a tiny Qwen3 target built from a config, SpecForge's ``OfflineManifestReader``,
``load_feature_file``, ``normalize_offline_sample``, collator, ``extract_context_feature`` and its
draft-config loader.
"""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("specforge")

from specforge_dpace.features import (  # noqa: E402
    capture_offline_features,
    read_feature_file,
    records_from_pairs,
    synthetic_pairs,
    target_layer_ids_from_draft_config,
)
from specforge_dpace.features.tiny import TinySizes, build_target, build_tokenizer, draft_config  # noqa: E402

SIZES = TinySizes(
    target_layers=3,
    target_layer_ids=(0, 1),  # servable: SGLang captures ids 0..n-2 (never the last layer, 2)
    hidden_size=32,
    intermediate_size=64,
    num_attention_heads=2,
    num_key_value_heads=1,
)


@pytest.fixture(scope="module")
def tiny():
    tokenizer = build_tokenizer(SIZES.num_words)
    target = build_target(tokenizer, SIZES, seed=1)
    records = records_from_pairs(tokenizer, synthetic_pairs(3, num_words=SIZES.num_words, length=12, seed=3))
    return tokenizer, target, records


def test_records_supervise_only_the_response(tiny):
    tokenizer, _, records = tiny
    record = records[0]
    assert len(record["input_ids"]) == len(record["loss_mask"])
    first = record["loss_mask"].index(1)
    assert set(record["loss_mask"][:first]) == {0} and set(record["loss_mask"][first:]) == {1}
    assert tokenizer.convert_ids_to_tokens(record["input_ids"][first - 1]) == "<assistant>"
    assert record["input_ids"][-1] == tokenizer.eos_token_id


def test_files_load_through_specforge_offline_reader(tiny, tmp_path):
    from specforge.algorithms.common.dflash_family_data import (
        build_collator,
        build_offline_reader,
        normalize_offline_sample,
    )
    from specforge.modeling.draft.dflash import extract_context_feature
    from specforge.runtime.data_plane.feature_store import load_feature_file

    _, target, records = tiny
    paths = capture_offline_features(target, records, tmp_path / "features", SIZES.target_layer_ids, progress=False)
    assert len(paths) == 3

    refs = build_offline_reader("dflash", str(tmp_path / "features"), run_id="t", ttt_length=7, max_len=64).read()
    assert [ref.feature_store_uri for ref in refs] == [f"file://{path}" for path in paths]

    samples = [normalize_offline_sample(load_feature_file(path), max_len=64) for path in paths]
    batch = build_collator()(samples)
    longest = max(len(record["input_ids"]) for record in records)
    width = len(SIZES.target_layer_ids) * SIZES.hidden_size
    assert tuple(batch["hidden_states"].shape) == (3, longest, width)

    raw = read_feature_file(paths[1])
    assert raw["input_ids"].dtype == torch.long and raw["loss_mask"].dtype == torch.long
    assert raw["input_ids"].tolist() == records[1]["input_ids"]
    with torch.no_grad():
        output = target(input_ids=raw["input_ids"][None], output_hidden_states=True)
    expected = extract_context_feature(list(output.hidden_states), list(SIZES.target_layer_ids))[0]
    torch.testing.assert_close(raw["hidden_states"], expected, rtol=0, atol=0)


def test_max_length_and_dtype(tiny, tmp_path):
    _, target, records = tiny
    (path,) = capture_offline_features(
        target, records[:1], tmp_path, [1], max_length=9, dtype="bfloat16", progress=False
    )
    raw = read_feature_file(path)
    assert raw["input_ids"].numel() == 9 and raw["hidden_states"].shape == (9, SIZES.hidden_size)
    assert raw["hidden_states"].dtype == torch.bfloat16


@pytest.mark.parametrize(
    "record, layers, message",
    [
        ({"input_ids": [1, 2, 3], "loss_mask": [0, 1, 1]}, [5], "[5] out of range"),
        ({"input_ids": [1, 2, 3], "loss_mask": [0, 1, 1]}, [0, 2], "id 2 is the last decoder layer"),
        ({"input_ids": [1, 2, 3], "loss_mask": [0, 1, 1]}, [1, 0], "not in increasing order"),
        ({"input_ids": [1, 2, 3], "loss_mask": [0, 1, 1]}, [1, 1], "[1] repeated"),
        ({"input_ids": [1, 2, 3], "loss_mask": [1, 0, 1]}, [0], "two adjacent supervised"),
        ({"input_ids": [1, 2, 3], "loss_mask": [0, 1]}, [0], "loss_mask has 2"),
        ({"input_ids": [1, 2, 3], "loss_mask": [0, 2, 2]}, [0], "must be 0 or 1"),
        ({"input_ids": [1, 2, 3]}, [0], "lacks ['loss_mask']"),
        ({"input_ids": [1, 2, 3], "loss_mask": [0, 1, 1]}, [], "target_layer_ids=[] invalid: is empty"),
    ],
)
def test_bad_input_is_named(tiny, tmp_path, record, layers, message):
    _, target, _ = tiny
    with pytest.raises((ValueError, KeyError)) as info:
        capture_offline_features(target, [record], tmp_path, layers, progress=False)
    assert message in str(info.value)
    if layers != [0]:  # every refused layer list says which ids are accepted
        assert "Accepted: distinct ids in increasing order within 0..1 for a 3-layer target" in str(info.value)
    assert not list(tmp_path.glob("*.ckpt"))


def test_in_memory_capture_is_the_same_features(tiny):
    """One implementation: the batched in-memory capture (the demo's) equals the per-record files and
    SpecForge's extract_context_feature for servable ids."""
    from specforge.modeling.draft.dflash import extract_context_feature

    from specforge_dpace.features import capture_features

    _, target, records = tiny
    length = min(len(r["input_ids"]) for r in records)
    ids = torch.tensor([r["input_ids"][:length] for r in records])
    seen = []
    feats = capture_features(target, ids, [0, 1], batch_size=2, on_batch=seen.append)
    assert seen == [2, 1] and feats.shape == (3, length, 2 * SIZES.hidden_size)
    with torch.no_grad():
        hidden = target(input_ids=ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(feats, extract_context_feature(list(hidden), [0, 1]), rtol=0, atol=0)
    with pytest.raises(ValueError, match="id 2 is the last decoder layer"):
        capture_features(target, ids, [0, 2])


def test_tiny_setup_refuses_unservable_layer_ids(tiny):
    tokenizer, target, _ = tiny
    bad = TinySizes(target_layers=3, target_layer_ids=(0, 2))
    with pytest.raises(ValueError, match="id 2 is the last decoder layer"):
        draft_config(target.config, tokenizer.mask_token_id, bad)


def test_layer_ids_are_read_with_sglangs_precedence(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"target_layer_ids": [2], "dflash_config": {"target_layer_ids": [1, 3]}}))
    assert target_layer_ids_from_draft_config(path) == [1, 3]
    path.write_text(json.dumps({"target_layer_ids": [2], "dflash_config": {}}))
    assert target_layer_ids_from_draft_config(tmp_path) == [2]
    path.write_text(json.dumps({"dflash_config": {}}))
    with pytest.raises(ValueError, match="has no target_layer_ids"):
        target_layer_ids_from_draft_config(path)


def test_bad_dtype_and_missing_target(tmp_path):
    with pytest.raises(ValueError, match="float32"):
        capture_offline_features(tmp_path, [], tmp_path, [0], dtype="int8")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        capture_offline_features(tmp_path / "nope", [], tmp_path, [0])


def test_draft_config_is_accepted_by_specforge(tiny, tmp_path):
    from specforge.modeling.draft.dflash import DFlashDraftModel
    from specforge.training.model_loading import load_draft_config_source

    tokenizer, target, _ = tiny
    path = tmp_path / "config.json"
    path.write_text(json.dumps(draft_config(target.config, tokenizer.mask_token_id, SIZES)))
    assert target_layer_ids_from_draft_config(tmp_path) == list(SIZES.target_layer_ids)
    config = load_draft_config_source(str(path))
    config._attn_implementation = "sdpa"
    draft = DFlashDraftModel(config)
    assert list(draft.target_layer_ids) == list(SIZES.target_layer_ids)
    assert draft.block_size == SIZES.block_size
