"""Tiny real SpecForge DFlash training setups for tests (CPU, sdpa, built from configs)."""

from __future__ import annotations

import torch


def tiny_online_model(
    *,
    loss_type: str = "dflash",
    loss_options=None,
    dpace_alpha: float = 0.5,
    loss_decay_gamma=None,
    block_size: int = 4,
    num_anchors: int = 6,
    objective_chunk_blocks: int = 2,
    vocab: int = 64,
    hidden: int = 32,
    seed: int = 0,
):
    """``(model, batch)``: a real ``OnlineDFlashModel`` over a real tiny ``DFlashDraftModel``."""
    from specforge.algorithms.common.dflash_family_model import OnlineDFlashModel

    from specforge_dpace.evaluate import tiny_draft, tiny_target

    target = tiny_target(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=2, seed=seed)
    draft = tiny_draft(target, block_size=block_size, target_layer_ids=[0, 1], seed=seed + 7).train()
    lm_head, embed = target.lm_head, target.model.embed_tokens
    for module in (lm_head, embed):
        module.requires_grad_(False)
    kwargs = dict(
        draft_model=draft,
        target_lm_head=lm_head,
        target_embed_tokens=embed,
        mask_token_id=vocab - 1,
        block_size=block_size,
        attention_backend="sdpa",
        num_anchors=num_anchors,
        loss_decay_gamma=loss_decay_gamma,
        objective_chunk_blocks=objective_chunk_blocks,
        loss_type=loss_type,
        dpace_alpha=dpace_alpha,
    )
    if loss_options is not None:
        kwargs["loss_options"] = loss_options
    model = OnlineDFlashModel(**kwargs)
    gen = torch.Generator().manual_seed(seed + 1)
    batch_size, seq_len = 2, 24
    input_ids = torch.randint(0, vocab - 1, (batch_size, seq_len), generator=gen)
    hidden_states = torch.randn(batch_size, seq_len, 2 * hidden, generator=gen)
    loss_mask = torch.ones(batch_size, seq_len)
    loss_mask[:, :3] = 0
    loss_mask[1, -4:] = 0
    return model, {"input_ids": input_ids, "hidden_states": hidden_states, "loss_mask": loss_mask}
