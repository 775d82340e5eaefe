"""Offline acceptance evaluator: DFlash-family speculative decoding with an HF target and a SpecForge
``DFlashDraftModel``, ``DominoDraftModel`` or ``DSparkDraftModel`` (greedy, or speculative sampling with
the draft's proposals sampled or greedy), measuring tau without SGLang or a GPU; and the teacher-forced
per-anchor pass whose walk predicts it (``teacher_forced_pass``, ``teacher_forced_paths``).

Exports are resolved lazily so that ``specforge-dpace --help`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EvalConfig": "._evaluate",
    "evaluate_drafter": "._evaluate",
    "evaluate_paths": "._evaluate",
    "EvalResult": "._metrics",
    "save_draft_checkpoint": "._checkpoint",
    "load_draft": "._checkpoint",
    "load_target": "._checkpoint",
    "validate_pair": "._checkpoint",
    "load_prompts": "._prompts",
    "DFlashDecoder": "._speculative",
    "context_features": "._speculative",
    "greedy_reference": "._speculative",
    "autoregressive_reference": "._speculative",
    "verify_greedy": "._sampling",
    "verify_sampling": "._sampling",
    "verify_target_only": "._sampling",
    "propose_block": "._proposals",
    "model_method": "._proposals",
    "tiny_target": "._tiny",
    "teacher_forced_pass": "._teacher_forced",
    "teacher_forced_paths": "._offline_pass",
    "walk_sums": "._walk",
    "tiny_draft": "._tiny",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
