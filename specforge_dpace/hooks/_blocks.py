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


#: The feature key that carries the target's last hidden state (post final norm), as DSpark names it.
TARGET_HIDDEN_KEY = "target_last_hidden_states"
MISSING_TARGET_HIDDEN = (
    "{spec}: this soft-label objective needs the target's distribution p at every slot, computed from the "
    "target's last hidden state, but the batch has no '" + TARGET_HIDDEN_KEY + "'. Offline features must carry "
    "the key '" + TARGET_HIDDEN_KEY + "' [seq, hidden] (specforge_dpace.features.capture_offline_features("
    "..., last_hidden=True) writes it); SpecForge's server capture sends it as 'last_hidden_feature'"
)


def align_target_hidden(target_last_hidden: Tensor, anchor_positions: Tensor, block_size: int, offset: int = -1):
    """``[B, N, K, H]``: the target state whose next-token distribution is slot k's p.

    Slot k of the block anchored at a predicts ``input_ids[a + k]`` (DFlash), so its p comes from
    ``h_last[a + k - 1]`` (``offset=-1``); positions are clamped into the sequence (slots outside it
    are masked anyway).
    """
    if target_last_hidden.dim() != 3:
        raise ValueError(
            f"{TARGET_HIDDEN_KEY} must be [batch, seq, hidden], got shape {tuple(target_last_hidden.shape)}"
        )
    batch, seq_len, width = target_last_hidden.shape
    if anchor_positions.shape[0] != batch:
        raise ValueError(
            f"{TARGET_HIDDEN_KEY} has batch {batch} but the anchors have batch {anchor_positions.shape[0]}"
        )
    offsets = torch.arange(block_size, device=anchor_positions.device).view(1, 1, -1)
    index = (anchor_positions.unsqueeze(-1) + offsets + offset).clamp(0, seq_len - 1)
    gathered = torch.gather(target_last_hidden, 1, index.reshape(batch, -1, 1).expand(-1, -1, width))
    return gathered.reshape(batch, anchor_positions.shape[1], block_size, width)


def soft_statistics(objective: Any, lm_head: Any, logits: Tensor, target_hidden: Optional[Tensor], target_ids: Tensor):
    """``(soft, neg_log_q)`` of one chunk: the soft statistics at every temperature the objective reads
    (target head frozen) and the hard cross-entropy, from the temperature-1 statistics' own log-softmax
    when the objective reads T = 1 (one log-softmax of the logits, not two), else ``F.cross_entropy``."""
    from ..fused.kernels import slot_stats as soft_slot_stats  # the PyTorch function, or the kernels on a GPU
    from ..losses._statistics import soft_extras_at

    if target_hidden is None:
        raise ValueError(MISSING_TARGET_HIDDEN.format(spec=objective.spec()))
    batch, blocks, slots, width = target_hidden.shape
    with torch.no_grad():
        target_logits = lm_head(target_hidden.reshape(batch, blocks * slots, width)).reshape(batch, blocks, slots, -1)
    soft, neg_log_q = {}, None
    for t in objective.soft_temperatures:  # reuse: a checkpoint's recomputation takes the forward's values
        extras = soft_extras_at(objective, t)
        if t == 1.0:
            soft[t], neg_log_q = soft_slot_stats(
                logits, t, target_logits=target_logits, labels=target_ids, reuse=target_hidden, extras=extras
            )
        else:
            soft[t] = soft_slot_stats(logits, t, target_logits=target_logits, reuse=target_hidden, extras=extras)
    if neg_log_q is None:
        neg_log_q = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), target_ids.reshape(-1), reduction="none"
        ).reshape_as(target_ids)
    return soft, neg_log_q


def soft_metric_terms(soft: dict, weight_mask: Tensor, target_ids: Tensor) -> tuple[Tensor, ...]:
    """Additive soft metric terms, per temperature ``(tau_num, tau_den, alpha_num[K], alpha_den[K])``,
    then ``(teacher_num, teacher_den)`` once (argmax p does not depend on the temperature)."""
    from ..losses import soft_acceptance_terms

    out: list[Tensor] = []
    terms = None
    for temperature in sorted(soft):
        terms = soft_acceptance_terms(soft[temperature], weight_mask, target_ids)
        out.extend([*terms["soft_tau"], *terms["alpha_pos"]])
    out.extend(terms["teacher_agreement"])
    return tuple(out)


