"""Integration: tiny Domino and DSpark drafters trained for a few dozen steps by SpecForge's own
``OnlineDominoModel`` / ``OnlineDSparkModel`` on target-generated data get accepted by the evaluator
(tau clearly above the untrained 1.0), through the saved checkpoint as a user would run it.  So the
evaluator's Domino / DSpark block proposals follow the conventions these classes train with, as SGLang 0.5.23
decodes them (the default convention; Domino trained with pure_draft_prefix_len 1, which SGLang serves)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("specforge")

from specforge_dpace.evaluate import (  # noqa: E402
    EvalConfig,
    context_features,
    evaluate_drafter,
    evaluate_paths,
    greedy_reference,
    save_draft_checkpoint,
    tiny_draft,
    tiny_target,
)


def _train(method, draft, target, ids, feats, last, steps, gen):
    from specforge.algorithms.common.dflash_family_model import OnlineDominoModel, OnlineDSparkModel

    kwargs = dict(
        draft_model=draft,
        target_lm_head=target.lm_head,
        target_embed_tokens=target.model.embed_tokens,
        mask_token_id=target.config.vocab_size - 1,
        block_size=draft.block_size,
        attention_backend="sdpa",
        num_anchors=32,
    )
    model = OnlineDominoModel(**kwargs) if method == "domino" else OnlineDSparkModel(**kwargs)
    loss_mask = torch.ones(ids.shape)
    loss_mask[:, :4] = 0
    optimizer = torch.optim.AdamW(draft.parameters(), lr=1e-2)
    draft.train()
    for _ in range(steps):
        batch = torch.randint(0, len(ids), (8,), generator=gen)
        extra = {} if method == "domino" else {"target_last_hidden_states": last[batch]}
        loss = model(input_ids=ids[batch], hidden_states=feats[batch], loss_mask=loss_mask[batch], **extra)[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return draft.eval()


@pytest.mark.slow
@pytest.mark.parametrize("method, steps", [("domino", 100), ("dspark", 60)])
def test_specforge_trained_domino_and_dspark_drafts_get_accepted(tmp_path, method, steps):
    vocab = 64
    target = tiny_target(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, seed=0)
    with torch.no_grad():
        target.lm_head.weight.mul_(3.0)
    target.requires_grad_(False)
    head = {"pure_draft_prefix_len": 1} if method == "domino" else None
    draft = tiny_draft(target, block_size=4, seed=1, method=method, head=head)
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, vocab - 1, (4,), generator=gen).tolist() for _ in range(74)]
    train, held_out = prompts[:64], prompts[64:]
    config = EvalConfig(max_new_tokens=40, show_progress=False)
    untrained = evaluate_drafter(target, draft, held_out, config)
    # SpecForge's classes draft the first slot from a mask position: untrained, nothing is accepted
    untrained_class = evaluate_drafter(
        target, draft, held_out, EvalConfig(max_new_tokens=40, show_progress=False, convention="specforge-0.2.0")
    )

    ids = torch.tensor([p + greedy_reference(target, p, 44) for p in train])  # target-regenerated data
    with torch.no_grad():
        hidden = target(input_ids=ids, output_hidden_states=True).hidden_states
    feats = context_features(hidden, draft.target_layer_ids)
    last = hidden[-1]  # after the final norm: DSpark's target_last_hidden_states
    draft = _train(method, draft, target, ids, feats, last, steps, gen)

    target.save_pretrained(tmp_path / "target")
    save_draft_checkpoint(draft, tmp_path / "draft")
    trained = evaluate_paths(tmp_path / "target", tmp_path / "draft", held_out, config)
    assert trained.overall["method"] == method
    assert untrained_class.overall["tau"] < 1.1
    assert trained.overall["tau"] > max(1.35, untrained.overall["tau"] + 0.2), (trained.overall, untrained.overall)
    for prompt, record in zip(held_out, trained.per_prompt):  # still the target's own greedy output
        assert record["output_ids"] == greedy_reference(target, prompt, 40)
    # at a low temperature > 0 (the tiny target is nearly flat at 0.7: max p ~ 0.04) both draft-sampling modes
    # accept drafted tokens too
    for mode in ("sample", "greedy"):
        convention = "specforge-0.2.0" if (method, mode) == ("domino", "sample") else "sglang-0.5.23"
        low = EvalConfig(
            max_new_tokens=40, temperature=0.1, draft_sampling=mode, show_progress=False, convention=convention
        )
        sampled = evaluate_drafter(target, draft, held_out, low)
        assert sampled.overall["draft_sampling"] == mode
        assert sampled.overall["tau"] > 1.1, (mode, sampled.overall["tau"])
