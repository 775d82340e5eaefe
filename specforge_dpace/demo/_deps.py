"""The demo's optional dependencies, checked before any work starts.

The ``demo`` extra brings them (``transformers``, ``safetensors``, ``tokenizers``, ``tqdm``,
``matplotlib``); SpecForge itself is installed separately with ``--no-deps``.  Each is imported
here (not only located), so a broken install is caught too, before minutes of training end in
an ``ImportError`` at the report.
"""

from __future__ import annotations

import importlib

DEMO_EXTRA = 'pip install -c constraints-cpu.txt "specforge-dpace[demo]"'
SPECFORGE = "pip install --no-deps specforge==0.2.0"

#: module -> what the demo needs it for (all from the ``demo`` extra)
EXTRA_MODULES = {
    "transformers": "the tiny Qwen3 target",
    "safetensors": "checkpoints",
    "tokenizers": "the BPE tokenizer",
    "matplotlib": "report.png",
}
PROGRESS_MODULES = {"tqdm": "progress bars"}
#: SpecForge's modules the drafters train and load through
SPECFORGE_MODULES = ("specforge.algorithms.common.dflash_family_model", "specforge.modeling.draft.dflash")


class MissingDependencies(ImportError):
    """Modules the demo needs are missing or fail to import; the message says what to install."""


def _problem(name: str) -> str | None:
    try:
        importlib.import_module(name)
    except ImportError as exc:
        missing = getattr(exc, "name", None)
        return "not installed" if missing and name.startswith(missing) else f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # a broken install: report it the same way, before any work
        return f"fails to import ({type(exc).__name__}: {exc})"
    return None


def missing_dependencies(show_progress: bool = True) -> dict[str, str]:
    """``{module: why it is needed + what went wrong}`` for every unusable dependency (empty: all fine)."""
    wanted = {**EXTRA_MODULES, **(PROGRESS_MODULES if show_progress else {})}
    found = {}
    for name, use in wanted.items():
        problem = _problem(name)
        if problem:
            found[name] = f"{use}; {problem}"
    if not any(name in found for name in ("transformers", "safetensors")):  # SpecForge needs both
        for name in SPECFORGE_MODULES:
            problem = _problem(name)
            if problem:
                found[name] = f"SpecForge's DFlash model; {problem}"
                break
    return found


def check_dependencies(show_progress: bool = True) -> None:
    """Raise :class:`MissingDependencies` naming each unusable module and the command that installs it."""
    found = missing_dependencies(show_progress)
    if not found:
        return
    listed = ", ".join(f"{name} ({why})" for name, why in found.items())
    fixes = []
    if any(not name.startswith("specforge") for name in found):
        fixes.append(f"the demo extra: {DEMO_EXTRA}")
    if any(name.startswith("specforge") for name in found):
        fixes.append(f"SpecForge: {SPECFORGE}")
    raise MissingDependencies(f"the demo needs {listed}. Install {' and '.join(fixes)}")
