"""A tiny, fully local SpecForge offline setup: tokenizer, Qwen3 target, DFlash draft config, features.

Everything is built from configs and a synthetic, learnable corpus (no hub, no download), so
``specforge train`` can run end to end on a CPU in seconds.  The corpus is arithmetic walks over a
small word vocabulary (``w07 w10 w13 ...``): the next token follows from the previous two, so a
drafter's acceptance visibly improves within a few steps.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from typing import Any, Optional, Union

SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>", "<mask>", "<user>", "<assistant>")
# A minimal chat template so tools that format conversations find one; the synthetic records
# below are tokenized directly (prompt + response) and do not depend on it.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}<user> {% else %}<assistant> {% endif %}"
    "{{ message['content'] }} "
    "{% endfor %}"
    "{% if add_generation_prompt %}<assistant> {% endif %}"
)


@dataclass(frozen=True)
class TinySizes:
    """Model sizes of the tiny setup (defaults train at tens of ms per step on one CPU core)."""

    num_words: int = 48
    hidden_size: int = 64
    intermediate_size: int = 128
    target_layers: int = 4
    draft_layers: int = 1
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 16
    block_size: int = 4
    target_layer_ids: tuple = (1, 2)
    max_position_embeddings: int = 512


def word(index: int) -> str:
    return f"w{index:02d}"


def build_tokenizer(num_words: int = TinySizes.num_words):
    """A whitespace WordLevel tokenizer over ``w00..w{n-1}`` plus special tokens, as an HF fast tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    for index in range(num_words):
        vocab[word(index)] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="<eos>",
        mask_token="<mask>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def synthetic_pairs(count: int, *, num_words: int = TinySizes.num_words, length: int = 40, seed: int = 0):
    """``count`` (prompt, response) texts: arithmetic walks ``start, start+step, ...`` modulo ``num_words``."""
    if count < 1 or length < 4:
        raise ValueError(f"need count >= 1 and length >= 4, got count={count}, length={length}")
    rng = random.Random(seed)
    pairs = []
    for _ in range(count):
        start, step = rng.randrange(num_words), rng.randrange(1, 6)
        words = [word((start + i * step) % num_words) for i in range(length)]
        pairs.append((" ".join(words[:2]), " ".join(words[2:])))
    return pairs


def records_from_pairs(tokenizer: Any, pairs, *, max_length: Optional[int] = None) -> list[dict]:
    """Tokenize ``(prompt, response)`` pairs: ``<bos> <user> prompt <assistant> response <eos>``,
    supervising (loss_mask = 1) the response and the closing ``<eos>`` only."""
    records = []
    for prompt, response in pairs:
        head = tokenizer("<bos> <user> " + prompt + " <assistant>", add_special_tokens=False)["input_ids"]
        tail = tokenizer(response + " <eos>", add_special_tokens=False)["input_ids"]
        input_ids = list(head) + list(tail)
        loss_mask = [0] * len(head) + [1] * len(tail)
        if max_length is not None:
            input_ids, loss_mask = input_ids[:max_length], loss_mask[:max_length]
        records.append({"input_ids": input_ids, "loss_mask": loss_mask})
    return records


