"""Load, validate and save target / DFlash-family draft checkpoints.

A servable DFlash draft directory holds ``config.json`` (a Qwen3-style text config with
``"architectures": ["DFlashDraftModel"]``, ``block_size``, ``num_target_layers`` and
``dflash_config.{target_layer_ids, mask_token_id}``) and safetensors weights named
``layers.*``, ``fc``, ``hidden_norm``, ``norm``.  Every check of that backbone uses the rules of
:mod:`specforge_dpace.servable` (what SGLang 0.5.14's DFlash loader and target capture accept), the
same rules ``specforge-dpace bench`` validates with before launching a server: servable target layer
ids, field precedence (``dflash_config`` first), names *and* shapes of every tensor, biases.

Domino and DSpark drafts (``"architectures": ["DominoDraftModel"]`` / ``["DSparkDraftModel"]``, the
layout SpecForge's ``export --to hf`` writes) are the same backbone plus a logits head; their head
fields and weights are checked with :mod:`specforge_dpace.draft_methods` (the rules of SpecForge's own
classes).  SGLang 0.5.14 serves neither; the evaluator decodes them as their classes sample blocks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from specforge_dpace import draft_methods, servable

DRAFT_ARCHITECTURE = servable.ARCHITECTURE


def _get(config: Any, key: str, default: Any = None) -> Any:
    if isinstance(config, dict):
        return config.get(key, default)
    return getattr(config, key, default)


def _config_method(draft_config: Any) -> str:
    """The draft method its ``architectures`` name; DFlash when they name none (an in-memory config)."""
    archs = _get(draft_config, "architectures") or []
    if isinstance(archs, (list, tuple)) and any(a in draft_methods.METHOD_OF_ARCHITECTURE for a in archs):
        return draft_methods.draft_method(draft_config)
    return draft_methods.DFLASH


def validate_pair(
    target_config: Any, draft_config: Any, block_size: Optional[int] = None, *, method: Optional[str] = None
) -> dict:
    """Check that a draft config fits a target config; return the resolved draft settings.

    ``draft_config`` is a ``config.json`` dict or the draft's HF config; fields are read with SGLang's
    precedence (``dflash_config`` first, then the top level).  Raises ``ValueError`` naming every bad
    value and what is accepted (hidden size, vocabulary, target layer ids SGLang can capture on this
    target, mask token inside the target vocabulary, block size; for a Domino or DSpark draft its head
    fields too).  ``method`` ("dflash", "domino", "dspark") defaults to the one the config's
    ``architectures`` name (DFlash when they name none).  Returns
    ``{"block_size", "target_layer_ids", "mask_token_id"}``.
    """
    method = method or _config_method(draft_config)
    if method == draft_methods.DFLASH:
        verdict = servable.check_config(
            draft_config, target=target_config, block_size=block_size, check_architecture=False
        )
        verdict.raise_for_errors("the draft does not fit the target as SGLang would serve it:")
    else:
        verdict = draft_methods.check_draft(
            draft_config, None, target=target_config, block_size=block_size, method=method
        )
        verdict.raise_for_errors(f"the {draft_methods.METHOD_NAMES[method]} draft does not fit the target:")
    spec = verdict.spec
    _check_block_size(spec.block_size, block_size, "the draft")
    return {
        "block_size": spec.block_size,
        "target_layer_ids": list(spec.target_layer_ids),
        "mask_token_id": spec.mask_token_id,
    }


def _check_block_size(resolved: int, given: Optional[int], draft: str) -> None:
    """Refuse a block size that would size the draft's buffers absurdly (SGLang's rules only want >= 2)."""
    from .._numbers import BLOCK_SIZE

    source = "the given block size" if given is not None else f"{draft}'s config (dflash_config.block_size first)"
    BLOCK_SIZE.check(resolved, f"block_size (from {source})")


def _shapes(state: dict) -> dict:
    return {name: tuple(tensor.shape) for name, tensor in state.items()}


def save_draft_checkpoint(draft_model, path) -> Path:
    """Write ``draft_model`` (a ``DFlashDraftModel``, ``DominoDraftModel`` or ``DSparkDraftModel``) as
    ``config.json`` + ``model.safetensors``: for DFlash a directory SGLang can serve, for Domino / DSpark
    the layout SpecForge's HF export writes (the DFlash backbone plus the head tensors).  Returns the
    directory.

    A draft SGLang could not serve (a target layer id it never captures, a weight it would drop or
    mis-size), or whose head does not match its config, is refused before anything is written."""
    from safetensors.torch import save_file

    from ._proposals import model_method

    method = model_method(draft_model)
    path = Path(path)
    config = draft_model.config.to_dict()
    config["architectures"] = [draft_methods.ARCHITECTURES[method]]
    config["block_size"] = int(draft_model.block_size)
    n_target = _get(draft_model.config, "num_target_layers")
    config["num_target_layers"] = int(n_target) if n_target is not None else None
    dflash = dict(config.get("dflash_config") or {})
    dflash["target_layer_ids"] = [int(i) for i in draft_model.target_layer_ids]
    dflash["mask_token_id"] = draft_model.mask_token_id
    for key in ("block_size", "num_target_layers"):  # SGLang reads dflash_config first: keep both places equal
        if key in dflash:
            dflash[key] = config[key]
    if "target_layer_ids" in config:
        config["target_layer_ids"] = dflash["target_layer_ids"]
    config["dflash_config"] = dflash
    config.pop("_attn_implementation_autoset", None)
    rope = config.get("rope_parameters") or {}
    if "rope_theta" in rope and "rope_theta" not in config:  # transformers 4.x (SGLang's pin) reads rope_theta
        config["rope_theta"] = rope["rope_theta"]
    state = {k: v.detach().contiguous().cpu().clone() for k, v in draft_model.state_dict().items()}
    header = (
        f"refusing to save a draft SGLang could not serve to {str(path)!r}:"
        if method == draft_methods.DFLASH
        else f"refusing to save a {draft_methods.METHOD_NAMES[method]} draft that would not load back to {str(path)!r}:"
    )
    draft_methods.check_draft(config, _shapes(state), method=method).raise_for_errors(header)
    path.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def read_draft_config(path) -> dict:
    """The draft directory's ``config.json`` as a dict, with a clear error if it is not a DFlash, Domino
    or DSpark draft (its ``architectures`` name the method)."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ValueError(f"draft path {str(path)!r} has no config.json (expected a DFlash draft directory)")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if not isinstance(config, dict):
        raise ValueError(f"draft config {str(config_file)!r} is not a JSON object")
    draft_methods.draft_method(config, where=f"draft config {str(config_file)!r}")
    return config


