"""Serving rules: what each server and version loads, how it launches, decodes and reports a DFlash,
Domino or DSpark drafter.  One home for every such rule in the package; a server version is a table entry.

Entries: ``sglang-0.5.14`` (DFlash), ``sglang-0.5.23`` (DFlash, Domino as a DFLASH sub-mode, DSpark as its
own algorithm), ``vllm-0.33.0`` (DFlash in the z-lab or speculators layout, DSpark; no Domino) and
``specforge-0.2.0`` (the layout SpecForge's ``export --to hf`` writes, decoded as its classes sample blocks).
:func:`register_server` adds one.  docs/serving-sglang.md and docs/serving-vllm.md list every rule with the
wheel's file:line.

Pure Python: importing this package imports neither torch, SpecForge nor any server.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional

from ._backbone import (
    BackboneRules,
    expected_weight_shapes,
    fused_weights,
    is_unused_weight,
    strip_model_prefix,
)
from ._capture import (
    accepted_layer_ids_text,
    capturable_layer_ids,
    check_layer_ids,
    default_target_layer_ids,
    layer_id_problems,
    recommended_layer_range,
)
from ._common import DraftSpec, ServableError, TargetShape, Verdict, dflash_section, text_config
from ._convert import convert as convert_draft
from ._fields import FieldRead, read_field
from ._heads import expected_head_shapes, is_head_weight, specforge_head_name, specforge_settings
from ._layout import canonical_config, model_config
from ._methods import (
    ARCHITECTURES,
    DFLASH,
    DOMINO,
    DSPARK,
    METHOD_NAMES,
    METHODS,
    draft_method,
)
from ._sglang import META_FIELD_PROFILES, SGLANG_0_5_14, SGLANG_0_5_23, sglang_rules
from ._specforge import SPECFORGE_0_2_0
from ._table import DRAFT_SAMPLINGS, Decoding, MethodRules, ServerRules
from ._vllm import VLLM_0_33_0, is_speculators, speculative_config

DEFAULT_SERVER = "sglang-0.5.23"
SPECFORGE = SPECFORGE_0_2_0.name
_SERVERS: dict[str, ServerRules] = {}


def register_server(rules: ServerRules) -> ServerRules:
    """Add a server version's rule set; a name already registered is refused."""
    if not isinstance(rules, ServerRules):
        raise TypeError(f"register_server takes a ServerRules, got {type(rules).__name__}")
    if rules.name in _SERVERS:
        raise ValueError(f"server rules {rules.name!r} are already registered")
    unknown = sorted(set(rules.methods) - set(METHODS))
    if unknown:
        raise ValueError(f"server rules {rules.name!r} name unknown methods {unknown}; accepted: {list(METHODS)}")
    _SERVERS[rules.name] = rules
    return rules


for _rules in (SGLANG_0_5_14, SGLANG_0_5_23, VLLM_0_33_0, SPECFORGE_0_2_0):
    register_server(_rules)


def servers() -> dict[str, ServerRules]:
    return dict(_SERVERS)


def rules_for(name: str) -> ServerRules:
    """The rule set named ``name`` (``sglang-0.5.23``, ...); a ``ValueError`` listing the known ones."""
    try:
        return _SERVERS[name]
    except KeyError:
        raise ValueError(f"unknown server {name!r}; accepted: {', '.join(sorted(_SERVERS))}") from None


def served_text() -> str:
    """Which server version serves which method, one line per entry (for ``--help``)."""
    lines = []
    for rules in _SERVERS.values():
        if rules.server == "specforge":
            continue
        parts = []
        for m in rules.methods.values():
            if m.served and rules.server == "vllm":
                parts.append(f"{m.name} (--speculative-config method {m.algorithm})")
            elif m.served:
                parts.append(f"{m.name} (--speculative-algorithm {m.algorithm})" if m.algorithm else m.name)
        lines.append(f"{rules.name}: {', '.join(parts) or 'nothing'}")
    return "; ".join(lines)


def layout_of(config: Any) -> ServerRules:
    """The rule set whose layout ``config`` is in: vLLM 0.33's for its speculators layout, SpecForge's
    (``DominoDraftModel``, a ``DSparkDraftModel`` without the top-level ``markov_rank`` SGLang's constructor
    reads) or SGLang 0.5.23's (which also reads vLLM's z-lab DFlash and DSpark layouts)."""
    if is_speculators(config):
        return VLLM_0_33_0
    method = draft_method(config)
    archs = list(config.get("architectures") or []) if isinstance(config, Mapping) else []
    if method == DOMINO and ARCHITECTURES[DOMINO] in archs:
        return SPECFORGE_0_2_0
    if method == DSPARK and (config.get("markov_rank") if isinstance(config, Mapping) else None) is None:
        return SPECFORGE_0_2_0
    return SGLANG_0_5_23


def check_draft(
    config: Any,
    shapes: Optional[Mapping[str, Sequence[int]]] = None,
    *,
    server: str | ServerRules = DEFAULT_SERVER,
    method: Optional[str] = None,
    target: Any = None,
    block_size: Optional[int] = None,
    options: Optional[Mapping[str, Any]] = None,
) -> Verdict:
    """A draft (config + ``name -> shape``, or None to check the config alone) against ``server``'s rules.

    ``method`` defaults to :func:`draft_method` of the config; ``target`` is the target's config (checks layer
    ids, sizes and the mask token against it); ``block_size`` stands for a launch flag's block size."""
    rules = rules_for(server) if isinstance(server, str) else server
    method = method or draft_method(config)
    return rules.check(
        config, shapes, server=rules, method=method, target=target, block_size=block_size, options=options
    )


__all__ = [
    "ARCHITECTURES",
    "DEFAULT_SERVER",
    "DFLASH",
    "DOMINO",
    "DRAFT_SAMPLINGS",
    "DSPARK",
    "META_FIELD_PROFILES",
    "METHODS",
    "METHOD_NAMES",
    "SPECFORGE",
    "BackboneRules",
    "Decoding",
    "DraftSpec",
    "FieldRead",
    "MethodRules",
    "ServableError",
    "ServerRules",
    "TargetShape",
    "VLLM_0_33_0",
    "Verdict",
    "accepted_layer_ids_text",
    "canonical_config",
    "capturable_layer_ids",
    "check_draft",
    "check_layer_ids",
    "convert_draft",
    "default_target_layer_ids",
    "dflash_section",
    "draft_method",
    "expected_head_shapes",
    "expected_weight_shapes",
    "fused_weights",
    "is_head_weight",
    "is_speculators",
    "is_unused_weight",
    "layer_id_problems",
    "layout_of",
    "model_config",
    "read_field",
    "recommended_layer_range",
    "register_server",
    "rules_for",
    "served_text",
    "servers",
    "sglang_rules",
    "speculative_config",
    "specforge_head_name",
    "specforge_settings",
    "strip_model_prefix",
    "text_config",
]
