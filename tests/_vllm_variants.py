"""DFlash and DSpark checkpoint variants with vLLM 0.33's verdict on each, derived from its source.

The bases are real drafters written by the demo's saver (``save_draft_checkpoint``) for a real 4-layer tiny Qwen3
target (2 draft layers, ids [1, 2], block 4), converted by ``specforge-dpace convert --server vllm-0.33.0`` into
the three layouts vLLM loads: ``zlab`` (DFlash), ``speculators`` (DFlash) and ``dspark``.  Each row edits a copy.

``verdict``: ``ok`` = vLLM 0.33 serves it as trained; ``error`` = it refuses it or serves it wrong.  ``needle``
must appear in the error (or, for ``ok`` rows, in the notes).  ``vllm_raises``: whether vLLM itself raises on the
row (its config code, constructor or loader) -- ``False`` on an ``error`` row means vLLM would serve it silently
wrong.  Paths are relative to ``vllm/`` in the 0.33.0 wheel.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from tests._method_variants import _drop_weights as _drop
from tests._method_variants import _put

TARGET = {"hidden_size": 32, "vocab_size": 64, "num_hidden_layers": 4}
LAYOUTS = {"zlab": "dflash", "speculators": "dflash", "dspark": "dspark"}


@dataclass
class VllmVariant:
    name: str
    base: str  # "zlab" | "speculators" | "dspark"
    verdict: str
    needle: str
    vllm_raises: Optional[bool]
    edit: Callable = lambda state, config: None


def build_vllm_bases(root: Path) -> dict:
    """``{layout: (state, config)}``: demo-saved DFlash / DSpark drafters converted to vLLM 0.33's layouts,
    plus ``("source", method)`` -> the saved directory."""
    from safetensors.torch import load_file

    from specforge_dpace import serving
    from specforge_dpace.evaluate import save_draft_checkpoint, tiny_draft, tiny_target

    target = tiny_target(vocab_size=64, hidden_size=32, num_hidden_layers=4, seed=0)
    sources = {}
    for method in ("dflash", "dspark"):
        draft = tiny_draft(target, num_hidden_layers=2, block_size=4, target_layer_ids=[1, 2], method=method)
        sources[method] = save_draft_checkpoint(draft, root / f"saved-{method}")
    bases: dict = {("source", m): p for m, p in sources.items()}
    for layout, method in LAYOUTS.items():
        out = root / f"vllm-{layout}"
        serving.convert_draft(sources[method], out, server="vllm-0.33.0", target=TARGET, layout=layout)
        bases[layout] = (load_file(str(out / "model.safetensors")), json.loads((out / "config.json").read_text()))
    return bases


def write_vllm_variant(root: Path, variant: VllmVariant, bases: dict) -> Path:
    from tests._servable_variants import write_edited

    return write_edited(root, variant.name, bases[variant.base], variant.edit)


# -- edits --------------------------------------------------------------------------------------------


def _d(config):
    return config.setdefault("dflash_config", {})


def _set(top=None, nested=None):
    def edit(state, config):
        config.update(top or {})
        _d(config).update(nested or {})

    return edit


def _pop(*keys, top=False):
    def edit(state, config):
        for key in keys:
            (config if top else _d(config)).pop(key, None)

    return edit


def _move_to_top(key):
    def edit(state, config):
        config[key] = _d(config).pop(key)

    return edit


def _rename(prefix, new_prefix):
    def edit(state, config):
        for name in [n for n in state if n.startswith(prefix)]:
            state[new_prefix + name[len(prefix) :]] = state.pop(name)

    return edit


def _both(*edits):
    def edit(state, config):
        for e in edits:
            e(state, config)

    return edit


VLLM_VARIANTS = [
    # -- DFlash, z-lab layout (registry.py:664, qwen3_dflash.py) -------------------------------------------------
    VllmVariant("zlab_good", "zlab", "ok", "", False),
    # registry.py:664: only DFlashDraftModel (DFlash-prefixed names, eagle.py:65-75) reaches qwen3_dflash.
    VllmVariant(
        "zlab_architecture",
        "zlab",
        "error",
        "architectures=['Qwen3ForCausalLM']",
        True,
        _set(top={"architectures": ["Qwen3ForCausalLM"]}),
    ),  # fmt: skip
    # v1/worker/gpu/spec_decode/dflash/speculator.py:83-88 "sample_from_anchor=True is not supported for DFlash".
    VllmVariant(
        "zlab_sample_from_anchor",
        "zlab",
        "error",
        "sample_from_anchor=true",
        True,
        _set(nested={"sample_from_anchor": True}),
    ),  # fmt: skip
    # qwen3_dflash.py:62-73: dflash_config.causal makes every draft layer causal; SpecForge trains bidirectional.
    VllmVariant("zlab_causal", "zlab", "error", "causal=true", False, _set(nested={"causal": True})),
    # v1/worker/gpu/spec_decode/utils.py:92-114: no mask id anywhere -> "Model config must specify ...".
    VllmVariant(
        "zlab_mask_missing",
        "zlab",
        "error",
        "mask_token_id is missing",
        True,
        _both(_pop("mask_token_id"), _pop("mask_token_id", top=True)),
    ),  # fmt: skip
    # utils.py:102: a top-level mask_token_id is read after dflash_config.
    VllmVariant("zlab_mask_top_level", "zlab", "ok", "", False, _move_to_top("mask_token_id")),
    # eagle3_utils.py:138-140: a top-level target_layer_ids is read after dflash_config (+1 aux semantics).
    VllmVariant("zlab_ids_top_level", "zlab", "ok", "", False, _move_to_top("target_layer_ids")),
    # eagle3_utils.py:119-150 finds no ids: fc is sized for num_hidden_layers features (qwen3_dflash.py:84-93).
    VllmVariant("zlab_ids_missing", "zlab", "error", "target_layer_ids is missing", None, _pop("target_layer_ids")),
    # qwen2.py:433: id n - 1 is the last layer's output before the final norm, which no trainer captures.
    VllmVariant(
        "zlab_last_layer", "zlab", "error", "last decoder layer", False, _set(nested={"target_layer_ids": [1, 3]})
    ),
    # qwen2.py:427-434: features are concatenated in layer order, whatever the order of the ids.
    VllmVariant(
        "zlab_ids_unordered",
        "zlab",
        "error",
        "not in increasing order",
        False,
        _set(nested={"target_layer_ids": [2, 1]}),
    ),  # fmt: skip
    # qwen3_dflash.py:866-867 prepends model.; AutoWeightsLoader raises on model.model.* (utils.py:437-448).
    VllmVariant("zlab_model_prefix", "zlab", "error", "'model.' prefix", True, _rename("layers.", "model.layers.")),
    # utils.py:458: an unexpected .bias is ignored silently: the trained bias would be dropped.
    VllmVariant(
        "zlab_attention_bias",
        "zlab",
        "error",
        "attention biases with attention_bias: false",
        False,
        _put("layers.0.self_attn.q_proj.bias", 64),
    ),  # fmt: skip
    # AutoWeightsLoader raises on a name the DFlash model has no parameter for.
    VllmVariant(
        "zlab_markov_weight",
        "zlab",
        "error",
        "head weights in a DFlash checkpoint",
        True,
        _put("markov_head.markov_w1.weight", 64, 8),
    ),  # fmt: skip
    # load_weights returns None: a missing tensor is not detected (default_loader.py:511-523) and serves untrained.
    VllmVariant(
        "zlab_missing_weight",
        "zlab",
        "error",
        "layers.1.mlp.down_proj.weight",
        False,
        _drop("layers.1.mlp.down_proj."),
    ),  # fmt: skip
    # qwen3_dflash.py:390-402: encoder.fc / encoder.output_norm_enc are aliases of fc / hidden_norm.
    VllmVariant("zlab_encoder_alias", "zlab", "ok", "under its own names", False, _rename("fc.", "encoder.fc.")),
    # eagle3_utils.py:119: eagle_aux_hidden_state_layer_ids wins over dflash_config.target_layer_ids.
    VllmVariant(
        "zlab_eagle_aux_ids",
        "zlab",
        "error",
        "eagle_aux_hidden_state_layer_ids",
        False,
        _set(top={"eagle_aux_hidden_state_layer_ids": [1, 2]}),
    ),  # fmt: skip
    # utils.py:1178-1198: an embed_tokens tensor is loaded as the drafter's own embedding.
    VllmVariant("zlab_own_embedding", "zlab", "ok", "drafter's own", False, _put("embed_tokens.weight", 64, 32)),
    # -- DFlash, speculators layout (transformers_utils/configs/speculators/algos.py:91-126) -------------------
    VllmVariant("speculators_good", "speculators", "ok", "", False),
    # algos.py:114 config_dict["aux_hidden_state_layer_ids"]: a KeyError.
    VllmVariant(
        "speculators_aux_missing",
        "speculators",
        "error",
        "aux_hidden_state_layer_ids",
        True,
        _pop("aux_hidden_state_layer_ids", top=True),
    ),  # fmt: skip
    # algos.py:119 config_dict["mask_token_id"]: a KeyError.
    VllmVariant(
        "speculators_mask_missing",
        "speculators",
        "error",
        "mask_token_id is missing",
        True,
        _pop("mask_token_id", top=True),
    ),  # fmt: skip
    # algos.py:120 -> dflash/speculator.py:83-88 refuses sample_from_anchor for DFlash.
    VllmVariant(
        "speculators_sample_from_anchor",
        "speculators",
        "error",
        "sample_from_anchor=true",
        True,
        _set(top={"sample_from_anchor": True}),
    ),  # fmt: skip
    # algos.py:124-126: sliding_window_non_causal false makes the draft causal.
    VllmVariant(
        "speculators_causal",
        "speculators",
        "error",
        "causal=true",
        False,
        _set(top={"sliding_window_non_causal": False}),
    ),  # fmt: skip
    # base.py:56-58 "Must provide transformer_layer_config".
    VllmVariant(
        "speculators_no_layer_config",
        "speculators",
        "error",
        "transformer_layer_config=None",
        True,
        _pop("transformer_layer_config", top=True),
    ),  # fmt: skip
    # aux id 5 = target layer id 4 on a 4-layer target: never captured, a feature-size mismatch.
    VllmVariant(
        "speculators_aux_out_of_range",
        "speculators",
        "error",
        "out of range",
        True,
        _set(top={"aux_hidden_state_layer_ids": [2, 5]}),
    ),  # fmt: skip
    # -- DSpark (config/speculative.py:1534-1542, models/qwen3_dspark.py) ----------------------------------------
    VllmVariant("dspark_good", "dspark", "ok", "", False),
    # registry.py:681 names Qwen3DSparkModel directly.
    VllmVariant(
        "dspark_qwen3_architecture", "dspark", "ok", "", False, _set(top={"architectures": ["Qwen3DSparkModel"]})
    ),
    # speculative.py:1543-1565: a DSparkDraftModel of another model_type is taken for DeepSeek-V4's DSpark.
    VllmVariant("dspark_model_type", "dspark", "error", "model_type='llama'", None, _set(top={"model_type": "llama"})),
    # qwen3_dspark.py:212 config.markov_rank: an AttributeError when the top level lacks it.
    VllmVariant(
        "dspark_specforge_layout",
        "dspark",
        "error",
        "top-level markov_rank=None",
        True,
        _pop("markov_rank", "enable_confidence_head", "confidence_head_with_markov", "markov_head_type", top=True),
    ),  # fmt: skip
    # The constructor builds a rank-8 head; the checkpoint's rank-16 weights fail the loader's shape assert.
    VllmVariant("dspark_rank_mismatch", "dspark", "error", "keep them equal", True, _set(top={"markov_rank": 8})),
    # qwen3_dspark.py:48-80: only the vanilla head exists; a gated head's gate_proj.weight has no parameter.
    VllmVariant(
        "dspark_gated_head",
        "dspark",
        "error",
        "vanilla",
        True,
        _both(
            _set(top={"markov_head_type": "gated"}, nested={"markov_head_type": "gated"}),
            _put("markov_head.gate_proj.weight", 16, 48),
        ),
    ),  # fmt: skip
    # load_weights never checks that the Markov head was loaded: it would serve untrained.
    VllmVariant(
        "dspark_markov_weight_missing",
        "dspark",
        "error",
        "markov_head.markov_w2.weight",
        False,
        _drop("markov_head.markov_w2."),
    ),  # fmt: skip
    # qwen3_dspark.py:366-368: no confidence weights -> the head is dropped (decoding does not read it).
    VllmVariant("dspark_no_confidence", "dspark", "ok", "drops the head", False, _drop("confidence_head.")),
    # qwen3_dspark.py:220: no confidence head built -> its weights are skipped.
    VllmVariant(
        "dspark_confidence_disabled",
        "dspark",
        "ok",
        "skips them",
        False,
        _set(top={"enable_confidence_head": False}),
    ),  # fmt: skip
    # qwen3_dspark.py:220-224: with_markov widens the head to H + r = 48; the checkpoint's is 32 wide.
    VllmVariant(
        "dspark_confidence_with_markov",
        "dspark",
        "error",
        "expected [1, 48]",
        True,
        _set(top={"confidence_head_with_markov": True}, nested={"confidence_head_with_markov": True}),
    ),  # fmt: skip
    # dspark/speculator.py:46-55: sample_from_anchor false drafts a 1 + N fill-in block.
    VllmVariant(
        "dspark_not_from_anchor",
        "dspark",
        "error",
        "sample_from_anchor=False",
        False,
        _set(top={"sample_from_anchor": False}),
    ),  # fmt: skip
    # speculative.py:1596-1602: num_speculative_tokens defaults to the top-level block_size (gamma).
    VllmVariant(
        "dspark_block_size_missing",
        "dspark",
        "error",
        "block_size is missing",
        None,
        _both(_pop("block_size", top=True), _pop("block_size")),
    ),  # fmt: skip
]

VLLM_BY_NAME = {v.name: v for v in VLLM_VARIANTS}
