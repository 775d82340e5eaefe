"""One-call convenience for callers that hold a whole micro-batch."""

from __future__ import annotations

from typing import Any, Optional

import torch

from ._registry import build_loss

Tensor = torch.Tensor


def block_loss(
    spec: Any,
    neg_log_q: Tensor,
    weight_mask: Tensor,
    *,
    batch_size: int,
    correct: Optional[Tensor] = None,
    **options: Any,
) -> Tensor:
    """Scalar loss of a name or composite spec over a whole micro-batch ``[B, N, K]``."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    objective = build_loss(spec, options or None)
    num, den = objective.chunk_terms(neg_log_q, weight_mask, correct)
    return objective.reduce(num, den, batch_size).loss
