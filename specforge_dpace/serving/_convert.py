"""Move a drafter between layouts: read a draft directory in any layout the rule sets know (SpecForge's
``export --to hf``, a server's, a plugin-trained drafter), write it in the layout a named server version
loads, refusing with the reasons what that server cannot serve.

Tensor reading and writing import ``safetensors`` (and torch) inside the functions; importing this module
stays pure Python like the rest of :mod:`specforge_dpace.serving`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from . import _backbone
from ._common import DraftSpec, ServableError
from ._heads import specforge_head_name
from ._layout import canonical_config
from ._methods import METHOD_NAMES, draft_method
from ._table import ServerRules

MASK_EMBEDDING = "mask_embedding.pt"  # sglang/srt/speculative/dflash_worker_v2.py:1318-1380 (0.5.23, DFLASH)


def specforge_state(state: Mapping[str, Any], spec: DraftSpec, rules: ServerRules) -> dict:
    """Tensors named as SpecForge's classes name them: the rule set's aliases resolved (SGLang 0.5.23's
    ``encoder.*``), ``model.`` stripped, early ``logit_head.`` names mapped, tensors servers ignore
    (``lm_head``, ``embed_tokens``, rotary caches) dropped, SGLang's fused ``qkv_proj`` / ``gate_up_proj``
    split into the separate tensors."""
    served = {}
    for name, tensor in state.items():
        if _backbone.is_unused_weight(name):
            continue
        served[rules.weight_aliases.get(name, specforge_head_name(name))] = tensor
    for fused, parts in _backbone.fused_weights(spec).items():
        if fused in served:
            tensor, offset = served.pop(fused), 0
            for name, rows in parts:
                served[name] = tensor[offset : offset + rows].clone()
                offset += rows
    return served


def read_state(path: Path) -> dict:
    """Every tensor of a directory's ``*.safetensors`` files (a name stored twice is an error)."""
    from safetensors.torch import load_file

    files = sorted(Path(path).glob("*.safetensors"))
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


def read_config(path: Path) -> dict:
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise ValueError(f"draft path {str(path)!r} has no config.json (expected a DFlash-family draft directory)")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if not isinstance(config, dict):
        raise ValueError(f"draft config {str(config_file)!r} is not a JSON object")
    draft_method(config, where=f"draft config {str(config_file)!r}")
    return config


def shapes_of(state: Mapping[str, Any]) -> dict:
    return {name: tuple(tensor.shape) for name, tensor in state.items()}


def write_layout(
    path: Path, config: dict, state: Mapping[str, Any], *, rules: ServerRules, method: str, check_kwargs=None
):
    """Check ``config`` + ``state`` against ``rules`` and write ``config.json`` + ``model.safetensors`` into
    ``path`` (created); nothing is written when the check fails (a :class:`ServableError` listing why)."""
    from safetensors.torch import save_file

    from . import check_draft

    verdict = check_draft(config, shapes_of(state), server=rules, method=method, **(check_kwargs or {}))
    verdict.raise_for_errors(f"{rules.name} cannot serve this {METHOD_NAMES[method]} drafter, so nothing was written:")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return verdict


@dataclass
class Conversion:
    """What :func:`convert` did: the method, the rule sets read and written, the launch flags, notes."""

    method: str
    source_rules: str
    rules: str
    launch: list = field(default_factory=list)
    notes: list = field(default_factory=list)


def convert(
    source,
    destination,
    *,
    server: str,
    source_server: Optional[str] = None,
    target: Any = None,
    options: Optional[Mapping[str, Any]] = None,
    overwrite: bool = False,
    layout: Optional[str] = None,
) -> Conversion:
    """Write the drafter in ``source`` to ``destination`` in the layout ``server`` loads.

    ``source_server``: the rule set the source's layout is read by (default: :func:`layout_of`); the source
    must load by it.  ``target``: the target's config (mapping) to check layer ids, sizes and the mask token
    against.  ``options``: the server's check options (DSpark: ``ragged_verify_mode``).  ``layout``: one of the
    layouts the server loads the method in (vLLM's DFlash: ``zlab``, ``speculators``; default its first).
    Refused, with the reasons and nothing written: a method ``server`` does not serve, a field or tensor it
    would read wrong, an existing non-empty ``destination`` (unless ``overwrite``)."""
    from . import layout_of, rules_for

    source, destination = Path(source), Path(destination)
    if source.resolve() == destination.resolve():
        raise ValueError(f"--out {str(destination)!r} is the source directory; accepted: another directory")
    if destination.exists() and any(destination.iterdir()) and not overwrite:
        raise ValueError(
            f"--out {str(destination)!r} exists and is not empty; accepted: a new directory, or --overwrite"
        )
    rules = rules_for(server)
    raw = read_config(source)
    method = draft_method(raw)
    problem = rules.serving_problem(method)
    if problem:
        raise ValueError(problem)
    writer = rules.method(method).writer(layout)
    from_rules = rules_for(source_server) if source_server else layout_of(raw)
    state = read_state(source)
    from . import check_draft

    verdict = check_draft(raw, shapes_of(state), server=from_rules, method=method, target=target)
    verdict.raise_for_errors(f"{str(source)!r} does not load by the rules of its layout ({from_rules.name}):")
    canonical = canonical_config(raw, method, verdict.spec)
    tensors = specforge_state(state, verdict.spec, from_rules)
    config = writer(canonical)
    out = write_layout(
        destination, config, tensors, rules=rules, method=method,
        check_kwargs={"target": target, "options": options},
    )  # fmt: skip
    notes = list(out.notes)
    mask = source / MASK_EMBEDDING
    if mask.is_file():
        shutil.copyfile(mask, destination / MASK_EMBEDDING)
        notes.append(
            f"{MASK_EMBEDDING} copied: SGLang 0.5.23's DFLASH worker merges it into the target's mask row; vLLM 0.33's "
            "DFlash loader substitutes it for the mask token's embedding (qwen3_dflash.py:894-931)"
        )
    mrules = rules.method(method)
    launch = mrules.launch(str(destination), verdict.spec.block_size) if mrules.launch else []
    return Conversion(method, from_rules.name, rules.name, launch, notes)


__all__ = ["Conversion", "ServableError", "convert", "read_config", "read_state", "specforge_state", "write_layout"]
