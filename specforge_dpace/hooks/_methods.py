"""Objective plans for SpecForge's DFlash-family methods: ``dflash``, ``domino`` and ``dspark``.

SpecForge 0.2.0 builds all three on ``OnlineDFlashModel``, but only DFlash reads
``training.loss_type``: ``OnlineDominoModel`` and ``OnlineDSparkModel`` hard-code their own loss.
With the plugin, ``loss_type`` (any registered name, soft twin or composite, with ``loss_options``)
replaces the token-level objective of each method:

* ``domino``: the cross-entropy on the GRU-corrected (final) logits; the base-logits term and its
  scheduled weight ``lambda_base`` stay SpecForge's.
* ``dspark``: the weighted CE + L1 terms; the confidence head keeps its own BCE against the
  detached acceptance rate.

``dflash`` (the schema default) runs each method's own code unchanged: for Domino that is its
decayed CE, for DSpark its ``dspark_ce_loss_alpha`` CE + ``dspark_l1_loss_alpha`` L1 mix.  A
``gamma`` in that spec (``dflash(gamma=7)``) is the method's own ``loss_decay_gamma``.

Strategies outside the family (``eagle3``, ``peagle``) never read ``loss_type``: a value other than
the default, or ``loss_options``, is refused at config validation instead of being ignored.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from ._plan import ObjectivePlan, plan_objective

#: Strategies whose model reads ``training.loss_type`` once the plugin is installed.
FAMILY = ("dflash", "domino", "dspark")
#: The one name that runs Domino's / DSpark's own objective (the schema default, which they ignore upstream).
METHOD_UPSTREAM_NAMES = ("dflash",)
DSPARK_TOKEN_WEIGHTS = {"dspark_ce_loss_alpha": 0.1, "dspark_l1_loss_alpha": 0.9}

FUSED_REASONS = {
    "domino": (
        "Domino's GRU correction head adds embed_proj(h, GRU(previous tokens)) to lm_head(h), so the final "
        "logits are not h W^T of the frozen head and the head's parameters take gradients through them"
    ),
    "dspark": (
        "DSpark's Markov head adds a learned bias from the previous token to lm_head(h) (its parameters take "
        "gradients through the logits) and its confidence head is fit to the acceptance rate of those logits"
    ),
}
OWN_OBJECTIVE = {
    "domino": "Domino's own decayed cross-entropy on the final and the base logits",
    "dspark": "DSpark's own 'dspark_ce_loss_alpha * CE + dspark_l1_loss_alpha * L1' mix plus its confidence loss",
}


class MethodObjectiveError(ValueError):
    """A ``loss_type`` / ``loss_options`` combination a method cannot honour (the message says why)."""


def method_plan(
    method: str,
    loss_type: Any = "dflash",
    *,
    dpace_alpha: float = 0.5,
    loss_decay_gamma: Optional[float] = None,
    loss_options: Optional[Mapping[str, Any]] = None,
    dspark_ce_loss_alpha: float = 0.1,
    dspark_l1_loss_alpha: float = 0.9,
) -> ObjectivePlan:
    """The plan of ``method``'s objective; ``passthrough`` means the method's own code runs.

    Refuses (naming the field and what is accepted): ``fused`` for Domino and DSpark, plugin-only
    path options with the method's own objective, and DSpark's CE/L1 weights set beside a plugin
    objective that replaces those terms.
    """
    if method == "dflash":
        return plan_objective(
            loss_type, dpace_alpha=dpace_alpha, loss_decay_gamma=loss_decay_gamma, loss_options=loss_options
        )
    if method not in FUSED_REASONS:
        raise ValueError(f"method_plan: unknown DFlash-family method {method!r}; expected one of {FAMILY}")
    plan = plan_objective(
        loss_type,
        dpace_alpha=dpace_alpha,
        loss_decay_gamma=loss_decay_gamma,
        loss_options=loss_options,
        upstream_names=METHOD_UPSTREAM_NAMES,
    )
    if plan.fused:
        raise MethodObjectiveError(
            f"training.loss_options.fused=true is refused for training.strategy={method!r}: {FUSED_REASONS[method]}; "
            "the fused path computes the gradient with respect to the hidden states from logits = h W^T in the "
            "forward pass, which cannot reach those heads. Accepted: fused false (or leave it out)"
        )
    if method == "dspark" and not plan.passthrough and plan.spec in METHOD_UPSTREAM_NAMES:
        raise MethodObjectiveError(
            f"training.loss_type={loss_type!r} with strategy 'dspark' runs {OWN_OBJECTIVE['dspark']}, so "
            "training.loss_options.acceptance_metrics does not apply (DSpark logs its own tau_probabilistic); "
            "accepted: leave acceptance_metrics out, or name a plugin objective (e.g. 'dpace', 'lk-lambda')"
        )
    if method == "dspark" and not plan.passthrough:
        given = {"dspark_ce_loss_alpha": dspark_ce_loss_alpha, "dspark_l1_loss_alpha": dspark_l1_loss_alpha}
        changed = {k: v for k, v in given.items() if v != DSPARK_TOKEN_WEIGHTS[k]}
        if changed:
            shown = ", ".join(f"training.{k}={v!r}" for k, v in changed.items())
            raise MethodObjectiveError(
                f"{shown}: these weight DSpark's CE and L1 terms, which training.loss_type={plan.spec!r} replaces; "
                f"accepted: their defaults ({DSPARK_TOKEN_WEIGHTS}) with a plugin objective, or loss_type 'dflash' "
                "for DSpark's own mix. Weights of your own go into the spec: DSpark's L1 is 2*TV, so its default "
                "mix is '0.1*dflash + 1.8*tv(gamma=G)' with G = loss_decay_gamma (dflash terms take it by default)"
            )
    return plan


def check_strategy(strategy: Any, loss_type: Any, loss_options: Optional[Mapping[str, Any]]) -> None:
    """Refuse ``loss_type`` / ``loss_options`` values a strategy outside the DFlash family would ignore."""
    if strategy in FAMILY or not isinstance(strategy, str):
        return
    problems = []
    if loss_type != "dflash":
        problems.append(f"training.loss_type={loss_type!r}")
    if loss_options:
        problems.append(f"training.loss_options={dict(loss_options)!r}")
    if problems:
        hint = (
            " (EAGLE3's objective is set with training.lk_loss_type, kl_scale and kl_decay)"
            if strategy == "eagle3"
            else ""
        )
        raise MethodObjectiveError(
            f"{' and '.join(problems)} has no effect with training.strategy={strategy!r}: only the DFlash-family "
            f"strategies {', '.join(FAMILY)} read it{hint}. Accepted: leave loss_type unset (or 'dflash') and "
            "loss_options empty for this strategy"
        )


def check_training(training: Mapping[str, Any]) -> Optional[ObjectivePlan]:
    """Validate a ``TrainingConfig``'s objective fields together (a mapping of field values)."""
    strategy = training.get("strategy")
    loss_type = training.get("loss_type", "dflash")
    options = training.get("loss_options") or None
    check_strategy(strategy, loss_type, options)
    if strategy not in FAMILY:
        return None
    return method_plan(
        strategy,
        loss_type,
        dpace_alpha=training.get("dpace_alpha", 0.5),
        loss_decay_gamma=training.get("loss_decay_gamma"),
        loss_options=options,
        dspark_ce_loss_alpha=training.get("dspark_ce_loss_alpha", 0.1),
        dspark_l1_loss_alpha=training.get("dspark_l1_loss_alpha", 0.9),
    )


def training_plan(training: Any) -> Optional[ObjectivePlan]:
    """:func:`check_training` of a ``TrainingConfig`` object."""
    fields = (
        "strategy",
        "loss_type",
        "dpace_alpha",
        "loss_decay_gamma",
        "loss_options",
        "dspark_ce_loss_alpha",
        "dspark_l1_loss_alpha",
    )
    return check_training({name: getattr(training, name) for name in fields if hasattr(training, name)})


__all__ = [
    "FAMILY",
    "FUSED_REASONS",
    "MethodObjectiveError",
    "check_strategy",
    "check_training",
    "method_plan",
    "training_plan",
]
