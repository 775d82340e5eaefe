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
) -> tuple:
    """Totals in the order of ``_blocks.objective_chunk_terms``: the 10 hard totals, then, for
    soft-label objectives (which read p from ``target_hidden``, the aligned target states), the soft
    metric terms of :func:`._blocks.soft_metric_terms`."""
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
