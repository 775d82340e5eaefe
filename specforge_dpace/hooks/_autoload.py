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
    "specforge.core.dflash": "legacy-model",
}
ENV_VAR = "SPECFORGE_DPACE_AUTOLOAD"


def enabled() -> bool:
    return os.environ.get(ENV_VAR, "1").strip().lower() not in ("0", "false", "no", "off")


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
