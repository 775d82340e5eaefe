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

from ._base import BlockObjective, LossValue, Tensor, check_weight


class CompositeObjective:
    """``sum_i weight_i * objective_i``; same contract as :class:`BlockObjective` with T terms.

    Most terms contribute one numerator and one denominator entry; terms whose reduction is not a
    single ratio (``lk-lambda``'s per-position sums) contribute several, and are reduced by their
    own ``reduce`` on their slice.
    """

    name = "composite"

    def __init__(self, terms: Sequence[tuple[float, BlockObjective]]) -> None:
        if not terms:
            raise ValueError("a composite objective needs at least one term")
        self.terms = [(check_weight(w, f"composite term {obj!r}"), obj) for w, obj in terms]
        self.needs_correct = any(obj.needs_correct for _, obj in self.terms)
        self.needs_target = any(getattr(obj, "needs_target", False) for _, obj in self.terms)
        self.num_terms = sum(obj.num_terms for _, obj in self.terms)
        if any(getattr(obj, "normalization", None) not in ("sum", "clamp1", "batch") for _, obj in self.terms):
            raise TypeError("composite terms must be single-term BlockObjectives with a known normalization")
        self._floor_cache: dict = {}
        self._weight_cache: dict = {}
        self._sizes: Optional[list[tuple[int, int]]] = None  # (num, den) entries per term, from chunk_terms

    @property
    def weights(self) -> list[float]:
        return [w for w, _ in self.terms]

    @property
    def term_names(self) -> list[str]:
        return [obj.spec() for _, obj in self.terms]

    @property
    def soft_temperatures(self) -> tuple[float, ...]:
        found = {t for _, obj in self.terms for t in getattr(obj, "soft_temperatures", ())}
        return tuple(sorted(found))

    def spec(self) -> str:
        parts = []
        for weight, obj in self.terms:
            parts.append(obj.spec() if weight == 1.0 else f"{weight:g}*{obj.spec()}")
        return " + ".join(parts)

    def chunk_terms(self, neg_log_q: Tensor, weight_mask: Tensor, correct: Optional[Tensor] = None, soft=None):
        pairs = [
            obj.chunk_terms(neg_log_q, weight_mask, correct, soft=soft)
            if getattr(obj, "needs_target", False)
            else obj.chunk_terms(neg_log_q, weight_mask, correct)
            for _, obj in self.terms
        ]
        self._sizes = [(n.numel(), d.numel()) for n, d in pairs]
        return torch.cat([n.reshape(-1) for n, _ in pairs]), torch.cat([d.reshape(-1) for _, d in pairs])

    def slot_grad(self, neg_log_q: Tensor, weight_mask: Tensor, correct: Optional[Tensor] = None, soft=None):
        """Hard composites: ``[T, B, N, K]``; with soft terms: statistic -> ``[T, B, N, K]`` (zeros where a
        term does not depend on the statistic)."""
        from ._soft import stat_grads

        if not self.needs_target:
            return torch.cat([obj.slot_grad(neg_log_q, weight_mask, correct) for _, obj in self.terms])
        per_term = [stat_grads(obj, neg_log_q, weight_mask, correct, soft) for _, obj in self.terms]
        keys = list(dict.fromkeys(key for grads in per_term for key in grads))
        merged = {}
        for key in keys:
            blocks = []
            for grads in per_term:
                if key in grads:
                    blocks.append(grads[key])
                else:
                    size = next(iter(grads.values())).shape[0]
                    blocks.append(torch.zeros((size, *neg_log_q.shape), dtype=torch.float32, device=neg_log_q.device))
            dtype = blocks[0].dtype
            merged[key] = torch.cat([b.to(dtype) for b in blocks])
        return merged

    def _simple(self, num: Tensor) -> bool:
        sizes = self._sizes
        return (sizes is None and num.shape[0] == len(self.terms)) or (
            sizes is not None and all(size == (1, 1) for size in sizes)
        )

    def _lower_bounds(self, den: Tensor, batch_size: int) -> Tensor:
        """Per-term floor of the denominator: 1 (clamp1), tiny (sum) or the batch size (batch terms,
        whose summed denominators are 0), so one ``maximum`` normalizes every term."""
        tiny = torch.finfo(den.dtype).tiny
        floors = {"batch": float(batch_size), "clamp1": 1.0}
        key = (den.dtype, den.device, batch_size)
        cached = self._floor_cache.get(key)
        if cached is None:
            values = [floors.get(obj.normalization, tiny) for _, obj in self.terms]
            cached = self._floor_cache[key] = torch.tensor(values, dtype=den.dtype, device=den.device)
        return cached

    def final_denominators(self, den: Tensor, batch_size: int) -> Tensor:
        return torch.maximum(den, self._lower_bounds(den, batch_size))

    def reduce(self, num: Tensor, den: Tensor, batch_size: int) -> LossValue:
        if not self._simple(num):
            return self._reduce_by_term(num, den, batch_size)
        final_den = self.final_denominators(den.detach(), batch_size)
        key = (num.dtype, num.device)
        weights = self._weight_cache.get(key)
        if weights is None:
            weights = self._weight_cache[key] = torch.tensor(self.weights, dtype=num.dtype, device=num.device)
        per_term = num / final_den
        loss = (weights * per_term).sum()
        reference = final_den[0]
        parts = dict(zip(self.term_names, per_term.detach().unbind()))
        return LossValue(loss, loss * reference, reference, parts)

    def _reduce_by_term(self, num: Tensor, den: Tensor, batch_size: int) -> LossValue:
        if self._sizes is None or sum(n for n, _ in self._sizes) != num.shape[0]:
            raise ValueError(
                f"composite {self.spec()}: reduce got {num.shape[0]} numerator entries, which do not match the "
                "terms' sizes from chunk_terms; call chunk_terms on this object first"
            )
        loss, reference, parts = None, None, {}
        n_start = d_start = 0
        for (weight, obj), (n_size, d_size) in zip(self.terms, self._sizes):
            value = obj.reduce(num[n_start : n_start + n_size], den[d_start : d_start + d_size], batch_size)
            n_start, d_start = n_start + n_size, d_start + d_size
            term = weight * value.loss
            loss = term if loss is None else loss + term
            reference = value.denominator.reshape(()) if reference is None else reference
            parts[obj.spec()] = value.loss.detach()
        return LossValue(loss, loss * reference, reference, parts)

    def __repr__(self) -> str:
        return f"<composite objective {self.spec()}>"
