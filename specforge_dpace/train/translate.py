"""Legacy ``train_dflash`` flags -> SpecForge's unified YAML config (``specforge train -c CONFIG``).

Flags keep their legacy defaults (6 epochs, lr 6e-4, max length 3072, ...) so the familiar command
means the same run on either runtime; the YAML records every value.  A given value is written as
given (``0`` included) or refused: a flag with no unified equivalent is an error naming the flag,
never silently dropped, and :func:`validate` maps SpecForge's own schema errors back to the flags.
With ``--draft-config-path`` the draft config's ``block_size`` and ``num_hidden_layers`` win unless
``--block-size`` / ``--num-draft-layers`` are given (the legacy defaults only fill a generated config).
The objective lands in ``training.loss_type`` (any spec) and ``training.loss_options`` -- keys
SpecForge's schema accepts once the specforge-dpace hook is installed -- for the method ``--strategy``
names (``training.strategy``: ``dflash``, ``domino`` or ``dspark``).
"""

from __future__ import annotations

import argparse
import os
import warnings
from typing import Any, Optional

from .args import DRAFT_CONFIG_FIELDS, LEGACY_FLAGS, given, objective_of, read_draft_config, strategy_of, value


class TranslationError(ValueError):
    """Flags that cannot be expressed in a unified SpecForge config."""


class SchemaError(ValueError):
    """SpecForge's own schema refuses the translated config; the message names the flags behind each field."""


#: Wrapper flags that must not be empty (an empty string used to fall back to a default silently).
_NON_EMPTY = {
    "output_dir": "--output-dir",
    "run_id": "--run-id",
    "config_out": "--config-out",
    "mooncake_metadata_server": "--mooncake-metadata-server",
    "mooncake_master_server_addr": "--mooncake-master-server-addr",
}

#: Config fields the wrapper fills from its own flags (dotted path -> flag), for schema error messages.
_WRAPPER_FIELDS = {
    "training.strategy": "--strategy",
    "training.loss_type": "--loss-type",
    "training.dpace_alpha": "--dpace-alpha",
    "training.loss_options": "--loss-option",
    "run_id": "--run-id",
    "deployment.trainer.nproc_per_node": "--nproc-per-node",
    "deployment.disaggregated.server_urls": "--server-url",
    "deployment.disaggregated.mooncake_metadata_server": "--mooncake-metadata-server",
    "deployment.disaggregated.mooncake_master_server_addr": "--mooncake-master-server-addr",
}


def _set(config: dict, dotted: str, item: Any) -> None:
    node = config
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = item


def _draft_field(args: argparse.Namespace, flag: Any, draft: Optional[dict]) -> Optional[Any]:
    """The value to write for a flag of :data:`DRAFT_CONFIG_FIELDS`, or ``None`` to leave the draft config's."""
    if args.draft_config_path is None:
        return value(args, flag)  # a generated draft config: the legacy script's default, as in the legacy script
    if not given(args, flag):
        return None  # the user's draft config wins
    key = DRAFT_CONFIG_FIELDS[flag.name]
    if draft is not None and key in draft and draft[key] != getattr(args, flag.dest):
        warnings.warn(
            f"{flag.name} {getattr(args, flag.dest)} overrides {key}={draft[key]!r} of --draft-config-path "
            f"{args.draft_config_path} (drop the flag to keep the draft config's value)",
            UserWarning,
            stacklevel=3,
        )
    return getattr(args, flag.dest)


