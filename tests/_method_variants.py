"""Domino and DSpark checkpoint variants with SGLang 0.5.23's verdict on each, derived from its source.

The bases are real SpecForge drafts for a real 4-layer tiny Qwen3 target (2 draft layers, ids [1, 2], block 4),
written by ``save_draft_checkpoint`` in the layout SGLang 0.5.23 loads: a Domino (``pure_draft_prefix_len`` 1,
``shift_label`` false, GRU / projection 32 wide) and a DSpark (vanilla Markov head of rank 16, a confidence head
fed the hidden state only).  Each row edits a copy of the config / tensors.

``verdict``: ``ok`` = SGLang 0.5.23 serves it as trained; ``error`` = it refuses it or serves it wrong.
``needle`` must appear in the error (or, for ``ok`` rows, in the notes).  ``sglang_raises``: whether SGLang's own
config parser, model constructor and ``load_weights`` raise on the row (``tests/serving/test_sglang_cpu.py``
runs them, opt-in): ``False`` on an ``error`` row means SGLang would serve it silently wrong; ``None`` = not
decided there (the model registry's resolution is checked separately).  ``options``: the check's options
(``ragged_verify_mode``, SGLANG_RAGGED_VERIFY_MODE).  Paths are relative to ``sglang/srt/``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

TARGET = {"hidden_size": 32, "vocab_size": 64, "num_hidden_layers": 4}


@dataclass
class MethodVariant:
    name: str
    method: str  # "domino" | "dspark"
    verdict: str
    needle: str
    sglang_raises: Optional[bool]
    edit: Callable = lambda state, config: None
    options: dict = field(default_factory=dict)


def build_method_bases(root: Path) -> dict:
    """``{"domino": (state, config), "dspark": (state, config)}`` from real saved SpecForge drafts."""
    from safetensors.torch import load_file

    from specforge_dpace.evaluate import save_draft_checkpoint, tiny_draft, tiny_target

    target = tiny_target(vocab_size=64, hidden_size=32, num_hidden_layers=4, seed=0)
    heads = {"domino": {"pure_draft_prefix_len": 1}, "dspark": None}
    bases = {}
    for method, head in heads.items():
        draft = tiny_draft(target, num_hidden_layers=2, block_size=4, target_layer_ids=[1, 2], method=method, head=head)
        directory = save_draft_checkpoint(draft, root / method)
        bases[method] = (
            load_file(str(directory / "model.safetensors")),
            json.loads((directory / "config.json").read_text()),
        )
    return bases


def write_method_variant(root: Path, variant: MethodVariant, bases: dict) -> Path:
    from tests._servable_variants import write_edited

    return write_edited(root, variant.name, bases[variant.method], variant.edit)


# -- edits --------------------------------------------------------------------------------------------


def _zeros(*shape):
    import torch

    return torch.zeros(*shape)


def _d(config):
    return config["dflash_config"]


def _pop(*keys, top=False):
    def edit(state, config):
        for key in keys:
            (config if top else _d(config)).pop(key, None)

    return edit


def _move_to_top(*keys):
    def edit(state, config):
        for key in keys:
            config[key] = _d(config).pop(key)

    return edit


def _set(top=None, nested=None):
    def edit(state, config):
        config.update(top or {})
        _d(config).update(nested or {})

    return edit


def _drop_weights(prefix):
    def edit(state, config):
        for name in [n for n in state if n.startswith(prefix)]:
            state.pop(name)

    return edit


def _rename_weights(prefix, new_prefix):
    def edit(state, config):
        for name in [n for n in state if n.startswith(prefix)]:
            state[new_prefix + name] = state.pop(name)

    return edit


def _put(name, *shape):
    def edit(state, config):
        state[name] = _zeros(*shape)

    return edit


def _architectures(*archs):
    def edit(state, config):
        config["architectures"] = list(archs)

    return edit


def _no_markov(state, config):
    for name in [n for n in state if n.startswith("markov_head.")]:
        state.pop(name)
    config["markov_rank"] = 0
    _d(config)["markov_rank"] = 0


CAP = {"ragged_verify_mode": "cap-accept"}

METHOD_VARIANTS = [
    # -- Domino: a DFLASH sub-mode (speculative/dflash_utils.py:727-791, models/dflash.py:777-804, 923-999) ------
    MethodVariant("domino_good", "domino", "ok", "", False),
    # SpecForge's export names its class; the registry has no DominoDraftModel and falls back to the Transformers
    # backend (models/registry.py _normalize_archs), never to DFLASH's Domino rollout.
    MethodVariant(
        "domino_specforge_architecture",
        "domino",
        "error",
        "must contain 'DFlashDraftModel'",
        None,
        _architectures("DominoDraftModel"),
    ),
    # dflash_utils.py:774-778 "DFLASH Domino requires dflash_config.shift_label to be a bool".
    MethodVariant(
        "domino_shift_label_missing", "domino", "error", "shift_label to be a bool", True, _pop("shift_label")
    ),
    # dflash_utils.py:735-737: shift_label from dflash_config, then the top level.
    MethodVariant("domino_shift_label_top_level", "domino", "ok", "", False, _move_to_top("shift_label")),
    # dflash_utils.py:779-783 "DFLASH Domino currently requires pure_draft_prefix_len=1".
    MethodVariant(
        "domino_prefix_len_0",
        "domino",
        "error",
        "pure_draft_prefix_len=0",
        True,
        _set(nested={"pure_draft_prefix_len": 0}),
    ),
    MethodVariant(
        "domino_prefix_len_missing",
        "domino",
        "error",
        "pure_draft_prefix_len=None",
        True,
        _pop("pure_draft_prefix_len"),
    ),
    # dflash_utils.py:746-752: gru_hidden_dim from dflash_config, then the top level.
    MethodVariant("domino_gru_dim_top_level", "domino", "ok", "", False, _move_to_top("gru_hidden_dim")),
    # dflash_utils.py:763-771 "DFLASH Domino emb_dim differs between dflash_config and the top-level config".
    MethodVariant("domino_emb_dim_disagree", "domino", "error", "differ", True, _set(top={"emb_dim": 16})),
    # dflash_utils.py:786-787 "DFLASH Domino requires dflash_config.emb_dim".
    MethodVariant("domino_emb_dim_missing", "domino", "error", "emb_dim is missing", True, _pop("emb_dim")),
    # models/dflash.py:987-999 "DFLASH Domino checkpoint is missing required projector weights".
    MethodVariant(
        "domino_projector_weight_missing",
        "domino",
        "error",
        "embed_proj.2.weight",
        True,
        _drop_weights("embed_proj.2."),
    ),
    # models/dflash.py:974-981 "DFLASH Domino projector weight shape mismatch".
    MethodVariant(
        "domino_projector_shape", "domino", "error", "has shape [32, 99]", True, _put("embed_proj.0.weight", 32, 99)
    ),
    # SGLang does not map SpecForge's early logit_head. names: the projector is then missing (raise).
    MethodVariant(
        "domino_legacy_head_names",
        "domino",
        "error",
        "early 'logit_head.' weight names",
        True,
        _rename_weights("prefix_gru.", "logit_head."),
    ),
    # models/dflash.py:905-918 resolve_param_name strips a model. prefix.
    MethodVariant(
        "domino_model_prefix", "domino", "ok", "'model.' prefix", False, _rename_weights("embed_proj.", "model.")
    ),
    # dflash_utils.py:727-729: projector_type from dflash_config, then the top level.
    MethodVariant("domino_projector_type_top_level", "domino", "ok", "", False, _move_to_top("projector_type")),
    # nn.GRU(bias=False) has no bias parameter: load_weights skips the name silently.
    MethodVariant(
        "domino_gru_bias", "domino", "error", "prefix_gru.bias_ih_l0", False, _put("prefix_gru.bias_ih_l0", 96)
    ),
    # dict.get: a present null ends the lookup; resolve_block_size(default=16) builds for 16 silently.
    MethodVariant("domino_block_size_null", "domino", "error", "null", False, _set(nested={"block_size": None})),
    # -- DSpark: its own algorithm (models/dspark.py, speculative/dspark_components/dspark_config.py) -------------
    MethodVariant("dspark_good", "dspark", "ok", "", False),
    MethodVariant("dspark_good_cap_accept", "dspark", "ok", "", False, options=CAP),
    # models/dspark.py:385-391 build_markov_head reads the top level: "DSpark requires markov_rank > 0".
    MethodVariant(
        "dspark_specforge_layout",
        "dspark",
        "error",
        "top-level markov_rank=None",
        True,
        _pop("markov_rank", "markov_head_type", "enable_confidence_head", "confidence_head_with_markov", top=True),
    ),
    # The constructor builds a rank-8 head; the checkpoint's rank-16 weights fail default_weight_loader's assert.
    MethodVariant("dspark_rank_mismatch", "dspark", "error", "keep them equal", True, _set(top={"markov_rank": 8})),
    # The constructor builds a gated head whose gate_proj no tensor loads (missing markov weights are not checked).
    MethodVariant(
        "dspark_head_type_top_gated",
        "dspark",
        "error",
        "keep them equal",
        False,
        _set(top={"markov_head_type": "gated"}),
    ),
    # dspark_config.py:265-269 "DSpark requires markov_head_type when markov_rank > 0".
    MethodVariant(
        "dspark_head_type_missing",
        "dspark",
        "error",
        "markov_head_type is missing",
        True,
        lambda s, c: (_pop("markov_head_type")(s, c), _pop("markov_head_type", top=True)(s, c)),
    ),
    # load_weights (models/dspark.py:646-657) never checks that the Markov head was loaded.
    MethodVariant(
        "dspark_markov_weight_missing",
        "dspark",
        "error",
        "markov_head.markov_w2.weight",
        False,
        _drop_weights("markov_head.markov_w2."),
    ),
    # logit_head.markov_head.* goes to the backbone loader, which skips it: the Markov head serves untrained.
    MethodVariant(
        "dspark_legacy_head_names",
        "dspark",
        "error",
        "early 'logit_head.' weight names",
        False,
        _rename_weights("markov_head.", "logit_head."),
    ),
    # models/dspark.py:487-489: no confidence head under SGLANG_RAGGED_VERIFY_MODE=static (the default).
    MethodVariant("dspark_no_confidence_static", "dspark", "ok", "", False, _drop_weights("confidence_head.")),
    # models/dspark.py:667-696 "DSpark confidence head is enabled but the checkpoint is missing ...".
    MethodVariant(
        "dspark_no_confidence_cap_accept",
        "dspark",
        "error",
        "confidence_head.proj.weight",
        True,
        _drop_weights("confidence_head."),
        CAP,
    ),
    # models/dspark.py:641 matches 'confidence_head.' on the raw name: a model.-prefixed one counts as missing.
    MethodVariant(
        "dspark_confidence_model_prefix_cap_accept",
        "dspark",
        "error",
        "by their exact name",
        True,
        _rename_weights("confidence_head.", "model."),
        CAP,
    ),
    # models/dspark.py:497: confidence_head_with_markov defaults to markov_rank > 0: a 48-wide head for the
    # checkpoint's 32-wide weights.
    MethodVariant(
        "dspark_confidence_width_default_cap_accept",
        "dspark",
        "error",
        "has shape [1, 32], expected [1, 48]",
        True,
        _pop("confidence_head_with_markov", top=True),
        CAP,
    ),
    # dspark_config.py:29-31: sample_from_anchor false drafts from the rows after the anchor.
    MethodVariant(
        "dspark_not_from_anchor",
        "dspark",
        "error",
        "sample_from_anchor=False",
        False,
        _set(top={"sample_from_anchor": False}),
    ),
    # dspark_config.py:277-293: mask_token_id from dspark_config / dflash_config, then the top level.
    MethodVariant("dspark_mask_top_level", "dspark", "ok", "", False, _move_to_top("mask_token_id")),
    # dspark_config.py:84-95 / models/dspark.py:525-529 "DSpark draft requires markov_rank > 0".
    MethodVariant("dspark_no_markov_head", "dspark", "error", "needs it > 0", True, _no_markov),
]

METHOD_BY_NAME = {v.name: v for v in METHOD_VARIANTS}
