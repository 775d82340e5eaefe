"""Triton kernels for the objective paths, and when they run (:mod:`._switch`).

Importing this package does not import Triton: :func:`kernels_for` decides per tensor (CUDA tensors, Triton
importable, or ``SPECFORGE_DPACE_KERNELS=force``) and only then are :mod:`._launch` and :mod:`._triton` loaded.
"""

from ._plain import slot_stats
from ._switch import ENV, MODES, check_labels, current_mode, kernel_mode, kernels_for, launcher, log_once, triton_error

__all__ = [
    "ENV",
    "MODES",
    "check_labels",
    "current_mode",
    "kernel_mode",
    "kernels_for",
    "launcher",
    "log_once",
    "slot_stats",
    "triton_error",
]
