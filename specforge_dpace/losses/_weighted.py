"""Objectives of the form ``sum(weight * neg_log_q)`` with detached weights: dflash and D-PACE.

The operation order follows SpecForge 0.2.0's ``_dflash_objective_chunk_terms`` and
``_dpace_weight`` so that fp32 results are bit-identical to the upstream class (tested
against it), which is what lets the plugin leave built-in names unchanged.
"""

from __future__ import annotations

from typing import Optional

import torch

from ._base import BlockObjective, Option, Tensor, mask_as


def decay_weights(
    block_size: int, gamma: Optional[float], device: torch.device, dtype: torch.dtype = torch.float32
) -> Optional[Tensor]:
    """``exp(-max(k-1, 0) / gamma)`` over slots, or None when gamma is unset or <= 0.

    fp32 unless asked for fp64 (SpecForge computes it in fp32; fp32 results stay bit-identical).
    """
    if gamma is None or gamma <= 0:
        return None
    positions = torch.arange(block_size, device=device).view(1, 1, -1)
    work = torch.float64 if dtype == torch.float64 else torch.float32
    return torch.exp(-(positions - 1).clamp(min=0).to(work) / gamma)


class DFlashLoss(BlockObjective):
    """DFlash's weighted-mean cross-entropy with exponential slot decay (SpecForge's default)."""

    name = "dflash"
    description = "cross-entropy, slot k weighted exp(-max(k-1,0)/gamma); mean over weights"
    options = {"gamma": Option(None, (float,), nullable=True, help="decay length; None or <= 0: uniform")}
    normalization = "sum"

    def _weights(self, nlq: Tensor, mask: Tensor) -> Tensor:
        weights = mask_as(mask, nlq)
        if self.gamma is None or self.gamma <= 0:
            return weights
        key = (nlq.shape[-1], nlq.device, nlq.dtype)
        cache = self.__dict__.setdefault("_decay_cache", {})
        decay = cache.get(key)
        if decay is None:  # same values SpecForge recomputes every call; computed once per shape here
            decay = cache[key] = decay_weights(nlq.shape[-1], self.gamma, nlq.device, nlq.dtype)
        return weights * decay

    def _terms(self, nlq, mask, correct):
        weights = self._weights(nlq, mask)
        return (nlq * weights).sum(), weights.sum()

    def _slot_grad(self, nlq, mask, correct):
        return self._weights(nlq, mask).expand_as(nlq).clone()


def dpace_weights(neg_log_q: Tensor, mask: Tensor, alpha: float, variant: str) -> Tensor:
    """Detached D-PACE weights: smoothed prefix confidence ``P`` and continuation value ``W``.

    ``variant`` is ``"full"`` (W), ``"prefix"`` (P) or ``"continuation"`` (W / P).
    Invalid slots are multiplicative no-ops in ``P`` and add nothing to ``W``.
    """
    with torch.no_grad():
        mask = mask_as(mask, neg_log_q)
        prob = torch.exp(-neg_log_q)
        smooth = (1.0 - alpha) * prob + alpha
        smooth = torch.where(mask > 0, smooth, torch.ones_like(smooth))
        prefix = torch.cumprod(smooth, dim=-1)
        if variant == "prefix":
            return prefix
        suffix = torch.flip(torch.cumsum(torch.flip(prefix * mask, dims=[-1]), dim=-1), dims=[-1])
        if variant == "full":
            return suffix
        return suffix / prefix.clamp_min(torch.finfo(prefix.dtype).tiny)


_ALPHA = Option(0.5, (float,), minimum=0.0, maximum=1.0, help="confidence smoothing: s = (1-alpha) q + alpha")


class _DPaceFamily(BlockObjective):
    options = {"alpha": _ALPHA}
    normalization = "batch"
    variant = "full"

    def _terms(self, nlq, mask, correct):
        weights = dpace_weights(nlq, mask, self.alpha, self.variant)
        num = (nlq * mask_as(mask, nlq) * weights).sum()
        return num, num.new_zeros(())

    def _slot_grad(self, nlq, mask, correct):
        return mask_as(mask, nlq) * dpace_weights(nlq, mask, self.alpha, self.variant)


class DPaceLoss(_DPaceFamily):
    """D-PACE: the detached, smoothed gradient of expected accepted length, per sequence."""

    name = "dpace"
    description = "CE weighted by continuation value W_k = sum_{j>=k} P_j (smoothed prefix confidence)"
    variant = "full"


class DPaceCumulativeConfidenceLoss(_DPaceFamily):
    """Ablation: weight by the smoothed prefix confidence P_k only."""

    name = "dpace-cumulative-confidence-only"
    description = "ablation: CE weighted by smoothed prefix confidence P_k"
    variant = "prefix"


class DPaceContinuationValueLoss(_DPaceFamily):
    """Ablation: weight by W_k / P_k (continuation value without the prefix factor)."""

    name = "dpace-continuation-value-only"
    description = "ablation: CE weighted by W_k / P_k"
    variant = "continuation"
