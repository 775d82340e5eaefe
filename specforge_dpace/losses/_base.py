"""The objective contract every DFlash block loss follows.

An objective sees per-slot tensors of one chunk of blocks, ``[B, N_chunk, K]``:

* ``neg_log_q`` -- cross-entropy of the drafter at each slot (carries grad),
* ``weight_mask`` -- 1 where the slot is supervised (block kept, label in range, k > 0),
* ``correct`` -- detached bool, drafter argmax == label (only objectives that say
  ``needs_correct`` read it).

It returns *additive* terms ``(numerator[T], denominator[T])`` (T = 1 for a single
objective, one entry per term for composites) so that chunks can be summed, exactly as
SpecForge's ``checkpointed_chunk_reduce`` does, and ``reduce`` turns the summed terms
into the loss.  The same objects also give the analytic per-slot gradient of the
numerator, which the fused objective path uses instead of autograd.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Optional

import torch

Tensor = torch.Tensor

_LOW_PRECISION = (torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class Option:
    """One user-settable option of an objective: default, accepted types, range check."""

    default: Any
    types: tuple[type, ...] = (float,)
    nullable: bool = False
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    help: str = ""
    exclusive_minimum: bool = False  # the minimum itself is refused (e.g. a temperature > 0)
    exclusive_maximum: bool = False  # the maximum itself is refused (e.g. a decay < 1)
    choices: tuple = ()  # the accepted values of a string option (e.g. labels: data or target)

    def describe(self) -> str:
        if self.choices:
            return f"one of {', '.join(map(str, self.choices))}, default {self.default!r}"
        kinds = "/".join(t.__name__ for t in self.types) + ("/None" if self.nullable else "")
        rng = ""
        if self.minimum is not None or self.maximum is not None:
            lo = "-inf" if self.minimum is None else f"{self.minimum:g}"
            hi = "inf" if self.maximum is None else f"{self.maximum:g}"
            rng = f" in {'(' if self.exclusive_minimum else '['}{lo}, {hi}{')' if self.exclusive_maximum else ']'}"
        return f"{kinds}{rng}, default {self.default!r}"

    def coerce(self, objective: str, key: str, value: Any) -> Any:
        """Validate ``value``; ints are accepted where floats are, bools never are numbers.

        NaN and infinite numbers are refused by name (``alpha=nan``, ``gamma=inf`` would
        otherwise train on NaN or silently turn a decay off).
        """
        if value is None:
            if self.nullable:
                return None
            raise OptionError(f"{objective}: option {key}=None is not allowed; expected {self.describe()}")
        if isinstance(value, bool) and bool not in self.types:
            raise OptionTypeError(f"{objective}: option {key}={value!r} has type bool; expected {self.describe()}")
        if float in self.types and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, self.types):
            raise OptionTypeError(
                f"{objective}: option {key}={value!r} has type {type(value).__name__}; expected {self.describe()}"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise OptionError(f"{objective}: option {key}={value!r} is not a finite number; expected {self.describe()}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            below = self.minimum is not None and (
                value <= self.minimum if self.exclusive_minimum else value < self.minimum
            )
            above = self.maximum is not None and (
                value >= self.maximum if self.exclusive_maximum else value > self.maximum
            )
            if below or above:
                raise OptionError(f"{objective}: option {key}={value!r} is out of range; expected {self.describe()}")
        if self.choices and value not in self.choices:
            raise OptionError(f"{objective}: option {key}={value!r} is not accepted; expected {self.describe()}")
        return value


class OptionError(ValueError):
    """An objective option or weight has a value its objective does not accept."""


class OptionTypeError(OptionError, TypeError):
    """An option of the wrong type. A ValueError too, so pydantic (SpecForge's config schema)
    reports it as a validation error on the field instead of letting a TypeError escape."""


def check_weight(weight: Any, where: str) -> float:
    """A composite term's weight: a finite number >= 0 (0 switches a term off)."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise OptionTypeError(f"{where}: weight {weight!r} must be a number >= 0, got {type(weight).__name__}")
    weight = float(weight)
    if not math.isfinite(weight):
        raise OptionError(f"{where}: weight {weight!r} is not a finite number; weights must be finite numbers >= 0")
    if weight < 0:
        raise OptionError(f"{where}: weight {weight!r} is negative; weights must be >= 0")
    return weight


@dataclass
class LossValue:
    """The reduced loss of one micro-batch and the (numerator, denominator) pair reported to SpecForge.

    ``numerator / denominator == loss``; SpecForge back-propagates ``numerator`` and divides
    gradients by the sum of ``denominator`` over accumulation steps and ranks.
    """

    loss: Tensor
    numerator: Tensor
    denominator: Tensor
    parts: dict[str, Tensor] = field(default_factory=dict)  # per-term values (composites only)
    #: composites only: each term's contribution ``weight * scale * value`` (with grad; sums to ``loss``),
    #: in term order, what the share metrics divide (:mod:`._shares`)
    weighted: Optional[Tensor] = None
    #: composites with ``normalize=true`` only: each term's running magnitude (detached) it was divided by
    magnitudes: Optional[Tensor] = None


def check_block_tensors(
    name: str, neg_log_q: Tensor, weight_mask: Tensor, correct: Optional[Tensor], needs_correct: bool
) -> None:
    """Shape checks with messages that show the shapes."""
    if neg_log_q.dim() != 3:
        raise ValueError(f"{name}: neg_log_q must be [B, N, K], got shape {tuple(neg_log_q.shape)}")
    if weight_mask.shape != neg_log_q.shape:
        raise ValueError(
            f"{name}: weight_mask shape {tuple(weight_mask.shape)} does not match neg_log_q shape "
            f"{tuple(neg_log_q.shape)}"
        )
    if correct is None:
        if needs_correct:
            raise ValueError(
                f"{name}: this objective needs `correct` (detached drafter argmax == label, shape "
                f"{tuple(neg_log_q.shape)}), got None"
            )
    elif correct.shape != neg_log_q.shape:
        raise ValueError(
            f"{name}: correct shape {tuple(correct.shape)} does not match neg_log_q shape {tuple(neg_log_q.shape)}"
        )


def compute_dtype(neg_log_q: Tensor) -> Tensor:
    """Low-precision inputs are accumulated in fp32; fp32/fp64 are used as they are (no copy)."""
    return neg_log_q.float() if neg_log_q.dtype in _LOW_PRECISION else neg_log_q


class BlockObjective:
    """Base class of single-term objectives.

    Subclasses set ``name``, ``options`` and implement ``_terms`` (numerator and
    denominator contribution of one chunk) and ``_slot_grad`` (d numerator / d neg_log_q,
    detached), and choose ``normalization``:

    * ``"sum"``   -- loss = num / den, with den as summed (``den`` 0 gives 0 loss, not NaN),
    * ``"clamp1"`` -- loss = num / max(1, den),
    * ``"batch"`` -- loss = num / batch_size (den terms are 0).
    """

    name: ClassVar[str] = ""
    options: ClassVar[Mapping[str, Option]] = {}
    needs_correct: ClassVar[bool] = False
    #: True for objectives that read the target's distribution p (soft-label objectives): they
    #: get ``soft`` statistics (see :mod:`._soft`) at each temperature in ``soft_temperatures``.
    needs_target: ClassVar[bool] = False
    normalization: ClassVar[str] = "sum"
    description: ClassVar[str] = ""

    def __init__(self, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            accepted = ", ".join(f"{k} ({o.describe()})" for k, o in self.options.items()) or "none"
            raise ValueError(f"{self.name}: unknown option(s) {unknown}; accepted options: {accepted}")
        for key, spec in self.options.items():
            value = options.get(key, spec.default)
            setattr(self, key, spec.coerce(self.name, key, value) if key in options else value)

    # --- public contract -------------------------------------------------------------
    num_terms: ClassVar[int] = 1

    @property
    def settings(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.options}

    @property
    def term_names(self) -> list[str]:
        return [self.spec()]

    @property
    def soft_temperatures(self) -> tuple[float, ...]:
        """Temperatures at which this objective needs the soft statistics of p and q (none if hard)."""
        return (self.temperature,) if self.needs_target else ()

    @property
    def soft_extras(self) -> dict[float, tuple]:
        """Statistic keys beyond log alpha and KL this objective reads, per temperature (none by default;
        see :mod:`._statistics`): callers form them beside the soft statistics."""
        return {}

    def spec(self) -> str:
        """Canonical spec string that rebuilds this objective (used for configs and resume checks)."""
        changed = {k: v for k, v in self.settings.items() if v != self.options[k].default}
        if not changed:
            return self.name
        args = ",".join(f"{k}={_format_value(v)}" for k, v in changed.items())
        return f"{self.name}({args})"

    def chunk_terms(
        self, neg_log_q: Tensor, weight_mask: Tensor, correct: Optional[Tensor] = None, soft: Any = None
    ) -> tuple[Tensor, Tensor]:
        """Additive ``(numerator[1], denominator[1])`` of one chunk of blocks (``soft`` is unused by
        hard objectives; soft-label ones override this)."""
        check_block_tensors(self.name, neg_log_q, weight_mask, correct, self.needs_correct)
        num, den = self._terms(compute_dtype(neg_log_q), weight_mask, correct)
        if den.dtype != num.dtype:
            den = den.to(num.dtype)
        return num.reshape(1), den.detach().reshape(1)

    def slot_grad(
        self, neg_log_q: Tensor, weight_mask: Tensor, correct: Optional[Tensor] = None, soft: Any = None
    ) -> Tensor:
        """Analytic d(numerator)/d(neg_log_q), shape ``[1, B, N, K]``, detached.

        Soft-label objectives return a mapping instead: per-slot statistic -> coefficients (see
        :func:`specforge_dpace.losses._soft.stat_grads`)."""
        check_block_tensors(self.name, neg_log_q, weight_mask, correct, self.needs_correct)
        with torch.no_grad():
            return self._slot_grad(compute_dtype(neg_log_q.detach()), weight_mask, correct).unsqueeze(0)

    def final_denominators(self, den: Tensor, batch_size: int) -> Tensor:
        """Denominators after summing over chunks, before dividing (shape ``[1]``)."""
        if self.normalization == "batch":
            return den.new_full(den.shape, float(batch_size))
        if self.normalization == "clamp1":
            return den.clamp_min(1.0)
        # an all-masked batch has num == 0: 0 / tiny == 0, never NaN; otherwise den is unchanged
        return den.clamp_min(torch.finfo(den.dtype).tiny)

    def reduce(self, num: Tensor, den: Tensor, batch_size: int) -> LossValue:
        final_den = self.final_denominators(den.detach(), batch_size).reshape(())
        numerator = num.reshape(())
        return LossValue(numerator / final_den, numerator, final_den)

    def __repr__(self) -> str:
        return f"<objective {self.spec()}>"

    # --- subclass hooks -----------------------------------------------------------------
    def _terms(self, nlq: Tensor, mask: Tensor, correct: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _slot_grad(self, nlq: Tensor, mask: Tensor, correct: Optional[Tensor]) -> Tensor:
        raise NotImplementedError


def _format_value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    return str(value)


def valid_bool(mask: Tensor) -> Tensor:
    return mask > 0


def mask_as(mask: Tensor, like: Tensor) -> Tensor:
    return mask if mask.dtype == like.dtype else mask.to(like.dtype)
