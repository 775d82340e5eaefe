"""DFlash checkpoint variants with SGLang 0.5.14's and 0.5.23's verdict on each, derived from their source.

One table, used by the serving rules' tests (``tests/serving/test_rules.py``), the bench validator's
(``tests/bench/test_validate.py``) and the evaluator loader's (``tests/evaluate/test_eval_checkpoint.py``):
they must agree with SGLang on every row and version.  ``verdict`` / ``needle`` are 0.5.14's; ``v23`` /
``v23_needle`` give 0.5.23's where it differs.  The base is a real SpecForge ``DFlashDraftModel`` (2 layers,
ids [1, 2]) for a real 4-layer tiny Qwen3 target, written by ``save_draft_checkpoint``; each row edits a copy
of its config / tensors and is written as a real safetensors directory.

Verdicts: ``ok`` = SGLang serves it as trained; ``error`` = SGLang refuses it or serves it wrong
(untrained or dropped tensors, features it cannot capture).  ``needle`` must appear in the error
(or, for ``ok`` rows, in the notes).  The SGLang paths are relative to ``sglang/srt/``.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

TARGET = {"hidden_size": 32, "vocab_size": 64, "num_hidden_layers": 4}
LAYER_IDS = [1, 2]
ATTN = ("q", "k", "v", "o")


@dataclass
class Variant:
    name: str
    verdict: str  # "ok" | "error"
    needle: str
    edit: Callable = lambda state, config: None
    target: dict = field(default_factory=dict)  # changes to TARGET for this row
    base: str = "plain"  # "plain" | "bias" (attention_bias: true, biases trained)
    v23: Optional[str] = None  # SGLang 0.5.23's verdict where it differs from 0.5.14's
    v23_needle: Optional[str] = None

    def target_config(self) -> dict:
        return {**TARGET, **self.target}

    def verdict_for(self, version: str) -> str:
        return self.v23 if version == "0.5.23" and self.v23 is not None else self.verdict

    def needle_for(self, version: str) -> str:
        return self.v23_needle if version == "0.5.23" and self.v23_needle is not None else self.needle


def build_bases(root: Path) -> dict:
    """``{"plain": (state, config), "bias": (state, config)}`` from real saved SpecForge drafts."""
    from safetensors.torch import load_file

    from specforge_dpace.evaluate import save_draft_checkpoint, tiny_draft, tiny_target

    target = tiny_target(vocab_size=64, hidden_size=32, num_hidden_layers=4, seed=0)
    bases = {}
    for name, overrides in (("plain", {}), ("bias", {"attention_bias": True})):
        draft = tiny_draft(target, num_hidden_layers=2, block_size=4, target_layer_ids=LAYER_IDS, seed=1, **overrides)
        directory = save_draft_checkpoint(draft, root / name)
        config = json.loads((directory / "config.json").read_text())
        bases[name] = (load_file(str(directory / "model.safetensors")), config)
    return bases


def write_edited(root: Path, name: str, base: tuple, edit: Callable) -> Path:
    """A copy of ``base`` = (state, config), edited by ``edit(state, config)``, as a draft directory
    (config.json + model.safetensors) ``root / name``."""
    from safetensors.torch import save_file

    state, config = base
    state = {k: v.clone() for k, v in state.items()}
    config = copy.deepcopy(config)
    edit(state, config)
    path = root / name
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(config, indent=2))
    return path


def write_variant(root: Path, variant: Variant, bases: dict) -> Path:
    """The variant as a draft directory (config.json + model.safetensors) under ``root``."""
    return write_edited(root, variant.name, bases[variant.base], variant.edit)


def write_target(root: Path, variant: Variant) -> Path:
    """A target directory holding only ``config.json`` (what the validator reads of it)."""
    path = root / f"target-{variant.name}"
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_type": "qwen3", **variant.target_config()}))
    return path


# -- edits --------------------------------------------------------------------------------------


def _zeros(*shape):
    import torch

    return torch.zeros(*shape)


def _prefix_all(state, config):
    for name in list(state):
        state["model." + name] = state.pop(name)


def _add_unused(state, config):
    state["lm_head.weight"] = _zeros(64, 32)
    state["model.embed_tokens.weight"] = _zeros(64, 32)
    state["rotary_emb.inv_freq"] = _zeros(8)
    state["layers.0.self_attn.rotary_emb.inv_freq"] = _zeros(8)


def _fuse(state, config):
    import torch

    for i in range(2):
        a, m = f"layers.{i}.self_attn.", f"layers.{i}.mlp."
        parts = [state.pop(f"{a}{p}_proj.weight") for p in "qkv"]
        state[f"{a}qkv_proj.weight"] = torch.cat(parts, dim=0)
        state[f"{m}gate_up_proj.weight"] = torch.cat(
            [state.pop(f"{m}gate_proj.weight"), state.pop(f"{m}up_proj.weight")]
        )


def _attn_biases(state, config):
    for p, rows in zip(ATTN, (32, 16, 16, 32)):
        state[f"layers.0.self_attn.{p}_proj.bias"] = _zeros(rows)


def _drop_attn_biases(state, config):
    for name in [n for n in state if n.endswith("_proj.bias")]:
        state.pop(name)


def _set_ids(ids):
    def edit(state, config):
        config["dflash_config"]["target_layer_ids"] = ids

    return edit


def _fields_inside_dflash_config(state, config):
    for key in ("block_size", "num_target_layers"):
        config["dflash_config"][key] = config.pop(key)


def _drop_layer(state, config):
    for name in [n for n in state if n.startswith("layers.1.")]:
        state.pop(name)


def _one_layer_config(state, config):
    config["num_hidden_layers"] = 1
    config["layer_types"] = config["layer_types"][:1]


def _reshape(name, *shape):
    def edit(state, config):
        state[name] = _zeros(*shape)

    return edit


def _rename(old, new):
    def edit(state, config):
        state[new] = state.pop(old)

    return edit


def _pop_config(*keys):
    def edit(state, config):
        for key in keys:
            config.pop(key, None)
            config["dflash_config"].pop(key, None)

    return edit


def _mask_top_level(state, config):
    config["mask_token_id"] = config["dflash_config"].pop("mask_token_id")


def _null_block_size(state, config):
    config["dflash_config"]["block_size"] = None


def _domino_weights(state, config):
    state["prefix_gru.weight_ih_l0"] = _zeros(96, 32)
    state["embed_proj.0.weight"] = _zeros(32, 64)


def _config(**changes):
    def edit(state, config):
        config.update(changes)

    return edit


def _mask(value):
    def edit(state, config):
        config["dflash_config"]["mask_token_id"] = value

    return edit


def _add(name, *shape):
    def edit(state, config):
        state[name] = _zeros(*shape)

    return edit


VARIANTS = [
    # models/dflash.py DFlashDraftModel: the layout SpecForge saves (layers.*, fc, hidden_norm, norm) loads as is.
    Variant("good", "ok", ""),
    # models/dflash.py load_weights.resolve_param_name strips one leading "model.".
    Variant("model_prefix", "ok", "'model.' prefix", _prefix_all),
    # load_weights skips names without a parameter ("Ignore unexpected weights (e.g., HF rotary caches)");
    # the draft has no embedding / lm_head (module docstring), the worker uses the target's.
    Variant("unused_lm_head_embed_rotary", "ok", "does not use", _add_unused),
    # load_weights: a name that is already SGLang's parameter (qkv_proj, gate_up_proj) resolves directly and the
    # fused weight loaders (layers/linear.py, loaded_shard_id None) split it.
    Variant("fused_qkv_gate_up", "ok", "", _fuse),
    # DFlashDraftModel.__init__: fc = nn.Linear(K * hidden, hidden, bias=False): no parameter, fc.bias skipped.
    Variant("fc_bias", "error", "fc.bias: SGLang's fc has no bias", _add("fc.bias", 32)),
    # There is one top-level fc only; layers.N.fc.bias resolves to nothing and is skipped.
    Variant("per_layer_fc_bias", "error", "no per-layer fc", _add("layers.0.fc.bias", 32)),
    # DFlashAttention: QKVParallelLinear / RowParallelLinear(bias=attention_bias); with false there is no bias
    # parameter, so load_weights drops the trained biases.
    Variant("attention_bias_present_flag_false", "error", "attention_bias: false", _attn_biases),
    # attention_bias true: the bias parameters exist (layers/linear.py, zero-initialised) and nothing loads them.
    Variant("attention_bias_flag_true_missing", "error", "bias tensors are missing", _drop_attn_biases, base="bias"),
    # attention_bias true with the tensors: q/k/v biases load through the stacked mapping, o_proj's directly.
    Variant("attention_bias_flag_true_present", "ok", "", base="bias"),
    # load_weights raises "DFLASH fc.weight shape mismatch" (fc in_features = len(target_layer_ids) * hidden).
    Variant("fc_shape", "error", "fc.weight has shape [32, 96]", _reshape("fc.weight", 32, 96)),
    # QKVParallelLinear.weight_loader asserts the shard's shape.
    Variant(
        "q_proj_shape",
        "error",
        "layers.0.self_attn.q_proj.weight has shape [48, 32]",
        _reshape("layers.0.self_attn.q_proj.weight", 48, 32),
    ),  # fmt: skip
    # RMSNorm weights go through default_weight_loader (model_loader/weight_utils.py), which asserts equal sizes.
    Variant("norm_shape", "error", "norm.weight has shape [33]", _reshape("norm.weight", 33)),
    # DFlashDraftModel builds num_hidden_layers layers; a layer without tensors keeps uninitialised weights.
    Variant("missing_layer", "error", "missing weights", _drop_layer),
    # Only num_hidden_layers layers exist: layers.1.* resolve to nothing and are dropped.
    Variant("extra_layer", "error", "exceed num_hidden_layers=1", _one_layer_config),
    # A name SGLang does not know is skipped silently: the parameter it was meant for stays untrained.
    Variant(
        "misnamed_weight",
        "error",
        "silently skip",
        _rename("layers.0.mlp.down_proj.weight", "layers.0.mlp.down.weight"),
    ),  # fmt: skip
    # speculative/dflash_utils.py parse_dflash_draft_config reads dflash_config first, then the top level.
    Variant("fields_only_in_dflash_config", "ok", "", _fields_inside_dflash_config),
    # Missing everywhere: the draft model falls back to its own layer count (DFlashDraftModel.__init__), not the
    # target's, and SpecForge's DFlashDraftModel raises AttributeError; named instead.
    Variant("num_target_layers_missing", "error", "num_target_layers is missing", _pop_config("num_target_layers")),
    # Missing everywhere: SGLang would silently use 16 (arg_groups/speculative_hook.py), not the trained size.
    Variant("block_size_missing", "error", "block_size is missing", _pop_config("block_size")),
    # dflash_worker_v2._resolve_mask_token_id falls back to adding '<|MASK|>' to the tokenizer: another id.
    Variant("mask_token_id_missing", "error", "mask_token_id is missing", _pop_config("mask_token_id")),
    # parse_dflash_draft_config reads mask_token_id only from dflash_config (0.5.14: dflash_utils.py:530); 0.5.23
    # reads dflash_config, then the top level (dflash_utils.py:688-690).
    Variant(
        "mask_token_id_top_level_only",
        "error",
        "top-level mask_token_id is ignored",
        _mask_top_level,
        v23="ok",
        v23_needle="",
    ),
    # dflash_cfg.get("block_size", top-level): a present null ends the lookup (0.5.14: 491-494; 0.5.23: 609-612);
    # the worker then falls back to 16 (dflash_worker_v2.py resolve_block_size(default=16)), not the trained 4.
    Variant("block_size_null_in_dflash_config", "error", "null, which ends SGLang's lookup", _null_block_size),
    # 0.5.23 models/dflash.py:900-903 aliases the native export's encoder.fc.weight to fc.weight; 0.5.14 has no
    # alias, so it skips the name and fc stays untrained.
    Variant(
        "encoder_fc_alias",
        "error",
        "missing weights",
        _rename("fc.weight", "encoder.fc.weight"),
        v23="ok",
        v23_needle="encoder.fc.weight -> fc.weight",
    ),
    # 0.5.23 models/dflash.py:923-929: DFLASH refuses Domino projector weights without projector_type 'domino';
    # 0.5.14 has no such parameter and skips them (a Domino drafter served as plain DFlash).
    Variant(
        "domino_weights_without_projector",
        "error",
        "head weights in a DFlash checkpoint",
        _domino_weights,
        v23_needle="refuses them",
    ),
    # models/qwen3.py set_dflash_layers_to_capture captures before layer i + 1; Qwen2Model.forward never reaches
    # layer 4 of 4, so one feature is missing at the first draft forward (project_target_hidden raises).
    Variant("last_layer_id", "error", "id 3 is the last decoder layer", _set_ids([1, 3])),
    # Qwen2Model.forward appends features in layer order and logits_processor concatenates them in that order.
    Variant("ids_not_increasing", "error", "not in increasing order", _set_ids([2, 1])),
    # `if i in self.layers_to_capture` captures a layer once: one feature for two ids.
    Variant("ids_repeated", "error", "[1] repeated", _set_ids([1, 1])),
    # dflash_worker_v2._resolve_mask_token_id: "DFLASH mask_token_id is outside the target vocab size".
    Variant("mask_token_id_outside_target_vocab", "error", "mask_token_id=64 is invalid", _mask(64)),
    # The draft runs on the target's embeddings (dflash_worker_v2: target get_input_embeddings) and feeds its
    # lm_head: a 48-wide target breaks the first draft forward.
    Variant("hidden_size_mismatch", "error", "hidden_size=32 does not match", target={"hidden_size": 48}),
    # SGLang does not read the draft's vocab_size; it would serve the drafter with another vocabulary than the one
    # it was trained on (token ids mean other tokens): wrong, so refused.
    Variant("vocab_size_mismatch", "error", "vocab_size=64 does not match", target={"vocab_size": 80}),
    # model_runner.py resolves the ids against the runtime target: resolve_target_layer_ids raises out-of-range.
    Variant("layer_id_beyond_target", "error", "[2] out of range", target={"num_hidden_layers": 2}),
    # A 3-layer runtime target: id 2 is its last layer, never captured (the config's num_target_layers=4 lies).
    Variant("layer_id_last_of_target", "error", "id 2 is the last decoder layer", target={"num_hidden_layers": 3}),
    # model_runner.py: num_target_layers != target num_hidden_layers only logs a warning; ids 1, 2 are capturable.
    Variant("num_target_layers_differs", "ok", "SGLang warns", target={"num_hidden_layers": 6}),
    # models/dflash.py DFlashMLP raises "Unsupported DFlash activation" for anything but silu.
    Variant("hidden_act_not_silu", "error", "DFlash MLP supports silu", _config(hidden_act="gelu")),
]

BY_NAME = {v.name: v for v in VARIANTS}
