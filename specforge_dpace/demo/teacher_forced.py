"""Teacher-forced acceptance metrics of a trained drafter on held-out data: the predictors of tau.

The plugin logs, during training, a greedy ``sim_tau`` (1 + accepted prefix by argmax == label),
the ``surrogate`` (sum_k prod_{i<=k} q_i of the label) and, for soft-label objectives, the soft
expected accepted length ``soft_tau`` = 1 + sum_k prod_{i<=k} alpha_i at a temperature. Here the
same functions the hook uses (block labels, per-slot cross-entropy, ``acceptance_terms``,
``soft_acceptance_terms``) run on held-out sequences with *every* valid anchor, so the numbers are
what the plugin would log there, for any drafter (hard or soft). One more predictor the plugin
does not log: ``greedy_draft_tau`` = 1 + sum_k prod_{i<=k} p_T(argmax q_i), the expected accepted
length when the drafter proposes its argmax and the target verifies alone, which is how SGLang
0.5.14's DFlash decodes at T > 0.
"""

from __future__ import annotations

from typing import Sequence


def _ratio(num: float, den: float):
    return None if den <= 0 else num / den


def teacher_forced_metrics(
    target,
    draft,
    held: dict,
    temperatures: Sequence[float],
    *,
    mask_token_id: int,
    block_size: int,
    batch_size: int = 8,
) -> dict:
    """Predictors of tau for ``draft`` on ``held`` (``input_ids``, ``loss_mask``, ``features``,
    ``target_last_hidden_states``), at each temperature in ``temperatures`` (> 0) and greedy."""
    import torch
    from specforge.algorithms.common.dflash_family_model import OnlineDFlashModel

    from specforge_dpace.hooks._blocks import align_target_hidden, block_labels, per_slot_cross_entropy
    from specforge_dpace.losses import acceptance_terms, soft_acceptance_terms, soft_slot_stats

    input_ids, loss_mask = held["input_ids"], held["loss_mask"]
    features, last = held["features"], held["target_last_hidden_states"]
    seq_len = input_ids.shape[1]
    head, embed = target.get_output_embeddings(), target.get_input_embeddings()
    model = OnlineDFlashModel(
        draft,
        head,
        embed,
        mask_token_id,
        block_size=block_size,
        attention_backend="sdpa",
        num_anchors=seq_len,  # every valid anchor of every sequence (the sampler then picks them all)
    )
    sums: dict[str, list[float]] = {}

    def add(name: str, num, den) -> None:
        entry = sums.setdefault(name, [0.0, 0.0])
        entry[0] += float(num)
        entry[1] += float(den)

    was_training = draft.training
    draft.eval()
    try:
        with torch.no_grad():
            for start in range(0, input_ids.shape[0], batch_size):
                part = slice(start, start + batch_size)
                ids, mask_in = input_ids[part], loss_mask[part]
                anchors, keep, hidden = model._forward_draft_blocks(ids, features[part].to(head.weight.dtype), mask_in)
                labels, mask = block_labels(ids, mask_in, anchors, keep, block_size)
                hidden_4d = hidden.reshape(ids.shape[0], anchors.shape[1], block_size, -1)
                nlq, logits = per_slot_cross_entropy(head, hidden_4d, labels)
                metrics = acceptance_terms(nlq, mask, logits.argmax(dim=-1) == labels)
                add("sim_tau", *metrics["sim_tau"])
                sur_num, sur_den = metrics["surrogate"]
                add("surrogate_tau", sur_num + sur_den, sur_den)  # 1 + surrogate, per block
                aligned = align_target_hidden(last[part].to(hidden_4d.dtype), anchors, block_size)
                target_logits = head(aligned)
                valid = mask > 0
                for temperature in temperatures:
                    soft = soft_slot_stats(logits, temperature, target_logits=target_logits)
                    terms = soft_acceptance_terms(soft, mask, labels)
                    add(f"soft_tau@T{temperature:g}", *terms["soft_tau"])
                    add("teacher_agreement", *terms["teacher_agreement"])
                    log_p = torch.log_softmax(target_logits.float() / temperature, dim=-1)
                    log_accept = log_p.gather(-1, soft.draft_ids.unsqueeze(-1)).squeeze(-1) * valid
                    prefix = torch.exp(torch.cumsum(log_accept, dim=-1)) * valid
                    blocks = valid.any(dim=-1)
                    add(f"greedy_draft_tau@T{temperature:g}", (prefix.sum(-1) + 1.0)[blocks].sum(), blocks.sum())
    finally:
        draft.train(was_training)
    out = {name: _ratio(num, den) for name, (num, den) in sums.items()}
    if "teacher_agreement" in sums:  # counted once per temperature above; the share is the same
        out["teacher_agreement"] = _ratio(*sums["teacher_agreement"])
    out["blocks"] = sums["sim_tau"][1]
    return out
