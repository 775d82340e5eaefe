"""Build the demo's tokenizer and tiny target from the stdlib corpus (what ``--retrain-target``
and ``scripts/build_demo_target.py`` run)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from ._util import seed_everything
from .corpus import load_corpus
from .target import (
    TargetConfig,
    build_target,
    heldout_loss,
    save_target,
    target_config_dict,
    token_stream,
    train_target,
)
from .tokenizer import encode_documents, save_tokenizer, special_ids, train_tokenizer


def build_target_assets(
    out_dir: Path | str,
    config: Optional[TargetConfig] = None,
    *,
    dtype: str = "float32",
    threads: int = 1,
    show_progress: bool = True,
    corpus_root: Optional[Path] = None,
) -> dict:
    """Train tokenizer + target and write both into ``out_dir``; returns the metadata written."""
    import platform
    import sys

    import torch

    config = config or TargetConfig()
    seed_everything(config.seed, threads)
    t0 = time.perf_counter()
    train_files = load_corpus(corpus_root, split="train", max_chars=config.corpus_chars)
    heldout_files = load_corpus(corpus_root, split="heldout")
    tokenizer = train_tokenizer([f.text for f in train_files], config.vocab_size)
    ids = special_ids(tokenizer)
    stream = token_stream(encode_documents(tokenizer, [f.text for f in train_files]), ids["eos"])
    held = token_stream(encode_documents(tokenizer, [f.text for f in heldout_files[:10]]), ids["eos"])
    model = build_target(config, eos_token_id=ids["eos"])
    log = train_target(model, stream, config, show_progress=show_progress)
    meta = {
        "config": target_config_dict(config),
        "special_token_ids": ids,
        "train_files": len(train_files),
        "train_tokens": int(stream.numel()),
        "final_train_loss": round(log["final_loss"], 4),
        "heldout_loss": round(heldout_loss(model, held, config.seq_len), 4),
        "train_s": round(log["train_s"], 1),
        "total_s": round(time.perf_counter() - t0, 1),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "threads": threads,
        "dtype": dtype,
    }
    out_dir = Path(out_dir)
    save_tokenizer(tokenizer, out_dir)
    save_target(model, out_dir, dtype=dtype, meta=meta)
    return meta
