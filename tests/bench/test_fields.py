"""meta_info field mapping across SGLang dialects (fields.py is the one place that knows them)."""

import pytest

from specforge_dpace.bench import fields


def _meta(version: str, **values):
    profile = fields.profile_for(version)
    return {profile[k]: v for k, v in values.items() if k in profile}


@pytest.mark.parametrize("version", sorted(fields.PROFILES))
def test_every_dialect_maps_to_the_same_canonical_values(version):
    meta = _meta(
        version,
        completion_tokens=40,
        verify_ct=10,
        accept_length=4.0,
        num_correct_drafts=30,
        num_proposed_drafts=150,
        histogram=[0, 0, 0, 10],
    )
    got = fields.extract(meta, speculative=True)
    assert (got.completion_tokens, got.verify_ct, got.num_correct_drafts, got.num_proposed_drafts) == (40, 10, 30, 150)
    assert got.histogram == [0, 0, 0, 10]
    assert got.accept_length == (4.0 if "accept_length" in fields.profile_for(version) else None)


def test_dialects_really_differ():
    """0.5.11's names differ from 0.5.14's; 0.5.23 writes 0.5.14's (tokenizer_manager.py 2311-2345 / 3148-3208)."""
    assert set(fields.PROFILES["0.5.11"].values()) != set(fields.PROFILES["0.5.14"].values())
    assert fields.PROFILES["0.5.23"] == fields.PROFILES["0.5.14"]


@pytest.mark.parametrize(
    "version,profile",
    [
        ("0.5.11", "0.5.11"),
        ("0.5.13", "0.5.11"),
        ("0.5.14", "0.5.14"),
        ("0.5.19.post1", "0.5.14"),
        ("0.5.23", "0.5.23"),
        ("0.6.0", "0.5.23"),
    ],
)
def test_profile_for_picks_newest_not_newer(version, profile):
    assert fields.profile_for(version) == fields.PROFILES[profile]


def test_profile_for_rejects_pre_dflash_versions():
    with pytest.raises(ValueError, match="0.5.11"):
        fields.profile_for("0.5.10")
    with pytest.raises(ValueError, match="cannot parse"):
        fields.profile_for("latest")


def test_missing_verify_count_is_a_clear_error():
    with pytest.raises(fields.MetaFieldError) as err:
        fields.extract({"completion_tokens": 12, "id": "x"}, speculative=True)
    msg = str(err.value)
    assert "spec_verify_ct" in msg and "completion_tokens" in msg and "DFLASH" in msg


def test_missing_completion_tokens_and_non_object():
    with pytest.raises(fields.MetaFieldError, match="completion token"):
        fields.extract({"spec_verify_ct": 3}, speculative=True)
    with pytest.raises(fields.MetaFieldError, match="JSON object"):
        fields.extract(["not", "a", "dict"], speculative=False)
    with pytest.raises(fields.MetaFieldError, match="non-numeric"):
        fields.extract({"completion_tokens": "many", "spec_verify_ct": 2}, speculative=True)


def test_baseline_needs_no_spec_fields():
    got = fields.extract({"completion_tokens": 7}, speculative=False)
    assert got.completion_tokens == 7 and got.verify_ct is None


def test_server_average():
    assert fields.server_average_accept_length({"internal_states": [{"avg_spec_accept_length": 3.5}]}) == 3.5
    assert fields.server_average_accept_length({"avg_spec_accept_length": 2}) == 2.0
    assert fields.server_average_accept_length({"internal_states": [{}]}) is None


def test_a_request_with_only_the_prefill_token_has_no_verify_step():
    """SGLang's prefill makes the first token and sends no spec_* fields when spec_verify_ct is 0
    (first token a stop token, or max_new_tokens 1): that is no verify step, not a broken server."""
    got = fields.extract({"completion_tokens": 1, "id": "x"}, speculative=True)
    assert got.completion_tokens == 1 and got.verify_ct == 0 and got.accept_length is None
    with pytest.raises(fields.MetaFieldError, match="spec_verify_ct"):
        fields.extract({"completion_tokens": 2, "id": "x"}, speculative=True)


def test_0_5_23_emits_the_names_its_tokenizer_manager_writes():
    """sglang/srt/managers/tokenizer_manager.py (0.5.23: 3148-3208) writes spec_num_correct_drafts,
    spec_num_proposed_drafts and spec_accept_rate, as 0.5.14 does (2311-2345); only 0.5.14 also writes the
    spec_accepted_drafts / spec_proposed_drafts aliases (2337-2339)."""
    profile = fields.profile_for("0.5.23")
    assert profile["num_correct_drafts"] == "spec_num_correct_drafts"
    assert profile["num_proposed_drafts"] == "spec_num_proposed_drafts"
    assert profile["accept_rate"] == "spec_accept_rate"
    assert "spec_accepted_drafts" not in profile.values()
    assert "spec_accepted_drafts" in fields.ALIASES["num_correct_drafts"]  # 0.5.14's alias, still read
    assert fields.profile_for("0.5.14")["accept_rate"] == "spec_accept_rate"
