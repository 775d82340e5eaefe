"""Training stops at the first non-finite loss or gradient, naming the objective and the step.

A run whose loss became NaN or infinite (a learning rate far too high, a broken feature file, an
objective that overflowed) otherwise keeps going, saves NaN weights and reports them as a drafter: an
evaluation of such a drafter prints a clean-looking table of tau 1.000.  The demo, the acceptance
experiment and the plugin's objectives inside SpecForge therefore check every step, unless the user
opted to train on (``--allow-non-finite``; inside SpecForge, whose flags are not ours,
``SPECFORGE_DPACE_ALLOW_NON_FINITE=1``), in which case the non-finite steps are recorded.
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Any, Iterator, Optional

#: Environment switch for processes this package does not start (SpecForge's trainer): 1 = train on.
ENV_VAR = "SPECFORGE_DPACE_ALLOW_NON_FINITE"


class NonFiniteTraining(ValueError):
    """The loss or gradient of a training step is NaN or infinite (a ``ValueError``: the commands print it as
    one line, since its cause is a value: a learning rate, the data, an objective's options)."""


_caller_checks = 0


def allowed_by_environment() -> bool:
    return os.environ.get(ENV_VAR, "").strip().lower() in ("1", "true", "yes", "on")


def checked_elsewhere() -> bool:
    """Whether the objective's own per-forward check stands down: the environment lets the run go on, or
    the training loop around it (:func:`checked_by_caller`) checks each step itself, with more to say."""
    return _caller_checks > 0 or allowed_by_environment()


@contextlib.contextmanager
def checked_by_caller() -> Iterator[None]:
    """While active, the plugin objectives' check leaves non-finite values to the caller's loop (the demo's,
    which names the step, the learning rate and the gradient, and honours ``--allow-non-finite``)."""
    global _caller_checks
    _caller_checks += 1
    try:
        yield
    finally:
        _caller_checks -= 1


def _number(value: Any) -> Optional[float]:
    if value is None:
        return None
    if hasattr(value, "detach"):
        value = value.detach()
        if value.numel() != 1:
            import torch

            return float("nan") if not bool(torch.isfinite(value).all()) else 0.0
        value = value.item()
    return float(value)


def non_finite(loss: Any = None, grad_norm: Any = None) -> Optional[str]:
    """``None`` when both (a number, a one-element tensor, or None) are finite, else what is not, in words."""
    problems = []
    for name, value in (("loss", loss), ("gradient norm", grad_norm)):
        number = _number(value)
        if number is not None and not math.isfinite(number):
            problems.append(f"the {name} is {number}")
    return " and ".join(problems) or None


def check_step(
    objective: str, step: Any, *, loss: Any = None, grad_norm: Any = None, allow: bool = False, hint: str = ""
) -> Optional[str]:
    """Raise :class:`NonFiniteTraining` naming ``objective`` and ``step`` when the loss or the gradient norm
    is not finite; with ``allow``, return that description instead (the caller records it); else ``None``."""
    problem = non_finite(loss, grad_norm)
    if problem is None or allow:
        return problem
    raise NonFiniteTraining(
        f"objective {objective!r}: {problem} at {step}; training stopped (the drafter would be NaN). "
        + (hint or "Lower the learning rate or check the data and the objective's options")
    )
