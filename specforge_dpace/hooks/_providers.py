"""Hook for ``specforge.algorithms.model_providers``: the DFlash-family builders read the objective.

SpecForge's ``build_dflash_model`` forwards ``loss_type`` and ``dpace_alpha`` from the config;
the patched builder also forwards ``loss_options`` (present once the schema hook is active).
``build_domino_model`` and ``build_dspark_model`` forward none of them upstream (their models
hard-code their loss); the patched builders pass ``loss_type``, ``dpace_alpha`` and
``loss_options`` to ``OnlineDominoModel`` / ``OnlineDSparkModel`` (patched by ``_family``), which
record the canonical spec as their ``loss_type`` for the resume contracts
(:mod:`._method_providers`).  Every DFlash-family model a patched builder returns carries the run's
evaluation settings (:func:`with_eval_settings`).  ``loss_type`` left at ``dflash`` without ``loss_options`` calls
SpecForge's own builder.
"""

from __future__ import annotations

import functools
from typing import Any

from ._patching import PatchSet

TARGET_MODULE = "specforge.algorithms.model_providers"
MARKER = "__specforge_dpace_patched__"
EVAL_ATTR = "_specforge_dpace_eval"


def with_eval_settings(parts: Any, cfg: Any) -> Any:
    """A builder's result (SpecForge's ``TrainingModelParts``) whose training model carries the run's
    evaluation settings (``training.eval_walk`` / ``best_metric``) for :mod:`._evaluation`."""
    from ._eval_settings import settings_of_training

    model = getattr(parts, "model", parts)
    settings = settings_of_training(cfg.training)
    if settings.enabled and settings.anchor_stride > 1:  # refused before training, not at the first evaluation
        from specforge_dpace.evaluate._teacher_forced import check_stride, method_of, slot_alignment

        draft = model.draft_model
        alignment = slot_alignment(
            method_of(draft), model.block_size, shift_label=bool(getattr(draft, "shift_label", False))
        )
        check_stride(settings.anchor_stride, alignment.drafted, "training.eval_walk.anchor_stride")
    setattr(model, EVAL_ATTR, settings)
    return parts


def eval_settings_of(model: Any) -> Any:
    """The settings a patched builder attached (``None`` for a model built otherwise)."""
    return getattr(model, EVAL_ATTR, None)


def _make_builder(module: Any, original: Any):
    @functools.wraps(original)
    def build_dflash_model(cfg, draft_model, _draft_config, _target_config, tokenizer):
        options = getattr(cfg.training, "loss_options", None)
        if not options:
            return with_eval_settings(original(cfg, draft_model, _draft_config, _target_config, tokenizer), cfg)

        return with_eval_settings(_build_plugin_dflash(module, cfg, draft_model, tokenizer, options), cfg)

    setattr(build_dflash_model, MARKER, True)
    return build_dflash_model


def _build_plugin_dflash(module: Any, cfg: Any, draft_model: Any, tokenizer: Any, options: Any) -> Any:
    from specforge.algorithms.common.dflash_family_model import OnlineDFlashModel

    return module._build_dflash_family_model(
        cfg,
        draft_model,
        tokenizer,
        lambda common: OnlineDFlashModel(
            **common,
            loss_type=cfg.training.loss_type,
            dpace_alpha=cfg.training.dpace_alpha,
            loss_options=dict(options),
        ),
    )


def _method_kwargs(method: str, cfg: Any, draft_model: Any) -> dict:
    """SpecForge's own constructor arguments of each method's model (as its builder passes them)."""
    if method == "domino":
        return {"shift_label": bool(getattr(draft_model, "shift_label", False))}
    return {
        "dspark_ce_loss_alpha": cfg.training.dspark_ce_loss_alpha,
        "dspark_l1_loss_alpha": cfg.training.dspark_l1_loss_alpha,
        "dspark_confidence_head_alpha": cfg.training.dspark_confidence_head_alpha,
    }


def _make_method_builder(module: Any, original: Any, method: str, class_name: str):
    @functools.wraps(original)
    def builder(cfg, draft_model, _draft_config, _target_config, tokenizer):
        training = cfg.training
        options = getattr(training, "loss_options", None)
        if training.loss_type == "dflash" and not options:
            return with_eval_settings(original(cfg, draft_model, _draft_config, _target_config, tokenizer), cfg)
        from specforge.algorithms.common import dflash_family_model

        model_class = getattr(dflash_family_model, class_name)
        model = module._build_dflash_family_model(
            cfg,
            draft_model,
            tokenizer,
            lambda common: model_class(
                **common,
                **_method_kwargs(method, cfg, draft_model),
                loss_type=training.loss_type,
                dpace_alpha=training.dpace_alpha,
                loss_options=dict(options or {}),
            ),
        )
        return with_eval_settings(model, cfg)

    setattr(builder, MARKER, True)
    return builder


METHOD_BUILDERS = {
    "build_domino_model": ("domino", "OnlineDominoModel"),
    "build_dspark_model": ("dspark", "OnlineDSparkModel"),
}


def apply(module: Any) -> PatchSet:
    patches = PatchSet(TARGET_MODULE)
    original = module.build_dflash_model
    if getattr(original, MARKER, False):
        return patches
    if not hasattr(module, "_build_dflash_family_model"):
        raise RuntimeError(
            f"{TARGET_MODULE} has build_dflash_model but no _build_dflash_family_model; this SpecForge "
            "revision is not supported for loss_options (loss_type specs still work)"
        )
    patches.set(module, "build_dflash_model", _make_builder(module, original))
    for name, (method, class_name) in METHOD_BUILDERS.items():
        if hasattr(module, name):
            patches.set(module, name, _make_method_builder(module, getattr(module, name), method, class_name))
    return patches
