"""Legacy ``train_dflash`` flags -> SpecForge's unified YAML config (``specforge train -c CONFIG``).

Flags keep their legacy defaults (6 epochs, lr 6e-4, max length 3072, ...) so the familiar command
means the same run on either runtime; the YAML records every value.  A flag with no unified
equivalent is an error naming the flag, never silently dropped.  The objective lands in
``training.loss_type`` (any spec) and ``training.loss_options`` -- keys SpecForge's schema accepts
once the specforge-dpace hook is installed.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from .args import LEGACY_FLAGS, given, objective_of, value


class TranslationError(ValueError):
    """Flags that cannot be expressed in a unified SpecForge config."""


def _set(config: dict, dotted: str, item: Any) -> None:
    node = config
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = item


def unified_config(args: argparse.Namespace) -> dict:
    """The config mapping for ``args`` (raises :class:`TranslationError` listing every bad flag)."""
    errors: list[str] = []
    config: dict = {"model": {}, "data": {}, "training": {"strategy": "dflash"}}
    for flag in LEGACY_FLAGS:
        if flag.yaml is None:
            if given(args, flag):
                errors.append(f"{flag.name}: no unified equivalent ({flag.help})")
            continue
        item = value(args, flag)
        if item is None or (flag.store_true and not given(args, flag)):
            continue
        if flag.name == "--eval-interval" and not (given(args, flag) or args.eval_data_path):
            continue  # SpecForge requires eval data and eval_interval together
        if flag.name == "--target-model-backend" and item != "sglang":
            errors.append(
                f"--target-model-backend {item}: the unified runtime runs the target in SGLang only "
                "(model.target_backend: sglang) or reads offline features (--hidden-states-path)"
            )
            continue
        _set(config, flag.yaml, item)

    loss_type, dpace_alpha, loss_options = objective_of(args)
    training = config["training"]
    training["loss_type"] = loss_type
    if dpace_alpha is not None or "dpace" in loss_type:
        training["dpace_alpha"] = 0.5 if dpace_alpha is None else dpace_alpha
    if loss_options:
        training["loss_options"] = dict(loss_options)

    passthrough = list(getattr(args, "passthrough", None) or [])
    if passthrough:
        errors.append(f"{' '.join(passthrough)}: flags after -- are for a legacy checkout's script only")
    if errors:
        raise TranslationError("cannot translate to a unified SpecForge config:\n  " + "\n  ".join(errors))

    output_dir = config.pop("output_dir", None) or "./output"
    config["tracking"] = config.pop("tracking", {}) or {}
    if not config["tracking"]:
        del config["tracking"]
    config["run_id"] = args.run_id or os.path.basename(os.path.normpath(output_dir)) or "specforge-run"
    config["output_dir"] = output_dir
    config["deployment"] = _deployment(args, config)
    return config


def _deployment(args: argparse.Namespace, config: dict) -> dict:
    """Offline features train colocated; online capture trains disaggregated from SGLang servers (Mooncake)."""
    trainer = {"nnodes": 1, "nproc_per_node": int(args.nproc_per_node or 1)}
    if config["data"].get("hidden_states_path"):
        return {"mode": "local_colocated", "trainer": trainer}
    if not args.server_urls:
        raise TranslationError(
            "online unified training needs --server-url URL (an SGLang capture server serving the target); "
            "or train offline from captured features with --hidden-states-path"
        )
    out = config["output_dir"]
    disaggregated = {
        "control_dir": os.path.join(out, "control"),
        "consumer_state_dir": os.path.join(out, "consumer-state"),
        "backend": "mooncake",  # SpecForge: online disaggregated training requires Mooncake
        "server_urls": list(args.server_urls),
        "mooncake_metadata_server": args.mooncake_metadata_server or "http://127.0.0.1:35880/metadata",
        "mooncake_master_server_addr": args.mooncake_master_server_addr or "127.0.0.1:35551",
        "mooncake_protocol": "tcp",
    }
    return {"mode": "disaggregated", "trainer": trainer, "disaggregated": disaggregated}


def dump_yaml(config: dict) -> str:
    import yaml

    header = "# written by specforge-dpace train-dflash (legacy flags -> SpecForge unified config)\n"
    return header + yaml.safe_dump(config, sort_keys=False, default_flow_style=False)


def validate(config: dict) -> Any:
    """Validate through SpecForge's own schema with the plugin hook installed; returns the Config."""
    import specforge_dpace

    specforge_dpace.install()
    from specforge.config.schema import Config

    return Config.model_validate(config)
