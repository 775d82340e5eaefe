"""Draft config layouts: the canonical one (SpecForge's: every head field in ``dflash_config``, what its
classes read) and the one each server loads (``MethodRules.write_config``), so that ``convert``, the
evaluator's saver and its loader move a drafter between them without loss (pure Python)."""

from __future__ import annotations

import copy
from typing import Any

from ._common import DraftSpec, get
from ._methods import ARCHITECTURES, DOMINO, DSPARK

# fields a server may hold at the top level that SpecForge's classes read from dflash_config
TOP_LEVEL_HEAD_FIELDS = {
    DOMINO: ("projector_type", "shift_label", "pure_draft_prefix_len", "emb_dim", "gru_hidden_dim"),
    DSPARK: ("markov_rank", "markov_head_type", "enable_confidence_head", "confidence_head_with_markov"),
}


def canonical_config(config: Any, method: str, spec: DraftSpec) -> dict:
    """``config`` (any layout) in SpecForge's layout, with the backbone values ``spec`` resolved.

    ``block_size`` / ``num_target_layers`` at the top level (SpecForge's ``DFlashDraftModel`` reads them
    there) and equal in ``dflash_config`` when present; ``target_layer_ids`` / ``mask_token_id`` in
    ``dflash_config``; the method's head fields copied into ``dflash_config`` from the top level where only a
    server's layout holds them.  vLLM's speculators layout is read as vLLM resolves it."""
    from ._vllm import is_speculators, speculators_view

    if is_speculators(config):
        config = speculators_view(config)[0]
        config.get("dflash_config", {}).pop("sample_from_anchor", None)
        config.get("dflash_config", {}).pop("causal", None)
    out = copy.deepcopy(dict(config) if not isinstance(config, dict) else config)
    out["architectures"] = [ARCHITECTURES[method]]
    out["block_size"] = spec.block_size
    out["num_target_layers"] = spec.num_target_layers
    dflash = dict(out.get("dflash_config") or {})
    dflash["target_layer_ids"] = list(spec.target_layer_ids)
    dflash["mask_token_id"] = spec.mask_token_id
    for key in ("block_size", "num_target_layers"):  # servers read dflash_config first: keep both places equal
        if key in dflash:
            dflash[key] = out[key]
    if "target_layer_ids" in out:
        out["target_layer_ids"] = list(spec.target_layer_ids)
    for key in TOP_LEVEL_HEAD_FIELDS.get(method, ()):
        if key not in dflash and get(out, key) is not None:
            dflash[key] = out[key]
    out["dflash_config"] = dflash
    return out


def model_config(draft_config: Any) -> dict:
    """The canonical config dict of a SpecForge draft model's HF config (what the saver starts from)."""
    config = draft_config.to_dict()
    config.pop("_attn_implementation_autoset", None)
    rope = config.get("rope_parameters") or {}
    if "rope_theta" in rope and "rope_theta" not in config:  # transformers 4.x (SGLang's pin) reads rope_theta
        config["rope_theta"] = rope["rope_theta"]
    return config
