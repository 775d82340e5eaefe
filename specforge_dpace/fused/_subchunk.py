"""How many tokens the fused path turns into logits at once.

The fused path never keeps ``[tokens, V]`` logits beyond one sub-chunk, so the sub-chunk size
sets its peak memory: one fp32 ``[tokens, V]`` buffer for hard objectives, up to
:data:`~._soft.SOFT_BUFFERS` (1.67: draft logits, half-height target logits, column-tile scratch)
for soft-label ones, which pass ``buffers`` so the byte budget covers all of them (and have their
own floor, :data:`SOFT_MIN_TOKENS`).  Sub-chunks hold whole blocks
(the objective's per-slot weights depend on every slot of a block), so sizes are multiples of
the block size.  Too small a sub-chunk starves the matrix product (the lm_head weight is
streamed once per sub-chunk), so there is a floor in tokens as well as a byte budget.
"""

from __future__ import annotations

from typing import Optional

#: fp32 bytes of one ``[tokens, V]`` logits buffer per sub-chunk, by device type.
LOGITS_BUDGET_BYTES = {"cpu": 64 * 2**20, "cuda": 1024 * 2**20}
_DEFAULT_BUDGET = 256 * 2**20
#: never fewer tokens than this per sub-chunk (keeps the matrix product efficient).
#: (on CPU, 2 threads, H=1024, V=151936: 63 GFLOP/s at 128 tokens, 84 at 512, 82 at 1024)
MIN_TOKENS = {"cpu": 512, "cuda": 1024}
_DEFAULT_MIN_TOKENS = 256
#: the soft-label path's floor: it runs about five times the hard path's element-wise passes, each with a
#: fixed cost on a CPU (thread wake-up), so fewer, larger sub-chunks pay off there; 2048 tokens is
#: SpecForge's default objective chunk (128 blocks of 16), of which the soft path holds about 1.6
#: [tokens, V] buffers where SpecForge's checkpointed chunk holds about 3.
#: (CPU, 2 threads, H=1024, V=32000, N=128: lk-alpha 1.13x upstream dflash at 512 tokens, 0.98x at 2048)
SOFT_MIN_TOKENS = {"cpu": 2048, "cuda": 1024}


def auto_sub_chunk_tokens(
    vocab_size: int, block_size: int, device_type: str = "cpu", buffers: float = 1.0, soft: bool = False
) -> int:
    """Default sub-chunk size in tokens for a vocabulary: a byte budget over ``buffers`` fp32
    ``[tokens, V]`` buffers, floored (:data:`SOFT_MIN_TOKENS` for the soft path), whole blocks."""
    _check_positive("vocab_size", vocab_size)
    _check_positive("block_size", block_size)
    budget = LOGITS_BUDGET_BYTES.get(device_type, _DEFAULT_BUDGET)
    floor = (SOFT_MIN_TOKENS if soft else MIN_TOKENS).get(device_type, _DEFAULT_MIN_TOKENS)
    tokens = max(int(budget // (4 * vocab_size * buffers)), floor)
    return max(block_size, tokens - tokens % block_size)


def blocks_per_sub_chunk(
    vocab_size: int,
    block_size: int,
    sub_chunk_tokens: Optional[int] = None,
    device_type: str = "cpu",
    buffers: float = 1.0,
    soft: bool = False,
) -> int:
    """Whole blocks per sub-chunk: the override (rounded down to whole blocks, at least one) or the default."""
    if sub_chunk_tokens is None:
        return auto_sub_chunk_tokens(vocab_size, block_size, device_type, buffers, soft) // block_size
    if isinstance(sub_chunk_tokens, bool) or not isinstance(sub_chunk_tokens, int) or sub_chunk_tokens < 1:
        raise ValueError(
            f"sub_chunk_tokens must be a positive int (tokens per fused sub-chunk, rounded down to whole "
            f"blocks of {block_size}) or None for the automatic size, got {sub_chunk_tokens!r}"
        )
    return max(1, sub_chunk_tokens // block_size)


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
