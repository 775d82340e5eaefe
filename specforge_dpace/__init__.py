"""specforge-dpace: acceptance-aware objectives for SpecForge DFlash drafters.

The public API is re-exported here lazily (PEP 562), so ``import specforge_dpace`` -- which
the start-up ``.pth`` hook does in every process -- imports neither torch nor SpecForge.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    # objectives
    "available_losses": "specforge_dpace.losses",
    "block_loss": "specforge_dpace.losses",
    "build_loss": "specforge_dpace.losses",
    "register_loss": "specforge_dpace.losses",
    "loss_info": "specforge_dpace.losses",
    "parse_spec": "specforge_dpace.losses",
    "BlockObjective": "specforge_dpace.losses",
    "CompositeObjective": "specforge_dpace.losses",
    "Option": "specforge_dpace.losses",
    # SpecForge hooks
    "install": "specforge_dpace.hooks",
    "uninstall": "specforge_dpace.hooks",
    "is_installed": "specforge_dpace.hooks",
    "detect_layout": "specforge_dpace.hooks",
    # errors a run may stop with (docs/limits.md)
    "NonFiniteTraining": "specforge_dpace._finite",
    "OutputDirInUse": "specforge_dpace._outdir",
    # serving rules (one table entry per server version)
    "check_draft": "specforge_dpace.serving",
    "convert_draft": "specforge_dpace.serving",
    "register_server": "specforge_dpace.serving",
    "rules_for": "specforge_dpace.serving",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'specforge_dpace' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
