"""Soft twins: any hard objective run on ``a_k = -log alpha_k`` instead of ``l_k = -log q_y``.

Every hard objective is a function of the per-slot cross-entropy. Fed the per-slot
``-log alpha`` at temperature T it becomes its soft twin (DESIGN.md section 3.1): soft D-PACE
takes its weights from alpha, soft chain is a differentiable -E[tau] under per-slot acceptance
alpha, and soft first-error focal / accept-until-fail place the first error where the drafter's
argmax leaves the target's. With p = onehot(label), alpha = q_y and every twin equals its hard
objective exactly. One wrapper serves every objective, third-party ones included; the spec
grammar spells it with the prefix ``soft-`` (``soft-dpace(alpha=0.3, temperature=1)``).
"""

from __future__ import annotations

from typing import Any

from ._base import BlockObjective, _format_value
from ._soft import GAMMA, TEMPERATURE, log_alpha_key, pick_soft

PREFIX = "soft-"


class SoftTwin(BlockObjective):
    """``base`` evaluated on ``-log alpha`` with ``correct`` = (argmax q == argmax p)."""

    needs_target = True
    needs_correct = False

    def __init__(self, base: BlockObjective, temperature: float = 1.0, *, name: str = "") -> None:
        if getattr(base, "needs_target", False):
            raise ValueError(f"{base.spec()} already reads the target distribution; it has no soft twin")
        self.base = base
        self.name = name or PREFIX + base.name
        self.options = {**base.options, "temperature": TEMPERATURE}
        self.temperature = TEMPERATURE.coerce(self.name, "temperature", temperature)
        self.normalization = base.normalization
        self.num_terms = getattr(base, "num_terms", 1)
        self.description = f"soft twin: {getattr(base, 'description', '') or base.name}, on -log alpha"

    def __getattr__(self, key: str) -> Any:  # the base's options (e.g. .alpha of dpace)
        if key == "base":
            raise AttributeError(key)
        return getattr(self.base, key)

    @property
    def settings(self) -> dict[str, Any]:
        return {**self.base.settings, "temperature": self.temperature}

    def spec(self) -> str:
        changed = {k: v for k, v in self.settings.items() if v != self.options[k].default}
        if not changed:
            return self.name
        return f"{self.name}(" + ",".join(f"{k}={_format_value(v)}" for k, v in changed.items()) + ")"

    def chunk_terms(self, neg_log_q, weight_mask, correct=None, soft=None):
        slots = pick_soft(soft, self.temperature, self.name)
        return self.base.chunk_terms(-slots.log_alpha, weight_mask, self._correct(slots))

    def slot_grad(self, neg_log_q, weight_mask, correct=None, soft=None) -> dict:
        slots = pick_soft(soft, self.temperature, self.name).detached()
        grad = self.base.slot_grad(-slots.log_alpha, weight_mask, self._correct(slots))
        return {log_alpha_key(self.temperature): -grad}  # d a / d log alpha = -1

    def _correct(self, slots):
        """argmax q == argmax p, formed only for a base that reads it (the argmaxes are deferred)."""
        return slots.teacher_correct if self.base.needs_correct else None

    def final_denominators(self, den, batch_size):
        return self.base.final_denominators(den, batch_size)

    def reduce(self, num, den, batch_size):
        return self.base.reduce(num, den, batch_size)


def twin_factory(base_factory: Any, name: str):
    """Factory of ``soft-<name>``: the base's options plus ``temperature``."""

    def build(**options: Any) -> SoftTwin:
        temperature = options.pop("temperature", TEMPERATURE.default)
        return SoftTwin(base_factory(**options), temperature, name=name)

    return build


class LKAlphaLoss(SoftTwin):
    """LK-alpha: ``-log alpha`` per slot with DFlash's decay, a weighted mean -- ``dflash`` lifted."""

    name = "lk-alpha"
    description = "LK-alpha: -log alpha per slot (alpha = sum min(p, q)); DFlash decay; weighted mean"
    options = {"gamma": GAMMA, "temperature": TEMPERATURE}

    def __init__(self, gamma: Any = None, temperature: float = 1.0) -> None:
        from ._weighted import DFlashLoss

        super().__init__(DFlashLoss(gamma=gamma), temperature, name="lk-alpha")
        self.description = LKAlphaLoss.description
