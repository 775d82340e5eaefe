"""Soft twins: any hard objective run on ``a_k = -log alpha_k`` instead of ``l_k = -log q_y``.

Every hard objective is a function of the per-slot cross-entropy. Fed the per-slot
``-log alpha`` at temperature T it becomes its soft twin (DESIGN.md section 3.1): soft D-PACE
takes its weights from alpha, soft chain is a differentiable -E[tau] under per-slot acceptance
alpha, and soft first-error focal / accept-until-fail place the first error where the drafter's
argmax leaves the target's. With p = onehot(label), alpha = q_y and every twin equals its hard
objective exactly. One wrapper serves every objective, third-party ones included; the spec
grammar spells it with the prefix ``soft-`` (``soft-dpace(alpha=0.3, temperature=1)``).

``divergence=renyi-half`` runs the objective on Renyi-1/2's per-slot ``-2 log sum_x sqrt(p_x q_x)``
instead (``renyi-half`` itself is ``dflash`` lifted so); it too equals the cross-entropy when p is
one-hot.  Objectives that read ``exp(-a)`` as an acceptance probability (D-PACE's weights, chain's
value) then read ``BC^2``, a smooth overlap of p and q, not the acceptance rate.  The same wrapper
serves ``labels=target`` (:class:`TargetLabels`): the hard objective on ``-log q(argmax p)``.
"""

from __future__ import annotations

from typing import Any

from ._base import BlockObjective, Option, _format_value
from ._soft import GAMMA, TEMPERATURE, log_alpha_key, pick_soft
from ._statistics import TEACHER_NLQ, log_bc_key

PREFIX = "soft-"

#: The per-slot statistic a twin runs its hard objective on, by divergence: ``a = factor * stat``.
#: ``-log alpha`` (LK-alpha's per-slot loss) or ``-2 log BC`` (Renyi-1/2's, BC = sum sqrt(p q)); with
#: p = onehot(label) both equal the cross-entropy -log q_y.
DIVERGENCES = {"lk-alpha": ("log_alpha", -1.0), "renyi-half": ("log_bc", -2.0)}
DIVERGENCE = Option(
    "lk-alpha",
    (str,),
    choices=tuple(DIVERGENCES),
    help="per-slot loss the hard objective runs on: -log alpha (lk-alpha) or -2 log sum sqrt(p q) (renyi-half)",
)


class SoftTwin(BlockObjective):
    """``base`` evaluated on a per-slot soft statistic (``-log alpha`` by default) with ``correct`` =
    (argmax q == argmax p)."""

    needs_target = True
    needs_correct = False

    def __init__(
        self, base: BlockObjective, temperature: float = 1.0, *, name: str = "", divergence: str = "lk-alpha"
    ) -> None:
        if getattr(base, "needs_target", False):
            raise ValueError(f"{base.spec()} already reads the target distribution; it has no soft twin")
        self.base = base
        self.name = name or PREFIX + base.name
        self.options = {**base.options, "temperature": TEMPERATURE, "divergence": DIVERGENCE}
        self.temperature = TEMPERATURE.coerce(self.name, "temperature", temperature)
        self.divergence = DIVERGENCE.coerce(self.name, "divergence", divergence)
        self.normalization = base.normalization
        self.num_terms = getattr(base, "num_terms", 1)
        self.description = f"soft twin: {getattr(base, 'description', '') or base.name}, on -log alpha"

    def __getattr__(self, key: str) -> Any:  # the base's options (e.g. .alpha of dpace)
        if key == "base":
            raise AttributeError(key)
        return getattr(self.base, key)

    @property
    def settings(self) -> dict[str, Any]:
        return {**self.base.settings, "temperature": self.temperature, "divergence": self.divergence}

    @property
    def soft_extras(self) -> dict[float, tuple]:
        key = self._statistic_key()
        return {} if key == log_alpha_key(self.temperature) else {self.temperature: (key,)}

    def spec(self) -> str:
        changed = {k: v for k, v in self.settings.items() if v != self.options[k].default}
        if not changed:
            return self.name
        return f"{self.name}(" + ",".join(f"{k}={_format_value(v)}" for k, v in changed.items()) + ")"

    # --- the per-slot statistic ----------------------------------------------------------------
    def _statistic_key(self):
        kind = DIVERGENCES[self.divergence][0]
        return log_alpha_key(self.temperature) if kind == "log_alpha" else log_bc_key(self.temperature)

    def _factor(self) -> float:
        return DIVERGENCES[self.divergence][1]

    def _per_slot(self, slots):
        key = self._statistic_key()
        value = slots.log_alpha if key == log_alpha_key(self.temperature) else slots.extra(key)
        return self._factor() * value

    def chunk_terms(self, neg_log_q, weight_mask, correct=None, soft=None):
        slots = pick_soft(soft, self.temperature, self.name)
        return self.base.chunk_terms(self._per_slot(slots), weight_mask, self._correct(slots))

    def slot_grad(self, neg_log_q, weight_mask, correct=None, soft=None) -> dict:
        slots = pick_soft(soft, self.temperature, self.name).detached()
        grad = self.base.slot_grad(self._per_slot(slots), weight_mask, self._correct(slots))
        return {self._statistic_key(): self._factor() * grad}  # d a / d stat = factor

    def _correct(self, slots):
        """argmax q == argmax p, formed only for a base that reads it (the argmaxes are deferred)."""
        return slots.teacher_correct if self.base.needs_correct else None

    def final_denominators(self, den, batch_size):
        return self.base.final_denominators(den, batch_size)

    def reduce(self, num, den, batch_size):
        return self.base.reduce(num, den, batch_size)