def _read_safetensors(path: Path) -> dict:
    from safetensors.torch import load_file

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ValueError(f"draft path {str(path)!r} has no *.safetensors weights")
    state: dict = {}
    for file in files:
        part = load_file(str(file))
        twice = sorted(set(part) & set(state))
        if twice:
            raise ValueError(f"draft weights {twice[:8]} are stored twice in {str(path)!r} (again in {file.name})")
        state.update(part)
    return state


def load_draft(
    path,
    target_config=None,
    *,
    dtype=None,
    device=None,
    attn_implementation: str = "sdpa",
    block_size: Optional[int] = None,
):
    """Build a SpecForge ``DFlashDraftModel`` from a servable directory (or a ``DominoDraftModel`` /
    ``DSparkDraftModel`` from its export directory, by the config's ``architectures``), validated
    against ``target_config`` when given.

    Exactly what SGLang would serve loads: ``block_size``, ``num_target_layers`` and
    ``target_layer_ids`` are read from ``dflash_config`` first, then the top level; a ``model.``
    prefix on weight names is stripped; SGLang's fused ``qkv_proj`` / ``gate_up_proj`` tensors are
    split; ``lm_head`` / ``embed_tokens`` / rotary tensors, which SGLang ignores, are skipped.  Anything
    SGLang would refuse or serve untrained (a missing, unknown, dropped or mis-shaped tensor, a layer id
    it cannot capture) is a ``ValueError`` naming it.
    ``block_size`` stands for an explicit block size (SGLang's ``--speculative-num-draft-tokens``).
    Domino / DSpark: the backbone by the same rules, the head fields and tensors by the class's
    (:mod:`specforge_dpace.draft_methods`); early ``logit_head.`` head names are mapped as SpecForge does."""
    path = Path(path)
    return draft_from_state(
        read_draft_config(path),
        _read_safetensors(path),
        str(path),
        target_config,
        dtype=dtype,
        device=device,
        attn_implementation=attn_implementation,
        block_size=block_size,
    )


