"""Load, validate and save target / DFlash-family draft checkpoints, by the rules of :mod:`specforge_dpace.serving`.

A draft directory is ``config.json`` + safetensors weights in one of two layouts:

- a server's (``serving.DEFAULT_SERVER``, SGLang 0.5.23, by default): DFlash as ``DFlashDraftModel``;
  Domino as ``DFlashDraftModel`` with ``dflash_config.projector_type: "domino"`` and an explicit
  ``shift_label``; DSpark as ``DSparkDraftModel`` with its Markov / confidence fields at the top level too;
- SpecForge's ``export --to hf`` layout (``DominoDraftModel`` / ``DSparkDraftModel``, head fields in
  ``dflash_config`` only).

:func:`save_draft_checkpoint` writes the layout a named server loads, refusing (before anything is
written) a drafter that server cannot serve; :func:`load_draft` reads either layout, checked by the rules
of the layout it is in (:func:`serving.layout_of`), into SpecForge's class for the method.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from specforge_dpace import serving
from specforge_dpace.serving import DFLASH, METHOD_NAMES
from specforge_dpace.serving._convert import MASK_EMBEDDING, read_config, read_state, shapes_of, specforge_state

DRAFT_ARCHITECTURE = serving.ARCHITECTURES[DFLASH]


def _get(config: Any, key: str, default: Any = None) -> Any:
    if isinstance(config, dict):
        return config.get(key, default)
    return getattr(config, key, default)


def _config_rules(draft_config: Any) -> tuple[str, serving.ServerRules]:
    """``(method, rules)`` for a config: its layout's rules when ``architectures`` name a method, else an
    in-memory DFlash config checked by SpecForge's layout rules."""
    archs = _get(draft_config, "architectures") or []
    if isinstance(archs, (list, tuple)) and any(a in serving.ARCHITECTURES.values() for a in archs):
        method = serving.draft_method(draft_config)
        if isinstance(draft_config, dict):
            return method, serving.layout_of(draft_config)
        return method, serving.rules_for(serving.SPECFORGE)  # an HF config object of a SpecForge class
    return DFLASH, serving.rules_for(serving.SPECFORGE)


def validate_pair(
    target_config: Any, draft_config: Any, block_size: Optional[int] = None, *, method: Optional[str] = None
) -> dict:
    """Check that a draft config fits a target config; return the resolved draft settings.

    ``draft_config`` is a ``config.json`` dict (checked by the rules of its layout) or a SpecForge draft's HF
    config (SpecForge's layout).  Raises ``ValueError`` naming every bad value and what is accepted (hidden
    size, vocabulary, target layer ids SGLang can capture on this target, mask token inside the target
    vocabulary, block size, the method's head fields).  Returns ``{"block_size", "target_layer_ids",
    "mask_token_id"}``."""
    found, rules = _config_rules(draft_config)
    method = method or found
    verdict = serving.check_draft(
        draft_config, None, server=rules, method=method, target=target_config, block_size=block_size
    )
    if not verdict.ok:
        # an in-memory config names no architecture: only its fields are checked
        verdict.errors = [e for e in verdict.errors if not e.startswith("architectures must contain")]
    verdict.raise_for_errors(f"the {METHOD_NAMES[method]} draft does not fit the target ({rules.name} rules):")
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


def _check_activation(act, where: str) -> None:
    """A ``hidden_act`` a server builds but SpecForge's draft classes (Qwen3's MLP) cannot: refused by name."""
    from transformers.activations import ACT2FN

    if act is not None and act not in ACT2FN:
        raise ValueError(
            f"draft {where!r}: hidden_act={act!r} is served by SGLang but SpecForge's draft classes (Qwen3 MLP) "
            "cannot build it, so the evaluator cannot decode this drafter; accepted: an activation transformers "
            "knows (silu, as SpecForge trains)"
        )


