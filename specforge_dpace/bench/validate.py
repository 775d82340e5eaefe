"""Validate a DFlash-family draft directory before a server serves it.

SGLang silently skips weight names it does not know, so a misnamed checkpoint would serve with
random weights and report a tau near 1 (DESIGN.md section 5). This reads ``config.json`` and the
safetensors *headers* (names and shapes, never the tensors) and checks them with a serving rule set of
:mod:`specforge_dpace.serving` (the server version's loader and target capture), the same rules the
offline evaluator's loader uses. Given the target (its directory or config), the layer ids, hidden
size, vocabulary and mask token are checked against it too.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from specforge_dpace import serving
from specforge_dpace._hashing import update_with_file

ARCHITECTURE = serving.ARCHITECTURES[serving.DFLASH]


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
    notes: list[str] = field(default_factory=list)
    target_checked: bool = False
    method: str = serving.DFLASH
    server: str = serving.DEFAULT_SERVER

    @classmethod
    def from_verdict(
        cls,
        path: Path,
        verdict: Any,
        files: list[Path],
        shapes: Mapping,
        notes: list[str],
        target_checked: bool,
        *,
        server: str = serving.DEFAULT_SERVER,
    ):
        """The settings a passing rule check resolved (``verdict.spec``), with the files and notes seen."""
        spec = verdict.spec
        return cls(
            path,
            spec.block_size,
            spec.num_target_layers,
            spec.num_hidden_layers,
            list(spec.target_layer_ids),
            spec.mask_token_id,
            files,
            sorted(shapes),
            notes + verdict.notes,
            target_checked,
            spec.method,
            server,
        )


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


def read_weight_shapes(path: Path) -> tuple[list[Path], dict[str, list[int]], list[str]]:
    """``(files, name -> shape, problems)`` from the safetensors headers of a draft directory."""
    files = _weight_files(path)
    shapes: dict[str, list[int]] = {}
    problems: list[str] = []
    if not files:
        problems.append(f"no *.safetensors weights in {path} (SGLang loads safetensors)")
    for f in files:
        if not f.exists():
            problems.append(f"weight file {f.name} named in the index is missing")
            continue
        for name, meta in read_safetensors_header(f).items():
            if name in shapes:
                problems.append(f"weight {name!r} is stored twice (again in {f.name})")
            shape = meta.get("shape") if isinstance(meta, dict) else None
            if not isinstance(shape, list):
                raise DraftValidationError(f"{f}: header entry {name!r} has no shape")
            shapes[name] = shape
    return files, shapes, problems


def _target_config(target: Any, notes: list[str]) -> Optional[Any]:
    """The target's config from a directory (its ``config.json``) or a config object / mapping."""
    if target is None:
        return None
    if isinstance(target, (str, os.PathLike)):
        cfg_path = Path(target) / "config.json"
        if not cfg_path.is_file():
            notes.append(
                f"target checks skipped: {os.fspath(target)!r} is not a local model directory with config.json; "
                "layer ids are checked against the draft's num_target_layers only"
            )
            return None
        try:
            return json.loads(cfg_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DraftValidationError(f"{cfg_path}: not valid JSON ({exc})") from exc
    return target


def validate_draft_dir(
    path: str | Path,
    target: Any = None,
    *,
    block_size: Optional[int] = None,
    server: Optional[str] = serving.DEFAULT_SERVER,
    options: Optional[Mapping[str, Any]] = None,
) -> DraftInfo:
    """Check a draft directory; raise :class:`DraftValidationError` listing every problem.

    ``server``: the rule set (``serving.rules_for``) to check with; None = the one whose layout the
    directory is in (``serving.layout_of``, what the offline evaluator loads).  ``target``: the target model
    directory (or its config) when known: then the layer ids are checked against the target's real layer
    count, and its hidden size, vocabulary and mask token range apply.  A path without ``config.json`` (a
    hub id, say) skips those checks with a note.  ``block_size`` stands for a launch flag's block size.
    Harmless findings (a ``model.`` prefix, unused ``lm_head`` / ``embed_tokens`` / rotary tensors) come
    back in ``DraftInfo.notes``."""
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
    if not isinstance(cfg, Mapping):
        raise DraftValidationError(f"{cfg_path}: expected a JSON object, got {type(cfg).__name__}")
    notes: list[str] = []
    target_cfg = _target_config(target, notes)
    files, shapes, problems = read_weight_shapes(path)
    try:
        method = serving.draft_method(cfg)
        rules = serving.rules_for(server) if server else serving.layout_of(cfg)
    except ValueError as exc:
        raise DraftValidationError(f"draft {path}: {exc}") from None
    if (path / "mask_embedding.pt").is_file():
        notes.append(
            "mask_embedding.pt: SGLang 0.5.23's DFLASH worker merges it into the target's mask-token row "
            "(dflash_worker_v2.py:1318-1380; DSPARK and 0.5.14 ignore it); the evaluator applies it to the draft "
            "blocks' mask positions"
        )
    verdict = serving.check_draft(
        cfg, shapes if files else None, server=rules, method=method, target=target_cfg, block_size=block_size,
        options=options,
    )  # fmt: skip
    problems = verdict.errors + problems
    if problems:
        raise DraftValidationError(
            f"{serving.METHOD_NAMES[method]} draft {path} is not servable by {rules.name}:\n  - "
            + "\n  - ".join(problems)
        )
    return DraftInfo.from_verdict(path, verdict, files, shapes, notes, target_cfg is not None, server=rules.name)


def checkpoint_hash(path: str | Path) -> str:
    """sha256 over config.json and every weight file (names and bytes), for provenance."""
    path = Path(path)
    digest = hashlib.sha256()
    files = [path / "config.json"] + _weight_files(path) if path.is_dir() else [path]
    for f in files:
        if not f.exists():
            continue
        digest.update(f.name.encode() + b"\0")
        update_with_file(digest, f)
    return digest.hexdigest()