def draft_from_state(
    raw: dict,
    state: dict,
    where: str,
    target_config=None,
    *,
    dtype=None,
    device=None,
    attn_implementation: str = "sdpa",
    block_size: Optional[int] = None,
):
    """:func:`load_draft` of a config dict and a weight dict (``where`` names their source in errors): the
    same rules, so SpecForge's own checkpoints (``draft_state_dict``) load like an export directory."""
    from specforge.modeling.draft.dflash import DFlashDraftModel
    from specforge.modeling.draft.domino import DominoDraftModel
    from specforge.modeling.draft.dspark import DSparkDraftModel
    from transformers import Qwen3Config

    classes = {
        draft_methods.DFLASH: DFlashDraftModel,
        draft_methods.DOMINO: DominoDraftModel,
        draft_methods.DSPARK: DSparkDraftModel,
    }
    path = where
    method = draft_methods.draft_method(raw, where=f"draft config of {where!r}")
    verdict = draft_methods.check_draft(raw, _shapes(state), target=target_config, block_size=block_size, method=method)
    if method == draft_methods.DFLASH:
        verdict.raise_for_errors(f"draft {str(path)!r} is not servable by SGLang DFlash:")
    else:
        verdict.raise_for_errors(
            f"{draft_methods.METHOD_NAMES[method]} draft {str(path)!r} does not load (DFlash backbone rules of "
            "SGLang 0.5.14's loader, head rules of SpecForge's class):"
        )
    spec = verdict.spec
    _check_block_size(spec.block_size, block_size, f"draft {str(path)!r}")
    config_dict = {k: v for k, v in raw.items() if k not in ("architectures", "model_type")}
    # SpecForge's DFlashDraftModel reads block_size / num_target_layers at the top level and the ids
    # from dflash_config: give it the values SGLang resolves.
    config_dict["block_size"] = spec.block_size
    config_dict["num_target_layers"] = spec.num_target_layers
    config_dict["dflash_config"] = {
        **dict(raw.get("dflash_config") or {}),
        "target_layer_ids": list(spec.target_layer_ids),
        "mask_token_id": spec.mask_token_id,
    }
    config = Qwen3Config(**config_dict)
    config.architectures = [draft_methods.ARCHITECTURES[method]]
    config._attn_implementation = attn_implementation
    draft = classes[method](config)
    served = {
        draft_methods.normalize_head_name(name): tensor
        for name, tensor in state.items()
        if not servable.is_unused_weight(name)
    }
    for fused, parts in servable.fused_weights(spec).items():  # SGLang's fused names -> SpecForge's separate ones
        if fused in served:
            tensor, offset = served.pop(fused), 0
            for name, rows in parts:
                served[name] = tensor[offset : offset + rows].clone()
                offset += rows
    expected = set(draft.state_dict())
    missing = sorted(expected - set(served))
    unexpected = sorted(set(served) - expected)
    if missing or unexpected:  # SpecForge's module and SGLang's rules disagree: never load half a draft
        raise ValueError(
            f"draft weights in {str(path)!r} do not match SpecForge's {type(draft).__name__}: missing {missing[:8]}, "
            f"unexpected {unexpected[:8]}"
        )
    draft.load_state_dict(served, strict=True)
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
