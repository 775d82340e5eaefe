"""Hooks for ``specforge.algorithms.domino.providers`` and ``specforge.algorithms.dspark.providers``:
resume contracts that record the objective.

SpecForge persists each method's resume contract in its checkpoints and, on resume, compares every
key of the *current* contract with the checkpoint (a key the checkpoint lacks is refused, a key the
current run lacks is not compared).  DFlash records ``dflash_loss_type``; Domino and DSpark record
nothing about the objective, because upstream they have one.  The patched ``resume_contract`` adds
``domino_loss_type`` / ``dspark_loss_type`` (the canonical spec) whenever the model runs a plugin
objective, so resuming with another spec, or a checkpoint of the method's own objective, is refused
by SpecForge's own check.  Runs of the method's own objective keep SpecForge's contract unchanged
(so checkpoints written without the plugin still resume), except when they resume a checkpoint that
records the key: then the key is added with the method's own name (``dflash`` for Domino, ``dspark``
for DSpark), and SpecForge refuses the mismatch instead of silently continuing a plugin-trained run
with another objective.  Finding that out reads the checkpoint's ``training_state.pt`` memory-mapped
(no tensor data is loaded).

``builtin_algorithm_registry()`` builds the registrations afresh each time it is called, reading the
module's ``resume_contract`` then, so patching the module attribute reaches every later run.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from ._patching import PatchSet

MODULES = {"specforge.algorithms.domino.providers": "domino", "specforge.algorithms.dspark.providers": "dspark"}
MARKER = "__specforge_dpace_patched__"


def contract_key(method: str) -> str:
    return f"{method}_loss_type"


def checkpoint_records(resume_from: Any, key: str) -> bool:
    """Whether the checkpoint ``resume_from`` names records ``key`` (False when it cannot be read: SpecForge's
    own resume then reports the problem)."""
    if not resume_from:
        return False
    try:
        import torch
        from specforge.training.checkpoint import STATE_FILE, CheckpointManager

        directory = CheckpointManager.resolve_resume_dir(str(resume_from))
        state = torch.load(os.path.join(directory, STATE_FILE), map_location="cpu", weights_only=False, mmap=True)
    except Exception:
        return False
    return isinstance(state, dict) and key in state


def _make_contract(original: Any, method: str) -> Any:
    @functools.wraps(original)
    def resume_contract(config, draft_model, training_model):
        from ._family import plan_of

        contract = dict(original(config, draft_model, training_model))
        key = contract_key(method)
        resume_from = getattr(getattr(config, "training", None), "resume_from", None)
        if plan_of(training_model) is not None or checkpoint_records(resume_from, key):
            contract[key] = str(training_model.loss_type)  # the spec, or the method's own name
        return contract

    setattr(resume_contract, MARKER, True)
    return resume_contract


def apply(module: Any) -> PatchSet:
    """Patch ``module.resume_contract`` of the Domino or DSpark providers module."""
    method = MODULES.get(module.__name__)
    if method is None:
        raise ValueError(f"{__name__} patches {sorted(MODULES)}, got {module.__name__}")
    patches = PatchSet(module.__name__)
    original = module.resume_contract
    if getattr(original, MARKER, False):
        return patches
    patches.set(module, "resume_contract", _make_contract(original, method))
    return patches
