"""Hook for ``specforge.algorithms.model_providers``: pass ``training.loss_options`` to the model.

SpecForge's ``build_dflash_model`` forwards ``loss_type`` and ``dpace_alpha`` from the config;
the patched builder also forwards ``loss_options`` (present once the schema hook is active).
"""

from __future__ import annotations

import functools
from typing import Any

from ._patching import PatchSet

TARGET_MODULE = "specforge.algorithms.model_providers"
MARKER = "__specforge_dpace_patched__"


def _make_builder(module: Any, original: Any):
    @functools.wraps(original)
    def build_dflash_model(cfg, draft_model, _draft_config, _target_config, tokenizer):
        options = getattr(cfg.training, "loss_options", None)
        if not options:
            return original(cfg, draft_model, _draft_config, _target_config, tokenizer)
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

    setattr(build_dflash_model, MARKER, True)
    return build_dflash_model


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
    return patches
