"""Small shared helpers: determinism, progress bars."""

from __future__ import annotations

import os
import random


def seed_everything(seed: int, threads: int | None = None) -> None:
    """Seed python and torch, fix the thread count and ask torch for deterministic kernels,
    so that the same seed gives the same numbers on the same machine."""
    import torch

    random.seed(seed)
    torch.manual_seed(seed)
    if threads is not None:
        torch.set_num_threads(max(1, int(threads)))
    torch.use_deterministic_algorithms(True, warn_only=True)


def default_threads() -> int:
    """Threads for torch: ``SPECFORGE_DPACE_THREADS`` or 1 (one thread avoids oversubscription on shared or
    small machines); fixed per run so a rerun on the same machine reproduces the same floating-point reductions."""
    from .._numbers import THREADS

    value = os.environ.get("SPECFORGE_DPACE_THREADS")
    if value:
        try:
            return THREADS.check(int(value), "SPECFORGE_DPACE_THREADS")
        except ValueError:
            raise ValueError(f"SPECFORGE_DPACE_THREADS={value!r} is invalid; accepted: {THREADS.accepted()}") from None
    return 1


def progress(iterable=None, *, total=None, desc: str = "", enabled: bool = True, unit: str = "it"):
    """A tqdm bar (or the bare iterable when disabled)."""
    if not enabled:
        return iterable if iterable is not None else _NullBar()
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False)


class _NullBar:
    def update(self, n=1):
        pass

    def set_postfix(self, *args, **kwargs):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
