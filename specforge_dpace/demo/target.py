"""The tiny Qwen3 target: config, training on the stdlib token stream, save and load.

Training samples random windows of the concatenated corpus (documents separated by
``<|endoftext|>``) with a seeded generator; AdamW with warm-up and cosine decay.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

from ._util import progress


@dataclass
class TargetConfig:
    """Shape and training budget of the tiny target."""

    vocab_size: int = 1024
    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 32
    intermediate_size: int = 384
    max_position_embeddings: int = 1024
    seq_len: int = 128
    batch_size: int = 16
    steps: int = 800
    lr: float = 3e-3
    warmup: int = 50
    weight_decay: float = 0.01
    seed: int = 0
    corpus_chars: int = 8_000_000


def build_target(config: TargetConfig, eos_token_id: Optional[int] = None):
    """A freshly initialised ``Qwen3ForCausalLM`` (sdpa attention, untied head)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    hf = Qwen3Config(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        head_dim=config.head_dim,
        max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id,
    )
    hf._attn_implementation = "sdpa"
    torch.manual_seed(config.seed)
    return Qwen3ForCausalLM(hf)


def token_stream(documents: Sequence[Sequence[int]], eos_token_id: int):
    """One long LongTensor: documents joined by the end-of-text token."""
    import torch

    flat: list[int] = []
    for doc in documents:
        flat.extend(doc)
        flat.append(eos_token_id)
    return torch.tensor(flat, dtype=torch.long)


def lr_at(step: int, config: TargetConfig) -> float:
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress_ = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress_))))


def train_target(model, stream, config: TargetConfig, *, show_progress: bool = True) -> dict:
    """Next-token training on random windows of ``stream``; returns a small log."""
    import torch

    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.95))
    model.train()
    n = stream.numel() - config.seq_len - 1
    if n <= 0:
        raise ValueError(f"corpus has {stream.numel()} tokens; need more than seq_len={config.seq_len}")
    losses, t0 = [], time.perf_counter()
    bar = progress(range(config.steps), desc="train target", enabled=show_progress, unit="step")
    for step in bar:
        starts = torch.randint(0, n, (config.batch_size,), generator=generator)
        batch = torch.stack([stream[s : s + config.seq_len + 1] for s in starts.tolist()])
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config)
        out = model(input_ids=batch[:, :-1], labels=batch[:, :-1].clone())
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(float(out.loss.detach()))
        if show_progress and step % 10 == 0:
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
    model.eval()
    return {
        "final_loss": sum(losses[-50:]) / len(losses[-50:]),
        "train_s": time.perf_counter() - t0,
        "steps": config.steps,
    }


def heldout_loss(model, stream, seq_len: int = 128, max_windows: int = 64) -> float:
    """Mean next-token loss on consecutive windows of a held-out stream."""
    import torch

    windows = [stream[i : i + seq_len] for i in range(0, stream.numel() - seq_len, seq_len)][:max_windows]
    if not windows:
        raise ValueError("held-out stream shorter than one window")
    batch = torch.stack(windows)
    with torch.no_grad():
        return float(model(input_ids=batch, labels=batch.clone()).loss)


def save_target(model, directory: Path | str, *, dtype: str = "float32", meta: Optional[dict] = None) -> Path:
    """``save_pretrained`` (safetensors) in ``dtype`` plus ``demo_target.json`` with ``meta``."""
    import torch

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(dtype)
    if torch_dtype is None:
        raise ValueError(f"dtype={dtype!r} is invalid; accepted: 'float32', 'bfloat16'")
    model.to(torch_dtype).save_pretrained(str(directory), safe_serialization=True)
    model.to(torch.float32)
    (directory / "demo_target.json").write_text(json.dumps(meta or {}, indent=2, sort_keys=True) + "\n")
    return directory


def load_target_dir(directory: Path | str):
    """The target saved in ``directory``, in fp32, eval mode, sdpa attention."""
    import torch
    from transformers import Qwen3ForCausalLM

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise ValueError(f"no target checkpoint (config.json) in {str(directory)!r}; pass --retrain-target")
    model = Qwen3ForCausalLM.from_pretrained(str(directory), dtype=torch.float32, attn_implementation="sdpa")
    return model.eval()


def target_config_dict(config: TargetConfig) -> dict:
    return asdict(config)
