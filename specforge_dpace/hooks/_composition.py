"""Hook for ``specforge.application.composition``: soft-label objectives get the target's last hidden state.

``bind_run(cfg, algorithm)`` is SpecForge's one place where a config meets its algorithm
registration: ``resolve_run`` (``specforge train`` in the launcher and in every worker),
``resolve_offline_capture`` and ``build_application_run`` all go through it.  The patched
``bind_run`` swaps the DFlash registration for one that carries ``target_last_hidden_states``
(:func:`specforge_dpace.hooks._target_hidden.with_target_hidden`) when, and only when,
``training.strategy`` is ``dflash`` or ``domino`` (that strategy's own registration) and
``training.loss_type`` reads the target distribution, or the user asked for eval walks at T > 0 (DSpark's
registration carries the key already); for offline runs it also checks, before anything is launched, that the
feature files carry the key, for those runs and for every DSpark run (DSpark's own data path always reads it,
whatever the objective).  It also refuses plugin evaluation settings the run would ignore
(:func:`._eval_settings.check_eval_configured`).
Every other run gets SpecForge's registration object itself, so hard objectives and built-in names
run exactly as before.

``specforge.application`` re-exports ``bind_run``; when that package is already imported its
attribute is patched (and reverted) too, so ``from specforge.application import bind_run`` sees the
same function.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

from ._patching import PatchSet

TARGET_MODULE = "specforge.application.composition"
PACKAGE = "specforge.application"
MARKER = "__specforge_dpace_patched__"


def registration_for(cfg: Any, algorithm: Any) -> Any:
    """``algorithm`` itself, or its target-hidden variant when ``cfg``'s DFlash / Domino objective is soft-label."""
    from . import _target_hidden

    if algorithm.name not in _target_hidden.STRATEGIES or cfg.training.strategy != algorithm.name:
        return algorithm
    if _target_hidden.needs_target_hidden(cfg.training) is None:
        return algorithm
    return _target_hidden.with_target_hidden(algorithm)


def _make_bind_run(original: Any) -> Any:
    @functools.wraps(original)
    def bind_run(cfg, algorithm):
        from . import _target_hidden
        from ._eval_settings import check_eval_configured

        check_eval_configured(cfg)
        swapped = registration_for(cfg, algorithm)
        resolved = original(cfg, swapped)
        if cfg.mode == "offline":
            reason = _target_hidden.why_target_hidden(cfg.training, swapped)
            if reason is not None:
                _target_hidden.check_offline_features(cfg, *reason)
        return resolved

    setattr(bind_run, MARKER, True)
    return bind_run


class _BindRunPatch(PatchSet):
    """Also restores ``specforge.application.bind_run`` when the package picked up the patched function.

    The start-up hook patches ``composition`` while ``specforge.application`` is still importing it,
    before the package binds the name; the package then re-exports the patched function itself.
    """

    def __init__(self, label: str) -> None:
        super().__init__(label)
        self.original: Any = None
        self.patched: Any = None

    def revert(self) -> None:
        super().revert()
        package = sys.modules.get(PACKAGE)
        if self.patched is not None and package is not None and vars(package).get("bind_run") is self.patched:
            package.bind_run = self.original


def apply(module: Any) -> PatchSet:
    """Patch ``module.bind_run`` (and ``specforge.application.bind_run`` when it is the same object)."""
    patches = _BindRunPatch(TARGET_MODULE)
    original = module.bind_run
    if getattr(original, MARKER, False):
        return patches  # already patched
    patched = _make_bind_run(original)
    patches.original, patches.patched = original, patched
    patches.set(module, "bind_run", patched)
    package = sys.modules.get(PACKAGE)
    if package is not None and vars(package).get("bind_run") is original:
        patches.set(package, "bind_run", patched)
    return patches
