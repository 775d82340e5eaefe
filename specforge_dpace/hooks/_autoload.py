"""Lazy post-import hook armed at interpreter start-up by ``specforge_dpace_autoload.pth``.

A meta-path finder watches a handful of SpecForge module names.  When one of them is first
imported, its loader runs as usual and then the matching patch is applied.  Arming it costs a
list insertion: no torch, no SpecForge, nothing imported until SpecForge itself is.  Failures
while patching are reported as warnings and never propagate into the importing program.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import threading
from typing import Any, Optional

#: module name -> hook target name (see ``specforge_dpace.hooks.TARGETS``)
WATCHED = {
    "specforge.algorithms.common.dflash_family_model": "unified-model",
    "specforge.config.schema": "unified-schema",
    "specforge.algorithms.model_providers": "unified-providers",
    "specforge.application.composition": "unified-composition",
    "specforge.algorithms.domino.providers": "unified-domino-providers",
    "specforge.algorithms.dspark.providers": "unified-dspark-providers",
    "specforge.algorithms.dflash.providers": "unified-dflash-providers",
    "specforge.training.controller": "unified-evaluation",
    "specforge.training.trainer": "unified-trainer",
    "specforge.training.checkpoint": "unified-checkpoint",
    "specforge.core.dflash": "legacy-model",
}
ENV_VAR = "SPECFORGE_DPACE_AUTOLOAD"


#: ``SPECFORGE_DPACE_AUTOLOAD`` values (case-insensitive, surrounding blanks ignored); unset or empty is on.
ON_VALUES = ("1", "true", "yes", "on")
OFF_VALUES = ("0", "false", "no", "off")
ACCEPTED = f"{'/'.join(ON_VALUES)} or unset/empty to switch it on, {'/'.join(OFF_VALUES)} to switch it off"

_warned = False


def switch() -> tuple[bool, Optional[str]]:
    """``(enabled, problem)`` for the current ``SPECFORGE_DPACE_AUTOLOAD``; never warns.

    ``problem`` describes a value that is neither on nor off.  Such a value keeps the default
    (on), which is also what the ``.pth`` bootstrap does: it only skips arming for the off values.
    """
    raw = os.environ.get(ENV_VAR)
    value = "" if raw is None else raw.strip().lower()
    if value in OFF_VALUES:
        return False, None
    if value == "" or value in ON_VALUES:
        return True, None
    return True, f"{ENV_VAR}={raw!r} is neither on nor off; accepted: {ACCEPTED}; keeping the default: on"


def enabled() -> bool:
    """Whether the autoload is switched on; an unrecognised value warns once per process and counts as on."""
    global _warned
    on, problem = switch()
    if problem and not _warned:
        _warned = True
        _warn_once(f"specforge-dpace: {problem}")
    return on


def _warn_once(message: str) -> None:
    """A ``RuntimeWarning`` on stderr; runs inside the ``.pth`` of every process, so it can never raise
    (``-W error`` turns warnings into exceptions: then the message is written to stderr directly)."""
    try:
        import warnings

        warnings.warn(message, RuntimeWarning, stacklevel=3)
    except Exception:
        try:
            sys.stderr.write(f"RuntimeWarning: {message}\n")
        except Exception:
            pass


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, loader: Any, target: str) -> None:
        self._loader = loader
        self._target = target

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        _after_import(self._target, module)

    def __getattr__(self, name: str) -> Any:  # get_source, get_code, is_package, ...
        return getattr(self._loader, name)


class SpecForgeImportHook(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps the real loader of watched modules."""

    def __init__(self) -> None:
        self._busy = threading.local()

    def find_spec(self, fullname: str, path: Optional[Any] = None, target: Any = None):
        hook_target = WATCHED.get(fullname)
        if hook_target is None or getattr(self._busy, "active", False):
            return None
        self._busy.active = True
        try:
            spec = importlib.machinery.PathFinder.find_spec(fullname, path)
            if spec is None:
                for finder in sys.meta_path:
                    if finder is self or not hasattr(finder, "find_spec"):
                        continue
                    spec = finder.find_spec(fullname, path, target)
                    if spec is not None:
                        break
        finally:
            self._busy.active = False
        if spec is None or spec.loader is None:
            return None
        spec.loader = _PatchingLoader(spec.loader, hook_target)
        return spec


def _after_import(target: str, module: Any) -> None:
    try:
        from . import apply_target

        apply_target(target, module)
    except Exception as exc:  # never break the program that imported SpecForge
        import warnings

        warnings.warn(
            f"specforge-dpace: could not patch {module.__name__} ({type(exc).__name__}: {exc}); "
            "SpecForge runs unpatched. Set SPECFORGE_DPACE_AUTOLOAD=0 to silence this.",
            RuntimeWarning,
            stacklevel=2,
        )


_hook: Optional[SpecForgeImportHook] = None


def arm() -> bool:
    """Insert the finder (once); patch watched modules that are already imported."""
    global _hook
    if not enabled():
        return False
    if _hook is None:
        _hook = SpecForgeImportHook()
        sys.meta_path.insert(0, _hook)
        for name, target in WATCHED.items():
            module = sys.modules.get(name)
            if module is not None:
                _after_import(target, module)
    return True


def disarm() -> None:
    global _hook
    if _hook is not None and _hook in sys.meta_path:
        sys.meta_path.remove(_hook)
    _hook = None


def armed() -> bool:
    return _hook is not None and _hook in sys.meta_path
