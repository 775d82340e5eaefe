"""Opt-in, reversible patches that plug the objective registry into SpecForge.

One small module per patched target (Liger-Kernel's lesson, without its monolith):

================================  ================================================  ============
target                            SpecForge module                                  layout
================================  ================================================  ============
``unified-model``                 ``specforge.algorithms.common.dflash_family_model``  unified
``unified-schema``                ``specforge.config.schema``                       unified
``unified-providers``             ``specforge.algorithms.model_providers``          unified
``unified-composition``           ``specforge.application.composition``             unified
``unified-domino-providers``      ``specforge.algorithms.domino.providers``         unified
``unified-dspark-providers``      ``specforge.algorithms.dspark.providers``         unified
``unified-dflash-providers``      ``specforge.algorithms.dflash.providers``         unified
``unified-evaluation``            ``specforge.training.controller``                 unified
``unified-trainer``               ``specforge.training.trainer``                    unified
``unified-checkpoint``            ``specforge.training.checkpoint``                 unified
``legacy-model``                  ``specforge.core.dflash``                         legacy
================================  ================================================  ============

``unified-model`` patches the three DFlash-family models of that module (``OnlineDFlashModel``,
``OnlineDominoModel``, ``OnlineDSparkModel``; see ``_family``).  The three ``*-providers`` targets of the
methods record the objective and the best-checkpoint metric in the resume contracts; ``unified-evaluation``,
``unified-trainer`` and ``unified-checkpoint`` add the walk predictors to SpecForge's evaluation and keep the
best checkpoint by ``training.best_metric`` (see ``_evaluation``).

``install()`` detects the layout by import and applies its targets; ``uninstall()`` restores
every patched attribute to the very object it was.  Installing twice is a no-op.  The
start-up hook (``_autoload``) applies each target when SpecForge imports its module.
This module imports nothing heavy at import time.
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass
from typing import Any, Optional

UNIFIED = "unified"
LEGACY = "legacy"


@dataclass(frozen=True)
class HookTarget:
    name: str
    module: str  # SpecForge module patched
    implementation: str  # our module with apply(module) [-> PatchSet] and optionally revert(module)
    layout: str
    required: bool = True  # a missing module is an error for install() (else skipped)


TARGETS = (
    HookTarget("unified-model", "specforge.algorithms.common.dflash_family_model", f"{__name__}._family", UNIFIED),
    HookTarget("unified-schema", "specforge.config.schema", f"{__name__}._schema", UNIFIED, required=False),
    HookTarget(
        "unified-providers", "specforge.algorithms.model_providers", f"{__name__}._providers", UNIFIED, required=False
    ),
    HookTarget(
        "unified-composition",
        "specforge.application.composition",
        f"{__name__}._composition",
        UNIFIED,
        required=False,
    ),
    HookTarget(
        "unified-domino-providers",
        "specforge.algorithms.domino.providers",
        f"{__name__}._method_providers",
        UNIFIED,
        required=False,
    ),
    HookTarget(
        "unified-dspark-providers",
        "specforge.algorithms.dspark.providers",
        f"{__name__}._method_providers",
        UNIFIED,
        required=False,
    ),
    HookTarget(
        "unified-dflash-providers",
        "specforge.algorithms.dflash.providers",
        f"{__name__}._method_providers",
        UNIFIED,
        required=False,
    ),
    HookTarget(
        "unified-evaluation", "specforge.training.controller", f"{__name__}._evaluation", UNIFIED, required=False
    ),
    HookTarget("unified-trainer", "specforge.training.trainer", f"{__name__}._evaluation", UNIFIED, required=False),
    HookTarget(
        "unified-checkpoint", "specforge.training.checkpoint", f"{__name__}._evaluation", UNIFIED, required=False
    ),
    HookTarget("legacy-model", "specforge.core.dflash", f"{__name__}._legacy", LEGACY),
)
_BY_NAME = {target.name: target for target in TARGETS}

_lock = threading.RLock()
_applied: dict[str, tuple[Any, Any]] = {}  # target name -> (patched module, PatchSet or None)


class LayoutError(RuntimeError):
    """No supported SpecForge layout was found; the message says what was found."""


def apply_target(name: str, module: Any) -> None:
    """Apply one target to an imported module (idempotent)."""
    target = _BY_NAME[name]
    with _lock:
        current = _applied.get(name)
        if current is not None and current[0] is module:
            return
        implementation = importlib.import_module(target.implementation)
        record = implementation.apply(module)
        _applied[name] = (module, record)


def _import_target(target: HookTarget) -> tuple[Optional[Any], Optional[BaseException]]:
    try:
        return importlib.import_module(target.module), None
    except ImportError as exc:
        return None, exc


def detect_layout() -> str:
    """``"unified"`` or ``"legacy"``, found by importing SpecForge's modules (never by version)."""
    errors = []
    for layout in (UNIFIED, LEGACY):
        primary = next(t for t in TARGETS if t.layout == layout and t.required)
        module, error = _import_target(primary)
        if module is not None and hasattr(module, "OnlineDFlashModel"):
            return layout
        errors.append(f"{primary.module}: {error if error is not None else 'no OnlineDFlashModel'}")
    raise LayoutError(_layout_message(errors))


def _layout_message(errors: list[str]) -> str:
    try:
        import specforge

        found = f"specforge at {getattr(specforge, '__file__', '?')} (version {getattr(specforge, '__version__', '?')})"
    except ImportError as exc:
        found = f"no importable specforge ({exc})"
    return (
        f"no supported SpecForge layout found: {found}. Tried: " + "; ".join(errors) + ". Supported: the unified "
        "runtime (specforge.algorithms.common.dflash_family_model.OnlineDFlashModel, PyPI specforge==0.2.0) and "
        "the legacy layout (specforge.core.dflash.OnlineDFlashModel, source checkouts 2026-01..2026-07)."
    )


def install(layout: Optional[str] = None) -> list[str]:
    """Patch the SpecForge layout in this environment; returns the names of the applied targets."""
    if layout not in (None, UNIFIED, LEGACY):
        raise ValueError(f"unknown layout {layout!r}; expected None (detect), {UNIFIED!r} or {LEGACY!r}")
    with _lock:
        layout = layout or detect_layout()
        applied = []
        for target in TARGETS:
            if target.layout != layout:
                continue
            module, error = _import_target(target)
            if module is None:
                if target.required:
                    raise LayoutError(_layout_message([f"{target.module}: {error}"]))
                continue
            apply_target(target.name, module)
            applied.append(target.name)
        return applied


def uninstall() -> list[str]:
    """Revert every applied target (in reverse order); returns their names."""
    with _lock:
        reverted = []
        for name in reversed(list(_applied)):
            module, record = _applied.pop(name)
            if record is not None and hasattr(record, "revert"):
                record.revert()
            else:
                implementation = importlib.import_module(_BY_NAME[name].implementation)
                implementation.revert(module)
            reverted.append(name)
        return reverted


def is_installed(target: Optional[str] = None) -> bool:
    """Whether any (or the named) target is currently applied."""
    with _lock:
        return bool(_applied) if target is None else target in _applied


def installed_targets() -> list[str]:
    with _lock:
        return list(_applied)


__all__ = [
    "LEGACY",
    "TARGETS",
    "UNIFIED",
    "HookTarget",
    "LayoutError",
    "apply_target",
    "detect_layout",
    "install",
    "installed_targets",
    "is_installed",
    "uninstall",
]
