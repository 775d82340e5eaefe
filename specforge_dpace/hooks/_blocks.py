"""Block labels and the plugin's chunk objective, shared by the SpecForge layouts' hooks.

DFlash predicts, at slot k of the block anchored at position a, the token at a + k; slot 0 holds
the clean anchor token and is never supervised.  A slot is supervised when its block is kept,
its label lies inside the sequence and the label token is in the loss mask.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F

from ..losses import acceptance_terms

Tensor = torch.Tensor


def block_labels(
    input_ids: Tensor, loss_mask: Tensor, anchor_positions: Tensor, block_keep_mask: Tensor, block_size: int
) -> tuple[Tensor, Tensor]:
    """``(target_ids [B,N,K], weight_mask [B,N,K] float)`` for same-position block prediction."""
    seq_len = input_ids.shape[1]
    num_blocks = anchor_positions.shape[1]
    offsets = torch.arange(block_size, device=input_ids.device).view(1, 1, -1)
    label_positions = anchor_positions.unsqueeze(-1) + offsets
    in_sequence = label_positions < seq_len
    safe_positions = label_positions.clamp(max=seq_len - 1)
    target_ids = torch.gather(input_ids.unsqueeze(1).expand(-1, num_blocks, -1), 2, safe_positions)
    label_in_mask = torch.gather(loss_mask.unsqueeze(1).expand(-1, num_blocks, -1), 2, safe_positions)
    weight_mask = block_keep_mask.unsqueeze(-1).expand(-1, -1, block_size).float()
    weight_mask = weight_mask * in_sequence.float()
    weight_mask = weight_mask * (offsets > 0).float()
    weight_mask = weight_mask * label_in_mask
    return target_ids, weight_mask


def per_slot_cross_entropy(lm_head: Any, hidden: Tensor, target_ids: Tensor) -> tuple[Tensor, Tensor]:
    """``(neg_log_q [B,N,K], logits [B,N,K,V])`` through the frozen target head."""
    batch, blocks, slots, width = hidden.shape
    logits = lm_head(hidden.reshape(batch, blocks * slots, width)).reshape(batch, blocks, slots, -1)
    neg_log_q = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), target_ids.reshape(-1), reduction="none"
    ).reshape_as(target_ids)
    return neg_log_q, logits


def objective_chunk_terms(
    objective: Any, lm_head: Any, hidden: Tensor, target_ids: Tensor, weight_mask: Tensor
) -> tuple[Tensor, ...]:
    """Additive terms of one chunk: objective (num[T], den[T]), accuracy, acceptance metrics.

    Order: ``num, den, correct_num, accuracy_den, tau_num, tau_den, surrogate_num,
    surrogate_den, accept_pos_num[K], accept_pos_den[K]``.
    """
    neg_log_q, logits = per_slot_cross_entropy(lm_head, hidden, target_ids)
    correct = None
    if objective.needs_correct:
        with torch.no_grad():
            correct = logits.argmax(dim=-1) == target_ids
    num, den = objective.chunk_terms(neg_log_q, weight_mask, correct)
    # Detached work after the objective: checkpoint recomputation in backward stops early here.
    with torch.no_grad():
        if correct is None:
            correct = logits.argmax(dim=-1) == target_ids
        correct_num = (correct & (weight_mask > 0.5)).sum().float()
        accuracy_den = weight_mask.sum()
        metrics = acceptance_terms(neg_log_q, weight_mask, correct)
    return (
        num,
        den,
        correct_num,
        accuracy_den,
        *metrics["sim_tau"],
        *metrics["surrogate"],
        *metrics["accept_pos"],
    )


def assemble_outputs(
    objective: Any,
    totals: tuple[Tensor, ...],
    batch_size: int,
    *,
    acceptance_metrics: bool = True,
    ratio_prefix: str = "",
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """``(loss, accuracy, metrics)`` in the shape SpecForge's unified trainer logs and reduces."""
    num, den, correct_num, accuracy_den, tau_num, tau_den, sur_num, sur_den, pos_num, pos_den = totals
    value = objective.reduce(num, den, batch_size)
    ratio_metrics: dict[str, tuple[Tensor, Tensor]] = {"acc": (correct_num.detach(), accuracy_den.detach())}
    if acceptance_metrics:
        ratio_metrics[f"{ratio_prefix}sim_tau"] = (tau_num, tau_den)
        ratio_metrics[f"{ratio_prefix}surrogate"] = (sur_num, sur_den)
        for k in range(1, pos_num.shape[0]):
            ratio_metrics[f"{ratio_prefix}accept_pos_{k}"] = (pos_num[k], pos_den[k])
        if len(value.parts) > 1:
            one = num.new_ones(())
            for name, part in value.parts.items():
                ratio_metrics[f"{ratio_prefix}loss[{name}]"] = (part.detach(), one)
    metrics: dict[str, Any] = {
        "accuracy_denom": accuracy_den.detach(),
        "ratio_metrics": ratio_metrics,
        "loss_terms": (value.numerator, value.denominator.detach()),
    }
    accuracy = correct_num / accuracy_den
    return value.loss, accuracy, metrics


def run_objective(
    model: Any,
    objective: Any,
    hidden_4d: Tensor,
    target_ids: Tensor,
    weight_mask: Tensor,
    chunk_reduce: Any,
    chunk_function: Any,
    *,
    chunk_size: int,
    fused: bool = False,
    fused_sub_chunk: Optional[int] = None,
) -> tuple[Tensor, ...]:
    """Summed chunk terms, through the fused path when asked and possible, else chunked autograd."""
    if fused:
        from ._fused_bridge import fused_totals

        return fused_totals(objective, model.lm_head, hidden_4d, target_ids, weight_mask, fused_sub_chunk)
    return chunk_reduce(chunk_function, hidden_4d, target_ids, weight_mask, chunk_size=chunk_size, dim=1)
