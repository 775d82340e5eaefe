"""The fused objective path: logits, cross-entropy, argmax and d loss / d hidden in one pass.

SpecForge's chunked objective is checkpointed: the lm_head product runs without grad, again in
backward, and then the gradient product (about 6*H*V flops a token).  Here each sub-chunk of
whole blocks runs the product once, turns the logits in place into ``softmax - onehot``, asks
the objective for its analytic per-slot gradient (``slot_grad``) and runs the gradient product
at once (about 4*H*V flops a token); one ``[sub-chunk tokens, V]`` buffer serves every sub-chunk
and dies with the call.
Values come from ``objective.chunk_terms`` on the detached per-slot cross-entropy (for the
chain term the value is not linear in it), gradients from ``slot_grad``.

Soft-label objectives (``needs_target``) take the target's hidden states of the same slots and run
:mod:`._soft`: the target logits of each piece are formed there (forward only), and the gradient
directions of DESIGN.md 3.1 come from the same buffers (one gradient product per direction).

On CUDA tensors (:func:`.kernels.kernels_for`) the element-wise work runs in Triton kernels, with the
``[tokens, V]`` buffers in the compute dtype: :func:`.kernels.hard_rows_kernel` for hard objectives,
:class:`._kernel_soft.KernelSoftPass` for soft ones (docs/gpu-kernels.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F

from ..losses import SoftSlots, acceptance_terms
from ._autograd import attach_directions, attach_gradient
from ._kernel_soft import KernelSoftPass, kernel_plan_reason
from ._soft import SOFT_BUFFERS, SoftPass, soft_plan
from ._subchunk import blocks_per_sub_chunk
from .kernels import check_labels, kernels_for, launcher, log_once, slot_stats

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
    #: soft-label objectives only: temperature -> SoftSlots [B, N, K], detached. ``kl`` is NaN at
    #: temperatures where the objective reads no KL (the fused path does not compute it there).
    soft: Optional[dict] = None


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
    elif getattr(objective, "needs_target", False):
        reason = soft_plan(objective)[1] or None
    else:
        nlq = torch.full((1, 1, 2), 0.5)
        mask = torch.tensor([[[0.0, 1.0]]])
        try:
            probe(nlq, mask, torch.ones(1, 1, 2, dtype=torch.bool))
        except NotImplementedError:
            reason = "slot_grad is not implemented"
    if reason is None:
        return True
    _log_fallback(objective, reason)
    return False


def _log_fallback(objective: Any, reason: str) -> None:
    spec = _spec_of(objective)
    if spec not in _fallback_logged:
        _fallback_logged.add(spec)
        logger.warning("specforge-dpace: objective %s %s; the fused path falls back to the plain path", spec, reason)


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
    kernels: bool = False,
) -> Optional[Tensor]:
    """One sub-chunk ``[n, K]`` of blocks: fill per-slot CE, correctness and ``d l / d hidden``.

    Returns the objective's ``slot_grad`` ``[T, n, K]`` when gradients are wanted, else None.
    ``kernels``: the element-wise work in :func:`.kernels.hard_rows_kernel` (the logits buffer stays in the
    compute dtype; no fp32 copy).
    """
    n, k, width = hidden.shape
    rows = hidden.reshape(n * k, width)
    flat_targets = targets.reshape(-1, 1)
    logits = buffer[: n * k]  # reused across sub-chunks: no fresh allocation (and page faults) per sub-chunk
    if bias is None:
        torch.mm(rows, weight.t(), out=logits)
    else:
        torch.addmm(bias, rows, weight.t(), out=logits)
    if kernels:  # one kernel: CE, argmax and, in place in the compute dtype, softmax - onehot
        argmax = torch.empty(n * k, dtype=torch.long, device=logits.device)
        launcher().hard_rows(logits, targets.reshape(-1), out_nlq.view(-1), argmax, want_grad)
        out_correct.copy_((argmax == targets.reshape(-1)).view(n, k))
        if not want_grad:
            return None
        grad = objective.slot_grad(out_nlq.unsqueeze(0), mask.unsqueeze(0), out_correct.unsqueeze(0))
        torch.mm(logits, weight, out=out_dl.view(n * k, width))
        return grad.reshape(grad.shape[0], n, k).to(out_nlq.dtype)
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
    target_hidden: Optional[Tensor] = None,
) -> FusedTerms:
    """Objective terms of a chunk of blocks ``hidden [B, N, K, H]`` with the gradient computed on the way.

    Equal (to rounding) to autograd through ``lm_head`` + ``F.cross_entropy`` +
    ``objective.chunk_terms``.  ``sub_chunk_tokens`` overrides the automatic sub-chunk size
    (rounded down to whole blocks).  Objectives without ``slot_grad`` run the plain path.
    Soft-label objectives also need ``target_hidden [B, N, K, H]``: the target's hidden state whose
    ``lm_head`` logits give p at each slot (the aligned ``target_last_hidden_states``).
    """
    weight, bias = _head_parameters(lm_head)
    _check_inputs(hidden, weight, target_ids, weight_mask)
    if getattr(objective, "needs_target", False):
        return _soft_terms(
            objective, hidden, lm_head, weight, bias, target_ids, weight_mask, target_hidden, sub_chunk_tokens
        )
    batch, blocks, slots, width = hidden.shape
    step = blocks_per_sub_chunk(weight.shape[0], slots, sub_chunk_tokens, hidden.device.type)
    if not supports_fused(objective):
        return _plain_terms(objective, hidden, lm_head, target_ids, weight_mask, step)

    want_grad = torch.is_grad_enabled() and hidden.requires_grad
    work_dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    kernels = kernels_for(weight) and hidden.device == weight.device
    if kernels:
        check_labels(target_ids, weight.shape[0])
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
                kernels,
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


def _soft_terms(
    objective: Any,
    hidden: Tensor,
    lm_head: Any,
    weight: Tensor,
    bias: Optional[Tensor],
    target_ids: Tensor,
    weight_mask: Tensor,
    target_hidden: Optional[Tensor],
    sub_chunk_tokens: Optional[int],
) -> FusedTerms:
    """Soft-label objectives: :class:`._soft.SoftPass`, or the plain path when there is no analytic gradient."""
    if target_hidden is None:
        raise ValueError(
            f"fused path: {_spec_of(objective)} reads the target's distribution p at every slot; pass "
            "target_hidden [B, N, K, H] (the target's last hidden state aligned to the slots)"
        )
    if target_hidden.shape != hidden.shape:
        raise ValueError(
            f"fused path: target_hidden shape {tuple(target_hidden.shape)} does not match hidden's "
            f"{tuple(hidden.shape)} ([B, N, K, H] both)"
        )
    batch, blocks, slots, width = hidden.shape
    step = blocks_per_sub_chunk(weight.shape[0], slots, sub_chunk_tokens, hidden.device.type, SOFT_BUFFERS, soft=True)
    plan, reason = (
        soft_plan(objective) if callable(getattr(objective, "slot_grad", None)) else (None, "has no slot_grad")
    )
    if plan is None:
        _log_fallback(objective, reason)
        return _plain_terms(objective, hidden, lm_head, target_ids, weight_mask, step, target_hidden)
    want_grad = torch.is_grad_enabled() and hidden.requires_grad
    soft_pass = SoftPass
    if kernels_for(weight) and hidden.device == weight.device:
        reason = kernel_plan_reason(plan)
        if reason is None:
            soft_pass = KernelSoftPass
            check_labels(target_ids, weight.shape[0])
        else:
            spec = _spec_of(objective)
            log_once(
                f"kernel-plan:{spec}",
                "specforge-dpace: objective %s %s; the fused path runs its PyTorch pass for it",
                spec,
                reason,
            )
    result = soft_pass(objective, plan, weight, bias, step, slots, want_grad).run(
        hidden, target_hidden, target_ids, weight_mask
    )
    shape = (batch, blocks, slots)
    nlq, correct = result.nlq.view(shape), result.correct.view(shape)
    soft = {t: _reshape_slots(slots_t, shape) for t, slots_t in result.soft.items()}
    with torch.no_grad():
        num, den = objective.chunk_terms(nlq, weight_mask, correct, soft=soft)
    if want_grad:
        pairs = [(c.view(c.shape[0], *shape), g.view(*shape, width)) for c, g in result.buffers]
        num = attach_directions(hidden, num, pairs)
    return _finish(num, den.detach(), nlq, correct, weight_mask, soft)


def _reshape_slots(slots: SoftSlots, shape: tuple) -> SoftSlots:
    return SoftSlots(
        slots.temperature,
        slots.log_alpha.view(shape),
        slots.kl.view(shape),
        slots.teacher_ids.view(shape),
        slots.draft_ids.view(shape),
        {key: value.view(shape) for key, value in slots.extras.items()},
    )


def _finish(
    num: Tensor, den: Tensor, nlq: Tensor, correct: Tensor, weight_mask: Tensor, soft: Optional[dict] = None
) -> FusedTerms:
    with torch.no_grad():
        correct_num = (correct & (weight_mask > 0.5)).sum().float()
        metrics = acceptance_terms(nlq, weight_mask, correct)
    return FusedTerms(num, den, correct_num, weight_mask.sum(), metrics, nlq.detach(), correct, soft)


def _plain_chunk(lm_head: Any, hidden: Tensor, targets: Tensor, *rest: Any) -> tuple[Tensor, ...]:
    """Per-slot CE and correctness of a sub-chunk; with ``(target_hidden, extras, *temperatures)`` also
    ``(teacher_ids, draft_ids, log_alpha_T, kl_T, *extras_T, ...)`` (target logits without grad; ``extras``:
    the objective's ``soft_extras``)."""
    logits = lm_head(hidden.reshape(-1, hidden.shape[-1]))
    nlq = F.cross_entropy(logits.float(), targets.reshape(-1), reduction="none")
    correct = logits.detach().argmax(dim=-1) == targets.reshape(-1)
    out: tuple[Tensor, ...] = (nlq.view(targets.shape), correct.view(targets.shape))
    if rest:
        target_hidden, extras, temperatures = rest[0], rest[1], rest[2:]
        with torch.no_grad():
            target_logits = lm_head(target_hidden.reshape(-1, target_hidden.shape[-1]))
        stats = [slot_stats(logits, t, target_logits=target_logits, extras=extras.get(t, ())) for t in temperatures]
        out += (stats[0].teacher_ids.view(targets.shape), stats[0].draft_ids.view(targets.shape))
        for slots in stats:
            out += (slots.log_alpha.view(targets.shape), slots.kl.view(targets.shape))
            out += tuple(value.view(targets.shape) for value in slots.extras.values())
    return out


def _plain_terms(
    objective: Any,
    hidden: Tensor,
    lm_head: Any,
    target_ids: Tensor,
    weight_mask: Tensor,
    step: int,
    target_hidden: Optional[Tensor] = None,
) -> FusedTerms:
    """Fallback: autograd through the head, sub-chunk by sub-chunk under activation checkpointing."""
    from torch.utils.checkpoint import checkpoint

    batch, blocks, slots, width = hidden.shape
    flat_hidden = hidden.reshape(batch * blocks, slots, width)
    flat_targets = target_ids.reshape(batch * blocks, slots)
    temperatures = tuple(getattr(objective, "soft_temperatures", ())) if target_hidden is not None else ()
    extras = dict(getattr(objective, "soft_extras", {}))
    flat_target_hidden = None if target_hidden is None else target_hidden.detach().reshape(batch * blocks, slots, width)
    checkpointed = torch.is_grad_enabled() and hidden.requires_grad
    pieces = []
    for start in range(0, batch * blocks, step):
        part = slice(start, start + step)
        args = (lm_head, flat_hidden[part], flat_targets[part])
        if temperatures:
            args += (flat_target_hidden[part], extras, *temperatures)
        pieces.append(checkpoint(_plain_chunk, *args, use_reentrant=False) if checkpointed else _plain_chunk(*args))
    shape = (batch, blocks, slots)
    joined = [torch.cat([p[i] for p in pieces]).view(shape) for i in range(len(pieces[0]))]
    nlq, correct = joined[0], joined[1]
    if not temperatures:
        num, den = objective.chunk_terms(nlq, weight_mask, correct)
        return _finish(num, den.detach(), nlq, correct, weight_mask)
    teacher, draft = joined[2], joined[3]
    soft, index = {}, 4
    for t in temperatures:
        keys = tuple(extras.get(t, ()))
        formed = dict(zip(keys, joined[index + 2 : index + 2 + len(keys)]))
        soft[t] = SoftSlots(t, joined[index], joined[index + 1], teacher, draft, formed)
        index += 2 + len(keys)
    num, den = objective.chunk_terms(nlq, weight_mask, correct, soft=soft)
    detached = {t: slots_t.detached() for t, slots_t in soft.items()}
    return _finish(num, den.detach(), nlq, correct, weight_mask, detached)
