"""Hook for SpecForge's unified runtime: ``specforge.algorithms.common.dflash_family_model``.

Patches ``OnlineDFlashModel`` so ``loss_type`` takes any registered objective or composite and a
``loss_options`` mapping.  Built-in names without plugin options run SpecForge's own methods
unchanged (bit-identical); everything else runs the plugin objective inside SpecForge's own
chunked reduction (or the fused path) and reports SpecForge's ``(numerator, denominator)``.
The model's ``loss_type`` attribute holds the canonical spec, so SpecForge's resume contract
(``dflash_loss_type``) records the full objective and refuses resuming with another one.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Optional

from ..losses._shares import sample_blocks
from ._blocks import align_target_hidden, assemble_outputs, block_labels, objective_chunk_terms, run_objective
from ._patching import PatchSet
from ._plan import ObjectivePlan, is_composite, plan_objective

TARGET_MODULE = "specforge.algorithms.common.dflash_family_model"
PLAN_ATTR = "_specforge_dpace_plan"
MARKER = "__specforge_dpace_patched__"


def _make_init(original_init):
    signature = inspect.signature(original_init)

    @functools.wraps(original_init)
    def __init__(self, *args: Any, loss_options: Optional[dict] = None, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        arguments.pop("self")
        plan = plan_objective(
            arguments.get("loss_type", "dflash"),
            dpace_alpha=arguments.get("dpace_alpha", 0.5),
            loss_decay_gamma=arguments.get("loss_decay_gamma"),
            loss_options=loss_options,
        )
        arguments["loss_type"] = plan.upstream_loss_type
        arguments["dpace_alpha"] = plan.dpace_alpha
        arguments["loss_decay_gamma"] = plan.loss_decay_gamma
        original_init(self, **arguments)
        if not plan.passthrough:
            self.loss_type = plan.spec
        self.loss_options = dict(loss_options or {})
        object.__setattr__(self, PLAN_ATTR, plan)

    __init__.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[
            *signature.parameters.values(),
            inspect.Parameter("loss_options", inspect.Parameter.KEYWORD_ONLY, default=None),
        ]
    )
    setattr(__init__, MARKER, True)
    return __init__


def _plan_of(model: Any) -> Optional[ObjectivePlan]:
    plan = getattr(model, PLAN_ATTR, None)
    return None if plan is None or plan.passthrough else plan


def _make_chunk_terms(original):
    @functools.wraps(original)
    def _dflash_objective_chunk_terms(self, hidden, target_ids, weight_mask, target_hidden=None, share_mask=None):
        plan = _plan_of(self)
        if plan is None:
            return original(self, hidden, target_ids, weight_mask)
        return objective_chunk_terms(
            plan.objective, self.lm_head, hidden, target_ids, weight_mask, target_hidden, share_mask
        )

    setattr(_dflash_objective_chunk_terms, MARKER, True)
    return _dflash_objective_chunk_terms


def _make_forward(original, module):
    @functools.wraps(original)
    def forward(self, input_ids, hidden_states, loss_mask, target_last_hidden_states=None):
        """SpecForge's forward; soft-label objectives also take the target's last hidden state
        (``[B, S, H]``, post final norm, the key DSpark's data path already carries)."""
        plan = _plan_of(self)
        if plan is None:
            return original(self, input_ids, hidden_states, loss_mask)
        if self.attention_backend == "flex_attention" and not module.FLEX_ATTENTION_AVAILABLE:
            raise ValueError("flex_attention is not available on this device; use sdpa/eager.")
        batch_size = input_ids.shape[0]
        anchors, keep, output_hidden = self._forward_draft_blocks(
            input_ids=input_ids, hidden_states=hidden_states, loss_mask=loss_mask
        )
        target_ids, weight_mask = block_labels(input_ids, loss_mask, anchors, keep, self.block_size)
        hidden_4d = output_hidden.reshape(batch_size, anchors.shape[1], self.block_size, -1)
        target_hidden = None
        if getattr(plan.objective, "needs_target", False) and target_last_hidden_states is not None:
            target_hidden = align_target_hidden(target_last_hidden_states.to(hidden_4d.dtype), anchors, self.block_size)
        share_mask = None
        if is_composite(plan.objective):  # the blocks whose slots measure each term's gradient share
            share_mask = sample_blocks(batch_size, anchors.shape[1], plan.share_blocks, hidden_4d.device)
        totals = run_objective(
            self,
            plan.objective,
            hidden_4d,
            target_ids,
            weight_mask,
            module.checkpointed_chunk_reduce,
            self._dflash_objective_chunk_terms,
            chunk_size=self.objective_chunk_blocks,
            fused=plan.fused,
            fused_sub_chunk=plan.fused_sub_chunk,
            target_hidden=target_hidden,
            share_mask=share_mask,
        )
        gram = None
        if share_mask is not None:
            totals, gram = totals[:-1], totals[-1]
        return assemble_outputs(
            plan.objective, totals, batch_size, acceptance_metrics=plan.acceptance_metrics, gram=gram
        )

    setattr(forward, MARKER, True)
    return forward


def apply(module: Any) -> PatchSet:
    """Patch ``module.OnlineDFlashModel``; returns the record that reverts it."""
    cls = module.OnlineDFlashModel
    patches = PatchSet(TARGET_MODULE)
    if getattr(vars(cls).get("__init__"), MARKER, False):
        return patches  # already patched (e.g. by another copy of the hook): nothing to record
    patches.set(cls, "__init__", _make_init(vars(cls)["__init__"]))
    patches.set(cls, "_dflash_objective_chunk_terms", _make_chunk_terms(vars(cls)["_dflash_objective_chunk_terms"]))
    patches.set(cls, "forward", _make_forward(vars(cls)["forward"], module))
    return patches
