"""Route a chunk of blocks through :mod:`specforge_dpace.fused` (which falls back by itself,
with a one-time log line, for objectives without an analytic slot gradient)."""

from __future__ import annotations

from typing import Any, Optional


def fused_totals(
    objective: Any,
    lm_head: Any,
    hidden: Any,
    target_ids: Any,
    weight_mask: Any,
    sub_chunk: Optional[int],
    target_hidden: Any = None,
    share_mask: Any = None,
) -> tuple:
    """Totals in the order of ``_blocks.objective_chunk_terms``: the 10 hard totals, then, for
    soft-label objectives (which read p from ``target_hidden``, the aligned target states), the soft
    metric terms of :func:`._blocks.soft_metric_terms`, then, with ``share_mask``, the sampled blocks'
    ``Q`` (their logits formed again: one small product per head)."""
    from ..fused import fused_objective_terms

    soft = getattr(objective, "needs_target", False)
    terms = fused_objective_terms(
        objective,
        hidden,
        lm_head,
        target_ids,
        weight_mask,
        sub_chunk_tokens=sub_chunk,
        target_hidden=target_hidden if soft else None,
    )
    metric = terms.metric_terms
    extra: tuple = ()
    if soft:
        from ._blocks import soft_metric_terms

        extra = soft_metric_terms(terms.soft, weight_mask, target_ids)
    if share_mask is not None:
        import torch

        from ..losses._shares import gram_terms

        with torch.no_grad():
            draft = lm_head(hidden.detach()[share_mask])
            target = lm_head(target_hidden[share_mask]) if soft else None
        gram = gram_terms(
            objective,
            share_mask,
            draft,
            target,
            target_ids,
            terms.neg_log_q,
            weight_mask,
            terms.correct,
            terms.soft,
            terms.num.shape[0],
        )
        extra = (*extra, gram)
    return (
        terms.num,
        terms.den,
        terms.correct_num,
        terms.accuracy_den,
        *metric["sim_tau"],
        *metric["surrogate"],
        *metric["accept_pos"],
        *extra,
    )
