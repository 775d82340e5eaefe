"""Objectives built on the accepted prefix: first-error focal, chain and accept-until-fail.

Verification is left to right, so these look at where a block's accepted prefix breaks
(first-error focal, accept-until-fail) or at the differentiable expected prefix length
itself (chain).
"""

from __future__ import annotations

import torch

from ._base import BlockObjective, Tensor, mask_as, valid_bool


def _errors(mask: Tensor, correct: Tensor) -> Tensor:
    return valid_bool(mask) & ~correct.bool()


def first_valid_error(mask: Tensor, correct: Tensor) -> Tensor:
    """Bool ``[B, N, K]``: the first supervised slot of each block whose argmax is wrong."""
    errors = _errors(mask, correct)
    return errors & (errors.int().cumsum(dim=-1) == 1)


def accepted_support(mask: Tensor, correct: Tensor) -> Tensor:
    """Bool ``[B, N, K]``: supervised slots up to and including the first error (all if none)."""
    errors = _errors(mask, correct).int()
    return valid_bool(mask) & ((errors.cumsum(dim=-1) - errors) == 0)


class _SelectedSlotsLoss(BlockObjective):
    """Token-mean cross-entropy over a detached selection of slots (the selection is the gradient)."""

    needs_correct = True
    normalization = "clamp1"

    @staticmethod
    def select(mask: Tensor, correct: Tensor) -> Tensor:
        raise NotImplementedError

    def _terms(self, nlq, mask, correct):
        selected = self.select(mask, correct).to(nlq.dtype)
        return (nlq * selected).sum(), selected.sum()

    def _slot_grad(self, nlq, mask, correct):
        return self.select(mask, correct).to(nlq.dtype)


class FirstErrorFocalLoss(_SelectedSlotsLoss):
    """Cross-entropy at the slot that breaks each block's accepted prefix."""

    name = "first-error-focal"
    description = "CE at the first wrong supervised slot per block; mean over blocks with an error"
    select = staticmethod(first_valid_error)


class AcceptUntilFailLoss(_SelectedSlotsLoss):
    """Cross-entropy over each block's accepted prefix plus the first rejected slot."""

    name = "auf"
    description = "accept-until-fail: CE over supervised slots up to the first error; token mean"
    select = staticmethod(accepted_support)


def log_prefix_probability(nlq: Tensor, mask: Tensor) -> Tensor:
    """``sum_{valid i<=k} log q_i`` in fp32 or wider (never a raw product of probabilities)."""
    work = nlq if nlq.dtype == torch.float64 else nlq.float()
    return torch.cumsum(-work * mask_as(mask, work), dim=-1)


def chain_scale(block_size: int) -> float:
    return 1.0 / max(block_size - 1, 1)


class ChainLoss(BlockObjective):
    """Minus the differentiable expected accepted length, ``(1/(K-1)) sum_k prod_{i<=k} q_i``.

    Not detached: its gradient w.r.t. ``neg_log_q`` is the D-PACE(alpha=0) weight / (K-1).
    """

    name = "chain"
    description = "-(1/(K-1)) sum_k prod_{i<=k} q_i per block (log space); mean over blocks with a valid slot"
    normalization = "clamp1"

    def _terms(self, nlq, mask, correct):
        # nlq is already fp32/fp64 here (BlockObjective.chunk_terms): exp(cumsum(log q)), never prod(q)
        weights = mask_as(mask, nlq)  # m in {0, 1} (DESIGN.md section 3)
        prefix = torch.cumsum(nlq * weights, dim=-1).neg_().exp_()
        num = (prefix * weights).sum() * -chain_scale(nlq.shape[-1])
        return num, (weights.amax(dim=-1) > 0).sum()

    def _slot_grad(self, nlq, mask, correct):
        valid = valid_bool(mask).to(torch.float64 if nlq.dtype == torch.float64 else torch.float32)
        prefix = torch.exp(log_prefix_probability(nlq, mask)) * valid
        suffix = torch.flip(torch.cumsum(torch.flip(prefix, dims=[-1]), dim=-1), dims=[-1])
        return (valid * suffix * chain_scale(nlq.shape[-1])).to(nlq.dtype)
