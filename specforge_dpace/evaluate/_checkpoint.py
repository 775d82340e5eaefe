"""Load, validate and save target / DFlash draft checkpoints in the layout SGLang serves.

A servable draft directory holds ``config.json`` (a Qwen3-style text config with
``"architectures": ["DFlashDraftModel"]``, ``block_size``, ``num_target_layers`` and
``dflash_config.{target_layer_ids, mask_token_id}``) and safetensors weights named
``layers.*``, ``fc``, ``hidden_norm``, ``norm``.  SGLang silently skips weight names it does
not know, so names are checked here, before anything is evaluated.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional

DRAFT_ARCHITECTURE = "DFlashDraftModel"
SERVABLE_WEIGHT_PREFIXES = ("layers.", "fc.", "hidden_norm.", "norm.")


def _get(config: Any, key: str, default: Any = None) -> Any:
    if isinstance(config, Mapping):
        return config.get(key, default)
    return getattr(config, key, default)


def _text_config(config: Any) -> Any:
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else config


def validate_pair(target_config: Any, draft_config: Any, block_size: Optional[int] = None) -> dict:
    """Check that a draft config fits a target config; return the resolved draft settings.

    Raises ``ValueError`` naming the bad value and what is accepted.  Returns
    ``{"block_size", "target_layer_ids", "mask_token_id"}``.
    """
    target_config = _text_config(target_config)
    t_hidden = _get(target_config, "hidden_size")
    d_hidden = _get(draft_config, "hidden_size")
    if t_hidden != d_hidden:
        raise ValueError(
            f"draft hidden_size={d_hidden} does not match the target's hidden_size={t_hidden}: the draft reads "
            "the target's embeddings and feeds the target's lm_head, so both must be equal"
        )
    t_vocab = _get(target_config, "vocab_size")
    d_vocab = _get(draft_config, "vocab_size")
    if t_vocab != d_vocab:
        raise ValueError(
            f"draft vocab_size={d_vocab} does not match the target's vocab_size={t_vocab}: a DFlash draft "
            "shares the target's vocabulary"
        )
    n_layers = _get(target_config, "num_hidden_layers")
    dflash = _get(draft_config, "dflash_config") or {}
    if not isinstance(dflash, Mapping):
        raise ValueError(f"draft dflash_config must be a mapping, got {type(dflash).__name__}: {dflash!r}")
    layer_ids = dflash.get("target_layer_ids")
    if layer_ids is None:
        raise ValueError(
            "draft config has no dflash_config.target_layer_ids (the target layers whose hidden states the "
            "draft reads); accepted: a non-empty list of layer indices in [0, num_hidden_layers)"
        )
    if not isinstance(layer_ids, (list, tuple)) or not layer_ids or not all(isinstance(i, int) for i in layer_ids):
        raise ValueError(f"dflash_config.target_layer_ids must be a non-empty list of ints, got {layer_ids!r}")
    bad = [i for i in layer_ids if not 0 <= i < n_layers]
    if bad:
        raise ValueError(
            f"dflash_config.target_layer_ids={list(layer_ids)} has {bad} out of range for a target with "
            f"num_hidden_layers={n_layers}; accepted: indices in [0, {n_layers - 1}]"
        )
    mask = dflash.get("mask_token_id")
    if mask is None:
        raise ValueError(
            "draft config has no dflash_config.mask_token_id; the draft fills its block with that token: "
            f"set it to a token id in [0, {t_vocab - 1}]"
        )
    if isinstance(mask, bool) or not isinstance(mask, int) or not 0 <= mask < t_vocab:
        raise ValueError(
            f"dflash_config.mask_token_id={mask!r} is invalid; accepted: an int in [0, {t_vocab - 1}] "
            f"(target vocab_size={t_vocab})"
        )
    size = block_size if block_size is not None else _get(draft_config, "block_size")
    if size is None:
        raise ValueError("no block size: the draft config has no block_size and none was given (accepted: int >= 2)")
    if isinstance(size, bool) or not isinstance(size, int) or size < 2:
        raise ValueError(f"block size {size!r} is invalid; accepted: an int >= 2 (1 anchor slot + drafted slots)")
    return {"block_size": int(size), "target_layer_ids": [int(i) for i in layer_ids], "mask_token_id": int(mask)}


def check_weight_names(names) -> None:
    """Refuse weight names SGLang's DFlash loader would silently drop."""
    unknown = sorted(n for n in names if not n.startswith(SERVABLE_WEIGHT_PREFIXES))
    if unknown:
        raise ValueError(
            f"draft weights {unknown[:8]}{' ...' if len(unknown) > 8 else ''} are not servable names; "
            f"accepted prefixes: {', '.join(SERVABLE_WEIGHT_PREFIXES)}"
        )


