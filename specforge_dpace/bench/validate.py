"""Validate a DFlash draft directory before SGLang serves it.

SGLang silently skips weight names it does not know, so a misnamed checkpoint would serve with
random weights and report a tau near 1 (DESIGN.md section 5). This reads ``config.json`` and the
safetensors *headers* (never the tensors) and names every missing or unknown key.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

ARCHITECTURE = "DFlashDraftModel"
TOP_LEVEL_WEIGHTS = ("fc.weight", "hidden_norm.weight", "norm.weight")
LAYER_WEIGHTS = (
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "self_attn.q_norm.weight",
    "self_attn.k_norm.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
    "input_layernorm.weight",
    "post_attention_layernorm.weight",
)
OPTIONAL_LAYER_WEIGHTS = tuple(f"self_attn.{p}_proj.bias" for p in ("q", "k", "v", "o")) + ("fc.bias",)
CONFIG_INTS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "block_size",
    "num_target_layers",
)
_LAYER = re.compile(r"^layers\.(\d+)\.(.+)$")


class DraftValidationError(ValueError):
    """The draft directory would not load correctly in SGLang; the message lists every problem."""


@dataclass
class DraftInfo:
    path: Path
    block_size: int
    num_target_layers: int
    num_hidden_layers: int
    target_layer_ids: list[int]
    mask_token_id: int
    weight_files: list[Path] = field(default_factory=list)
    weight_names: list[str] = field(default_factory=list)


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """Tensor-name -> metadata of a safetensors file, from its JSON header only."""
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) != 8:
            raise DraftValidationError(f"{path}: too short to be a safetensors file")
        (length,) = struct.unpack("<Q", raw)
        if length <= 0 or length > 100_000_000:
            raise DraftValidationError(f"{path}: implausible safetensors header length {length}")
        try:
            header = json.loads(fh.read(length))
        except json.JSONDecodeError as exc:
            raise DraftValidationError(f"{path}: unreadable safetensors header ({exc})") from exc
    header.pop("__metadata__", None)
    return header


def _weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [path / n for n in names]
    return sorted(path.glob("*.safetensors"))


def _check_config(cfg: dict, problems: list[str]) -> None:
    archs = cfg.get("architectures")
    if not isinstance(archs, list) or ARCHITECTURE not in archs:
        problems.append(f"config.json architectures must contain {ARCHITECTURE!r}, got {archs!r}")
    for key in CONFIG_INTS:
        value = cfg.get(key)
        if key not in cfg:
            problems.append(f"config.json is missing {key!r}")
        elif not isinstance(value, int) or isinstance(value, bool) or value < 1:
            problems.append(f"config.json {key!r} must be a positive integer, got {value!r}")
    if isinstance(cfg.get("block_size"), int) and cfg["block_size"] < 2:
        problems.append(f"config.json block_size must be >= 2, got {cfg['block_size']}")
    dcfg = cfg.get("dflash_config")
    if not isinstance(dcfg, dict):
        problems.append(f"config.json is missing the 'dflash_config' object (got {dcfg!r})")
        return
    ids = dcfg.get("target_layer_ids")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, int) for i in ids):
        problems.append(f"dflash_config.target_layer_ids must be a non-empty list of ints, got {ids!r}")
    elif isinstance(cfg.get("num_target_layers"), int):
        bad = [i for i in ids if not 0 <= i < cfg["num_target_layers"]]
        if bad:
            problems.append(f"dflash_config.target_layer_ids {bad} outside 0..{cfg['num_target_layers'] - 1}")
    mask = dcfg.get("mask_token_id")
    if not isinstance(mask, int) or isinstance(mask, bool) or mask < 0:
        problems.append(f"dflash_config.mask_token_id must be a non-negative int, got {mask!r}")


def check_weight_names(names: Iterable[str], num_layers: int) -> list[str]:
    """Problems with the weight names SGLang's DFlash loader will look up."""
    names = set(names)
    problems = []
    expected = set(TOP_LEVEL_WEIGHTS) | {f"layers.{i}.{s}" for i in range(num_layers) for s in LAYER_WEIGHTS}
    allowed = expected | {f"layers.{i}.{s}" for i in range(num_layers) for s in OPTIONAL_LAYER_WEIGHTS} | {"fc.bias"}
    missing = sorted(expected - names)
    unknown = sorted(names - allowed)
    if missing:
        problems.append(
            f"missing weights ({len(missing)}): {', '.join(missing[:20])}" + (" ..." if len(missing) > 20 else "")
        )
    if unknown:
        hint = ""
        if any(n.startswith("model.") for n in unknown):
            hint = " (a 'model.' prefix: SGLang expects bare 'layers.*', 'fc', 'hidden_norm', 'norm')"
        extra_layers = sorted(
            {int(m.group(1)) for n in unknown if (m := _LAYER.match(n)) and int(m.group(1)) >= num_layers}
        )
        if extra_layers:
            hint += f" (layers {extra_layers} exceed num_hidden_layers={num_layers})"
        problems.append(
            f"unknown weights SGLang would silently skip ({len(unknown)}): {', '.join(unknown[:20])}"
            + (" ..." if len(unknown) > 20 else "")
            + hint
        )
    return problems


def validate_draft_dir(path: str | Path) -> DraftInfo:
    """Check a draft directory; raise :class:`DraftValidationError` listing every problem."""
    path = Path(path)
    if not path.is_dir():
        raise DraftValidationError(f"draft path {path} is not a directory")
    cfg_path = path / "config.json"
    if not cfg_path.exists():
        raise DraftValidationError(f"{path}: no config.json")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DraftValidationError(f"{cfg_path}: not valid JSON ({exc})") from exc
    problems: list[str] = []
    _check_config(cfg, problems)
    files = _weight_files(path)
    names: list[str] = []
    if not files:
        problems.append(f"no *.safetensors weights in {path} (SGLang loads safetensors)")
    for f in files:
        if not f.exists():
            problems.append(f"weight file {f.name} named in the index is missing")
            continue
        names.extend(read_safetensors_header(f))
    num_layers = cfg.get("num_hidden_layers") if isinstance(cfg.get("num_hidden_layers"), int) else 0
    if files:
        problems.extend(check_weight_names(names, num_layers))
    if problems:
        raise DraftValidationError(f"draft {path} is not servable by SGLang DFlash:\n  - " + "\n  - ".join(problems))
    dcfg = cfg["dflash_config"]
    return DraftInfo(
        path,
        cfg["block_size"],
        cfg["num_target_layers"],
        cfg["num_hidden_layers"],
        list(dcfg["target_layer_ids"]),
        dcfg["mask_token_id"],
        files,
        sorted(names),
    )


def checkpoint_hash(path: str | Path) -> str:
    """sha256 over config.json and every weight file (names and bytes), for provenance."""
    path = Path(path)
    digest = hashlib.sha256()
    files = [path / "config.json"] + _weight_files(path) if path.is_dir() else [path]
    for f in files:
        if not f.exists():
            continue
        digest.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                digest.update(chunk)
    return digest.hexdigest()
