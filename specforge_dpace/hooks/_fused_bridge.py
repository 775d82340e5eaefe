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
    """Totals in the order of ``_blocks.objective_chunk_terms``."""
    from ..fused import fused_objective_terms

    if getattr(objective, "needs_target", False):
        raise NotImplementedError(
            f"{objective.spec()}: soft-label objectives do not run on the fused path yet; set loss_options.fused: false"
        )

    terms = fused_objective_terms(objective, hidden, lm_head, target_ids, weight_mask, sub_chunk_tokens=sub_chunk)
    metric = terms.metric_terms
    return (
        terms.num,
        terms.den,
        terms.correct_num,
        terms.accuracy_den,
        *metric["sim_tau"],
        *metric["surrogate"],
        *metric["accept_pos"],
    )
