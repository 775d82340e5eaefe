"""Tiny real models built from configs (no download): a Qwen3 target and a SpecForge DFlash-family
draft (``DFlashDraftModel``, ``DominoDraftModel`` or ``DSparkDraftModel``).

Used by the evaluator's tests, the demo and the benchmark's ``--backend hf`` tests.
"""

from __future__ import annotations

from typing import Optional, Sequence


def tiny_target(
    vocab_size: int = 64,
    hidden_size: int = 32,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 2,
    num_key_value_heads: int = 1,
    head_dim: int = 16,
    max_position_embeddings: int = 1024,
    seed: int = 0,
    dtype=None,
    **config_overrides,
):
    """A randomly initialised ``Qwen3ForCausalLM`` (sdpa attention, eval mode, untied head)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        head_dim=head_dim,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        **config_overrides,
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)
    if dtype is not None:
        model = model.to(dtype=dtype)
    return model.eval()


def tiny_draft(
    target,
    num_hidden_layers: int = 1,
    block_size: int = 4,
    target_layer_ids: Optional[Sequence[int]] = None,
    mask_token_id: Optional[int] = None,
    seed: int = 1,
    method: str = "dflash",
    head: Optional[dict] = None,
    **config_overrides,
):
    """A randomly initialised SpecForge ``DFlashDraftModel`` that fits ``target``
    (``method="domino"``: a ``DominoDraftModel``; ``"dspark"``: a ``DSparkDraftModel``).

    Shapes (hidden size, heads, head_dim, vocabulary) copy the target; ``target_layer_ids``
    default to the first and the last layer SGLang can capture (ids ``0`` and ``n - 2`` of an
    ``n``-layer target; just ``[0]`` for 2 layers); ``mask_token_id`` defaults to the last
    vocabulary id.  ``config_overrides`` go to the draft's ``Qwen3Config`` (``attention_bias=True``, say).
    ``head``: the method's ``dflash_config`` head fields, over the defaults (Domino: ``emb_dim`` and
    ``gru_hidden_dim`` = the hidden size; DSpark: a rank-16 vanilla Markov head and a confidence head).
    """
    import torch
    from specforge.modeling.draft.dflash import DFlashDraftModel
    from specforge.modeling.draft.domino import DominoDraftModel
    from specforge.modeling.draft.dspark import DSparkDraftModel
    from transformers import Qwen3Config

    from specforge_dpace.serving import ARCHITECTURES

    classes = {"dflash": DFlashDraftModel, "domino": DominoDraftModel, "dspark": DSparkDraftModel}
    if method not in classes:
        raise ValueError(f"method={method!r} is invalid; accepted: {sorted(classes)}")

    tc = target.config.get_text_config() if hasattr(target.config, "get_text_config") else target.config
    n_target = tc.num_hidden_layers
    if target_layer_ids is None:
        target_layer_ids = [0] if n_target <= 2 else [0, n_target - 2]  # SGLang never captures layer n - 1
    config = Qwen3Config(
        vocab_size=tc.vocab_size,
        hidden_size=tc.hidden_size,
        intermediate_size=tc.intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=tc.num_attention_heads,
        num_key_value_heads=tc.num_key_value_heads,
        head_dim=getattr(tc, "head_dim", tc.hidden_size // tc.num_attention_heads),
        max_position_embeddings=tc.max_position_embeddings,
        rms_norm_eps=tc.rms_norm_eps,
        tie_word_embeddings=False,
        **config_overrides,
    )
    config.architectures = [ARCHITECTURES[method]]
    config.block_size = int(block_size)
    config.num_target_layers = n_target
    defaults = {
        "dflash": {},
        "domino": {"emb_dim": tc.hidden_size, "gru_hidden_dim": tc.hidden_size},
        "dspark": {"markov_rank": 16, "markov_head_type": "vanilla", "enable_confidence_head": True},
    }[method]
    config.dflash_config = {
        "target_layer_ids": [int(i) for i in target_layer_ids],
        "mask_token_id": int(tc.vocab_size - 1 if mask_token_id is None else mask_token_id),
        **defaults,
        **(head or {}),
    }
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    draft = classes[method](config)
    draft = draft.to(dtype=next(target.parameters()).dtype)
    return draft.eval()