def objective_chunk_terms(
    objective: Any,
    lm_head: Any,
    hidden: Tensor,
    target_ids: Tensor,
    weight_mask: Tensor,
    target_hidden: Optional[Tensor] = None,
    share_mask: Optional[Tensor] = None,
) -> tuple[Tensor, ...]:
    """Additive terms of one chunk: objective (num[T], den[T]), accuracy, acceptance metrics.

    Order: ``num, den, correct_num, accuracy_den, tau_num, tau_den, surrogate_num,
    surrogate_den, accept_pos_num[K], accept_pos_den[K]``, then, for soft-label objectives only
    (``target_hidden`` = the aligned target states of the chunk), :func:`soft_metric_terms`, then, with
    ``share_mask`` (``[B, N]`` bool: the blocks sampled for a composite's gradient shares), the chunk's
    ``Q [T, T]`` (:func:`specforge_dpace.losses._shares.gram_terms`).
    """
    batch, blocks, slots, width = hidden.shape

    def share_logits(chosen: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        target = None
        if target_hidden is not None and getattr(objective, "needs_target", False):
            target = lm_head(target_hidden[chosen])
        return logits.detach()[chosen], target

    if not getattr(objective, "needs_target", False):
        neg_log_q, logits = per_slot_cross_entropy(lm_head, hidden, target_ids)
        return slot_terms(
            objective, neg_log_q, target_ids, weight_mask, logits=logits, share=(share_mask, share_logits)
        )
    logits = lm_head(hidden.reshape(batch, blocks * slots, width)).reshape(batch, blocks, slots, -1)
    soft, neg_log_q = soft_statistics(objective, lm_head, logits, target_hidden, target_ids)
    return slot_terms(
        objective, neg_log_q, target_ids, weight_mask, logits=logits, soft=soft, share=(share_mask, share_logits)
    )


def slot_terms(
    objective: Any,
    neg_log_q: Tensor,
    target_ids: Tensor,
    weight_mask: Tensor,
    *,
    logits: Optional[Tensor] = None,
    correct: Optional[Tensor] = None,
    soft: Optional[dict] = None,
    share: tuple = (None, None),
) -> tuple[Tensor, ...]:
    """:func:`objective_chunk_terms` from per-slot tensors the caller formed (e.g. logits after a draft-side
    head): ``correct`` (detached argmax == label) is taken as given or derived from ``logits``.
    ``share = (share_mask, logits_of)``: with a mask, ``Q`` of the sampled blocks is appended, their draft
    and target logits from ``logits_of(mask)``."""

    def argmax_correct() -> Tensor:
        with torch.no_grad():  # argmax q: the soft statistics' own when there are some (formed once)
            draft_ids = next(iter(soft.values())).draft_ids if soft else logits.argmax(dim=-1)
            return draft_ids == target_ids

    if correct is None and objective.needs_correct:
        correct = argmax_correct()
    if getattr(objective, "needs_target", False):
        num, den = objective.chunk_terms(neg_log_q, weight_mask, correct, soft=soft)
    else:
        num, den = objective.chunk_terms(neg_log_q, weight_mask, correct)
    # Detached work after the objective: checkpoint recomputation in backward stops early here.
    with torch.no_grad():
        if correct is None:
            correct = argmax_correct()
        correct_num = (correct & (weight_mask > 0.5)).sum().float()
        accuracy_den = weight_mask.sum()
        metrics = acceptance_terms(neg_log_q, weight_mask, correct)
        extra = soft_metric_terms(soft, weight_mask, target_ids) if soft is not None else ()
        share_mask, logits_of = share
        if share_mask is not None:
            from ..losses._shares import gram_terms

            draft, target = logits_of(share_mask)
            gram = gram_terms(
                objective, share_mask, draft, target, target_ids, neg_log_q, weight_mask, correct, soft, num.shape[0]
            )
            extra = (*extra, gram)
    return (
        num,
        den,
        correct_num,
        accuracy_den,
        *metrics["sim_tau"],
        *metrics["surrogate"],
        *metrics["accept_pos"],
        *extra,
    )


_forward_calls = {"train": 0, "eval": 0}


def check_finite_loss(objective: Any, loss: Tensor, *, count: bool = True) -> None:
    """Stop (``_finite.NonFiniteTraining``) at the first non-finite objective value, naming the objective and the
    forward call of this process; ``SPECFORGE_DPACE_ALLOW_NON_FINITE=1`` lets the run go on, and a training loop
    that checks its steps itself (the demo's) takes over (one device sync per forward otherwise, to read it)."""
    from .._finite import check_step, checked_elsewhere

    mode = "train" if torch.is_grad_enabled() else "eval"
    _forward_calls[mode] += int(count)
    if checked_elsewhere():
        return
    check_step(
        objective.spec(),
        f"{'training' if mode == 'train' else 'evaluation'} forward call {_forward_calls[mode]} of this process",
        loss=loss,
        hint="Lower the learning rate or check the features and the objective's options; "
        "SPECFORGE_DPACE_ALLOW_NON_FINITE=1 trains on anyway",
    )


def assemble_outputs(
    objective: Any,
    totals: tuple[Tensor, ...],
    batch_size: int,
    *,
    acceptance_metrics: bool = True,
    ratio_prefix: str = "",
    gram: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """``(loss, accuracy, metrics)`` in the shape SpecForge's unified trainer logs and reduces.

    Composites also log ``loss_share[term]`` and, given the summed ``gram`` (``Q`` of the sampled blocks) on a
    training call, ``grad_share[term]`` (:mod:`specforge_dpace.losses._shares`)."""
    num, den, correct_num, accuracy_den, tau_num, tau_den, sur_num, sur_den, pos_num, pos_den = totals[:10]
    value = objective.reduce(num, den, batch_size)
    check_finite_loss(objective, value.loss)
    ratio_metrics: dict[str, tuple[Tensor, Tensor]] = {"acc": (correct_num.detach(), accuracy_den.detach())}
    if value.weighted is not None:
        ratio_metrics.update(share_metrics(objective, value, num, gram, ratio_prefix))
    if acceptance_metrics:
        ratio_metrics[f"{ratio_prefix}sim_tau"] = (tau_num, tau_den)
        ratio_metrics[f"{ratio_prefix}surrogate"] = (sur_num, sur_den)
        for k in range(1, pos_num.shape[0]):
            ratio_metrics[f"{ratio_prefix}accept_pos_{k}"] = (pos_num[k], pos_den[k])
        temperatures = getattr(objective, "soft_temperatures", ())
        if len(totals) > 10 and temperatures:
            rest = totals[10:]
            for i, temperature in enumerate(temperatures):
                suffix = "" if len(temperatures) == 1 else f"@T{temperature:g}"
                s_num, s_den, a_num, a_den = rest[4 * i : 4 * i + 4]
                ratio_metrics[f"{ratio_prefix}soft_tau{suffix}"] = (s_num, s_den)
                for k in range(1, a_num.shape[0]):
                    ratio_metrics[f"{ratio_prefix}alpha_pos_{k}{suffix}"] = (a_num[k], a_den[k])
            ratio_metrics[f"{ratio_prefix}teacher_agreement"] = (rest[-2], rest[-1])
        if len(value.parts) > 1:
            one = num.new_ones(())
            for name, part in value.parts.items():
                ratio_metrics[f"{ratio_prefix}loss[{name}]"] = (part.detach(), one)
        if value.magnitudes is not None:  # normalize=true: what each term was divided by
            one = num.new_ones(())
            for name, magnitude in zip(value.parts, value.magnitudes.unbind()):
                ratio_metrics[f"{ratio_prefix}loss_magnitude[{name}]"] = (magnitude.detach(), one)
    metrics: dict[str, Any] = {
        "accuracy_denom": accuracy_den.detach(),
        "ratio_metrics": ratio_metrics,
        "loss_terms": (value.numerator, value.denominator.detach()),
    }
    accuracy = correct_num / accuracy_den
    return value.loss, accuracy, metrics


def share_metrics(objective: Any, value: Any, num: Tensor, gram: Optional[Tensor], prefix: str = "") -> dict:
    """``loss_share[term]`` and ``grad_share[term]`` ratio metrics of a composite; a training call (``num``
    carries grad) also feeds the composite's :class:`~specforge_dpace.losses._shares.ShareMonitor`."""
    from ..losses._shares import NO_GRADIENT_SHARES, ShareMonitor, gradient_norms, loss_shares

    labels = list(value.parts)
    sizes, total = loss_shares(value.weighted)
    out = {f"{prefix}loss_share[{label}]": (size, total) for label, size in zip(labels, sizes.unbind())}
    if getattr(objective, NO_GRADIENT_SHARES, False):
        gram = None
    norms = None if gram is None else gradient_norms(value.weighted, num, gram)
    if norms is not None:
        norm_total = norms.sum()
        out.update({f"{prefix}grad_share[{label}]": (norm, norm_total) for label, norm in zip(labels, norms.unbind())})
    if num.requires_grad:
        monitor = getattr(objective, "share_monitor", None)
        if monitor is None:
            monitor = ShareMonitor(labels, list(objective.weights), objective.spec())
            objective.share_monitor = monitor
        grad_share = None if norms is None else norms / norms.sum().clamp_min(torch.finfo(norms.dtype).tiny)
        monitor.update(sizes / total.clamp_min(torch.finfo(sizes.dtype).tiny), grad_share)
    return out


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
    target_hidden: Optional[Tensor] = None,
    share_mask: Optional[Tensor] = None,
) -> tuple[Tensor, ...]:
    """Summed chunk terms, through the fused path when asked and possible, else chunked autograd.

    ``target_hidden`` (aligned ``[B, N, K, H]``) is passed to the chunk function only for
    soft-label objectives, and ``share_mask`` (``[B, N]``, a composite's sampled blocks: the totals end
    with their ``Q``) only when given, so hard objectives keep SpecForge's three-argument chunk function.
    """
    soft = getattr(objective, "needs_target", False)
    if soft and target_hidden is None:
        raise ValueError(MISSING_TARGET_HIDDEN.format(spec=objective.spec()))
    if fused:
        from ._fused_bridge import fused_totals

        return fused_totals(
            objective, model.lm_head, hidden_4d, target_ids, weight_mask, fused_sub_chunk, target_hidden, share_mask
        )
    aligned = (target_hidden if soft else None, share_mask) if share_mask is not None else (target_hidden,) * soft
    return chunk_reduce(chunk_function, hidden_4d, target_ids, weight_mask, *aligned, chunk_size=chunk_size, dim=1)
