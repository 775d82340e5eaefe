"""Divergences other drafter trainers ship, as registered soft-label objectives.

* ``renyi-half`` (D-PARD's Renyi-1/2 actor): ``-2 log sum_x sqrt(p_x q_x)`` per slot, DFlash's decay,
  a weighted mean.  It is ``dflash`` lifted onto the Renyi statistic (:class:`~._twin.SoftTwin` with
  ``divergence=renyi-half``), so every hard objective has a Renyi twin, ``soft-<name>(divergence=renyi-half)``,
  and with p = onehot(label) it equals the cross-entropy.
* ``topk-kl`` (AngelSpec's): KL restricted to the target's top-k tokens, renormalized.  Precisely: S is
  the set of the k tokens of largest p (``torch.topk`` of the target's logits; all of V when k >= V),
  and *both* distributions are restricted to S and renormalized there, ``p~ = p / p(S)``,
  ``q~ = q / q(S)``; the per-slot value is ``KL(p~ || q~) = sum_{x in S} p~_x log(p~_x / q~_x)``.  It is 0
  when q has p's shape on S whatever mass q puts outside S, and its gradient is ``(q~ - p~) 1_S / T``:
  no pressure on the tokens outside S.  It has no soft twin: it is not a per-slot log-probability
  (with one-hot p it is the cross-entropy restricted to S, a set whose other k - 1 members are ties
  at p = 0, not the cross-entropy).

The ``labels=target`` option of every hard objective is :class:`~._twin.TargetLabels`.  Values and
gradients of the statistics are in :mod:`._statistics`.
"""

from __future__ import annotations

from ._base import Option
from ._soft import GAMMA, TEMPERATURE, SoftObjective, _valid
from ._statistics import topk_kl_key
from ._twin import LiftedDFlash


class RenyiHalfLoss(LiftedDFlash):
    """Renyi-1/2 (D-PARD's): ``-2 log sum_x sqrt(p_x q_x)`` per slot with DFlash's decay, a weighted mean --
    ``dflash`` lifted onto the Renyi statistic.  With p = onehot(label) it is the cross-entropy."""

    name = "renyi-half"
    description = "Renyi-1/2: -2 log sum sqrt(p q) per slot; DFlash decay; weighted mean (CE when p is one-hot)"
    lifted = "renyi-half"


class TopKKLLoss(SoftObjective):
    """KL(p~ || q~) on the target's top-k tokens, both renormalized there (see the module docstring),
    DFlash's decay, a weighted mean."""

    name = "topk-kl"
    description = "KL on the target's top-k tokens, p and q both renormalized there; decayed mean over slots"
    options = {
        "k": Option(20, (int,), minimum=2, help="size of the target's top set S (all of V when k >= V)"),
        "gamma": GAMMA,
        "temperature": TEMPERATURE,
    }

    @property
    def soft_extras(self) -> dict[float, tuple]:
        return {self.temperature: (self._key(),)}

    def _key(self):
        return topk_kl_key(self.temperature, self.k)

    def _soft_terms(self, slots, mask):
        value = slots.extra(self._key())
        weights = self._weights(value, mask)
        return (_valid(value, weights) * weights).sum(), weights.sum()

    def _soft_grad(self, slots, mask):
        value = slots.extra(self._key())
        return {self._key(): self._weights(value, mask).expand_as(value).clone()}
