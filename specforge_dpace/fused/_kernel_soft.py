"""The soft fused pass with its element-wise work in Triton kernels (:mod:`.kernels`).

Same driver as :class:`._soft.SoftPass` (sub-chunks of whole blocks, one draft-logits product per sub-chunk,
target logits per half-height piece, the objective's coefficients per piece from :func:`stat_grads`, one
gradient product per direction), but the ``[rows, V]`` buffers stay in the compute dtype and each piece costs
two kernel launches per temperature instead of a dozen element-wise passes:

1. :func:`.kernels.soft_stats_kernel` -- every per-row statistic (cross-entropy, both argmaxes, log alpha,
   s / alpha, KL where read) from two walks over the draft and target tiles, in log space throughout (no
   tiny-alpha recomputation needed);
2. :func:`.kernels.soft_directions_kernel` -- the gradient directions: summed with the objective's
   coefficients into the draft buffer (one numerator entry), or one per buffer (the first over the draft
   logits, the second over the target logits, a third into a half-height scratch buffer).

Plans the kernels do not cover (more than two temperatures, more than three gradient buffers, a statistic
other than cross-entropy, log alpha / alpha and KL) keep the PyTorch pass; :func:`kernel_plan_reason` says why.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from ._soft import NLQ, SoftPass, SoftPlan
from .kernels import launcher

Tensor = torch.Tensor
#: The fields of :class:`SoftPlan` this pass understands; a plan that sets any other is not run here.
KNOWN_PLAN_FIELDS = frozenset({"temperatures", "kl_temperatures", "directions", "terms"})
MAX_TEMPERATURES = 2
MAX_OUTPUTS = 3


def kernel_plan_reason(plan: SoftPlan) -> Optional[str]:
    """None when :class:`KernelSoftPass` runs ``plan``, else why not (for the one-time log line)."""
    unknown = sorted(f.name for f in dataclasses.fields(plan) if f.name not in KNOWN_PLAN_FIELDS)
    if any(getattr(plan, name) for name in unknown):
        return f"reads statistics the Triton kernels do not form ({', '.join(unknown)})"
    for direction in plan.directions:
        if direction != NLQ and not (isinstance(direction, tuple) and direction[0] in ("la", "kl")):
            return f"differentiates a statistic the Triton kernels do not form ({direction!r})"
    if len(plan.temperatures) > MAX_TEMPERATURES:
        return f"reads {len(plan.temperatures)} temperatures (the Triton kernels take at most {MAX_TEMPERATURES})"
    outputs = 1 if plan.combined else len(plan.directions)
    if outputs > MAX_OUTPUTS:
        return f"keeps {outputs} gradient directions (the Triton kernels write at most {MAX_OUTPUTS})"
    return None


class KernelSoftPass(SoftPass):
    """:class:`SoftPass` with per-piece statistics and directions from the Triton kernels (module docstring)."""

    def __init__(self, objective, plan, weight, bias, step, slots, want_grad) -> None:
        super().__init__(objective, plan, weight, bias, step, slots, want_grad)
        self.buffer_dtype = weight.dtype
        self.launch = launcher()
        self.outputs = (1 if plan.combined else len(plan.directions)) if self.want_grad else 0
        self.third: Optional[Tensor] = None
        unit = [1.0] * len(plan.temperatures)
        self.basis = frozenset(i for d in plan.directions for i, _ in self._unit_terms(d, unit))

    # ------------------------------------------------------------------ coefficients
    def _unit_terms(self, direction, ratios) -> list:
        """``[(basis index, factor)]`` of a unit direction: cross-entropy ``q1 - e_y``, ``la``
        ``u q / alpha - r q``, ``kl`` ``q - p`` (``ratios[j]`` = r = s / alpha at temperature slot j)."""
        k, temperatures = self.launch, self.plan.temperatures
        if direction == NLQ:
            q_one = (k.Q0, k.Q1)[temperatures.index(1.0)] if 1.0 in temperatures else k.Q_ONE
            return [(q_one, 1.0), (k.E_Y, -1.0)]
        kind, temperature = direction
        slot = temperatures.index(temperature)
        q, w, p = (k.Q0, k.W0, k.P0) if slot == 0 else (k.Q1, k.W1, k.P1)
        return [(w, 1.0), (q, -ratios[slot])] if kind == "la" else [(q, 1.0), (p, -1.0)]

    def _basis_coefficients(self, coef: dict, ratios: list, rows: int, like: Tensor) -> Tensor:
        """``[outputs, BASIS, rows]``: the summed direction's coefficients (one numerator entry), else
        each output's unit direction."""
        out = torch.zeros(self.outputs, self.launch.BASIS, rows, dtype=like.dtype, device=like.device)
        if self.plan.combined:
            pairs = [(0, direction, value[0]) for direction, value in coef.items()]
        else:
            pairs = [(index, direction, 1.0) for index, direction in enumerate(self.plan.directions)]
        for index, direction, scale in pairs:
            for basis, factor in self._unit_terms(direction, ratios):
                out[index, basis] += scale * factor
        return out

    # ------------------------------------------------------------------ one piece
    def _piece(self, a: Tensor, b: Tensor, p0: int, p1: int, block0: int, block1: int) -> None:
        plan, launch, ids = self.plan, self.launch, self.ids[p0:p1]
        stats = []
        for slot, t in enumerate(plan.temperatures):
            values, found = launch.soft_stats(
                a, b, t, labels=ids if slot == 0 else None, want_kl=t in plan.kl_temperatures, argmaxes=slot == 0
            )
            stats.append(values)
            if slot == 0:
                self.nlq[p0:p1] = values[launch.NLQ]
                self.draft[p0:p1] = found[0]
                self.teacher[p0:p1] = found[1]
            self.log_alpha[t][p0:p1] = values[launch.LOG_ALPHA]
            if self.kl[t] is not None:
                self.kl[t][p0:p1] = values[launch.KL]
        self.correct[p0:p1] = self.draft[p0:p1] == ids
        if not self.want_grad:
            return
        coef = self._coefficients(p0, p1, block0, block1)
        rows = p1 - p0
        row_stats = launch.direction_row_stats(stats)
        ratios = [values[launch.RATIO] for values in stats]
        outputs = [a, b]
        if self.outputs > 2:
            if self.third is None:
                self.third = torch.empty(self.piece * self.slots, self.vocab, dtype=a.dtype, device=a.device)
            outputs.append(self.third[:rows])
        outputs = outputs[: self.outputs]
        launch.soft_directions(
            a, b, outputs, plan.temperatures, row_stats, self._basis_coefficients(coef, ratios, rows, row_stats),
            self.basis, labels=ids,
        )  # fmt: skip
        for index, out in enumerate(outputs[1:], start=1):
            self._gradient(out, self.dl[index][p0:p1])
