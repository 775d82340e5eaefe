"""Weighted sums of objectives, each carrying its own (numerator, denominator) through the chunks.

The value of a composite for one micro-batch is ``sum_i w_i * num_i / den_i``.  SpecForge's
trainer takes a single ``(numerator, denominator)`` pair and divides gradients by the sum of
denominators over accumulation steps and ranks.  A composite reports
``(L * D_1, D_1)`` where ``L`` is its micro-batch value and ``D_1`` its first term's final
denominator: across micro-batches this gives the first term exactly and the other terms
weighted by each micro-batch's share of ``D_1`` instead of their own denominators (exact
when the terms' denominators are proportional across micro-batches, e.g. one micro-batch
per step on one rank).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from ._base import BlockObjective, LossValue, Tensor


class CompositeObjective:
    """``sum_i weight_i * objective_i``; same contract as :class:`BlockObjective` with T terms."""

    name = "composite"

    def __init__(self, terms: Sequence[tuple[float, BlockObjective]]) -> None:
        if not terms:
            raise ValueError("a composite objective needs at least one term")
        self.terms = [(float(w), obj) for w, obj in terms]
        self.needs_correct = any(obj.needs_correct for _, obj in self.terms)
        self.num_terms = sum(obj.num_terms for _, obj in self.terms)

    @property
    def weights(self) -> list[float]:
        return [w for w, _ in self.terms]

    @property
    def term_names(self) -> list[str]:
        return [obj.spec() for _, obj in self.terms]

    def spec(self) -> str:
        parts = []
        for weight, obj in self.terms:
            parts.append(obj.spec() if weight == 1.0 else f"{weight:g}*{obj.spec()}")
        return " + ".join(parts)

    def chunk_terms(self, neg_log_q: Tensor, weight_mask: Tensor, correct: Optional[Tensor] = None):
        pairs = [obj.chunk_terms(neg_log_q, weight_mask, correct) for _, obj in self.terms]
        return torch.cat([n for n, _ in pairs]), torch.cat([d for _, d in pairs])

    def slot_grad(self, neg_log_q: Tensor, weight_mask: Tensor, correct: Optional[Tensor] = None) -> Tensor:
        return torch.cat([obj.slot_grad(neg_log_q, weight_mask, correct) for _, obj in self.terms])

    def final_denominators(self, den: Tensor, batch_size: int) -> Tensor:
        return torch.cat(
            [obj.final_denominators(den[i : i + 1], batch_size) for i, (_, obj) in enumerate(self.terms)]
        )

    def reduce(self, num: Tensor, den: Tensor, batch_size: int) -> LossValue:
        final_den = self.final_denominators(den, batch_size).detach()
        weights = num.new_tensor(self.weights)
        per_term = num / final_den
        loss = (weights * per_term).sum()
        reference = final_den[0]
        parts = {name: value.detach() for name, value in zip(self.term_names, per_term)}
        return LossValue(loss, loss * reference, reference, parts)

    def __repr__(self) -> str:
        return f"<composite objective {self.spec()}>"
