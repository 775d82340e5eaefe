"""Hook for ``specforge.algorithms.common.dflash_family_model``: the three DFlash-family models.

One SpecForge module holds ``OnlineDFlashModel`` and its subclasses ``OnlineDominoModel`` and
``OnlineDSparkModel``; this target patches all three (:mod:`._unified`, :mod:`._domino`,
:mod:`._dspark`) and reverts them together.  The helpers below are what the subclass hooks share:
the constructor wrapper that reads ``loss_type`` / ``dpace_alpha`` / ``loss_options`` into a method
plan (:mod:`._methods`), the objective call on tensors formed after a draft-side head, and the
conversion of plugin metrics for a strategy that logs scalars only (Domino).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Optional

import torch

from ._blocks import slot_terms
from ._first_slot import with_anchor_column
from ._methods import method_plan
from ._patching import PatchSet
from ._plan import ObjectivePlan

TARGET_MODULE = "specforge.algorithms.common.dflash_family_model"
METHOD_PLAN_ATTR = "_specforge_dpace_method_plan"
MARKER = "__specforge_dpace_patched__"

Tensor = torch.Tensor


class FamilyPatch(PatchSet):
    """The three models' patch sets, reverted in reverse order."""

    def __init__(self, label: str, parts: list) -> None:
        super().__init__(label)
        self.parts = parts

    def revert(self) -> None:
        while self.parts:
            self.parts.pop().revert()

    def __len__(self) -> int:
        return sum(len(part) for part in self.parts)


def apply(module: Any) -> PatchSet:
    """Patch ``OnlineDFlashModel``, ``OnlineDominoModel`` and ``OnlineDSparkModel`` (idempotent)."""
    from . import _domino, _dspark, _unified

    parts = [_unified.apply(module)]
    if hasattr(module, "OnlineDominoModel"):
        parts.append(_domino.apply(module))
    if hasattr(module, "OnlineDSparkModel"):
        parts.append(_dspark.apply(module))
    return FamilyPatch(TARGET_MODULE, parts)


def plan_of(model: Any) -> Optional[ObjectivePlan]:
    """The plugin plan of a Domino / DSpark model, or ``None`` when the method's own code runs."""
    plan = getattr(model, METHOD_PLAN_ATTR, None)
    return None if plan is None or plan.passthrough else plan


def make_init(original_init: Any, method: str) -> Any:
    """``__init__`` with keyword-only ``loss_type``, ``dpace_alpha`` and ``loss_options``.

    SpecForge's own arguments pass through unchanged, except ``loss_decay_gamma``, which takes the
    ``gamma`` of a ``dflash(gamma=...)`` spec (that spec names the method's own objective).  A plugin
    objective sets ``loss_type`` to its full canonical spec, options included (``dpace(alpha=0.3)``:
    these models have no ``dpace_alpha`` entry in their resume contracts), which the resume contracts
    record.
    """
    signature = inspect.signature(original_init)

    @functools.wraps(original_init)
    def __init__(
        self, *args: Any, loss_type: Any = "dflash", dpace_alpha: float = 0.5, loss_options: Optional[dict] = None, **kw
    ) -> None:
        bound = signature.bind(self, *args, **kw)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        arguments.pop("self")
        plan = method_plan(
            method,
            loss_type,
            dpace_alpha=dpace_alpha,
            loss_decay_gamma=arguments.get("loss_decay_gamma"),
            loss_options=loss_options,
            dspark_ce_loss_alpha=arguments.get("dspark_ce_loss_alpha", 0.1),
            dspark_l1_loss_alpha=arguments.get("dspark_l1_loss_alpha", 0.9),
        )
        arguments["loss_decay_gamma"] = plan.loss_decay_gamma
        original_init(self, **arguments)
        if not plan.passthrough:
            self.loss_type = plan.objective.spec()
        self.dpace_alpha = plan.dpace_alpha
        self.loss_options = dict(loss_options or {})
        object.__setattr__(self, METHOD_PLAN_ATTR, plan)

    keyword = inspect.Parameter.KEYWORD_ONLY
    __init__.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[
            *signature.parameters.values(),
            inspect.Parameter("loss_type", keyword, default="dflash"),
            inspect.Parameter("dpace_alpha", keyword, default=0.5),
            inspect.Parameter("loss_options", keyword, default=None),
        ]
    )
    setattr(__init__, MARKER, True)
    return __init__


def objective_terms(
    objective: Any,
    neg_log_q: Tensor,
    target_ids: Tensor,
    valid_mask: Tensor,
    correct: Tensor,
    soft: Optional[dict],
    *,
    first_slot_supervised: bool,
) -> tuple[Tensor, ...]:
    """The objective's additive terms (``_blocks.objective_chunk_terms`` order) from a method's per-slot tensors;
    a method that supervises slot 0 hands them over with the masked anchor column (:mod:`._first_slot`)."""
    if first_slot_supervised:
        neg_log_q, target_ids, valid_mask, correct, soft = with_anchor_column(
            neg_log_q, target_ids, valid_mask, correct, soft
        )
    return slot_terms(objective, neg_log_q, target_ids, valid_mask, correct=correct, soft=soft)


def soft_stats(objective: Any, draft_logits: Tensor, target_logits: Tensor) -> Optional[dict]:
    """Soft statistics of one chunk at the objective's temperatures (``None`` for hard objectives)."""
    from ..losses import soft_slot_stats
    from ..losses._statistics import soft_extras_at

    temperatures = getattr(objective, "soft_temperatures", ())
    if not temperatures:
        return None
    return {
        t: soft_slot_stats(draft_logits, t, target_logits=target_logits, extras=soft_extras_at(objective, t))
        for t in temperatures
    }


def ratio_scalars(ratio_metrics: dict, skip: tuple = ("acc",)) -> dict:
    """Ratio metrics ``(numerator, denominator)`` as detached scalars (0 where nothing was counted)."""
    out = {}
    for name, (numerator, denominator) in ratio_metrics.items():
        if name in skip:
            continue
        numerator, denominator = numerator.detach(), denominator.detach()
        out[name] = torch.where(denominator > 0, numerator / denominator.clamp_min(1e-30), torch.zeros_like(numerator))
    return out


__all__ = ["FamilyPatch", "apply", "make_init", "objective_terms", "plan_of", "ratio_scalars", "soft_stats"]
