"""The plain (checkpointed) soft path's statistics through the kernels: :func:`slot_stats`.

:func:`specforge_dpace.losses.soft_slot_stats` with the same values, gradients and recomputation store, where
:func:`._switch.kernels_for` says so (CUDA logits): the forward is one :func:`._triton.soft_stats_kernel`
launch (both argmaxes come with it, so no later pass forms them), the backward one
:func:`._triton.soft_directions_kernel` launch that writes d/dz in the logits' dtype from the saved per-row
statistics (log-sum-exps, log alpha, s / alpha: seven numbers a row).  Anything else -- other devices, target
log-probabilities, an argument the PyTorch function has and this one does not know, invalid input (so its
errors stay the PyTorch function's) -- goes to :func:`soft_slot_stats` itself.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from ...losses import SoftSlots, soft_slot_stats
from ...losses._soft import _RecomputeStore
from ...losses._state import in_backward
from ._switch import check_labels, kernels_for, launcher

Tensor = torch.Tensor
#: The kernel path's own recomputation store (its entries hold the kernels' per-row statistics).
KERNEL_RECOMPUTE_STORE = _RecomputeStore()


class _KernelStatistics(torch.autograd.Function):
    """``(log_alpha, kl[, neg_log_q])`` of draft logits against the target's, by the kernels.

    ``box`` receives the per-row statistics and argmaxes (for :class:`SoftSlots` and the store); ``stored``
    (a checkpoint's recomputation) gives them instead of a launch."""

    @staticmethod
    def forward(ctx, logits, target, temperature, labels, box, stored):  # type: ignore[override]
        ctx.set_materialize_grads(False)
        launch = launcher()
        vocab = logits.shape[-1]
        flat_labels = None if labels is None else labels.reshape(-1)
        if stored is None:
            stats, ids = launch.soft_stats(
                logits.reshape(-1, vocab), target.reshape(-1, vocab), temperature, labels=flat_labels
            )
        else:
            stats, ids = stored
        box["stats"], box["ids"] = stats, ids
        ctx.save_for_backward(logits, target, stats, flat_labels)
        ctx.temperature = temperature
        shape = logits.shape[:-1]
        rows = (launch.LOG_ALPHA, launch.KL) + (() if labels is None else (launch.NLQ,))
        return tuple(stats[row].view(shape).clone() for row in rows)

    @staticmethod
    def backward(ctx, grad_log_alpha, grad_kl, grad_neg_log_q=None):  # type: ignore[override]
        logits, target, stats, labels = ctx.saved_tensors
        if labels is None:
            grad_neg_log_q = None
        if grad_log_alpha is None and grad_kl is None and grad_neg_log_q is None:
            return None, None, None, None, None, None
        launch, t = launcher(), ctx.temperature
        vocab = logits.shape[-1]
        z, target = logits.reshape(-1, vocab), target.reshape(-1, vocab)
        coef = torch.zeros(1, launch.BASIS, z.shape[0], dtype=stats.dtype, device=z.device)
        basis = {launch.Q0}
        if grad_log_alpha is not None:  # (u q / alpha - r q) / T
            scale = grad_log_alpha.reshape(-1).to(stats.dtype) / t
            coef[0, launch.W0] += scale
            coef[0, launch.Q0] -= scale * stats[launch.RATIO]
            basis.add(launch.W0)
        if grad_kl is not None:  # (q - p) / T
            scale = grad_kl.reshape(-1).to(stats.dtype) / t
            coef[0, launch.Q0] += scale
            coef[0, launch.P0] -= scale
            basis.add(launch.P0)
        if grad_neg_log_q is not None:  # q - e_label (labels come at T = 1 only)
            scale = grad_neg_log_q.reshape(-1).to(stats.dtype)
            coef[0, launch.Q0] += scale
            coef[0, launch.E_Y] -= scale
            basis.add(launch.E_Y)
        grad = torch.empty_like(z)
        row_stats = launch.direction_row_stats([stats])
        launch.soft_directions(z, target, [grad], (t,), row_stats, coef, frozenset(basis), labels=labels)
        return grad.view(logits.shape), None, None, None, None, None


def _kernel_ready(draft_logits: Tensor, temperature: Any, target_logits: Optional[Tensor], labels) -> bool:
    """Valid input the kernels take (anything else goes to :func:`soft_slot_stats`, which refuses what is invalid)."""
    return (
        target_logits is not None
        and isinstance(temperature, (int, float))
        and not isinstance(temperature, bool)
        and temperature > 0
        and target_logits.shape == draft_logits.shape
        and draft_logits.dim() >= 1
        and (labels is None or (float(temperature) == 1.0 and labels.shape == draft_logits.shape[:-1]))
        and target_logits.device == draft_logits.device
        and kernels_for(draft_logits)
    )


def slot_stats(
    draft_logits: Tensor,
    temperature: float = 1.0,
    *,
    target_logits: Optional[Tensor] = None,
    target_log_probs: Optional[Tensor] = None,
    labels: Optional[Tensor] = None,
    reuse: Optional[Tensor] = None,
    **options: Any,
):
    """:func:`specforge_dpace.losses.soft_slot_stats` (same arguments and results), through the kernels on
    tensors :func:`kernels_for` accepts."""
    if not options.get("extras", True):
        del options["extras"]  # no further statistics: the kernels' own
    if options or target_log_probs is not None or not _kernel_ready(draft_logits, temperature, target_logits, labels):
        return soft_slot_stats(
            draft_logits,
            temperature,
            target_logits=target_logits,
            target_log_probs=target_log_probs,
            labels=labels,
            reuse=reuse,
            **options,
        )
    temperature = float(temperature)
    if labels is not None:
        check_labels(labels, draft_logits.shape[-1])
    stored = None
    if reuse is not None and in_backward():
        stored = KERNEL_RECOMPUTE_STORE.take(reuse, temperature, labels is not None)
    box: dict = {}
    outputs = _KernelStatistics.apply(draft_logits, target_logits.detach(), temperature, labels, box, stored)
    if reuse is not None and stored is None and not in_backward():
        KERNEL_RECOMPUTE_STORE.put(reuse, temperature, labels is not None, (box["stats"], box["ids"]))
    shape = draft_logits.shape[:-1]
    ids = box["ids"]
    slots = SoftSlots(temperature, outputs[0], outputs[1], ids[1].view(shape), ids[0].view(shape))
    return slots if labels is None else (slots, outputs[2])