#: ``labels``: a registry-level option of every hard objective (:class:`TargetLabels`).
LABELS = Option(
    "data",
    (str,),
    choices=("data", "target"),
    help="train on the data token (data) or on the target's argmax (target: needs the target's last hidden state)",
)


class TargetLabels(SoftTwin):
    """A hard objective trained on the target's argmax instead of the data token (``labels=target``, vLLM
    speculators' ``ce`` convention): ``l_k = -log q(argmax p)`` at temperature 1 and ``correct`` = (argmax q
    == argmax p).  It reads the target's distribution (for its argmax), so it needs the target's last
    hidden state like the soft objectives; on data the target regenerated greedily it equals the
    hard objective."""

    def __init__(self, base: BlockObjective) -> None:
        super().__init__(base, 1.0, name=base.name)
        self.options = {**base.options, "labels": LABELS}
        self.description = f"{getattr(base, 'description', '') or base.name}; labels: the target's argmax"

    @property
    def settings(self) -> dict[str, Any]:
        return {**self.base.settings, "labels": "target"}

    @property
    def soft_extras(self) -> dict[float, tuple]:
        return {1.0: (TEACHER_NLQ,)}

    def _statistic_key(self):
        return TEACHER_NLQ

    def _factor(self) -> float:
        return 1.0

    def _per_slot(self, slots):
        return slots.extra(TEACHER_NLQ)


def twin_factory(base_factory: Any, name: str):
    """Factory of ``soft-<name>``: the base's options plus ``temperature`` and ``divergence``."""

    def build(**options: Any) -> SoftTwin:
        temperature = options.pop("temperature", TEMPERATURE.default)
        divergence = options.pop("divergence", DIVERGENCE.default)
        return SoftTwin(base_factory(**options), temperature, name=name, divergence=divergence)

    return build


class LiftedDFlash(SoftTwin):
    """``dflash`` lifted onto the per-slot statistic of ``lifted`` (a :data:`DIVERGENCES` name): options
    ``gamma`` (DFlash's decay) and ``temperature``; a weighted mean."""

    lifted = "lk-alpha"
    options = {"gamma": GAMMA, "temperature": TEMPERATURE}

    def __init__(self, gamma: Any = None, temperature: float = 1.0) -> None:
        from ._weighted import DFlashLoss

        cls = type(self)
        super().__init__(DFlashLoss(gamma=gamma), temperature, name=cls.name, divergence=cls.lifted)
        self.options = cls.options
        self.description = cls.description

    @property
    def settings(self) -> dict[str, Any]:
        return {**self.base.settings, "temperature": self.temperature}


class LKAlphaLoss(LiftedDFlash):
    """LK-alpha: ``-log alpha`` per slot with DFlash's decay, a weighted mean -- ``dflash`` lifted."""

    name = "lk-alpha"
    description = "LK-alpha: -log alpha per slot (alpha = sum min(p, q)); DFlash decay; weighted mean"
    lifted = "lk-alpha"
