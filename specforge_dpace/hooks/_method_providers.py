"""Hooks for ``specforge.algorithms.{dflash,domino,dspark}.providers``: resume contracts that record the
objective (Domino, DSpark) and the best-checkpoint metric (all three).

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

The best-checkpoint metric follows the same rule for every method: ``specforge_dpace_best_metric`` (the
metric, with the anchor stride a walk metric depends on) is recorded when ``training.best_metric`` names one,
or when the resumed checkpoint records it (then with SpecForge's default when the run names none), so a
resumed run keeps choosing its best checkpoint the way it started or is refused.

``builtin_algorithm_registry()`` builds the registrations afresh each time it is called, reading the
module's ``resume_contract`` then, so patching the module attribute reaches every later run.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from ._patching import PatchSet

MODULES = {
    "specforge.algorithms.dflash.providers": "dflash",
    "specforge.algorithms.domino.providers": "domino",
    "specforge.algorithms.dspark.providers": "dspark",
}
#: Methods whose contract gets the objective key here (DFlash records ``dflash_loss_type`` upstream).
OBJECTIVE_KEYS = ("domino", "dspark")
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


def best_metric_entry(config: Any, training_model: Any, resume_from: Any) -> dict:
    """``{CONTRACT_KEY: metric}`` when the run names ``training.best_metric`` or resumes a checkpoint that
    records one (then SpecForge refuses a different or dropped choice), else ``{}`` (SpecForge's contract)."""
    from ._eval_settings import CONTRACT_KEY, settings_of_training
    from ._providers import eval_settings_of

    settings = eval_settings_of(training_model) or settings_of_training(getattr(config, "training", None))
    if settings.best_metric is None and not checkpoint_records(resume_from, CONTRACT_KEY):
        return {}
    return {CONTRACT_KEY: settings.contract_value()}


def _make_contract(original: Any, method: str) -> Any:
    @functools.wraps(original)
    def resume_contract(config, draft_model, training_model):
        from ._family import plan_of

        contract = dict(original(config, draft_model, training_model))
        resume_from = getattr(getattr(config, "training", None), "resume_from", None)
        key = contract_key(method)
        if method in OBJECTIVE_KEYS and (plan_of(training_model) is not None or checkpoint_records(resume_from, key)):
            contract[key] = str(training_model.loss_type)  # the spec, or the method's own name
        contract.update(best_metric_entry(config, training_model, resume_from))
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