def unified_config(args: argparse.Namespace) -> dict:
    """The config mapping for ``args`` (raises :class:`TranslationError` listing every bad flag)."""
    errors: list[str] = []
    config: dict = {"model": {}, "data": {}, "training": {"strategy": strategy_of(args)}}
    draft = read_draft_config(args.draft_config_path)
    for flag in LEGACY_FLAGS:
        if flag.yaml is None:
            if given(args, flag):
                errors.append(f"{flag.name}: no unified equivalent ({flag.help})")
            continue
        if flag.name in DRAFT_CONFIG_FIELDS:
            item = _draft_field(args, flag, draft)
        else:
            item = value(args, flag)
        if item is None or (flag.store_true and not given(args, flag)):
            continue
        if flag.name == "--eval-interval" and not (given(args, flag) or args.eval_data_path is not None):
            continue  # SpecForge wants eval data and eval_interval together
        if flag.name == "--target-model-backend" and item != "sglang":
            errors.append(
                f"--target-model-backend {item}: the unified runtime runs the target in SGLang only "
                "(model.target_backend: sglang) or reads offline features (--hidden-states-path)"
            )
            continue
        _set(config, flag.yaml, item)
    for dest, name in _NON_EMPTY.items():
        item = getattr(args, dest, None)
        if isinstance(item, str) and not item.strip():
            errors.append(f"{name} {item!r}: empty; accepted: a non-empty value (or leave the flag out)")
    for url in getattr(args, "server_urls", None) or ():
        if not url.strip():
            errors.append(f"--server-url {url!r}: empty; accepted: an SGLang capture server URL")

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

    output_dir = config.pop("output_dir", None)
    if output_dir is None:
        output_dir = "./output"
    config["tracking"] = config.pop("tracking", {}) or {}
    if not config["tracking"]:
        del config["tracking"]
    if args.run_id is not None:
        config["run_id"] = args.run_id
    else:
        config["run_id"] = os.path.basename(os.path.normpath(output_dir)) or "specforge-run"
    config["output_dir"] = output_dir
    config["deployment"] = _deployment(args, config)
    return config


def _deployment(args: argparse.Namespace, config: dict) -> dict:
    """Offline features train colocated; online capture trains disaggregated from SGLang servers (Mooncake)."""
    nproc = 1 if args.nproc_per_node is None else args.nproc_per_node
    trainer = {"nnodes": 1, "nproc_per_node": nproc}
    if config["data"].get("hidden_states_path") is not None:
        return {"mode": "local_colocated", "trainer": trainer}
    if not args.server_urls:
        raise TranslationError(
            "online unified training needs --server-url URL (an SGLang capture server serving the target); "
            "or train offline from captured features with --hidden-states-path"
        )
    out = config["output_dir"]

    def _or(item: Optional[str], default: str) -> str:
        return default if item is None else item

    disaggregated = {
        "control_dir": os.path.join(out, "control"),
        "consumer_state_dir": os.path.join(out, "consumer-state"),
        "backend": "mooncake",  # SpecForge: online disaggregated training requires Mooncake
        "server_urls": list(args.server_urls),
        "mooncake_metadata_server": _or(args.mooncake_metadata_server, "http://127.0.0.1:35880/metadata"),
        "mooncake_master_server_addr": _or(args.mooncake_master_server_addr, "127.0.0.1:35551"),
        "mooncake_protocol": "tcp",
    }
    return {"mode": "disaggregated", "trainer": trainer, "disaggregated": disaggregated}


def dump_yaml(config: dict) -> str:
    import yaml

    header = "# written by specforge-dpace train-dflash (legacy flags -> SpecForge unified config)\n"
    return header + yaml.safe_dump(config, sort_keys=False, default_flow_style=False)


def _flag_of(dotted: str) -> Optional[str]:
    for flag in LEGACY_FLAGS:
        if flag.yaml == dotted:
            return flag.name
    return _WRAPPER_FIELDS.get(dotted)


def describe_schema_errors(exc: Any) -> str:
    """One line per error of a pydantic ``ValidationError``: the flag and value behind the field, and the reason."""
    lines = []
    for error in exc.errors():
        loc = ".".join(str(part) for part in error.get("loc", ()))
        flag = _flag_of(loc)
        reason = str(error.get("msg", "invalid"))
        if flag is not None and "input" in error:
            lines.append(f"{flag} {error['input']!r} ({loc}): {reason}")
        else:
            lines.append(f"{loc or 'config'}: {reason}")
    return "SpecForge's schema rejects the config:\n  " + "\n  ".join(lines)


def validate(config: dict) -> Any:
    """Validate through SpecForge's own schema with the plugin hook installed; returns the Config.

    Raises :class:`SchemaError` (a ``ValueError``) naming the flag, its value and the field for every
    refusal; ``ImportError`` when SpecForge's schema is not installed.
    """
    import specforge_dpace

    specforge_dpace.install()
    from pydantic import ValidationError
    from specforge.config.schema import Config

    try:
        return Config.model_validate(config)
    except ValidationError as exc:
        raise SchemaError(describe_schema_errors(exc)) from None
