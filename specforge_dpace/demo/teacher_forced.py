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

These averages weight every anchor position alike, but decoding does not: a verify step that accepts
L drafted tokens jumps L + 1 positions, so the positions inside a long accepted run are never anchors.
Easy stretches are therefore counted once per step by decoding and once per position here (an
inspection paradox), and the per-position averages overestimate tau. The ``*_walk`` predictors fix
that with the same per-anchor acceptance: the expected number of verify steps to cover each held-out
continuation, ``S(a) = 1 + sum_l P(L(a) = l) S(a + l + 1)`` from the end backwards (per-slot
acceptance independent; at T = 0 the walk is deterministic), and tau = tokens after the first / S.
"""

from __future__ import annotations

from typing import Sequence


def _ratio(num: float, den: float):
    return None if den <= 0 else num / den


def walk_terms(anchors, keep, accept, valid, loss_mask) -> tuple[float, float]:
    """``(tokens, expected verify steps)`` summed over sequences, decoding each supervised continuation from its
    first anchor with per-slot acceptance probabilities ``accept [B, N, K]`` (slot 0 is the anchor; slots that
    are not supervised never stop a prefix: the continuation ends there anyway)."""
    import torch

    tokens = steps = 0.0
    block = accept.shape[-1]
    for b in range(anchors.shape[0]):
        supervised = loss_mask[b].nonzero().flatten().tolist()
        if len(supervised) < 2:
            continue
        start, end = supervised[0], supervised[-1] + 1  # the prefill token sits at `start`
        rows = {}
        for n in range(anchors.shape[1]):
            if bool(keep[b, n]):
                probs = torch.where(valid[b, n], accept[b, n], torch.ones_like(accept[b, n]))
                at_least = torch.cumprod(probs[1:].double(), dim=0).tolist()  # P(L >= k), k = 1 .. K-1
                rows[int(anchors[b, n])] = at_least
        expected = [0.0] * (end + block + 1)  # S(a): expected steps still needed from anchor a
        for a in range(end - 2, start - 1, -1):
            at_least = rows.get(a, [0.0] * (block - 1))  # no block here: one token per step
            total, previous = 1.0, 1.0
            for length in range(block):  # P(L = length) = P(L >= length) - P(L >= length + 1)
                nxt = at_least[length] if length < block - 1 else 0.0
                total += (previous - nxt) * expected[a + length + 1] if a + length + 1 < end - 1 else 0.0
                previous = nxt
            expected[a] = total
        tokens += end - 1 - start
        steps += expected[start]
    return tokens, steps


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
                correct = (logits.argmax(dim=-1) == labels).to(hidden_4d.dtype)
                add("sim_tau_walk", *walk_terms(anchors, keep, correct, valid, mask_in))
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
                    add(f"soft_tau_walk@T{temperature:g}", *walk_terms(anchors, keep, soft.alpha, valid, mask_in))
                    accept = torch.exp(log_accept)
                    add(f"greedy_draft_tau_walk@T{temperature:g}", *walk_terms(anchors, keep, accept, valid, mask_in))
    finally:
        draft.train(was_training)
    out = {name: _ratio(num, den) for name, (num, den) in sums.items()}
    if "teacher_agreement" in sums:  # counted once per temperature above; the share is the same
        out["teacher_agreement"] = _ratio(*sums["teacher_agreement"])
    out["blocks"] = sums["sim_tau"][1]
    return out
