"""The evaluator decodes as SGLang 0.5.23 does (the default ``sglang-0.5.23`` convention), checked token for
token against loops written here from SGLang's source, independently of the evaluator's code:

- Domino: ``srt/speculative/domino_utils.py`` ``domino_greedy_rollout`` (TP 1), with the full vocabulary and
  with a block-shared candidate pool smaller than it;
- DSpark: ``srt/speculative/dspark_components/dspark_draft.py`` ``draft_markov_block`` (greedy rows) over the
  Markov heads' ``step_bias`` (``srt/models/dspark.py``), gamma = the config's ``block_size`` rows from the
  anchor (``DraftBlockProposer``, ``sample_from_anchor``);
- a whole speculative decode (no KV caches: every step recomputes the target and the draft over the full
  sequence) with DSpark's verify window of gamma + 1 and greedy acceptance (``AcceptGreedy``).

Real SpecForge draft classes and real tiny Qwen3 targets; lossless at temperature 0, and refusals where SGLang
0.5.23 would not serve the drafter."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _eval_helpers import random_blocks

pytest.importorskip("specforge")

from specforge_dpace.evaluate import (  # noqa: E402
    DFlashDecoder,
    EvalConfig,
    evaluate_drafter,
    greedy_reference,
    tiny_draft,
    tiny_target,
)
from specforge_dpace.evaluate._proposals import propose_block  # noqa: E402
from specforge_dpace.evaluate._speculative import context_features  # noqa: E402


@pytest.fixture(scope="module")
def target():
    return tiny_target(vocab_size=48, hidden_size=32, num_hidden_layers=3, seed=0, dtype=torch.float64)


def _draft(target, method, head, block_size=5, seed=1):
    draft = tiny_draft(target, block_size=block_size, target_layer_ids=[0, 1], method=method, head=head, seed=seed)
    with torch.no_grad():  # corrections large enough to change the argmax often
        for name, param in draft.named_parameters():
            if name.startswith(("embed_proj.", "markov_head.")):
                param.mul_(8.0)
            elif name == "prefix_gru.weight_ih_l0":
                param.mul_(40.0)
    return draft


# -- references written from SGLang 0.5.23's source ----------------------------------------------------


def sglang_domino_greedy_rollout(draft_hidden, bonus_tokens, embedding, lm_head_weight, gru, proj, vocab, shift, pool):
    """domino_utils.py domino_greedy_rollout, tp_size 1 (a batch dimension kept as SGLang's)."""
    batch_size, block_size, hidden_size = draft_hidden.shape
    num_proposals = block_size - 1
    pool = min(pool, vocab)
    start = 0 if shift else 1
    z = draft_hidden[:, start : start + num_proposals, :]
    logits_input = z.transpose(0, 1).contiguous().view(num_proposals * batch_size, hidden_size)
    base_logits = F.linear(logits_input, lm_head_weight).view(num_proposals, batch_size, vocab)
    first_ids = torch.argmax(base_logits[0], dim=-1)
    proposals = [first_ids]
    candidate_ids = candidate_base = candidate_weight = None
    if 0 < pool < vocab:
        feedback_logits = base_logits[1:]
        candidate_ids = torch.topk(feedback_logits.amax(dim=0), k=pool, dim=-1, sorted=False).indices
        candidate_base = torch.gather(
            feedback_logits.transpose(0, 1), 2, candidate_ids[:, None, :].expand(-1, num_proposals - 1, -1)
        ).transpose(0, 1)
        candidate_weight = F.embedding(candidate_ids, proj[2].weight)
    prefix_ids = torch.stack((bonus_tokens, first_ids), dim=1)
    _, gru_hidden = gru(embedding(prefix_ids))
    for index in range(1, num_proposals):
        correction_hidden = proj[1](proj[0](torch.cat((z[:, index, :], gru_hidden[0]), dim=-1)))
        if candidate_ids is None:
            next_ids = torch.argmax(base_logits[index] + proj[2](correction_hidden), dim=-1)
        else:
            correction = torch.bmm(candidate_weight, correction_hidden.unsqueeze(-1)).squeeze(-1)
            position = torch.argmax(candidate_base[index - 1] + correction, dim=-1)
            next_ids = torch.gather(candidate_ids, 1, position[:, None]).squeeze(1)
        proposals.append(next_ids)
        if index + 1 < num_proposals:
            gru_hidden = torch.ops.aten.gru_cell.default(
                embedding(next_ids), gru_hidden[0], gru.weight_ih_l0, gru.weight_hh_l0, None, None
            )[None]
    return torch.stack(proposals, dim=1)


def sglang_markov_step_bias(head, prev_tokens, hidden_states, state):
    """models/dspark.py VanillaMarkov / GatedMarkovHead / RNNHead .step_bias, on SpecForge's head weights."""
    kind = getattr(head, "markov_head_type", "vanilla")
    prev = head.markov_w1(prev_tokens.long())
    if kind == "vanilla":
        return head.markov_w2(prev), state
    if kind == "gated":
        gate = torch.sigmoid(head.gate_proj(torch.cat([hidden_states, prev], dim=-1)))
        return head.markov_w2(gate * prev), state
    gate_raw, candidate_raw, output_raw = head.joint_proj(torch.cat([state, prev, hidden_states], dim=-1)).chunk(3, -1)
    gate = torch.sigmoid(gate_raw)
    new_state = gate * state + (1.0 - gate) * torch.tanh(candidate_raw)
    return head.markov_w2(torch.tanh(output_raw)), new_state


def sglang_draft_markov_block(head, base_logits, anchor_tokens, draft_hidden):
    """dspark_draft.py draft_markov_block with greedy rows: the anchor feeds the first step, then each draft."""
    bs, gamma = base_logits.shape[:2]
    state = None
    if getattr(head, "markov_head_type", "vanilla") == "rnn":  # RNNHead.init_state
        state = torch.zeros(bs, head.markov_rank, dtype=draft_hidden.dtype)
    prev_tokens = anchor_tokens.long()
    draft_tokens = []
    for step in range(gamma):
        bias, state = sglang_markov_step_bias(head, prev_tokens, draft_hidden[:, step], state)
        prev_tokens = torch.argmax(base_logits[:, step] + bias, dim=-1)
        draft_tokens.append(prev_tokens)
    return torch.stack(draft_tokens, dim=1)


DOMINO_HEADS = [{"pure_draft_prefix_len": 1}, {"pure_draft_prefix_len": 1, "shift_label": True}]
DSPARK_HEADS = [{"markov_head_type": t} for t in ("vanilla", "gated", "rnn")]


@pytest.mark.parametrize("pool", [0, 7], ids=["full-vocab", "candidate-pool-7"])
@pytest.mark.parametrize("head", DOMINO_HEADS, ids=["shift_label=False", "shift_label=True"])
def test_domino_proposals_are_sglangs_gru_rollout(target, head, pool):
    draft = _draft(target, "domino", head)
    k, seed = draft.block_size, 0
    embed, lm_head = target.get_input_embeddings(), target.get_output_embeddings()
    differs_from_class = 0
    with torch.no_grad():
        for hidden, block in random_blocks(25, k, seed):
            ours, q = propose_block(draft, "domino-rollout", hidden, block, lm_head, embed, None, candidate_pool=pool)
            theirs = sglang_domino_greedy_rollout(
                hidden,
                block[:, 0],
                embed,
                lm_head.weight,
                draft.prefix_gru,
                draft.embed_proj,
                48,
                draft.shift_label,
                pool,
            )[0]
            assert q is None and ours.tolist() == theirs.tolist()
            differs_from_class += int(
                ours.tolist() != draft._sample_draft_tokens(target, hidden, block.clone())[0].tolist()
            )
    # with pure_draft_prefix_len 1 and the whole vocabulary the rollout is the class's own block sampling;
    # a candidate pool restricts the corrected argmax and then differs in some blocks
    assert (differs_from_class == 0) == (pool == 0), differs_from_class


@pytest.mark.parametrize("head", DSPARK_HEADS, ids=[h["markov_head_type"] for h in DSPARK_HEADS])
def test_dspark_proposals_are_sglangs_anchor_row_markov_block(target, head):
    """gamma = block_size query rows [anchor, mask, ...]: row i proposes draft i + 1 (the anchor row first),
    the Markov head fed the anchor, then each drafted token; SpecForge's class instead proposes block_size - 1
    tokens from rows 1.."""
    draft = _draft(target, "dspark", head)
    gamma, seed = draft.block_size, 1
    embed, lm_head = target.get_input_embeddings(), target.get_output_embeddings()
    with torch.no_grad():
        for hidden, block in random_blocks(20, gamma, seed):
            ours, _ = propose_block(
                draft, "anchor-markov", hidden, block, lm_head, embed, lambda x: (x.argmax(-1), None)
            )
            theirs = sglang_draft_markov_block(draft.markov_head, lm_head(hidden), block[:, 0], hidden)[0]
            assert ours.tolist() == theirs.tolist() and len(ours) == gamma
            assert len(draft._sample_draft_tokens(target, hidden, block.clone())[0]) == gamma - 1


def sglang_dspark_decode(target, draft, prompt, max_new_tokens):
    """A greedy DSpark decode as SGLang 0.5.23 runs one request, recomputed from scratch every step: the draft
    reads the target features of every committed token before the anchor and proposes gamma tokens from the
    query [anchor, mask * (gamma - 1)] at positions S .. S + gamma - 1; the target verifies [anchor, drafts]
    (gamma + 1 rows) and commits the accepted drafts plus its own next token (AcceptGreedy).  Returns the output
    ids and the accepted drafts per step."""
    gamma, mask, embed = draft.block_size, draft.mask_token_id, target.get_input_embeddings()
    ids = list(prompt)
    out = target(input_ids=torch.tensor([ids]), output_hidden_states=True)
    ids.append(int(out.logits[0, -1].argmax()))
    accepted_per_step = []
    while len(ids) - len(prompt) < max_new_tokens:
        start = len(ids) - 1  # the anchor's position
        features = context_features(
            target(input_ids=torch.tensor([ids[:start]]), output_hidden_states=True).hidden_states,
            draft.target_layer_ids,
        )
        query = torch.tensor([[ids[start]] + [mask] * (gamma - 1)])
        hidden = draft(
            target_hidden=features,
            noise_embedding=embed(query),
            position_ids=torch.arange(0, start + gamma).unsqueeze(0),
            is_causal=False,
        )
        drafts = sglang_draft_markov_block(
            draft.markov_head, target.get_output_embeddings()(hidden), query[:, 0], hidden
        )[0].tolist()
        verify = target(input_ids=torch.tensor([ids[:start] + [ids[start]] + drafts])).logits[0, start:]
        predict = verify.argmax(-1).tolist()  # gamma + 1 target tokens
        accepted = 0
        while accepted < gamma and drafts[accepted] == predict[accepted]:
            accepted += 1
        accepted_per_step.append(accepted)
        ids += drafts[:accepted] + [predict[accepted]]
    return ids[len(prompt) : len(prompt) + max_new_tokens], accepted_per_step


@pytest.mark.parametrize("head", DSPARK_HEADS, ids=[h["markov_head_type"] for h in DSPARK_HEADS])
def test_a_dspark_decode_is_sglangs_token_for_token(target, head):
    draft = _draft(target, "dspark", head, block_size=4).eval()
    decoder = DFlashDecoder(target, draft, block_size=4)
    assert decoder.window == 5 and decoder.decoding.proposals == "anchor-markov"
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n in (1, 4, 7):
            prompt = torch.randint(0, 47, (n,), generator=gen).tolist()
            trace = decoder.decode(prompt, 24)
            output, accepted = sglang_dspark_decode(target, draft, prompt, 24)
            assert trace.output_ids == output == greedy_reference(target, prompt, 24)
            assert trace.accepted[: len(accepted)] == accepted[: len(trace.accepted)]


@pytest.mark.parametrize(
    "method, head", [("domino", DOMINO_HEADS[0]), ("domino", DOMINO_HEADS[1])] + [("dspark", h) for h in DSPARK_HEADS]
)
def test_decoding_as_sglang_is_lossless_at_temperature_0(target, method, head):
    draft = _draft(target, method, head)
    gen = torch.Generator().manual_seed(2)
    prompts = [torch.randint(0, 47, (int(n),), generator=gen).tolist() for n in (1, 3, 6, 9)]
    result = evaluate_drafter(target, draft, prompts, EvalConfig(max_new_tokens=18, show_progress=False))
    for prompt, record in zip(prompts, result.per_prompt):
        assert record["output_ids"] == greedy_reference(target, prompt, 18)
    overall = result.overall
    assert overall["convention"] == "sglang-0.5.23" and overall["block_size"] == 5
    assert overall["verify_window"] == {"domino": 5, "dspark": 6}[method]
    assert len(overall["accept_hist"]) == overall["verify_window"]
    assert overall["proposals"] == {"domino": "domino-rollout", "dspark": "anchor-markov"}[method]


@pytest.mark.parametrize(
    "method, head, needle",
    [
        ("domino", None, "pure_draft_prefix_len=0: SGLang 0.5.23 serves Domino only with pure_draft_prefix_len=1"),
        ("domino", {"pure_draft_prefix_len": 2}, "pure_draft_prefix_len=2"),
        ("dspark", {"markov_rank": 0, "enable_confidence_head": False}, "a DSpark drafter without a Markov head"),
    ],
)
def test_what_sglang_would_not_serve_is_not_decoded_as_sglang(target, method, head, needle):
    draft = _draft(target, method, head)
    with pytest.raises(ValueError) as err:
        evaluate_drafter(target, draft, [[1, 2]], EvalConfig(show_progress=False))
    text = " ".join(str(err.value).split())
    assert "sglang-0.5.23 would not serve this" in text and needle in text and "'specforge-0.2.0'" in text
    result = evaluate_drafter(target, draft, [[1, 2]], EvalConfig(show_progress=False, convention="specforge-0.2.0"))
    assert result.overall["convention"] == "specforge-0.2.0"


def test_draft_sampling_defaults_to_what_the_server_does_and_refuses_what_it_does_not(target):
    domino, dspark = _draft(target, "domino", DOMINO_HEADS[0]), _draft(target, "dspark", DSPARK_HEADS[0])
    assert DFlashDecoder(target, domino, block_size=5, temperature=1.0).draft_sampling == "greedy"
    assert DFlashDecoder(target, dspark, block_size=5, temperature=1.0).draft_sampling == "sample"
    assert (
        DFlashDecoder(target, dspark, block_size=5, temperature=1.0, draft_sampling="greedy").draft_sampling == "greedy"
    )
    with pytest.raises(ValueError, match=r"draft_sampling='sample' is not what sglang-0.5.23 does for Domino"):
        DFlashDecoder(target, domino, block_size=5, temperature=1.0, draft_sampling="sample")
    with pytest.raises(ValueError, match=r"candidate_pool=-1 is invalid"):
        DFlashDecoder(target, domino, block_size=5, candidate_pool=-1)
    with pytest.raises(ValueError, match=r"candidate_pool=8 applies to Domino's rollout only"):
        DFlashDecoder(target, dspark, block_size=5, candidate_pool=8)
    with pytest.raises(ValueError, match=r"unknown server 'sglang-9'; accepted: .*sglang-0.5.23"):
        EvalConfig(convention="sglang-9").validate()


def test_a_served_mask_embedding_replaces_the_mask_rows_of_the_draft_block(tmp_path, target):
    """SGLang 0.5.23's DFLASH worker merges mask_embedding.pt into the target's mask row
    (dflash_worker_v2.py:1318-1380); the loader attaches it and the decoder embeds the block's masks with it."""
    from specforge_dpace.evaluate import load_draft, save_draft_checkpoint

    t32 = tiny_target(vocab_size=48, hidden_size=32, num_hidden_layers=3, seed=0)
    draft = tiny_draft(t32, block_size=4, target_layer_ids=[0, 1])
    path = save_draft_checkpoint(draft, tmp_path / "d")
    torch.save({"embedding": torch.full((32,), 0.5), "mask_token_id": 47}, path / "mask_embedding.pt")
    loaded = load_draft(path, t32.config)
    assert torch.equal(loaded.served_mask_embedding, torch.full((32,), 0.5))
    plain = evaluate_drafter(t32, draft, [[1, 2, 3]], EvalConfig(max_new_tokens=12, show_progress=False))
    merged = evaluate_drafter(t32, loaded, [[1, 2, 3]], EvalConfig(max_new_tokens=12, show_progress=False))
    assert plain.per_prompt[0]["output_ids"] == merged.per_prompt[0]["output_ids"]  # lossless either way
    torch.save({"embedding": torch.zeros(32), "mask_token_id": 3}, path / "mask_embedding.pt")
    with pytest.raises(ValueError, match="trained with mask_token_id=3 but the draft resolves mask_token_id=47"):
        load_draft(path, t32.config)


@pytest.mark.parametrize("method, head", [("dflash", None), ("dspark", DSPARK_HEADS[0])])
def test_vllm_0_33_decodes_as_sglang_0_5_23_at_temperature_0(target, method, head):
    """vLLM 0.33's DSpark speculator drafts from the anchor row like SGLang's DSPARK (dspark/speculator.py:181-260),
    and its DFlash proposes block slots 1..K-1: the same tokens and verify steps, lossless."""
    draft = _draft(target, method, head)
    gen = torch.Generator().manual_seed(4)
    prompts = [torch.randint(0, 47, (int(n),), generator=gen).tolist() for n in (2, 5)]
    runs = {
        c: evaluate_drafter(target, draft, prompts, EvalConfig(max_new_tokens=16, show_progress=False, convention=c))
        for c in ("vllm-0.33.0", "sglang-0.5.23")
    }
    for mine, theirs, prompt in zip(runs["vllm-0.33.0"].per_prompt, runs["sglang-0.5.23"].per_prompt, prompts):
        assert mine["output_ids"] == theirs["output_ids"] == greedy_reference(target, prompt, 16)
        assert (mine["accept_hist"], mine["verify_steps"]) == (theirs["accept_hist"], theirs["verify_steps"])
    assert runs["vllm-0.33.0"].overall["convention"] == "vllm-0.33.0"


def test_vllm_0_33_proposes_greedily_by_default_and_refuses_domino(target):
    """draft_sample_method defaults to greedy (config/speculative.py:634-640), for DSpark too; Domino is not served,
    nor a DSpark Markov head other than the vanilla one."""
    dspark = _draft(target, "dspark", DSPARK_HEADS[0])
    decoder = DFlashDecoder(target, dspark, block_size=5, temperature=1.0, convention="vllm-0.33.0")
    assert decoder.draft_sampling == "greedy"
    with pytest.raises(ValueError, match=r"vllm-0.33.0"):
        evaluate_drafter(
            target,
            _draft(target, "domino", DOMINO_HEADS[0]),
            [[1, 2]],
            EvalConfig(show_progress=False, convention="vllm-0.33.0"),
        )
    for head in DSPARK_HEADS[1:]:
        with pytest.raises(ValueError, match=r"vLLM 0.33 builds only the vanilla Markov head"):
            evaluate_drafter(
                target,
                _draft(target, "dspark", head),
                [[1, 2]],
                EvalConfig(show_progress=False, convention="vllm-0.33.0"),
            )
