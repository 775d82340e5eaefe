"""``capture_offline_features(..., last_hidden=True)`` and the tiny setup's ``last_hidden`` / ``loss_type``.

Real parts: tiny Qwen3 (and Gemma 2) targets built from configs, SpecForge's DSpark reader and
normalizer (the same key, ``target_last_hidden_states``), the plugin's DFlash target-hidden normalizer.
"""

from __future__ import annotations

import pytest
import torch

from specforge_dpace.features import (
    LAST_HIDDEN_KEY,
    capture_offline_features,
    make_tiny_offline_setup,
    read_feature_file,
    records_from_pairs,
    synthetic_pairs,
)
from specforge_dpace.features.tiny import TinySizes, build_target, build_tokenizer, needs_last_hidden

SIZES = TinySizes(
    target_layers=3,
    target_layer_ids=(0, 1),
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


def test_the_key_is_the_one_dspark_and_the_hook_use():
    assert LAST_HIDDEN_KEY == "target_last_hidden_states"
    pytest.importorskip("specforge")
    from specforge_dpace.hooks._target_hidden import TARGET_HIDDEN_KEY

    assert LAST_HIDDEN_KEY == TARGET_HIDDEN_KEY


def test_last_hidden_is_the_post_norm_state_and_leaves_the_other_keys_unchanged(tiny, tmp_path):
    _, target, records = tiny
    plain = capture_offline_features(target, records, tmp_path / "plain", [0, 1], progress=False)
    soft = capture_offline_features(target, records, tmp_path / "soft", [0, 1], progress=False, last_hidden=True)
    for plain_path, soft_path, record in zip(plain, soft, records):
        a, b = read_feature_file(plain_path), read_feature_file(soft_path)
        assert sorted(a) == ["hidden_states", "input_ids", "loss_mask"]
        assert sorted(b) == sorted([*a, LAST_HIDDEN_KEY])
        assert all(torch.equal(a[key], b[key]) for key in a)  # the hard-objective features are bit-identical
        ids = torch.tensor(record["input_ids"])[None]
        with torch.no_grad():
            out = target(input_ids=ids, output_hidden_states=True, use_cache=False)
        last = b[LAST_HIDDEN_KEY]
        assert last.shape == (ids.shape[1], SIZES.hidden_size) and last.dtype == torch.float32
        assert torch.equal(last, out.hidden_states[-1][0])
        # After the final norm: the target's lm_head maps it to the target's own logits (its p).
        torch.testing.assert_close(target.lm_head(last), out.logits[0])
        assert not torch.allclose(last, out.hidden_states[-2][0])  # not a pre-norm layer output


def test_files_load_through_specforges_dspark_reader_and_the_dflash_normalizer(tiny, tmp_path):
    pytest.importorskip("specforge")
    from specforge.algorithms.common.dflash_family_data import (
        build_dspark_offline_reader,
        normalize_dspark_offline_sample,
    )
    from specforge.runtime.data_plane.feature_store import load_feature_file

    from specforge_dpace.hooks._target_hidden import normalize_offline_sample

    _, target, records = tiny
    capture_offline_features(target, records, tmp_path, [0, 1], progress=False, last_hidden=True, dtype="bfloat16")
    refs = build_dspark_offline_reader("dflash", str(tmp_path), run_id="r", ttt_length=7, max_len=64).read()
    assert len(refs) == len(records) and all(LAST_HIDDEN_KEY in ref.feature_keys for ref in refs)
    raw = load_feature_file(refs[0].feature_store_uri[len("file://") :])
    ours, dspark = normalize_offline_sample(raw, 10), normalize_dspark_offline_sample(raw, 10)
    assert ours.keys() == dspark.keys() and all(torch.equal(ours[k], dspark[k]) for k in ours)
    assert ours[LAST_HIDDEN_KEY].shape == (1, 10, SIZES.hidden_size) and ours[LAST_HIDDEN_KEY].dtype == torch.bfloat16


def test_a_target_whose_last_state_does_not_give_its_logits_is_refused(tmp_path):
    """Gemma 2 soft-caps its logits: softmax(lm_head(h_last)) is not its distribution."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    config = Gemma2Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        final_logit_softcapping=0.5,
    )
    target = Gemma2ForCausalLM(config).eval()
    records = [{"input_ids": list(range(5, 17)), "loss_mask": [0] * 4 + [1] * 8}]
    assert capture_offline_features(target, records, tmp_path / "hard", [0, 1], progress=False)  # hard: fine
    with pytest.raises(ValueError, match="does not reproduce its logits through lm_head"):
        capture_offline_features(target, records, tmp_path / "soft", [0, 1], progress=False, last_hidden=True)


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_last_hidden_takes_a_bool_only(tiny, tmp_path, value):
    _, target, records = tiny
    with pytest.raises(ValueError, match="last_hidden must be True or False"):
        capture_offline_features(target, records, tmp_path, [0, 1], progress=False, last_hidden=value)


def test_needs_last_hidden_follows_the_objective():
    assert needs_last_hidden("lk-lambda") and needs_last_hidden("dpace + 0.5*lk-lambda") and needs_last_hidden("tv")
    assert not needs_last_hidden(None) and not needs_last_hidden("dpace") and not needs_last_hidden("chain")
    with pytest.raises(ValueError, match="no-such-loss"):
        needs_last_hidden("no-such-loss")


@pytest.mark.parametrize(
    "kwargs, expected",
    [({}, False), ({"loss_type": "lk-lambda"}, True), ({"loss_type": "dpace"}, False), ({"last_hidden": True}, True)],
)
def test_tiny_setup_stores_the_key_when_asked_or_when_the_objective_needs_it(tmp_path, kwargs, expected):
    sizes = TinySizes(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1)
    paths = make_tiny_offline_setup(tmp_path, num_samples=2, sample_length=8, sizes=sizes, progress=False, **kwargs)
    assert paths["last_hidden"] is expected
    files = sorted((tmp_path / "features").glob("*.ckpt"))
    assert len(files) == 2 and all((LAST_HIDDEN_KEY in read_feature_file(f)) is expected for f in files)


def test_tiny_setup_refuses_a_non_bool_last_hidden(tmp_path):
    with pytest.raises(ValueError, match="last_hidden must be True, False or None"):
        make_tiny_offline_setup(tmp_path, num_samples=1, progress=False, last_hidden="auto")
