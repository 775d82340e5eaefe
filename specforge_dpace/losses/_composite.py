"""Weighted sums of objectives, each carrying its own (numerator, denominator) through the chunks.

The value of a composite for one micro-batch is ``sum_i w_i * num_i / den_i`` (with
``normalize=true``, each term also divided by its running magnitude: :mod:`._normalize`).  SpecForge's
trainer takes a single ``(numerator, denominator)`` pair and divides gradients by the sum of
denominators over accumulation steps and ranks.  A composite reports
``(L * D_1, D_1)`` where ``L`` is its micro-batch value and ``D_1`` its first term's final
denominator: across micro-batches this gives the first term exactly and the other terms
weighted by each micro-batch's share of ``D_1`` instead of their own denominators (exact
when the terms' denominators are proportional across micro-batches, e.g. one micro-batch
per step on one rank).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import torch

from ._base import BlockObjective, LossValue, Option, OptionError, Tensor, _format_value, check_weight
from ._normalize import RunningMagnitude

#: Options of the composite as a whole, spelled after ';' in a spec (``a + 0.5*b; normalize=true``)
#: or as ``loss_options`` keys beside a multi-term ``loss_type``.
COMPOSITE_OPTIONS: dict[str, Option] = {
    "normalize": Option(
        False,
        (bool,),
        help="divide each term by a detached running estimate of its own magnitude, so weights are relative",
    ),
    "normalize_decay": Option(
        0.99,
        (float,),
        minimum=0.0,
        maximum=1.0,
        exclusive_maximum=True,
        help="decay of that running estimate per training micro-batch (0: each micro-batch's own magnitude)",
    ),
}


def composite_options(options: Mapping[str, Any], where: str = "composite") -> dict[str, Any]:
    """Validated composite options (unknown keys and bad values refused, naming what is accepted)."""
    unknown = sorted(set(options) - set(COMPOSITE_OPTIONS))
    if unknown:
        accepted = ", ".join(f"{k} ({o.describe()})" for k, o in COMPOSITE_OPTIONS.items())
        raise OptionError(f"{where}: unknown composite option(s) {unknown}; accepted after ';': {accepted}")
    values = {key: COMPOSITE_OPTIONS[key].coerce(where, key, value) for key, value in options.items()}
    if "normalize_decay" in values and not values.get("normalize", False):
        raise OptionError(
            f"{where}: normalize_decay={values['normalize_decay']!r} has no effect without normalize=true; "
            "accepted: set normalize=true too, or leave normalize_decay out"
        )
    return values


class CompositeObjective:
    """``sum_i weight_i * objective_i``; same contract as :class:`BlockObjective` with T terms.

    Most terms contribute one numerator and one denominator entry; terms whose reduction is not a
    single ratio (``lk-lambda``'s per-position sums) contribute several, and are reduced by their
    own ``reduce`` on their slice.  ``normalize=True`` divides each term by its running magnitude
    (:mod:`._normalize`); it needs two or more terms (alone, a term has nothing to be relative to).
    """

    name = "composite"

    def __init__(
        self,
        terms: Sequence[tuple[float, BlockObjective]],
        *,
        normalize: bool = False,
        normalize_decay: float = COMPOSITE_OPTIONS["normalize_decay"].default,
    ) -> None:
        if not terms:
            raise ValueError("a composite objective needs at least one term")
        self.terms = [(check_weight(w, f"composite term {obj!r}"), obj) for w, obj in terms]
        settings = {"normalize": normalize}
        if normalize_decay != COMPOSITE_OPTIONS["normalize_decay"].default:
            settings["normalize_decay"] = normalize_decay
        settings = composite_options(settings)
        self.normalize = settings["normalize"]
        self.normalize_decay = settings.get("normalize_decay", COMPOSITE_OPTIONS["normalize_decay"].default)
        if self.normalize and len(self.terms) < 2:
            raise OptionError(
                f"normalize=true makes a composite's weights relative to each other, but {self._term_spec()!r} has "
                "one term; accepted: two or more terms ('a + 0.5*b; normalize=true'), or leave normalize out"
            )
        self._magnitude = RunningMagnitude(self.normalize_decay) if self.normalize else None
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
    def term_labels(self) -> list[str]:
        """One unique label per term: its spec, with ``#2``, ``#3`` .. on repeats (metric names)."""
        labels, seen = [], {}
        for name in self.term_names:
            seen[name] = seen.get(name, 0) + 1
            labels.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
        return labels

    @property
    def settings(self) -> dict[str, Any]:
        """The composite options that differ from their defaults."""
        values = {"normalize": self.normalize, "normalize_decay": self.normalize_decay}
        return {k: v for k, v in values.items() if v != COMPOSITE_OPTIONS[k].default}

    @property
    def soft_temperatures(self) -> tuple[float, ...]:
        found = {t for _, obj in self.terms for t in getattr(obj, "soft_temperatures", ())}
        return tuple(sorted(found))

    @property
    def soft_extras(self) -> dict[float, tuple]:
        found: dict[float, tuple] = {}
        for _, obj in self.terms:
            for t, keys in getattr(obj, "soft_extras", {}).items():
                found[t] = tuple(dict.fromkeys(found.get(t, ()) + tuple(keys)))
        return found

    def _term_spec(self) -> str:
        parts = []
        for weight, obj in self.terms:
            parts.append(obj.spec() if weight == 1.0 else f"{weight:g}*{obj.spec()}")
        return " + ".join(parts)

    def spec(self) -> str:
        settings = self.settings
        if not settings:
            return self._term_spec()
        return self._term_spec() + "; " + ",".join(f"{k}={_format_value(v)}" for k, v in settings.items())

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
        dtype = torch.float32
        for grads in per_term:  # the widest coefficient dtype (fp64 inputs keep fp64 coefficients)
            for value in grads.values():
                dtype = torch.promote_types(dtype, value.dtype)
        merged = {}
        for key in keys:
            blocks = []
            for grads in per_term:
                if key in grads:
                    blocks.append(grads[key].to(dtype))
                else:
                    size = next(iter(grads.values())).shape[0]
                    blocks.append(torch.zeros((size, *neg_log_q.shape), dtype=dtype, device=neg_log_q.device))
            merged[key] = torch.cat(blocks)
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
        values, reference = (
            self._simple_values(num, den, batch_size)
            if self._simple(num)
            else self._values_by_term(num, den, batch_size)
        )
        key = (values.dtype, values.device)
        weights = self._weight_cache.get(key)
        if weights is None:
            weights = self._weight_cache[key] = torch.tensor(self.weights, dtype=values.dtype, device=values.device)
        magnitudes = None
        if self._magnitude is not None:  # a training micro-batch (num carries grad) updates the estimate
            magnitudes = self._magnitude.magnitudes(values, training=num.requires_grad)
            weighted = weights * values / magnitudes
        else:
            weighted = weights * values
        loss = weighted.sum()
        parts = dict(zip(self.term_labels, values.detach().unbind()))
        return LossValue(loss, loss * reference, reference, parts, weighted, magnitudes)

    def _simple_values(self, num: Tensor, den: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
        final_den = self.final_denominators(den.detach(), batch_size)
        return num / final_den, final_den[0]

    def _values_by_term(self, num: Tensor, den: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
        if self._sizes is None or sum(n for n, _ in self._sizes) != num.shape[0]:
            raise ValueError(
                f"composite {self.spec()}: reduce got {num.shape[0]} numerator entries, which do not match the "
                "terms' sizes from chunk_terms; call chunk_terms on this object first"
            )
        values, reference = [], None
        n_start = d_start = 0
        for (_, obj), (n_size, d_size) in zip(self.terms, self._sizes):
            value = obj.reduce(num[n_start : n_start + n_size], den[d_start : d_start + d_size], batch_size)
            n_start, d_start = n_start + n_size, d_start + d_size
            values.append(value.loss.reshape(()))
            reference = value.denominator.reshape(()) if reference is None else reference
        return torch.stack(values), reference

    def __repr__(self) -> str:
        return f"<composite objective {self.spec()}>"
