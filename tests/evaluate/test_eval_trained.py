"""Integration: a draft trained by SpecForge's own ``OnlineDFlashModel`` on target features
captured with ``context_features`` is accepted by the evaluator's decoding loop, so the loop's
conventions (context strictly before the anchor, slot k predicts anchor + k, hidden-state
offset +1) match the ones SpecForge trains with."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("specforge")

from specforge_dpace.evaluate import (  # noqa: E402
    EvalConfig,
    context_features,
    evaluate_drafter,
    greedy_reference,
    tiny_draft,
    tiny_target,
)


@pytest.mark.slow
def test_specforge_trained_draft_gets_accepted():
    from specforge.algorithms.common.dflash_family_model import OnlineDFlashModel

    vocab, k = 64, 4
    target = tiny_target(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, seed=0)
    with torch.no_grad():
        target.lm_head.weight.mul_(3.0)
    target.requires_grad_(False)
    draft = tiny_draft(target, block_size=k, seed=1)
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, vocab - 1, (4,), generator=gen).tolist() for _ in range(74)]
    train, held_out = prompts[:64], prompts[64:]
    untrained = evaluate_drafter(target, draft, held_out, EvalConfig(max_new_tokens=40, show_progress=False))

    ids = torch.tensor([p + greedy_reference(target, p, 44) for p in train])  # target-regenerated data
    with torch.no_grad():
        feats = context_features(target(input_ids=ids, output_hidden_states=True).hidden_states, draft.target_layer_ids)
    loss_mask = torch.ones(ids.shape)
    loss_mask[:, :4] = 0
    model = OnlineDFlashModel(
        draft_model=draft,
        target_lm_head=target.lm_head,
        target_embed_tokens=target.model.embed_tokens,
        mask_token_id=vocab - 1,
        block_size=k,
        attention_backend="sdpa",
        num_anchors=32,
        loss_type="dflash",
    )
    optimizer = torch.optim.AdamW(draft.parameters(), lr=3e-3)
    draft.train()
    for _ in range(300):
        batch = torch.randint(0, len(train), (8,), generator=gen)
        loss = model(input_ids=ids[batch], hidden_states=feats[batch], loss_mask=loss_mask[batch])[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    draft.eval()

    trained = evaluate_drafter(target, draft, held_out, EvalConfig(max_new_tokens=40, show_progress=False))
    assert untrained.overall["tau"] < 1.2
    assert trained.overall["tau"] > 1.4, trained.overall
