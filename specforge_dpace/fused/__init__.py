"""Fused objective path: the objective's gradient w.r.t. the drafter's hidden states in the forward pass.

Pure PyTorch, no SpecForge import.  ``fused_objective_terms`` replaces SpecForge's checkpointed
``lm_head -> cross-entropy -> objective`` chunk reduction for any objective with an analytic
per-slot gradient (``slot_grad``); others fall back to the plain autograd path.  On CUDA tensors the
element-wise work runs in Triton kernels (:mod:`.kernels`, docs/gpu-kernels.md; ``kernel_mode`` switches).
"""

from ._autograd import ScaledSlotGrad, attach_gradient
from ._path import FusedTerms, fused_objective_terms, supports_fused
from ._subchunk import LOGITS_BUDGET_BYTES, MIN_TOKENS, SOFT_MIN_TOKENS, auto_sub_chunk_tokens, blocks_per_sub_chunk
from .kernels import kernel_mode, kernels_for

__all__ = [
    "LOGITS_BUDGET_BYTES",
    "MIN_TOKENS",
    "SOFT_MIN_TOKENS",
    "FusedTerms",
    "ScaledSlotGrad",
    "attach_gradient",
    "auto_sub_chunk_tokens",
    "blocks_per_sub_chunk",
    "fused_objective_terms",
    "kernel_mode",
    "kernels_for",
    "supports_fused",
]
