"""Tiny real SpecForge Domino and DSpark training setups (CPU, sdpa, real draft models built from configs)."""

from __future__ import annotations

import torch

VOCAB, HIDDEN, BLOCK = 64, 32, 4


def _draft_config(extra: dict, block_size: int):
    from transformers import Qwen3Config

    config = Qwen3Config(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
    )
    config.block_size = block_size
    config.num_target_layers = 2
    config.dflash_config = {"target_layer_ids": [0, 1], "mask_token_id": VOCAB - 1, **extra}
    config._attn_implementation = "sdpa"
    return config


def _target(seed: int):
    from specforge_dpace.evaluate import tiny_target

    target = tiny_target(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2, seed=seed)
    for module in (target.lm_head, target.model.embed_tokens):
        module.requires_grad_(False)
    return target


def _batch(target, seed: int, *, batch_size: int = 2, seq_len: int = 24, greedy: bool = False) -> dict:
    """Random ids (or the target's greedy continuation), random context features, the target's last hidden state."""
    gen = torch.Generator().manual_seed(seed + 1)
    input_ids = torch.randint(0, VOCAB - 1, (batch_size, seq_len), generator=gen)
    if greedy:
        with torch.no_grad():
            for position in range(4, seq_len):
                logits = target(input_ids[:, :position]).logits[:, -1, : VOCAB - 1]
                input_ids[:, position] = logits.argmax(dim=-1)
    with torch.no_grad():
        out = target(input_ids, output_hidden_states=True)
        last = out.hidden_states[-1]  # post final norm: the target's own logits come from it
        assert torch.allclose(target.lm_head(last), out.logits, atol=1e-5)
    hidden_states = torch.randn(batch_size, seq_len, 2 * HIDDEN, generator=gen)
    loss_mask = torch.ones(batch_size, seq_len)
    loss_mask[:, :3] = 0
    loss_mask[1, -4:] = 0
    return {
        "input_ids": input_ids,
        "hidden_states": hidden_states,
        "loss_mask": loss_mask,
        "target_last_hidden_states": last,
    }


def tiny_domino(*, shift_label: bool = True, seed: int = 0, block_size: int = BLOCK, greedy: bool = False, **kwargs):
    """``(model, batch)``: a real ``OnlineDominoModel`` over a real tiny ``DominoDraftModel``; ``kwargs`` go to
    the constructor (``loss_type``, ``loss_options``, ``loss_decay_gamma``, ...).  The batch carries
    ``target_last_hidden_states``; drop it for SpecForge's own forward."""
    from specforge.algorithms.common.dflash_family_model import OnlineDominoModel
    from specforge.modeling.draft.domino import DominoDraftModel

    target = _target(seed)
    extra = {"emb_dim": 8, "gru_hidden_dim": 16, "shift_label": shift_label, "pure_draft_prefix_len": 1}
    torch.manual_seed(seed + 7)
    draft = DominoDraftModel(_draft_config(extra, block_size)).train()
    arguments = dict(num_anchors=6, objective_chunk_blocks=2, shift_label=shift_label)
    arguments.update(kwargs)
    model = OnlineDominoModel(
        draft_model=draft,
        target_lm_head=target.lm_head,
        target_embed_tokens=target.model.embed_tokens,
        mask_token_id=VOCAB - 1,
        block_size=block_size,
        attention_backend="sdpa",
        **arguments,
    )
    return model, _batch(target, seed, greedy=greedy)


def tiny_dspark(
    *,
    seed: int = 0,
    block_size: int = BLOCK,
    markov_rank: int = 8,
    confidence: bool = True,
    greedy: bool = False,
    data_seed=None,
    **kwargs,
):
    """``(model, batch)``: a real ``OnlineDSparkModel`` over a real tiny ``DSparkDraftModel`` (vanilla Markov
    head, confidence head with Markov features unless switched off); ``data_seed`` draws another batch for the
    same model."""
    from specforge.algorithms.common.dflash_family_model import OnlineDSparkModel
    from specforge.modeling.draft.dspark import DSparkDraftModel

    target = _target(seed)
    extra = {"markov_rank": markov_rank, "markov_head_type": "vanilla"}
    if confidence:
        extra.update(
            enable_confidence_head=True, confidence_head_with_markov=markov_rank > 0, confidence_head_alpha=1.0
        )
    torch.manual_seed(seed + 7)
    draft = DSparkDraftModel(_draft_config(extra, block_size)).train()
    arguments = dict(num_anchors=6, objective_chunk_blocks=2)
    arguments.update(kwargs)
    model = OnlineDSparkModel(
        draft_model=draft,
        target_lm_head=target.lm_head,
        target_embed_tokens=target.model.embed_tokens,
        mask_token_id=VOCAB - 1,
        block_size=block_size,
        attention_backend="sdpa",
        **arguments,
    )
    return model, _batch(target, seed if data_seed is None else data_seed, greedy=greedy)


def step(model, batch, seed: int = 123):
    """One forward/backward with fixed anchor sampling: ``(loss, accuracy, metrics, grads)``."""
    torch.manual_seed(seed)
    model.zero_grad(set_to_none=True)
    loss, accuracy, metrics = model(**batch)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), accuracy, metrics, grads
