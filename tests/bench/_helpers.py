"""Shared fixtures for the bench tests: real tiny draft directories and the loopback launcher."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

LOOPBACK = f"{sys.executable} -m specforge_dpace.bench.loopback"


def draft_state_and_config(num_layers: int = 1, block_size: int = 4):
    """State dict and config dict of a real SpecForge DFlashDraftModel fitting a tiny Qwen3 target."""
    from specforge_dpace.evaluate import tiny_draft, tiny_target

    target = tiny_target(num_hidden_layers=2)
    draft = tiny_draft(target, num_hidden_layers=num_layers, block_size=block_size)
    config = draft.config.to_dict()
    config["architectures"] = ["DFlashDraftModel"]
    config["block_size"] = block_size
    config["num_target_layers"] = 2
    config.pop("_attn_implementation_autoset", None)
    state = {k: v.detach().contiguous().clone() for k, v in draft.state_dict().items()}
    return state, config


def write_draft_dir(path: Path, state: dict, config: dict, index: bool = False) -> Path:
    """A draft directory as SpecForge saves it (config.json + safetensors, optionally sharded)."""
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    if index:
        names = sorted(state)
        half = len(names) // 2
        shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
        weight_map = {}
        for shard, keys in shards.items():
            save_file({k: state[k] for k in keys}, str(path / shard))
            weight_map.update({k: shard for k in keys})
        (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    else:
        save_file(state, str(path / "model.safetensors"))
    return path


def make_draft(path: Path, block_size: int = 4, rename: Optional[dict] = None) -> Path:
    state, config = draft_state_and_config(block_size=block_size)
    for old, new in (rename or {}).items():
        state[new] = state.pop(old)
    return write_draft_dir(path, state, config)
