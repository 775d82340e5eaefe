"""``normalize=true`` for composites: each term divided by a running estimate of its own magnitude.

A composite's value is ``sum_i w_i * L_i``; its terms live on different scales (D-PACE is a
per-sequence sum, about 160 on the demo; ``lk-lambda`` a mean, about 1.3), so raw weights say
little about how much each term trains.  Normalized, the value is ``sum_i w_i * L_i / m_i`` with
``m_i`` a detached running estimate of ``|L_i|``: every term contributes about ``w_i`` and
``dpace + 0.5*lk-lambda; normalize=true`` means half as much LK as D-PACE.

``m_i`` is a bias-corrected exponential moving average of ``|L_i|`` over training micro-batches
(those whose numerator carries grad), the current one included: ``e_t = d e_{t-1} + (1 - d) |L_i|``,
``m_i = e_t / (1 - d^t)`` with ``d = normalize_decay`` (so the first micro-batch is divided by its own
magnitude, and ``d = 0`` divides every micro-batch by its own).  Evaluation calls (no grad) divide by
the last committed estimate and record nothing.  The state follows the rules of :mod:`._state`: per
rank, committed on the first read outside backward (a recomputation in backward sees the forward's
estimate), not saved in checkpoints.  Magnitudes are floored at :data:`MAGNITUDE_FLOOR`.
"""

from __future__ import annotations

from typing import Optional

import torch

from ._state import CommittedOnRead

Tensor = torch.Tensor

#: magnitudes below this are taken as this (a term that is exactly 0 is not divided by 0)
MAGNITUDE_FLOOR = 1e-8


class RunningMagnitude:
    """Bias-corrected running ``|L_i|`` of each term of a composite (see the module docstring)."""

    __slots__ = ("decay", "_state")

    def __init__(self, decay: float) -> None:
        self.decay = float(decay)
        self._state = CommittedOnRead(lambda _previous, pending: pending)

    def magnitudes(self, values: Tensor, training: bool) -> Tensor:
        """``[terms]`` detached magnitudes to divide ``values`` (the terms' values) by; a training call
        records the updated estimate (committed on the next read outside backward)."""
        current = values.detach().abs()
        committed: Optional[tuple[Tensor, int]] = self._state.read()
        if not training:
            if committed is None:
                return current.clamp_min(MAGNITUDE_FLOOR)
            return self._corrected(*committed).to(current).clamp_min(MAGNITUDE_FLOOR)
        if committed is None or committed[0].shape != current.shape:
            average, steps = torch.zeros_like(current), 0
        else:
            average, steps = committed[0].to(current), committed[1]
        average = self.decay * average + (1.0 - self.decay) * current
        steps += 1
        self._state.record((average, steps))
        return self._corrected(average, steps).clamp_min(MAGNITUDE_FLOOR)

    def _corrected(self, average: Tensor, steps: int) -> Tensor:
        return average / (1.0 - self.decay**steps)

    @property
    def committed(self) -> Optional[Tensor]:
        """The committed estimate (None before the first commit); reading it commits a pending one."""
        state = self._state.read()
        return None if state is None else self._corrected(*state)
