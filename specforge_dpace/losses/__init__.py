"""Acceptance-aware DFlash block objectives as pure PyTorch (no SpecForge import here).

Every objective maps per-slot tensors ``[B, N, K]`` to additive ``(numerator, denominator)``
terms; see :mod:`specforge_dpace.losses._base` for the contract and ``DESIGN.md`` section 3
for the exact math.
"""

from ._api import block_loss
from ._base import BlockObjective, LossValue, Option
from ._composite import COMPOSITE_OPTIONS, CompositeObjective
from ._divergences import RenyiHalfLoss, TopKKLLoss
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
from ._soft import (
    KLLoss,
    LKLambdaLoss,
    SoftObjective,
    SoftSlots,
    TVLoss,
    pick_soft,
    soft_acceptance_terms,
    soft_slot_stats,
    stat_grads,
)
from ._spec import GRAMMAR, SpecError, Term, format_spec, parse_composite, parse_spec
from ._statistics import RowStats
from ._twin import LKAlphaLoss, SoftTwin, TargetLabels
from ._weighted import (
    DFlashLoss,
    DPaceContinuationValueLoss,
    DPaceCumulativeConfidenceLoss,
    DPaceLoss,
    decay_weights,
    dpace_weights,
)

#: Hard objectives: functions of the per-slot cross-entropy against the data token.
HARD_NAMES = (
    "dflash",
    "dpace",
    "dpace-cumulative-confidence-only",
    "dpace-continuation-value-only",
    "first-error-focal",
    "chain",
    "auf",
)
#: Soft-label objectives: read the target's distribution p at every slot. Every hard objective
#: also has a soft twin, spelled ``soft-<name>`` (``soft-<name>(divergence=renyi-half)``: on Renyi-1/2's
#: per-slot statistic), and a ``labels=target`` form trained on the target's argmax.
SOFT_NAMES = ("lk-alpha", "lk-lambda", "tv", "kl", "renyi-half", "topk-kl")
BUILTIN_NAMES = HARD_NAMES + SOFT_NAMES

__all__ = [
    "BUILTIN_NAMES",
    "COMPOSITE_OPTIONS",
    "RenyiHalfLoss",
    "RowStats",
    "TargetLabels",
    "TopKKLLoss",
    "parse_composite",
    "ENTRY_POINT_GROUP",
    "GRAMMAR",
    "HARD_NAMES",
    "SOFT_NAMES",
    "KLLoss",
    "LKAlphaLoss",
    "LKLambdaLoss",
    "SoftObjective",
    "SoftSlots",
    "SoftTwin",
    "TVLoss",
    "pick_soft",
    "soft_acceptance_terms",
    "soft_slot_stats",
    "stat_grads",
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
