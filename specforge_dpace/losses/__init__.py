"""Acceptance-aware DFlash block objectives as pure PyTorch (no SpecForge import here).

Every objective maps per-slot tensors ``[B, N, K]`` to additive ``(numerator, denominator)``
terms; see :mod:`specforge_dpace.losses._base` for the contract and ``DESIGN.md`` section 3
for the exact math.
"""

from ._api import block_loss
from ._base import BlockObjective, LossValue, Option
from ._composite import CompositeObjective
from ._metrics import acceptance_terms
from ._prefix import AcceptUntilFailLoss, ChainLoss, FirstErrorFocalLoss, accepted_support, first_valid_error
from ._registry import (
    ENTRY_POINT_GROUP,
    LossInfo,
    LossRegistry,
    available_losses,
    build_loss,
    default_registry,
    loss_info,
    register_loss,
)
from ._spec import GRAMMAR, SpecError, Term, format_spec, parse_spec
from ._weighted import (
    DFlashLoss,
    DPaceContinuationValueLoss,
    DPaceCumulativeConfidenceLoss,
    DPaceLoss,
    decay_weights,
    dpace_weights,
)

BUILTIN_NAMES = (
    "dflash",
    "dpace",
    "dpace-cumulative-confidence-only",
    "dpace-continuation-value-only",
    "first-error-focal",
    "chain",
    "auf",
)

__all__ = [
    "BUILTIN_NAMES",
    "ENTRY_POINT_GROUP",
    "GRAMMAR",
    "AcceptUntilFailLoss",
    "BlockObjective",
    "ChainLoss",
    "CompositeObjective",
    "DFlashLoss",
    "DPaceContinuationValueLoss",
    "DPaceCumulativeConfidenceLoss",
    "DPaceLoss",
    "FirstErrorFocalLoss",
    "LossInfo",
    "LossRegistry",
    "LossValue",
    "Option",
    "SpecError",
    "Term",
    "acceptance_terms",
    "accepted_support",
    "available_losses",
    "block_loss",
    "build_loss",
    "decay_weights",
    "default_registry",
    "dpace_weights",
    "first_valid_error",
    "format_spec",
    "loss_info",
    "parse_spec",
    "register_loss",
]
