"""Route a chunk of blocks through :mod:`specforge_dpace.fused` when the objective allows it."""

from __future__ import annotations

import logging
from typing import Any, Optional

logger = logging.getLogger("specforge_dpace")
_warned: set[str] = set()


def fused_totals(
    objective: Any, lm_head: Any, hidden: Any, target_ids: Any, weight_mask: Any, sub_chunk: Optional[int]
) -> Optional[tuple]:
    """Totals in the order of ``_blocks.objective_chunk_terms``, or None to use the plain path."""
    from ..fused import fused_objective_terms, supports_fused

    if not supports_fused(objective):
        spec = objective.spec()
        if spec not in _warned:
            _warned.add(spec)
            logger.warning("specforge-dpace: objective %s has no analytic slot gradient; using the plain path", spec)
        return None
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