def build_target(tokenizer: Any, sizes: TinySizes = TinySizes(), *, seed: int = 0):
    """A randomly initialised tiny ``Qwen3ForCausalLM`` whose vocabulary matches ``tokenizer``."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=sizes.hidden_size,
        intermediate_size=sizes.intermediate_size,
        num_hidden_layers=sizes.target_layers,
        num_attention_heads=sizes.num_attention_heads,
        num_key_value_heads=sizes.num_key_value_heads,
        head_dim=sizes.head_dim,
        max_position_embeddings=sizes.max_position_embeddings,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return Qwen3ForCausalLM(config).eval()


def draft_config(target_config: Any, mask_token_id: int, sizes: TinySizes = TinySizes()) -> dict:
    """A ``DFlashDraftModel`` config.json payload matching the target (Qwen3-style text config)."""
    from specforge_dpace.serving import check_layer_ids

    check_layer_ids(list(sizes.target_layer_ids), sizes.target_layers)  # only ids SGLang can capture
    return {
        "architectures": ["DFlashDraftModel"],
        "model_type": "qwen3",
        "vocab_size": int(target_config.vocab_size),
        "hidden_size": sizes.hidden_size,
        "intermediate_size": sizes.intermediate_size,
        "num_hidden_layers": sizes.draft_layers,
        "num_attention_heads": sizes.num_attention_heads,
        "num_key_value_heads": sizes.num_key_value_heads,
        "head_dim": sizes.head_dim,
        "max_position_embeddings": sizes.max_position_embeddings,
        "rms_norm_eps": float(target_config.rms_norm_eps),
        "rope_theta": float(getattr(target_config, "rope_theta", None) or 1000000.0),
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "layer_types": ["full_attention"] * sizes.draft_layers,
        "use_sliding_window": False,
        "sliding_window": None,
        "block_size": sizes.block_size,
        "num_target_layers": sizes.target_layers,
        "dflash_config": {"target_layer_ids": list(sizes.target_layer_ids), "mask_token_id": int(mask_token_id)},
    }


def make_tiny_offline_setup(
    out_dir: Union[str, os.PathLike],
    *,
    num_samples: int = 16,
    sample_length: int = 40,
    sizes: TinySizes = TinySizes(),
    seed: int = 0,
    progress: bool = True,
    last_hidden: Optional[bool] = None,
    loss_type: Optional[str] = None,
) -> dict:
    """Build ``out_dir/{target, draft/config.json, features/}``; returns their paths.

    ``target`` is a ``save_pretrained`` directory (weights + tokenizer); ``features`` holds one
    ``specforge_hidden_states_v1`` file per sample, captured at ``sizes.target_layer_ids``.
    ``last_hidden`` also stores the target's last hidden state (``target_last_hidden_states``, read by
    soft-label objectives); ``None`` (default) turns it on exactly when ``loss_type`` (an objective spec)
    needs it.
    """
    from .capture import capture_offline_features

    if last_hidden is not None and not isinstance(last_hidden, bool):
        raise ValueError(f"last_hidden must be True, False or None (from loss_type), got {last_hidden!r}")
    if last_hidden is None:
        last_hidden = needs_last_hidden(loss_type)

    out_dir = os.path.abspath(os.fspath(out_dir))
    target_dir = os.path.join(out_dir, "target")
    draft_dir = os.path.join(out_dir, "draft")
    features_dir = os.path.join(out_dir, "features")
    tokenizer = build_tokenizer(sizes.num_words)
    target = build_target(tokenizer, sizes, seed=seed)
    target.save_pretrained(target_dir)
    tokenizer.save_pretrained(target_dir)
    os.makedirs(draft_dir, exist_ok=True)
    with open(os.path.join(draft_dir, "config.json"), "w", encoding="utf-8") as handle:
        json.dump(draft_config(target.config, tokenizer.mask_token_id, sizes), handle, indent=2)
    pairs = synthetic_pairs(num_samples, num_words=sizes.num_words, length=sample_length, seed=seed)
    records = records_from_pairs(tokenizer, pairs)
    files = capture_offline_features(
        target, records, features_dir, sizes.target_layer_ids, progress=progress, last_hidden=last_hidden
    )
    return {
        "root": out_dir,
        "target": target_dir,
        "draft_config": os.path.join(draft_dir, "config.json"),
        "features": features_dir,
        "num_files": len(files),
        "mask_token_id": int(tokenizer.mask_token_id),
        "last_hidden": last_hidden,
    }


def needs_last_hidden(loss_type: Optional[str]) -> bool:
    """Whether the objective spec ``loss_type`` reads the target distribution (``False`` for ``None``);
    an unknown name or a malformed spec raises the registry's error."""
    if loss_type is None:
        return False
    from specforge_dpace.losses import build_loss

    return bool(getattr(build_loss(loss_type), "needs_target", False))


__all__ = [
    "CHAT_TEMPLATE",
    "TinySizes",
    "build_target",
    "build_tokenizer",
    "draft_config",
    "make_tiny_offline_setup",
    "needs_last_hidden",
    "records_from_pairs",
    "synthetic_pairs",
]