def save_draft_checkpoint(draft_model, path) -> Path:
    """Write ``draft_model`` (a ``DFlashDraftModel``) as a directory SGLang can serve:
    ``config.json`` + ``model.safetensors``.  Returns the directory."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = draft_model.config.to_dict()
    config["architectures"] = [DRAFT_ARCHITECTURE]
    config["block_size"] = int(draft_model.block_size)
    config["num_target_layers"] = int(_get(draft_model.config, "num_target_layers", 0) or 0) or None
    dflash = dict(config.get("dflash_config") or {})
    dflash["target_layer_ids"] = [int(i) for i in draft_model.target_layer_ids]
    dflash["mask_token_id"] = draft_model.mask_token_id
    config["dflash_config"] = dflash
    n_target = config["num_target_layers"] or (max(dflash["target_layer_ids"], default=-1) + 1)
    implied_target = {
        "hidden_size": config["hidden_size"],
        "vocab_size": config["vocab_size"],
        "num_hidden_layers": n_target,
    }
    validate_pair(implied_target, config)  # a draft that cannot be served is refused at save time
    config.pop("_attn_implementation_autoset", None)
    rope = config.get("rope_parameters") or {}
    if "rope_theta" in rope and "rope_theta" not in config:  # transformers 4.x (SGLang's pin) reads rope_theta
        config["rope_theta"] = rope["rope_theta"]
    state = {k: v.detach().contiguous().cpu().clone() for k, v in draft_model.state_dict().items()}
    check_weight_names(state)
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def read_draft_config(path) -> dict:
    """The draft directory's ``config.json`` as a dict, with a clear error if it is not a DFlash draft."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ValueError(f"draft path {str(path)!r} has no config.json (expected a DFlash draft directory)")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    archs = config.get("architectures") or []
    if DRAFT_ARCHITECTURE not in archs:
        raise ValueError(
            f"draft config {str(config_file)!r} has architectures={archs!r}; accepted: [{DRAFT_ARCHITECTURE!r}]"
        )
    return config


def _read_safetensors(path: Path) -> dict:
    from safetensors.torch import load_file

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ValueError(f"draft path {str(path)!r} has no *.safetensors weights")
    state: dict = {}
    for file in files:
        state.update(load_file(str(file)))
    return state


def load_draft(path, target_config=None, *, dtype=None, device=None, attn_implementation: str = "sdpa"):
    """Build a SpecForge ``DFlashDraftModel`` from a servable directory, validated against
    ``target_config`` when given.  Missing or unknown weight names are errors."""
    from specforge.modeling.draft.dflash import DFlashDraftModel
    from transformers import Qwen3Config

    path = Path(path)
    raw = read_draft_config(path)
    if target_config is not None:
        validate_pair(target_config, raw)
    config_dict = {k: v for k, v in raw.items() if k not in ("architectures", "model_type")}
    config = Qwen3Config(**config_dict)
    config.architectures = [DRAFT_ARCHITECTURE]
    config._attn_implementation = attn_implementation
    draft = DFlashDraftModel(config)
    state = _read_safetensors(path)
    check_weight_names(state)
    expected = set(draft.state_dict())
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(
            f"draft weights in {str(path)!r} do not match the config: missing {missing[:8]}, "
            f"unexpected {unexpected[:8]}"
        )
    draft.load_state_dict(state, strict=True)
    if dtype is not None:
        draft = draft.to(dtype=dtype)
    if device is not None:
        draft = draft.to(device)
    return draft.eval()


def load_target(path, *, dtype=None, device=None, attn_implementation: str = "sdpa"):
    """An HF causal LM from a local directory (never the hub), in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if not (path / "config.json").is_file():
        raise ValueError(f"target path {str(path)!r} has no config.json (expected an HF model directory)")
    kwargs = {"attn_implementation": attn_implementation, "local_files_only": True}
    kwargs["dtype"] = dtype if dtype is not None else torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    if device is not None:
        model = model.to(device)
    return model.eval()
