"""Hook for ``specforge.config.schema``: ``training.loss_type`` takes any objective spec; evaluation settings.

SpecForge's ``TrainingConfig`` is strict (``extra="forbid"``) with ``loss_type`` a closed
``Literal``.  The patch swaps that field for a string validated against the objective registry
(unknown names still fail, listing the registered ones), adds ``training.loss_options``, and
rebuilds the models that embed ``TrainingConfig``.  It also adds ``training.eval_walk`` and
``training.best_metric`` (:mod:`._eval_settings`).  Reverting restores the original field
objects and rebuilds again.

The objective is checked with the strategy it is for (:mod:`._methods`): ``domino`` and ``dspark``
take any spec too (refusing ``fused`` and, for DSpark, CE/L1 weights beside a plugin objective);
a strategy that never reads ``loss_type`` (``eagle3``, ``peagle``) refuses a value other than the
default and any ``loss_options`` instead of ignoring them.  ``loss_options`` is validated even when
left at its default, because its validator sees every SpecForge field (it comes after them) and so runs the
cross-field checks.
"""

from __future__ import annotations

from typing import Any, Optional

from ._patching import PatchSet

TARGET_MODULE = "specforge.config.schema"


def _validate_spec(value: Any, info: Any) -> Any:
    from ._methods import check_strategy
    from ._plan import plan_objective

    data = info.data or {}
    plan_objective(value, dpace_alpha=data.get("dpace_alpha", 0.5))
    check_strategy(data.get("strategy"), value, None)
    return value


def _validate_options(value: Any, info: Any) -> Any:
    from ._methods import check_training

    data = info.data or {}
    if "loss_type" not in data:  # loss_type failed already
        return value
    alpha = data.get("dpace_alpha", 0.5)
    if isinstance(alpha, (int, float)) and not 0.0 <= alpha <= 1.0:
        return value  # SpecForge's own model validator reports training.dpace_alpha
    check_training({**data, "loss_options": value})
    return value


def _validate_eval_walk(value: Any, info: Any) -> Any:
    from ._eval_settings import parse_eval_walk

    parse_eval_walk(value)
    return value


def _validate_best_metric(value: Any, info: Any) -> Any:
    from ._eval_settings import parse_eval_walk, with_best_metric

    data = info.data or {}
    if "eval_walk" not in data:  # eval_walk failed already
        return value
    with_best_metric(parse_eval_walk(data["eval_walk"]), value)
    return value


class _FieldsPatch(PatchSet):
    """Model-field replacement; ``revert`` restores the fields and rebuilds the pydantic models."""

    def __init__(self, label: str, models: list) -> None:
        super().__init__(label)
        self.models = models

    def revert(self) -> None:
        super().revert()
        for model in self.models:
            model.model_rebuild(force=True)


def apply(module: Any) -> PatchSet:
    from typing import Annotated

    from pydantic import AfterValidator, Field
    from pydantic.fields import FieldInfo

    training = module.TrainingConfig
    fields = training.model_fields
    patches = _FieldsPatch(TARGET_MODULE, [training, module.Config])
    if "loss_options" in fields:
        return patches  # already patched
    original = fields["loss_type"]
    loss_type = FieldInfo.from_annotated_attribute(Annotated[str, AfterValidator(_validate_spec)], original.default)
    loss_type.description = "objective name or composite spec (specforge-dpace)"
    loss_options = FieldInfo.from_annotated_attribute(
        Annotated[Optional[dict[str, Any]], AfterValidator(_validate_options)],
        Field(default_factory=dict, validate_default=True),
    )
    loss_options.description = "options of a single-term loss_type and path options (specforge-dpace)"
    eval_walk = FieldInfo.from_annotated_attribute(
        Annotated[Optional[dict[str, Any]], AfterValidator(_validate_eval_walk)], None
    )
    eval_walk.description = "walk predictors in SpecForge's evaluation (specforge-dpace, docs/eval-metrics.md)"
    best_metric = FieldInfo.from_annotated_attribute(
        Annotated[Optional[str], AfterValidator(_validate_best_metric)], None
    )
    best_metric.description = "metric the best checkpoint is kept by (specforge-dpace; default SpecForge's)"
    patches.set(_FieldDict(fields), "loss_type", loss_type)
    patches.set(_FieldDict(fields), "loss_options", loss_options)
    patches.set(_FieldDict(fields), "eval_walk", eval_walk)
    patches.set(_FieldDict(fields), "best_metric", best_metric)
    for model in patches.models:
        model.model_rebuild(force=True)
    return patches


class _FieldDict:
    """Attribute view of a dict so PatchSet can record and restore entries."""

    def __init__(self, mapping: dict) -> None:
        object.__setattr__(self, "_mapping", mapping)

    def __getattr__(self, key: str) -> Any:
        try:
            return self._mapping[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key: str, value: Any) -> None:
        self._mapping[key] = value

    def __delattr__(self, key: str) -> None:
        del self._mapping[key]
