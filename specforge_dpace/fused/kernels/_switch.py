"""When the objective paths run the Triton kernels instead of their PyTorch code.

The rule: on CUDA tensors whenever Triton imports (mode ``auto``, the default); never on other devices, so
a CPU keeps today's PyTorch path and nothing requires a GPU.  ``SPECFORGE_DPACE_KERNELS`` (or
:func:`kernel_mode` in code) sets the mode: ``auto``, ``off`` (PyTorch everywhere) or ``force`` (the kernels
on every tensor, CPU ones included: the tests' switch, which on a CPU needs Triton's interpreter, i.e.
``TRITON_INTERPRET=1`` in the environment before the kernels are first imported).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from typing import Iterator, Optional

import torch

Tensor = torch.Tensor
ENV = "SPECFORGE_DPACE_KERNELS"
MODES = ("auto", "off", "force")
logger = logging.getLogger("specforge_dpace")
_override: Optional[str] = None
_logged: set[str] = set()
_triton_error: Optional[str] = None
_checked = False


def _validated(mode: object, source: str) -> str:
    if mode not in MODES:
        raise ValueError(f"{source}: kernel mode must be one of {', '.join(MODES)}, got {mode!r}")
    return mode  # type: ignore[return-value]


def current_mode() -> str:
    """The mode in force: :func:`kernel_mode`'s, else ``$SPECFORGE_DPACE_KERNELS``, else ``auto``."""
    if _override is not None:
        return _override
    return _validated(os.environ.get(ENV, "auto").strip().lower(), ENV)


@contextlib.contextmanager
def kernel_mode(mode: str) -> Iterator[None]:
    """Run a block with the kernels in ``mode`` (``auto``, ``off`` or ``force``), whatever the environment says."""
    global _override
    previous, _override = _override, _validated(mode, "kernel_mode")
    try:
        yield
    finally:
        _override = previous


def log_once(key: str, message: str, *args: object) -> None:
    """One warning per ``key`` per process (fallbacks are logged, not repeated every step)."""
    if key not in _logged:
        _logged.add(key)
        logger.warning(message, *args)


def triton_error() -> Optional[str]:
    """Why the kernels cannot be imported (Triton missing or broken), or None when they can."""
    global _checked, _triton_error
    if not _checked:
        _checked = True
        try:
            importlib.import_module(__package__ + "._launch")
        except Exception as exc:  # ImportError, or a Triton build that fails on import
            _triton_error = f"{type(exc).__name__}: {exc}"
    return _triton_error


def launcher():
    """:mod:`._launch` (imports Triton); only after :func:`kernels_for` said yes."""
    return importlib.import_module(__package__ + "._launch")


def kernels_for(tensor: Tensor) -> bool:
    """Whether the element-wise work on ``tensor`` (logits or hidden states) runs the Triton kernels."""
    mode = current_mode()
    if mode == "off":
        return False
    cuda = tensor.device.type == "cuda"
    if not cuda and mode != "force":
        return False
    error = triton_error()
    if error is not None:
        if mode == "force":
            raise RuntimeError(f"{ENV}=force, but the Triton kernels cannot be imported ({error})")
        log_once("triton", "specforge-dpace: Triton kernels unavailable (%s); the loss paths run in PyTorch", error)
        return False
    launch = launcher()
    if tensor.dtype not in launch.SUPPORTED_DTYPES:
        return False
    if not cuda and not launch.INTERPRETED:
        raise RuntimeError(
            f"{ENV}=force on a {tensor.device.type} tensor needs Triton's interpreter: set TRITON_INTERPRET=1 "
            "before specforge_dpace's kernels are first imported (the kernels were built for a GPU)"
        )
    return True


def check_labels(labels: Tensor, vocab: int) -> None:
    """The kernels read ``logits[row, label]`` unchecked: refuse labels outside ``[0, V)`` first, as the
    PyTorch path's gather would."""
    if labels.numel() and bool(((labels < 0) | (labels >= vocab)).any()):
        bad = labels[(labels < 0) | (labels >= vocab)][:5].tolist()
        raise ValueError(f"labels must lie in [0, {vocab}) (the vocabulary), got e.g. {bad}")
