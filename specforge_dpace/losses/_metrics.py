"""Training-time acceptance metrics from the same per-slot tensors the objectives use.

All metrics are additive ``(numerator, denominator)`` pairs so they reduce over chunks,
accumulation steps and ranks the way SpecForge's ``ratio_metrics`` do.
"""

from __future__ import annotations

import torch

from ._base import Tensor, valid_bool
from ._prefix import log_prefix_probability


@torch.no_grad()
def acceptance_terms(neg_log_q: Tensor, weight_mask: Tensor, correct: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
    """Additive terms for the acceptance metrics of one chunk of blocks ``[B, N, K]``.

    * ``sim_tau``: 1 + accepted prefix length from argmax correctness (invalid slots are
      skipped, not failures), averaged over blocks with at least one supervised slot;
    * ``surrogate``: ``sum_k prod_{i<=k} q_i`` over supervised slots (expected accepted
      length under independence), averaged over the same blocks;
    * ``accept_pos``: per slot k, the share of blocks supervised at k whose prefix through k
      is accepted (vector of length K).
    """
    valid = valid_bool(weight_mask)
    ok = correct.bool() | ~valid
    prefix_ok = ok.int().cumprod(dim=-1).bool() & valid
    blocks = valid.any(dim=-1)
    block_count = blocks.sum().float()
    accepted = prefix_ok.sum(dim=-1).float()
    tau_num = ((accepted + 1.0) * blocks.float()).sum()
    surrogate = (torch.exp(log_prefix_probability(neg_log_q.detach(), weight_mask)) * valid.float()).sum()
    pos_num = prefix_ok.float().sum(dim=(0, 1))
    pos_den = valid.float().sum(dim=(0, 1))
    return {
        "sim_tau": (tau_num, block_count),
        "surrogate": (surrogate, block_count),
        "accept_pos": (pos_num, pos_den),
    }


def ratio(num: Tensor, den: Tensor) -> Tensor:
    return num / den.clamp_min(1.0)