def _model_spec(draft_model) -> serving.DraftSpec:
    n_target = _get(draft_model.config, "num_target_layers")
    return serving.DraftSpec(
        hidden_size=0, num_hidden_layers=0, num_attention_heads=0, num_key_value_heads=0, head_dim=0,
        intermediate_size=0, attention_bias=False, vocab_size=None,
        block_size=int(draft_model.block_size),
        num_target_layers=int(n_target) if n_target is not None else None,
        target_layer_ids=[int(i) for i in draft_model.target_layer_ids],
        mask_token_id=draft_model.mask_token_id,
    )  # fmt: skip


def server_layout(draft_model, server: str = serving.DEFAULT_SERVER) -> tuple[str, dict]:
    """``(method, config dict)`` of a SpecForge draft model in the layout ``server`` loads; a ``ValueError``
    with the reason when that server does not serve the method."""
    from ._proposals import model_method

    rules = serving.rules_for(server)
    method = model_method(draft_model)
    problem = rules.serving_problem(method)
    if problem:
        raise ValueError(problem)
    canonical = serving.canonical_config(serving.model_config(draft_model.config), method, _model_spec(draft_model))
    return method, rules.method(method).write_config(canonical)


def check_served(draft_model, server: str, target_config=None) -> None:
    """Refuse, naming why, a drafter that ``server`` would not serve (SpecForge's own rules serve every class):
    what is decoded or walked as a server is what that server would load."""
    if serving.rules_for(server).server == "specforge":
        return
    method, served = server_layout(draft_model, server)
    verdict = serving.check_draft(served, None, server=server, method=method, target=target_config)
    verdict.raise_for_errors(
        f"{server} would not serve this {METHOD_NAMES[method]} drafter, so the evaluator does not decode it as "
        f"that server (convention {serving.SPECFORGE!r} decodes it as SpecForge's class):"
    )


def save_draft_checkpoint(draft_model, path, *, server: str = serving.DEFAULT_SERVER) -> Path:
    """Write ``draft_model`` (a SpecForge ``DFlashDraftModel``, ``DominoDraftModel`` or ``DSparkDraftModel``)
    as ``config.json`` + ``model.safetensors`` in the layout ``server`` loads (SGLang 0.5.23 by default;
    ``serving.SPECFORGE`` for SpecForge's own).  Returns the directory.

    A drafter that server cannot serve (a method it does not serve, a Domino trained with
    ``pure_draft_prefix_len`` other than 1, a DSpark without a Markov head, a target layer id it never
    captures, a weight it would drop or mis-size) is refused before anything is written, naming why."""
    from specforge_dpace.serving._convert import write_layout

    path = Path(path)
    method, config = server_layout(draft_model, server)
    state = {k: v.detach().contiguous().cpu().clone() for k, v in draft_model.state_dict().items()}
    write_layout(path, config, state, rules=serving.rules_for(server), method=method)
    return path


def read_draft_config(path) -> dict:
    """The draft directory's ``config.json`` as a dict, with a clear error if it is not a DFlash, Domino
    or DSpark draft (its ``architectures`` / ``projector_type`` name the method)."""
    return read_config(Path(path))


def _mask_embedding(path: Path, rules: serving.ServerRules, method: str, mask_token_id: int):
    """The trained mask embedding SGLang 0.5.23's DFLASH worker merges into the target's mask row
    (``mask_embedding.pt`` beside the weights, ``dflash_worker_v2.py:1318-1380``), or None."""
    file = path / MASK_EMBEDDING
    if not file.is_file() or rules.name != "sglang-0.5.23" or method == serving.DSPARK:
        return None
    import torch

    saved = torch.load(str(file), map_location="cpu", weights_only=True)
    if saved.get("per_position"):
        raise ValueError(f"{file}: per-position mask embeddings are not served by SGLang 0.5.23 (NotImplementedError)")
    if int(saved["mask_token_id"]) != int(mask_token_id):
        raise ValueError(
            f"{file} was trained with mask_token_id={int(saved['mask_token_id'])} but the draft resolves "
            f"mask_token_id={mask_token_id}: SGLang 0.5.23 refuses the pair ('These must match')"
        )
    return saved["embedding"]


