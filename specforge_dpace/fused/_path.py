"""The fused objective path: logits, cross-entropy, argmax and d loss / d hidden in one pass.

SpecForge's chunked objective is checkpointed: the lm_head product runs without grad, again in
backward, and then the gradient product (about 6*H*V flops a token).  Here each sub-chunk of
whole blocks runs the product once, turns the logits in place into ``softmax - onehot``, asks
the objective for its analytic per-slot gradient (``slot_grad``) and runs the gradient product
at once (about 4*H*V flops a token); one ``[sub-chunk tokens, V]`` buffer serves every sub-chunk
and dies with the call.
Values come from ``objective.chunk_terms`` on the detached per-slot cross-entropy (for the
chain term the value is not linear in it), gradients from ``slot_grad``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F

from ..losses import acceptance_terms
from ._autograd import attach_gradient
from ._subchunk import blocks_per_sub_chunk

Tensor = torch.Tensor
logger = logging.getLogger("specforge_dpace")
_fallback_logged: set[str] = set()


@dataclass
class FusedTerms:
    """Additive terms of one chunk of blocks, as SpecForge's objective chunk function returns them.

    ``num`` carries the gradient to ``hidden``; everything else is detached.
    """

    num: Tensor  # [T]
    den: Tensor  # [T]
    correct_num: Tensor  # scalar: supervised slots whose argmax is the label
    accuracy_den: Tensor  # scalar: weight_mask.sum()
    metric_terms: dict[str, tuple[Tensor, Tensor]]  # acceptance_terms(...)
    neg_log_q: Tensor  # [B, N, K] fp32, detached (per-slot cross-entropy)
    correct: Tensor  # [B, N, K] bool


def _spec_of(objective: Any) -> str:
    spec = getattr(objective, "spec", None)
    return spec() if callable(spec) else type(objective).__name__


def supports_fused(objective: Any) -> bool:
    """Whether the objective gives an analytic per-slot gradient (``slot_grad``).

    Objectives without one (e.g. a third-party loss) use the plain autograd path; this logs
    one line per objective spec the first time it says no.
    """
    probe = getattr(objective, "slot_grad", None)
    reason = None
    if not callable(probe):
        reason = "has no slot_grad"
    else:
        nlq = torch.full((1, 1, 2), 0.5)
        mask = torch.tensor([[[0.0, 1.0]]])
        try:
            probe(nlq, mask, torch.ones(1, 1, 2, dtype=torch.bool))
        except NotImplementedError:
            reason = "slot_grad is not implemented"
    if reason is None:
        return True
    spec = _spec_of(objective)
    if spec not in _fallback_logged:
        _fallback_logged.add(spec)
        logger.warning("specforge-dpace: objective %s %s; the fused path falls back to the plain path", spec, reason)
    return False


def _head_parameters(lm_head: Any) -> tuple[Tensor, Optional[Tensor]]:
    weight = getattr(lm_head, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise TypeError(
            f"fused path: lm_head must be a Linear-like module with a 2-D weight [V, H], got {type(lm_head).__name__}"
        )
    if weight.requires_grad and torch.is_grad_enabled():
        raise ValueError(
            "fused path: lm_head.weight requires grad, but the fused path only differentiates the hidden "
            "states (SpecForge's target head is frozen); call lm_head.requires_grad_(False) or use the plain path"
        )
    bias = getattr(lm_head, "bias", None)
    return weight, bias if isinstance(bias, torch.Tensor) else None


def _check_inputs(hidden: Tensor, weight: Tensor, target_ids: Tensor, weight_mask: Tensor) -> None:
    if hidden.dim() != 4:
        raise ValueError(f"fused path: hidden must be [B, N, K, H], got shape {tuple(hidden.shape)}")
    if hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"fused path: hidden size {hidden.shape[-1]} does not match lm_head weight {tuple(weight.shape)} ([V, H])"
        )
    for name, tensor in (("target_ids", target_ids), ("weight_mask", weight_mask)):
        if tensor.shape != hidden.shape[:3]:
            raise ValueError(
                f"fused path: {name} shape {tuple(tensor.shape)} does not match hidden's [B, N, K] "
                f"{tuple(hidden.shape[:3])}"
            )


@torch.no_grad()
def _sub_chunk_pass(
    objective: Any,
    hidden: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    targets: Tensor,
    mask: Tensor,
    want_grad: bool,
    buffer: Tensor,
    out_nlq: Tensor,
    out_correct: Tensor,
    out_dl: Optional[Tensor],
) -> Optional[Tensor]:
    """One sub-chunk ``[n, K]`` of blocks: fill per-slot CE, correctness and ``d l / d hidden``.

    Returns the objective's ``slot_grad`` ``[T, n, K]`` when gradients are wanted, else None.
    """
    n, k, width = hidden.shape
    rows = hidden.reshape(n * k, width)
    flat_targets = targets.reshape(-1, 1)
    logits = buffer[: n * k]  # reused across sub-chunks: no fresh allocation (and page faults) per sub-chunk
    if bias is None:
        torch.mm(rows, weight.t(), out=logits)
    else:
        torch.addmm(bias, rows, weight.t(), out=logits)
    work = logits if logits.dtype == out_nlq.dtype else logits.to(out_nlq.dtype)  # exact upcast: same argmax
    del logits
    row_max, argmax = work.max(dim=-1, keepdim=True)  # one pass: max for the softmax and argmax (first on ties)
    out_correct.copy_((argmax == flat_targets).view(n, k))
    target_logit = work.gather(1, flat_targets)
    work.sub_(row_max).exp_()
    total = work.sum(dim=-1, keepdim=True)
    nlq = (total.log() + row_max - target_logit).view(n, k)
    out_nlq.copy_(nlq)
    if not want_grad:
        return None
    grad = objective.slot_grad(nlq.unsqueeze(0), mask.unsqueeze(0), out_correct.unsqueeze(0))
    work.div_(total)
    work.scatter_add_(1, flat_targets, torch.full_like(target_logit, -1.0))
    probs = work if work.dtype == weight.dtype else work.to(weight.dtype)
    del work
    torch.mm(probs, weight, out=out_dl.view(n * k, width))
    return grad.reshape(grad.shape[0], n, k).to(out_nlq.dtype)


def fused_objective_terms(
    objective: Any,
    hidden: Tensor,
    lm_head: Any,
    target_ids: Tensor,
    weight_mask: Tensor,
    *,
    sub_chunk_tokens: Optional[int] = None,
) -> FusedTerms:
    """Objective terms of a chunk of blocks ``hidden [B, N, K, H]`` with the gradient computed on the way.

    Equal (to rounding) to autograd through ``lm_head`` + ``F.cross_entropy`` +
    ``objective.chunk_terms``.  ``sub_chunk_tokens`` overrides the automatic sub-chunk size
    (rounded down to whole blocks).  Objectives without ``slot_grad`` run the plain path.
    """
    weight, bias = _head_parameters(lm_head)
    _check_inputs(hidden, weight, target_ids, weight_mask)
    batch, blocks, slots, width = hidden.shape
    step = blocks_per_sub_chunk(weight.shape[0], slots, sub_chunk_tokens, hidden.device.type)
    if not supports_fused(objective):
        return _plain_terms(objective, hidden, lm_head, target_ids, weight_mask, step)

    want_grad = torch.is_grad_enabled() and hidden.requires_grad
    work_dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    total = batch * blocks
    flat_hidden = hidden.detach().reshape(total, slots, width)
    flat_targets = target_ids.reshape(total, slots)
    flat_mask = weight_mask.reshape(total, slots)
    nlq = torch.empty(total, slots, dtype=work_dtype, device=hidden.device)
    correct = torch.empty(total, slots, dtype=torch.bool, device=hidden.device)
    dl_dhidden = torch.empty(total, slots, width, dtype=weight.dtype, device=hidden.device) if want_grad else None
    buffer = torch.empty(min(step, total) * slots, weight.shape[0], dtype=weight.dtype, device=hidden.device)
    grads = []
    for start in range(0, total, step):
        part = slice(start, min(start + step, total))
        grads.append(
            _sub_chunk_pass(
                objective,
                flat_hidden[part],
                weight,
                bias,
                flat_targets[part],
                flat_mask[part],
                want_grad,
                buffer,
                nlq[part],
                correct[part],
                None if dl_dhidden is None else dl_dhidden[part],
            )
        )
    shape = (batch, blocks, slots)
    nlq, correct = nlq.view(shape), correct.view(shape)
    with torch.no_grad():
        num, den = objective.chunk_terms(nlq, weight_mask, correct)
    if want_grad:
        slot_grad = torch.cat(grads, dim=1).view(-1, *shape)
        num = attach_gradient(hidden, num, slot_grad, dl_dhidden.view(*shape, width))
    return _finish(num, den.detach(), nlq, correct, weight_mask)


def _finish(num: Tensor, den: Tensor, nlq: Tensor, correct: Tensor, weight_mask: Tensor) -> FusedTerms:
    with torch.no_grad():
        correct_num = (correct & (weight_mask > 0.5)).sum().float()
        metrics = acceptance_terms(nlq, weight_mask, correct)
    return FusedTerms(num, den, correct_num, weight_mask.sum(), metrics, nlq.detach(), correct)


def _plain_chunk(lm_head: Any, hidden: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    logits = lm_head(hidden.reshape(-1, hidden.shape[-1]))
    nlq = F.cross_entropy(logits.float(), targets.reshape(-1), reduction="none")
    correct = logits.detach().argmax(dim=-1) == targets.reshape(-1)
    return nlq.view(targets.shape), correct.view(targets.shape)


def _plain_terms(
    objective: Any, hidden: Tensor, lm_head: Any, target_ids: Tensor, weight_mask: Tensor, step: int
) -> FusedTerms:
    """Fallback: autograd through the head, sub-chunk by sub-chunk under activation checkpointing."""
    from torch.utils.checkpoint import checkpoint

    batch, blocks, slots, width = hidden.shape
    flat_hidden = hidden.reshape(batch * blocks, slots, width)
    flat_targets = target_ids.reshape(batch * blocks, slots)
    checkpointed = torch.is_grad_enabled() and hidden.requires_grad
    pieces = []
    for start in range(0, batch * blocks, step):
        args = (lm_head, flat_hidden[start : start + step], flat_targets[start : start + step])
        pieces.append(checkpoint(_plain_chunk, *args, use_reentrant=False) if checkpointed else _plain_chunk(*args))
    nlq = torch.cat([p[0] for p in pieces]).view(batch, blocks, slots)
    correct = torch.cat([p[1] for p in pieces]).view(batch, blocks, slots)
    num, den = objective.chunk_terms(nlq, weight_mask, correct)
    return _finish(num, den.detach(), nlq, correct, weight_mask)
