"""The teacher-forced per-anchor pass (``specforge_dpace.evaluate._teacher_forced``) against decoding.

At T = 0 on the target's own greedy continuations the walk is the greedy decoding's step count, so it must
equal the evaluator's measured tau *exactly*, for every head of every method, in each rule set that serves
it: SpecForge's classes (DSpark slot k from position k) and SGLang 0.5.23 (DSpark's anchor row drafts the
first token, gamma = K tokens; Domino's GRU rollout).  Real tiny Qwen3 targets and SpecForge draft classes;
float64 so that no near-tie decides an argmax differently.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("specforge")

from test_eval_methods import HEADS, IDS, _draft  # noqa: E402  (every head of every method, heads amplified)

from specforge_dpace.evaluate import EvalConfig, evaluate_drafter, greedy_reference, tiny_target  # noqa: E402
from specforge_dpace.evaluate._speculative import context_features  # noqa: E402
from specforge_dpace.evaluate._teacher_forced import (  # noqa: E402
    SPECFORGE_CLASS,
    pass_model,
    slot_alignment,
    teacher_forced_pass,
)

LAYERS = [0, 1]
NEW_TOKENS = 24


@pytest.fixture(scope="module")
def target():
    return tiny_target(vocab_size=48, hidden_size=32, num_hidden_layers=3, seed=0, dtype=torch.float64)


@pytest.fixture(scope="module")
def held(target):
    """Six prompts continued greedily by the target, with the target's features (the eval features)."""
    gen = torch.Generator().manual_seed(2)
    prompts = [torch.randint(0, 47, (6,), generator=gen).tolist() for _ in range(6)]
    rows = [p + greedy_reference(target, p, NEW_TOKENS) for p in prompts]
    ids = torch.tensor(rows)
    mask = torch.zeros_like(ids, dtype=torch.float32)
    mask[:, 6:] = 1.0
    with torch.no_grad():
        out = target(input_ids=ids, output_hidden_states=True)
    return {
        "prompts": prompts,
        "input_ids": ids,
        "loss_mask": mask,
        "hidden_states": context_features(out.hidden_states, LAYERS),
        "last": out.hidden_states[-1],
    }


def _pass(target, draft, held, **kwargs):
    model = pass_model(
        draft, target.get_output_embeddings(), target.get_input_embeddings(), mask_token_id=47, block_size=5
    )
    return teacher_forced_pass(
        model, held["input_ids"], held["hidden_states"], held["loss_mask"], held["last"], **kwargs
    )


def test_alignment_table():
    assert slot_alignment("dflash", 8) == slot_alignment("domino", 8)
    assert (slot_alignment("dflash", 8).row_shift, slot_alignment("dflash", 8).drafted) == (0, 7)
    assert slot_alignment("domino", 8, shift_label=True).row_shift == 1
    assert (slot_alignment("dspark", 8).row_shift, slot_alignment("dspark", 8).drafted) == (1, 8)
    assert slot_alignment("dspark", 8, convention=SPECFORGE_CLASS) == slot_alignment("dflash", 8)
    with pytest.raises(ValueError, match="convention 'sglang' is invalid; accepted: serving, specforge-class"):
        slot_alignment("dflash", 8, convention="sglang")


def _served_by_sglang(method, head) -> bool:
    head = head or {}
    if method == "domino":
        return head.get("pure_draft_prefix_len") == 1
    return method == "dflash" or head.get("markov_rank", 1) > 0


CONVENTIONS = [("specforge-0.2.0", h) for h in range(len(HEADS))] + [
    ("sglang-0.5.23", i) for i, (m, h) in enumerate(HEADS) if _served_by_sglang(m, h)
]


@pytest.mark.parametrize("convention, index", CONVENTIONS, ids=[f"{c}-{IDS[i]}" for c, i in CONVENTIONS])
def test_the_greedy_walk_is_the_evaluators_tau(target, held, convention, index):
    """Each head of each method in each rule set that serves it: the walk in that rule set's slot alignment
    (``_teacher_forced.slot_convention``) equals the evaluator decoding under that rule set."""
    from specforge_dpace.evaluate._teacher_forced import slot_convention

    method, head = HEADS[index]
    draft = _draft(target, method, head)
    measured = evaluate_drafter(
        target,
        draft,
        held["prompts"],
        EvalConfig(max_new_tokens=NEW_TOKENS, show_progress=False, convention=convention),
    )
    sums = _pass(target, draft, held, convention=slot_convention(convention))
    assert sums.walk("T0") == measured.overall["tau"]
    assert sums.values["T0"][2] == 6 * (NEW_TOKENS - 1)


def test_the_heads_accept_something(target, held):
    """Not a vacuous equality: over the variants, some drafted tokens are accepted."""
    accepted = [_pass(target, _draft(target, m, h), held).walk("T0") for m, h in HEADS]
    assert max(accepted) > 1.03


def test_grouping_and_chunking_change_nothing(target, held):
    """Blocks drafted three at a time with logits two blocks at a time give the one-forward numbers."""
    draft = _draft(target, "dspark", {"markov_head_type": "rnn"})
    one = _pass(target, draft, held, temperatures=[1.0, 0.5])
    model = pass_model(
        draft, target.get_output_embeddings(), target.get_input_embeddings(), mask_token_id=47, block_size=5
    )
    model.objective_chunk_blocks = 2
    split = teacher_forced_pass(
        model,
        held["input_ids"],
        held["hidden_states"],
        held["loss_mask"],
        held["last"],
        temperatures=[1.0, 0.5],
        blocks_per_forward=3,
    )
    assert one.settings == split.settings == ["T0", "sample@T1", "greedy_draft@T1", "sample@T0.5", "greedy_draft@T0.5"]
    for name in one.settings:
        assert split.values[name] == pytest.approx(one.values[name], rel=1e-12)
    assert split.anchors == one.anchors == 6 * (NEW_TOKENS - 1)


def test_temperature_settings_need_the_targets_last_hidden_state(target, held):
    draft = _draft(target, "dflash", None)
    model = pass_model(
        draft, target.get_output_embeddings(), target.get_input_embeddings(), mask_token_id=47, block_size=5
    )
    sums = teacher_forced_pass(model, held["input_ids"], held["hidden_states"], held["loss_mask"], temperatures=[1.0])
    assert sums.walk("T0") is not None and sums.walk("sample@T1") is None and sums.agreement == [0.0, 0.0]
    with pytest.raises(ValueError, match=r"temperatures=\[0\] is invalid; accepted: a list of distinct finite"):
        teacher_forced_pass(model, held["input_ids"], held["hidden_states"], held["loss_mask"], temperatures=[0])


def test_at_temperature_one_the_walks_are_probabilities_of_the_right_size(target, held):
    """alpha and p(argmax q) are in [0, 1]: the walks lie between 1 and the block's maximum, and the target
    agrees with its own greedy continuation everywhere (the alignment check)."""
    draft = _draft(target, "dflash", None)
    sums = _pass(target, draft, held, temperatures=[1.0])
    assert sums.agreement[0] == sums.agreement[1] > 0
    for name in ("sample@T1", "greedy_draft@T1"):
        assert 1.0 <= sums.walk(name) <= 5.0 and 1.0 <= sums.block(name) <= 5.0
