"""Launchers of :mod:`._triton`: shapes, dtypes, tile sizes and flags, nothing else.

Every buffer is a 2-D ``[rows, V]`` view with unit column stride in the compute dtype (bf16, fp16, fp32 or
fp64); per-row outputs are fp32 (fp64 for fp64 buffers).  Tile sizes are fixed per kernel (no autotuning, so a
first call compiles once per dtype and flag set): on a GPU one row per program and up to
:data:`GPU_TILE` columns per tile; in Triton's interpreter (CPU tests) :data:`INTERPRETER_BLOCK`, since
there each tile operation costs a Python call.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Iterator, Optional, Sequence

import torch

from . import _triton as K
from ._triton import (  # noqa: F401  (the index constants, re-exported for the callers)
    BASIS,
    E_Y,
    KL,
    L_ONE,
    L_P,
    L_Q,
    LOG_ALPHA,
    NLQ,
    P0,
    P1,
    Q0,
    Q1,
    Q_ONE,
    RATIO,
    ROW_L_ONE,
    ROW_STATS,
    SLOT_WIDTH,
    STATS,
    W0,
    W1,
)

Tensor = torch.Tensor

#: Whether the kernels were built for Triton's interpreter (``TRITON_INTERPRET=1`` when first imported).
INTERPRETED = type(K.hard_rows_kernel).__name__ == "InterpretedFunction"
#: Elements per program on a GPU (one row of up to this many columns a tile, 16 warps: 8 elements a thread;
#: compiled for sm_90, 40-64 registers a thread, 126 for the widest direction variant, no spills).
GPU_TILE = 4096
#: ``(rows, columns)`` per program in the interpreter.
INTERPRETER_BLOCK = (64, 1024)
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_override: Optional[tuple[int, int]] = None


@contextlib.contextmanager
def block_sizes(rows: int, cols: int) -> Iterator[None]:
    """Tests: force ``(BLOCK_R, BLOCK_V)`` (powers of two), e.g. to walk a small vocabulary in several tiles."""
    global _override
    for name, value in (("rows", rows), ("cols", cols)):
        if value < 1 or value & (value - 1):
            raise ValueError(f"block_sizes: {name} must be a power of two, got {value!r}")
    previous, _override = _override, (rows, cols)
    try:
        yield
    finally:
        _override = previous


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _settings(n_cols: int) -> dict:
    if _override is not None:
        block_r, block_v = _override
    elif INTERPRETED:
        block_r, block_v = INTERPRETER_BLOCK[0], min(_next_power_of_two(n_cols), INTERPRETER_BLOCK[1])
    else:
        block_v = min(_next_power_of_two(n_cols), GPU_TILE)
        block_r = max(1, GPU_TILE // block_v)
    tile = block_r * block_v
    warps = 16 if tile >= 4096 else 8 if tile >= 2048 else 4
    return {"BLOCK_R": block_r, "BLOCK_V": block_v, "num_warps": warps}


def _check(name: str, tensor: Tensor) -> None:
    if tensor.dim() != 2 or tensor.stride(1) != 1:
        raise ValueError(f"{name} must be a 2-D [rows, V] view with unit column stride, got {tuple(tensor.shape)}")
    if tensor.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name}: the kernels take {SUPPORTED_DTYPES}, got {tensor.dtype}")


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@functools.lru_cache(maxsize=64)
def _inverse_temperatures(temperatures: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    values = [1.0 / t for t in temperatures] + [1.0] * (2 - len(temperatures))
    return torch.tensor(values, dtype=dtype, device=device)


@contextlib.contextmanager
def _launch_scope(tensor: Tensor) -> Iterator[None]:
    """The tensor's CUDA device as the current one; in the interpreter, numpy quiet about the -inf arithmetic
    of masked lanes (which never reaches a stored value)."""
    with contextlib.ExitStack() as stack:
        if tensor.device.type == "cuda":
            stack.enter_context(torch.cuda.device(tensor.device))
        if INTERPRETED:
            import numpy

            stack.enter_context(numpy.errstate(all="ignore"))
        yield


def _grid(n_rows: int, settings: dict) -> tuple[int]:
    return (-(-n_rows // settings["BLOCK_R"]),)


def hard_rows(logits: Tensor, labels: Tensor, nlq: Tensor, argmax: Tensor, write_grad: bool) -> None:
    """Per row of ``logits [R, V]``: ``nlq[R]`` (cross-entropy against ``labels``) and ``argmax[R]``; with
    ``write_grad`` the logits become ``softmax - onehot`` in place (in their own dtype)."""
    _check("logits", logits)
    rows, cols = logits.shape
    if rows == 0:
        return
    settings = _settings(cols)
    with _launch_scope(logits):
        K.hard_rows_kernel[_grid(rows, settings)](
            logits, logits.stride(0), labels, nlq, argmax, rows, cols,
            WRITE_GRAD=bool(write_grad), FP64=logits.dtype == torch.float64, **settings,
        )  # fmt: skip


def soft_stats(
    draft: Tensor,
    target: Tensor,
    temperature: float,
    *,
    labels: Optional[Tensor] = None,
    want_kl: bool = True,
    argmaxes: bool = True,
) -> tuple[Tensor, Optional[Tensor]]:
    """``(stats [STATS, R], ids [2, R] or None)`` of draft logits against target logits at one temperature
    (rows of ``stats``: :data:`._triton.L_ONE` ... :data:`._triton.NLQ`; KL and NLQ rows are NaN unless
    ``want_kl`` / ``labels``)."""
    _check("draft logits", draft)
    _check("target logits", target)
    rows, cols = draft.shape
    acc = accumulation_dtype(draft.dtype)
    stats = torch.empty(STATS, rows, dtype=acc, device=draft.device)
    if not want_kl or labels is None:
        stats[[KL, NLQ]] = float("nan")
    ids = torch.empty(2, rows, dtype=torch.long, device=draft.device) if argmaxes else None
    if rows == 0:
        return stats, ids
    settings = _settings(cols)
    inv_t = _inverse_temperatures((float(temperature),), acc, draft.device)
    with _launch_scope(draft):
        K.soft_stats_kernel[_grid(rows, settings)](
            draft, target, draft.stride(0), target.stride(0), labels if labels is not None else stats, inv_t,
            stats, stats.stride(0), ids if ids is not None else stats, 0 if ids is None else ids.stride(0),
            rows, cols, SCALED=float(temperature) != 1.0, WANT_KL=bool(want_kl), EXTRAS=ids is not None,
            LABELS=labels is not None, FP64=acc == torch.float64, **settings,
        )  # fmt: skip
    return stats, ids


def direction_row_stats(stats: Sequence[Tensor]) -> Tensor:
    """:func:`soft_directions`' ``row_stats [ROW_STATS, R]`` from :func:`soft_stats` results, one per
    temperature slot (the first one's log-sum-exp at T = 1 serves cross-entropy)."""
    out = torch.zeros(ROW_STATS, stats[0].shape[1], dtype=stats[0].dtype, device=stats[0].device)
    for slot, values in enumerate(stats):
        out[slot * SLOT_WIDTH : (slot + 1) * SLOT_WIDTH] = values[[L_Q, L_P, LOG_ALPHA]]
    out[ROW_L_ONE] = stats[0][L_ONE]
    return out


def soft_directions(
    draft: Tensor,
    target: Tensor,
    outputs: Sequence[Tensor],
    temperatures: Sequence[float],
    row_stats: Tensor,
    coef: Tensor,
    basis: frozenset,
    labels: Optional[Tensor] = None,
) -> None:
    """Write ``len(outputs)`` (1-3) gradient directions: ``outputs[k][r] = sum_j coef[k, j, r] * basis_j(r)``
    over the ``basis`` indices (:data:`._triton.Q0` ...) at one or two ``temperatures``; ``row_stats``
    ``[ROW_STATS, R]`` as :mod:`._triton` lays it out.  Outputs may be ``draft`` or ``target`` themselves."""
    _check("draft logits", draft)
    _check("target logits", target)
    for index, out in enumerate(outputs):
        _check(f"output {index}", out)
    if not 1 <= len(outputs) <= 3 or not 1 <= len(temperatures) <= 2:
        raise ValueError(f"1-3 outputs and 1-2 temperatures, got {len(outputs)} and {len(temperatures)}")
    rows, cols = draft.shape
    if coef.shape != (len(outputs), BASIS, rows) or row_stats.shape != (ROW_STATS, rows):
        raise ValueError(f"coefficients {tuple(coef.shape)} / row statistics {tuple(row_stats.shape)} do not fit")
    if E_Y in basis and labels is None:
        raise ValueError("the e_label basis vector needs labels")
    if rows == 0:
        return
    acc = accumulation_dtype(draft.dtype)
    coef, row_stats = coef.to(acc).contiguous(), row_stats.to(acc).contiguous()
    outs = list(outputs) + [outputs[0]] * (3 - len(outputs))
    settings = _settings(cols)
    inv_t = _inverse_temperatures(tuple(float(t) for t in temperatures), acc, draft.device)
    two = len(temperatures) == 2
    with _launch_scope(draft):
        K.soft_directions_kernel[_grid(rows, settings)](
            draft, target, draft.stride(0), target.stride(0), outs[0], outs[1], outs[2],
            outs[0].stride(0), outs[1].stride(0), outs[2].stride(0), labels if labels is not None else row_stats,
            inv_t, row_stats, row_stats.stride(0), coef, coef.stride(0), coef.stride(1), rows, cols,
            OUTPUTS=len(outputs), TWO=two, SCALED0=float(temperatures[0]) != 1.0,
            SCALED1=two and float(temperatures[1]) != 1.0, NEED_P0=bool({W0, P0} & basis),
            NEED_P1=bool({W1, P1} & basis), HAS_Q0=Q0 in basis, HAS_W0=W0 in basis, HAS_P0=P0 in basis,
            HAS_Q1=Q1 in basis, HAS_W1=W1 in basis, HAS_P1=P1 in basis, HAS_Q_ONE=Q_ONE in basis,
            HAS_E_Y=E_Y in basis, FP64=acc == torch.float64, **settings,
        )  # fmt: skip