def load_draft(
    path,
    target_config=None,
    *,
    dtype=None,
    device=None,
    attn_implementation: str = "sdpa",
    block_size: Optional[int] = None,
    server: Optional[str] = None,
):
    """Build the SpecForge draft model of a draft directory (``DFlashDraftModel``, ``DominoDraftModel`` or
    ``DSparkDraftModel`` by its method), checked against ``target_config`` when given.

    ``server`` names the rule set to check with; by default the one whose layout the directory is in
    (:func:`serving.layout_of`).  Exactly what that server would serve loads: fields with its precedence, a
    ``model.`` prefix stripped, fused tensors split, ignored tensors skipped; anything it would refuse or
    serve untrained is a ``ValueError`` naming it.  ``block_size`` stands for an explicit launch flag.  A
    ``mask_embedding.pt`` SGLang 0.5.23 would merge is attached as ``draft.served_mask_embedding``."""
    path = Path(path)
    raw = read_draft_config(path)
    rules = serving.rules_for(server) if server else serving.layout_of(raw)
    draft = draft_from_state(
        raw,
        read_state(path),
        str(path),
        target_config,
        dtype=dtype,
        device=device,
        attn_implementation=attn_implementation,
        block_size=block_size,
        server=rules.name,
    )
    draft.served_mask_embedding = _mask_embedding(path, rules, serving.draft_method(raw), draft.mask_token_id)
    return draft


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
    server: Optional[str] = None,
):
    """:func:`load_draft` of a config dict and a weight dict (``where`` names their source in errors): the
    same rules, so SpecForge's own checkpoints (``draft_state_dict``) load like an export directory."""
    from specforge.modeling.draft.dflash import DFlashDraftModel
    from specforge.modeling.draft.domino import DominoDraftModel
    from specforge.modeling.draft.dspark import DSparkDraftModel
    from transformers import Qwen3Config

    classes = {DFLASH: DFlashDraftModel, serving.DOMINO: DominoDraftModel, serving.DSPARK: DSparkDraftModel}
    method = serving.draft_method(raw, where=f"draft config of {where!r}")
    rules = serving.rules_for(server) if server else serving.layout_of(raw)
    verdict = serving.check_draft(
        raw, shapes_of(state), server=rules, method=method, target=target_config, block_size=block_size
    )
    verdict.raise_for_errors(f"{METHOD_NAMES[method]} draft {where!r} does not load by the {rules.name} rules:")
    spec = verdict.spec
    _check_block_size(spec.block_size, block_size, f"draft {where!r}")
    canonical = serving.canonical_config(raw, method, spec)
    if method == serving.DSPARK and not any(
        serving.specforge_head_name(n).startswith("confidence_head.") for n in state
    ):
        # a server that builds no confidence head (SGLang's static ragged-verify mode) serves this; decoding never
        # reads the head, so SpecForge's class is built without it
        canonical["dflash_config"].update(enable_confidence_head=False, confidence_head_with_markov=False)
    _check_activation(canonical.get("hidden_act"), where)
    config = Qwen3Config(**{k: v for k, v in canonical.items() if k not in ("architectures", "model_type")})
    config.architectures = [serving.ARCHITECTURES[method]]
    config._attn_implementation = attn_implementation
    draft = classes[method](config)
    served = specforge_state(state, spec, rules)  # SpecForge's names, fused tensors split
    expected = set(draft.state_dict())
    missing = sorted(expected - set(served))
    unexpected = sorted(set(served) - expected)
    if missing or unexpected:  # SpecForge's module and the server's rules disagree: never load half a draft
        raise ValueError(
            f"draft weights in {where!r} do not match SpecForge's {type(draft).__name__}: missing {missing[:8]}, "
            f"unexpected {unexpected[:8]}"
        )
    draft.load_state_dict(served, strict=True)
    draft.served_mask_embedding = None
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
