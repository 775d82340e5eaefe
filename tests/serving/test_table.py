"""The serving table: which version serves which method, with which flags, counters and refusals; a new
version is a new entry (``register_server``).  Facts from the wheels' source (paths under ``sglang/srt/``)."""

from __future__ import annotations

import dataclasses

import pytest

from specforge_dpace import serving
from specforge_dpace.serving import DFLASH, DOMINO, DSPARK, rules_for, sglang_rules


def test_which_version_serves_which_method():
    # 0.5.14: speculative/spec_info.py has no DSPARK; models/dflash.py:459 EntryClass = DFlashDraftModel only.
    old, new = rules_for("sglang-0.5.14"), rules_for("sglang-0.5.23")
    assert old.served_methods() == [DFLASH]
    assert new.served_methods() == [DFLASH, DOMINO, DSPARK]
    # 0.5.23: Domino is DFLASH with projector_type domino (dflash_utils.py:727-791); DSpark is DSPARK.
    assert [new.method(m).algorithm for m in (DFLASH, DOMINO, DSPARK)] == ["DFLASH", "DFLASH", "DSPARK"]
    assert new.method(DOMINO).architectures == ("DFlashDraftModel",)
    assert new.method(DSPARK).architectures == ("DSparkDraftModel", "Qwen3DSparkModel")  # models/dspark.py:995
    assert "serve it with SGLang 0.5.23" in old.serving_problem(DOMINO)
    text = serving.served_text()
    assert "sglang-0.5.14: DFlash (--speculative-algorithm DFLASH)" in text
    assert "Domino (--speculative-algorithm DFLASH), DSpark (--speculative-algorithm DSPARK)" in text


def test_launch_flags_carry_the_block_size_each_algorithm_reads():
    new = rules_for("sglang-0.5.23")
    # DFLASH: the verify window K (speculative_hook: --speculative-num-draft-tokens, alias --...-dflash-block-size)
    assert new.method(DOMINO).launch("d", 8) == [
        "--speculative-algorithm", "DFLASH",
        "--speculative-draft-model-path", "d",
        "--speculative-num-draft-tokens", "8",
    ]  # fmt: skip
    # DSPARK: gamma, the verify window becomes gamma + 1 (speculative_hook.py:807-842)
    assert new.method(DSPARK).launch("d", 8)[-2:] == ["--speculative-dspark-block-size", "8"]
    assert {f: f_(8) for f, f_ in new.method(DSPARK).block_flags.items()} == {
        "--speculative-dspark-block-size": 8,
        "--speculative-num-draft-tokens": 9,
    }
    assert new.method(DSPARK).decoding.verify_window(8) == 9 and new.method(DOMINO).decoding.verify_window(8) == 8


def test_decoding_conventions_and_refusals():
    new = rules_for("sglang-0.5.23")
    assert new.method(DFLASH).decoding.draft_samplings[0] == "greedy"
    assert new.method(DOMINO).decoding.draft_samplings == ("greedy",)  # domino_greedy_rollout
    assert new.method(DOMINO).decoding.candidate_pool == 2048  # arg_groups/fields/spec.py:74-77
    assert new.method(DSPARK).decoding.draft_samplings == ("sample", "greedy")  # SGLANG_DSPARK_USE_GREEDY_DRAFT
    assert "model_runner.py:1772" in new.method(DFLASH).dtypes["float32"]  # input embeddings cast to bf16
    assert "float32" not in rules_for("sglang-0.5.14").method(DFLASH).dtypes
    assert new.method(DOMINO).devices == ("cuda",) and new.sampling_verify_devices == ("cuda",)
    assert rules_for("specforge-0.2.0").method(DSPARK).decoding.proposals == "dspark-class"


def test_counter_names_per_version():
    # managers/tokenizer_manager.py: 0.5.14 (2311-2345) and 0.5.23 (3148-3208) emit the same names
    for version in ("0.5.14", "0.5.23"):
        fields = rules_for(f"sglang-{version}").meta_fields
        assert fields["num_correct_drafts"] == "spec_num_correct_drafts"
        assert fields["num_proposed_drafts"] == "spec_num_proposed_drafts"
    assert rules_for("sglang-0.5.23").meta_fields["accept_rate"] == "spec_accept_rate"


@pytest.mark.parametrize(
    "version, chosen, note",
    [("0.5.23", "0.5.23", None), ("0.5.14", "0.5.14", None), ("0.5.20", "0.5.14", "0.5.14 stand in"),
     ("0.6.1", "0.5.23", "0.5.23 stand in"), ("0.5.23.post2", "0.5.23", None)],
)  # fmt: skip
def test_a_version_without_its_own_entry_gets_the_newest_older_one(version, chosen, note):
    rules, said = sglang_rules(version)
    assert rules.version == chosen and (note is None) == (said is None)
    if note:
        assert note in said


def test_versions_before_dflash_serving_and_unknown_names_are_refused():
    with pytest.raises(ValueError, match=r"SGLang 0.5.9 predates DFlash serving \(needs >= 0.5.11\)"):
        sglang_rules("0.5.9")
    with pytest.raises(ValueError, match="cannot parse SGLang version 'latest'"):
        sglang_rules("latest")
    with pytest.raises(ValueError, match="unknown server 'vllm-0.33'; accepted: sglang-0.5.14, sglang-0.5.23"):
        rules_for("vllm-0.33")


def test_a_new_version_is_a_table_entry(monkeypatch):
    monkeypatch.setattr(serving, "_SERVERS", dict(serving._SERVERS))
    base = rules_for("sglang-0.5.23")
    entry = dataclasses.replace(base, name="sglang-9.9.9", version="9.9.9")
    serving.register_server(entry)
    assert rules_for("sglang-9.9.9").served_methods() == [DFLASH, DOMINO, DSPARK]
    with pytest.raises(ValueError, match="'sglang-9.9.9' are already registered"):
        serving.register_server(entry)
    with pytest.raises(ValueError, match=r"unknown methods \['medusa'\]"):
        serving.register_server(dataclasses.replace(base, name="x", methods={"medusa": base.method(DFLASH)}))


def test_layouts_are_detected_from_the_config():
    assert serving.layout_of({"architectures": ["DominoDraftModel"]}).name == "specforge-0.2.0"
    assert serving.layout_of({"architectures": ["DSparkDraftModel"], "dflash_config": {"markov_rank": 8}}).name == (
        "specforge-0.2.0"
    )
    assert serving.layout_of({"architectures": ["DSparkDraftModel"], "markov_rank": 8}).name == "sglang-0.5.23"
    domino = {"architectures": ["DFlashDraftModel"], "dflash_config": {"projector_type": "domino"}}
    assert serving.draft_method(domino) == DOMINO and serving.layout_of(domino).name == "sglang-0.5.23"
    assert serving.draft_method({"architectures": ["DFlashDraftModel"], "projector_type": "domino"}) == DOMINO
