"""Objectives inside methods that supervise slot 0 (DSpark; Domino with ``shift_label``).

The objective contract (``specforge_dpace.losses``) says slot 0 of a block is the clean anchor and
is never supervised: ``dflash(gamma)`` decays ``exp(-max(k-1, 0)/gamma)`` so its first supervised
slot k = 1 gets weight 1, ``chain`` scales by ``1/(K-1)`` (the number of supervisable slots), and
per-slot metrics start at ``accept_pos_1``.  DSpark (labels ``a + k + 1``) and Domino with
``shift_label`` (the same) supervise every slot of a K-slot block.

Rather than teach every objective (built-in and third-party) an offset, such a method hands the
objective its tensors with one leading, masked column: ``[B, N, K]`` becomes ``[B, N, K + 1]`` with
``mask = 0``, ``neg_log_q = 0``, ``correct = False`` and neutral soft statistics (``log alpha = 0``,
``KL = 0``) in front.  Slot j of the method is column j + 1, so ``dflash(gamma)`` weighs it
``exp(-j/gamma)`` (DSpark's own decay, and Domino's with ``shift_label``), chain's scale is
``1/K``, D-PACE's prefix products start at the first supervised slot, and per-slot metrics
``accept_pos_k`` / ``alpha_pos_k`` (k = 1..K) name the k-th drafted token; the padding column is
the one every per-slot output already drops (index 0).  Masked slots are no-ops in every objective
(``DESIGN.md`` section 3), so the padding column contributes no value and no gradient; what changes is
only what the contract derives from the slot index (the decay offset, chain's ``1/(K-1)``), which is
the point.  Third-party objectives get the same view and need no offset of their own.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..losses import SoftSlots

Tensor = torch.Tensor


def lead(tensor: Tensor, value) -> Tensor:
    """``tensor`` ``[..., K]`` with one leading column of ``value`` (same dtype and device)."""
    front = torch.full((*tensor.shape[:-1], 1), value, dtype=tensor.dtype, device=tensor.device)
    return torch.cat([front, tensor], dim=-1)


def lead_soft(slots: SoftSlots) -> SoftSlots:
    """Soft statistics with the neutral leading column (alpha = 1, KL = 0, ids 0; masked anyway)."""
    return SoftSlots(
        slots.temperature,
        lead(slots.log_alpha, 0.0),
        lead(slots.kl, 0.0),
        lead(slots.teacher_ids, 0),
        lead(slots.draft_ids, 0),
    )


def with_anchor_column(
    neg_log_q: Tensor,
    target_ids: Tensor,
    weight_mask: Tensor,
    correct: Tensor,
    soft: Optional[dict] = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Optional[dict]]:
    """The objective's view of a block whose slot 0 is supervised: every tensor with the masked anchor column."""
    padded_soft = None if soft is None else {t: lead_soft(s) for t, s in soft.items()}
    return (
        lead(neg_log_q, 0.0),
        lead(target_ids, 0),
        lead(weight_mask, 0.0),
        lead(correct, False),
        padded_soft,
    )


__all__ = ["lead", "lead_soft", "with_anchor_column"]
