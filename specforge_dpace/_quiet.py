"""``--no-progress`` reaches the libraries' own progress bars too (transformers' "Loading weights" bar)."""

from __future__ import annotations

import contextlib
from typing import Iterator


@contextlib.contextmanager
def library_progress(enabled: bool) -> Iterator[None]:
    """transformers' (and huggingface_hub's) progress bars off for the block unless ``enabled``; restored after."""
    if enabled:
        yield
        return
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a base dependency
        yield
        return
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
