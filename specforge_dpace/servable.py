"""What SGLang 0.5.14 serves as a DFlash drafter: the one rule set every check in this package uses.

The rules are derived from SGLang 0.5.14's source (facts, not code, carried over); each names its origin:

- ``srt/models/qwen2.py`` ``Qwen2Model.forward`` and ``srt/models/qwen3.py``
  ``Qwen3ForCausalLM.set_dflash_layers_to_capture``: target layer id ``i`` is captured as the *input* of
  decoder layer ``i + 1`` (the residual stream before that layer's norm), and only while iterating layers
  that exist, each layer once and in layer order.  So an ``n``-layer target can serve ids ``0 .. n - 2``
  only, without repeats, and the features reach the drafter concatenated in increasing layer order
  (``srt/layers/logits_processor.py`` ``_get_hidden_states_to_store``).  HF's ``hidden_states[i + 1]``
  is the same feature for those ids; ``hidden_states[n]`` is after the final norm.  Upstream recipes
  (``dflash_utils.build_target_layer_ids``) pick ids in ``[1, n - 3]``.
- ``srt/speculative/dflash_utils.py`` ``parse_dflash_draft_config``: ``block_size``, ``num_target_layers``
  and ``target_layer_ids`` are read from ``dflash_config`` first, then from the top level;
  ``mask_token_id`` only from ``dflash_config``.  ``DFlashDraftConfig.resolve_target_layer_ids`` refuses
  ids outside ``[0, target num_hidden_layers)`` and, when no ids are given, falls back to
  ``build_target_layer_ids(num_target_layers, draft num_hidden_layers)``.
- ``srt/model_executor/model_runner.py`` (DFlash set-up): the ids are checked against the *runtime*
  target's ``num_hidden_layers``; a different ``num_target_layers`` in the draft config only logs a warning.
- ``srt/speculative/dflash_worker_v2.py`` ``_resolve_mask_token_id``: ``mask_token_id`` must be inside the
  target's vocabulary.  The draft has no embedding or ``lm_head``: it reads the target's.
- ``srt/models/dflash.py`` ``DFlashDraftModel`` / ``DFlashAttention`` / ``DFlashMLP``: ``fc`` is
  ``Linear(len(target_layer_ids) * hidden_size, hidden_size, bias=False)``; q/k/v/o projections carry a
  bias only with ``attention_bias: true``; ``hidden_act`` must be ``silu``.  ``load_weights`` strips a
  ``model.`` prefix, silently skips every name it has no parameter for (so a dropped bias, a misnamed
  tensor or a layer beyond ``num_hidden_layers`` serves untrained values) and fails on a shape mismatch
  (``fc.weight`` explicitly, the rest through the weight loaders' size asserts).

Pure Python: importing this module imports neither torch nor SpecForge.  The entry points are
:func:`check_layer_ids`, :func:`resolve_field`, :func:`check_config`, :func:`expected_weight_shapes`,
:func:`check_weights` and :func:`check_draft`; checks return a :class:`Verdict` whose ``errors`` mean
"SGLang would refuse this or serve it wrong" and whose ``notes`` are harmless facts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

SGLANG_VERSION = "0.5.14"
ARCHITECTURE = "DFlashDraftModel"
SGLANG_DEFAULT_BLOCK_SIZE = 16  # dflash_worker_v2 / speculative_hook fallback when nothing gives one
# Read from dflash_config first, then the top level (parse_dflash_draft_config).
PRECEDENCE_FIELDS = ("block_size", "num_target_layers", "target_layer_ids")
REQUIRED_INTS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size")
QWEN3_DEFAULT_HEAD_DIM = 128  # transformers' Qwen3Config default, which SGLang's AutoConfig load applies
LAYER_TYPES = ("full_attention", "sliding_attention")

_LAYER = re.compile(r"^layers\.(\d+)\.(.+)$")
_ATTN_BIAS = re.compile(r"^layers\.\d+\.self_attn\.[qkvo]_proj\.bias$")
_UNUSED = re.compile(r"^(lm_head\.|embed_tokens\.|rotary_emb\.)|(^|\.)rotary_emb\.inv_freq$")


class ServableError(ValueError):
    """A draft SGLang would refuse or serve wrong; ``errors`` lists every problem."""

    def __init__(self, message: str, errors: Optional[Sequence[str]] = None):
        super().__init__(message)
        self.errors = list(errors) if errors is not None else [message]


# -- target layer ids -------------------------------------------------------------------------


def capturable_layer_ids(num_target_layers: int) -> list[int]:
    """The ids SGLang can capture on an ``n``-layer target: ``0 .. n - 2`` (the last layer never is)."""
    return list(range(max(int(num_target_layers) - 1, 0)))


def recommended_layer_range(num_target_layers: int) -> Optional[tuple[int, int]]:
    """``(1, n - 3)``, the range upstream recipes pick ids from, or None when the target is too small."""
    n = int(num_target_layers)
    return (1, n - 3) if n >= 4 else None


def accepted_layer_ids_text(num_target_layers: int) -> str:
    """Which ids an ``n``-layer target accepts, as one phrase for error messages."""
    n = int(num_target_layers)
    if n < 2:
        return (
            f"none: a {n}-layer target has no layer SGLang can capture (id i is captured as the input of decoder "
            "layer i + 1, so the last layer never is)"
        )
    text = f"distinct ids in increasing order within 0..{n - 2} for a {n}-layer target (never its last layer, {n - 1})"
    recommended = recommended_layer_range(n)
    if recommended:
        text += f"; upstream recipes pick ids in {recommended[0]}..{recommended[1]}"
    return text


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def layer_id_problems(layer_ids: Any, num_target_layers: int) -> list[str]:
    """Why SGLang cannot serve features at ``layer_ids`` from an ``n``-layer target (empty: it can)."""
    n = int(num_target_layers)
    if not isinstance(layer_ids, (list, tuple)) or not all(_is_int(i) for i in layer_ids):
        return [f"must be a list of ints, got {layer_ids!r}"]
    ids = list(layer_ids)
    if not ids:
        return ["is empty (the draft needs at least one target layer's features)"]
    problems = []
    last = [i for i in ids if i == n - 1]
    outside = [i for i in ids if not 0 <= i < n]
    if last:
        problems.append(
            f"id {n - 1} is the last decoder layer: SGLang captures id i as the input of decoder layer i + 1, "
            "so it never captures the last one and the drafter fails at its first draft forward with a feature-size "
            "mismatch (HF's hidden_states[n] is also after the final norm, another feature)"
        )
    if outside:
        problems.append(f"{outside} out of range: the target has decoder layers 0..{n - 1}")
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        problems.append(f"{repeated} repeated: SGLang captures each layer once, so fewer features reach the drafter")
    elif ids != sorted(ids):
        problems.append(
            "not in increasing order: SGLang concatenates the captured features in layer order, so the "
            "drafter would read them in another order than it was trained on"
        )
    return problems


def check_layer_ids(layer_ids: Any, num_target_layers: int, *, name: str = "target_layer_ids") -> list[int]:
    """Return ``layer_ids`` as ints, or raise :class:`ServableError` saying why and which ids are accepted."""
    problems = layer_id_problems(layer_ids, num_target_layers)
    if problems:
        shown = list(layer_ids) if isinstance(layer_ids, (list, tuple)) else layer_ids
        raise ServableError(
            f"{name}={shown} invalid: {'; '.join(problems)}. Accepted: {accepted_layer_ids_text(num_target_layers)}"
        )
    return [int(i) for i in layer_ids]


def default_target_layer_ids(num_target_layers: int, num_draft_layers: int) -> list[int]:
    """SGLang's fallback when a draft config gives no ids (``dflash_utils.build_target_layer_ids``)."""
    n, d = int(num_target_layers), int(num_draft_layers)
    if d == 1:
        return [n // 2]
    if n - 3 < 1:
        raise ServableError(
            f"no target_layer_ids given and SGLang's default (build_target_layer_ids) needs a target with at "
            f"least 4 layers for {d} draft layers, got num_target_layers={n}; set dflash_config.target_layer_ids"
        )
    span = n - 3 - 1
    return [int(round(1 + i * span / (d - 1))) for i in range(d)]


# -- config fields ----------------------------------------------------------------------------


def _get(config: Any, key: str, default: Any = None) -> Any:
    if isinstance(config, Mapping):
        return config.get(key, default)
    return getattr(config, key, default)


def _has(config: Any, key: str) -> bool:
    if isinstance(config, Mapping):
        return key in config
    return hasattr(config, key)


def dflash_section(config: Any) -> Mapping:
    """The ``dflash_config`` mapping of a config (dict or HF object); ``{}`` when absent."""
    section = _get(config, "dflash_config")
    if section is None:
        return {}
    if isinstance(section, Mapping):
        return section
    raise ServableError(f"dflash_config must be a mapping, got {type(section).__name__}: {section!r}")


def resolve_field(config: Any, name: str) -> tuple[Any, Optional[str]]:
    """``(value, where)`` with SGLang's precedence: ``dflash_config.NAME`` first, then top-level ``NAME``.

    ``mask_token_id`` is read from ``dflash_config`` only, as SGLang does.  ``where`` is None when
    neither place holds a non-null value."""
    section = dflash_section(config)
    if section.get(name) is not None:
        return section[name], f"dflash_config.{name}"
    if name in PRECEDENCE_FIELDS and _get(config, name) is not None:
        return _get(config, name), name
    return None, None


def _missing_field(name: str) -> str:
    if name in PRECEDENCE_FIELDS:
        return f"{name} is missing (SGLang looks for dflash_config.{name}, then top-level {name})"
    return f"dflash_config.{name} is missing"


def text_config(config: Any) -> Any:
    """The text part of a (possibly multimodal) config, the way SGLang reads ``hf_text_config``."""
    if isinstance(config, Mapping):
        inner = config.get("text_config")
        return inner if isinstance(inner, Mapping) else config
    getter = getattr(config, "get_text_config", None)
    if callable(getter):
        try:
            resolved = getter()
            if resolved is not None:
                return resolved
        except TypeError:
            pass
    return config


@dataclass(frozen=True)
class TargetShape:
    """What the checks need of the target: sizes SGLang reads from its ``hf_text_config``."""

    hidden_size: int
    vocab_size: int
    num_hidden_layers: int

    @classmethod
    def from_config(cls, config: Any) -> "TargetShape":
        if isinstance(config, TargetShape):
            return config
        text = text_config(config)
        values, missing = {}, []
        for key in ("hidden_size", "vocab_size", "num_hidden_layers"):
            value = _get(text, key)
            if not _is_int(value) or value < 1:
                missing.append(f"{key}={value!r}")
            values[key] = value
        if missing:
            raise ServableError(
                "target config needs positive ints hidden_size, vocab_size and num_hidden_layers; "
                f"got {', '.join(missing)}"
            )
        return cls(**values)


@dataclass
class DraftSpec:
    """A draft config resolved the way SGLang resolves it; ``sources`` says where each field came from.

    Fields are None only where the config has an error (then the :class:`Verdict` lists it)."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    attention_bias: bool
    vocab_size: Optional[int]
    block_size: Optional[int]
    num_target_layers: Optional[int]
    target_layer_ids: list[int]
    mask_token_id: Optional[int]
    sources: dict = field(default_factory=dict)


@dataclass
class Verdict:
    """``errors``: SGLang would refuse the draft or serve it wrong.  ``notes``: harmless, worth saying.
    ``spec``: the resolved config (complete when ``ok``)."""

    errors: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    spec: Optional[DraftSpec] = None

    @property
    def ok(self) -> bool:
        return not self.errors

    def raise_for_errors(self, header: str, error_type: type = ServableError) -> "Verdict":
        if self.errors:
            raise error_type(header + "\n  - " + "\n  - ".join(self.errors))
        return self


def _fallback_layer_ids(capture_layers, draft_layers, n_declared, n_from, verdict: Verdict):
    """SGLang's ids when the config gives none; the target runner derives them from the runtime target,
    the draft model from ``num_target_layers``: they agree only when both counts give the same ids."""
    try:
        ids = default_target_layer_ids(capture_layers, draft_layers)
        if n_declared is not None and ids != default_target_layer_ids(n_declared, draft_layers):
            verdict.errors.append(
                f"no target_layer_ids given and {n_from}={n_declared} differs from the target's {capture_layers} "
                "layers: SGLang's fallback ids would differ between the target's capture and the drafter's fc"
            )
            return None, None
    except ServableError as exc:
        verdict.errors.append(str(exc))
        return None, None
    verdict.notes.append(
        f"no target_layer_ids given: SGLang (and SpecForge) use build_target_layer_ids({capture_layers}, "
        f"{draft_layers}) = {ids}"
    )
    return ids, "target_layer_ids (SGLang's default)"


def check_config(
    config: Any,
    *,
    target: Any = None,
    block_size: Optional[int] = None,
    check_architecture: bool = True,
) -> Verdict:
    """Check a draft config (``config.json`` dict or HF config object) against SGLang's rules.

    ``target``: the target's config (dict, HF object or :class:`TargetShape`) when known; then the layer
    ids, hidden size, vocabulary and mask token are checked against it, otherwise against the draft's
    own ``num_target_layers`` and ``vocab_size``.  ``block_size`` overrides the config's (as SGLang's
    ``--speculative-num-draft-tokens`` does).  ``spec`` is set when no error prevents resolving it."""
    verdict = Verdict()
    errors, notes = verdict.errors, verdict.notes
    if check_architecture:
        archs = _get(config, "architectures")
        if not isinstance(archs, (list, tuple)) or ARCHITECTURE not in archs:
            errors.append(
                f"architectures must contain {ARCHITECTURE!r} (SGLang picks the model class by it), got {archs!r}"
            )
    try:
        section = dflash_section(config)
    except ServableError as exc:
        errors.append(str(exc))
        return verdict

    sizes: dict[str, Any] = {}
    for key in REQUIRED_INTS:
        value = _get(config, key)
        if not _has(config, key) or value is None:
            errors.append(f"config.json is missing {key!r}")
        elif not _is_int(value) or value < 1:
            errors.append(f"config.json {key!r} must be a positive integer, got {value!r}")
        else:
            sizes[key] = value
    act = _get(config, "hidden_act")
    if act is not None and act != "silu":
        errors.append(f"hidden_act={act!r}: SGLang's DFlash MLP supports only 'silu' (models/dflash.py DFlashMLP)")
    head_dim = _get(config, "head_dim")
    if head_dim is None and "num_attention_heads" in sizes:
        if _get(config, "model_type") == "qwen3":
            head_dim = QWEN3_DEFAULT_HEAD_DIM
            notes.append(f"head_dim not given: Qwen3Config's default {head_dim} applies (SGLang loads it the same way)")
        else:
            head_dim = sizes["hidden_size"] // sizes["num_attention_heads"] if "hidden_size" in sizes else None
    elif head_dim is not None and (not _is_int(head_dim) or head_dim < 1):
        errors.append(f"config.json 'head_dim' must be a positive integer, got {head_dim!r}")
        head_dim = None
    attention_bias = _get(config, "attention_bias", False)
    if not isinstance(attention_bias, bool):
        errors.append(f"attention_bias must be true or false, got {attention_bias!r}")
    layer_types = _get(config, "layer_types")
    if layer_types is not None and "num_hidden_layers" in sizes:
        if isinstance(layer_types, str) or not isinstance(layer_types, Sequence):
            errors.append(f"layer_types must be a list of {list(LAYER_TYPES)}, got {layer_types!r}")
        elif len(layer_types) < sizes["num_hidden_layers"]:
            errors.append(
                f"layer_types has {len(layer_types)} entries for num_hidden_layers={sizes['num_hidden_layers']}: "
                "SGLang needs one per draft layer"
            )
        else:
            bad = sorted({t for t in layer_types if t not in LAYER_TYPES})
            if bad:
                errors.append(f"layer_types {bad} unsupported; accepted: {list(LAYER_TYPES)}")
            elif "sliding_attention" in layer_types and _get(config, "sliding_window") is None:
                errors.append("layer_types has sliding_attention but sliding_window is not set")

    # block size: the override (CLI) wins, then dflash_config.block_size, then block_size.
    if block_size is not None:
        size, size_from = block_size, "the given block size"
    else:
        size, size_from = resolve_field(config, "block_size")
    if size is None:
        errors.append(_missing_field("block_size") + f"; SGLang would fall back to {SGLANG_DEFAULT_BLOCK_SIZE}")
    elif not _is_int(size) or size < 2:
        errors.append(
            f"block size {size!r} is invalid ({size_from}); accepted: an int >= 2 (1 anchor slot + drafted slots)"
        )
        size = None

    n_declared, n_from = resolve_field(config, "num_target_layers")
    if n_declared is None:
        errors.append(_missing_field("num_target_layers"))
    elif not _is_int(n_declared) or n_declared < 1:
        errors.append(f"{n_from}={n_declared!r} must be a positive integer")
        n_declared = None

    shape = None
    if target is not None:
        try:
            shape = TargetShape.from_config(target)
        except ServableError as exc:
            errors.append(str(exc))
    if shape is not None:
        if "hidden_size" in sizes and sizes["hidden_size"] != shape.hidden_size:
            errors.append(
                f"draft hidden_size={sizes['hidden_size']} does not match the target's "
                f"hidden_size={shape.hidden_size}: the draft reads the target's embeddings and feeds the target's "
                "lm_head, so both must be equal"
            )
        d_vocab = _get(config, "vocab_size")
        if d_vocab is None:
            notes.append("draft config has no vocab_size; SGLang uses the target's vocabulary")
        elif d_vocab != shape.vocab_size:
            errors.append(
                f"draft vocab_size={d_vocab} does not match the target's vocab_size={shape.vocab_size}: a DFlash "
                "draft is trained on its target's vocabulary (SGLang would serve it with this target's embeddings "
                "and lm_head)"
            )
        if n_declared is not None and n_declared != shape.num_hidden_layers:
            notes.append(
                f"{n_from}={n_declared} but the target has num_hidden_layers={shape.num_hidden_layers}: SGLang warns "
                "and captures from the runtime target"
            )
    capture_layers = shape.num_hidden_layers if shape is not None else n_declared
    layers_of = "the target" if shape is not None else (n_from or "num_target_layers")

    ids, ids_from = resolve_field(config, "target_layer_ids")
    if ids is None and capture_layers is not None and "num_hidden_layers" in sizes:
        ids, ids_from = _fallback_layer_ids(capture_layers, sizes["num_hidden_layers"], n_declared, n_from, verdict)
    elif ids is None:
        errors.append(_missing_field("target_layer_ids"))
    if ids is not None and capture_layers is not None:
        problems = layer_id_problems(ids, capture_layers)
        if problems:
            shown = list(ids) if isinstance(ids, (list, tuple)) else ids
            errors.append(
                f"{ids_from}={shown!r} invalid for {layers_of} ({capture_layers} layers): {'; '.join(problems)}. "
                f"Accepted: {accepted_layer_ids_text(capture_layers)}"
            )
    if not isinstance(ids, (list, tuple)) or not ids or not all(_is_int(i) for i in ids):
        ids = None  # no list of ints to size fc from

    mask = section.get("mask_token_id") if section else None
    mask_limit = shape.vocab_size if shape is not None else _get(config, "vocab_size")
    mask_of = "the target's" if shape is not None else "the draft's"
    if mask is None:
        hint = ""
        if _get(config, "mask_token_id") is not None:
            hint = " (a top-level mask_token_id is ignored: SGLang reads only dflash_config.mask_token_id)"
        errors.append(
            "dflash_config.mask_token_id is missing: SGLang would add a '<|MASK|>' token to the tokenizer instead "
            f"of the id the drafter was trained with{hint}"
            + (f"; set it to the training mask id in [0, {mask_limit - 1}]" if _is_int(mask_limit) else "")
        )
    elif not _is_int(mask) or mask < 0 or (_is_int(mask_limit) and mask >= mask_limit):
        accepted = (
            f"an int in [0, {mask_limit - 1}] ({mask_of} vocab_size={mask_limit})"
            if _is_int(mask_limit)
            else "an int >= 0"
        )
        errors.append(f"dflash_config.mask_token_id={mask!r} is invalid; accepted: {accepted}")
        mask = None

    # The spec sizes the weight check; it is built whenever the sizes resolve, even next to config errors,
    # so one run lists every problem.  Callers use it as settings only when there are no errors.
    if len(sizes) < len(REQUIRED_INTS) or head_dim is None or ids is None:
        return verdict
    verdict.spec = DraftSpec(
        hidden_size=sizes["hidden_size"],
        num_hidden_layers=sizes["num_hidden_layers"],
        num_attention_heads=sizes["num_attention_heads"],
        num_key_value_heads=sizes["num_key_value_heads"],
        head_dim=int(head_dim),
        intermediate_size=sizes["intermediate_size"],
        attention_bias=bool(attention_bias),
        vocab_size=_get(config, "vocab_size"),
        block_size=int(size) if size is not None else None,
        num_target_layers=int(n_declared) if n_declared is not None else capture_layers,
        target_layer_ids=[int(i) for i in ids],
        mask_token_id=int(mask) if mask is not None else None,
        sources={"block_size": size_from, "num_target_layers": n_from, "target_layer_ids": ids_from},
    )
    return verdict


# -- weights ----------------------------------------------------------------------------------


def expected_weight_shapes(spec: DraftSpec) -> dict[str, tuple[int, ...]]:
    """Every tensor SGLang's ``DFlashDraftModel`` loads for ``spec``, with its shape (bare names)."""
    h, hd, inter = spec.hidden_size, spec.head_dim, spec.intermediate_size
    q, kv = spec.num_attention_heads * hd, spec.num_key_value_heads * hd
    shapes: dict[str, tuple[int, ...]] = {
        "fc.weight": (h, len(spec.target_layer_ids) * h),
        "hidden_norm.weight": (h,),
        "norm.weight": (h,),
    }
    for i in range(spec.num_hidden_layers):
        p = f"layers.{i}."
        shapes.update(
            {
                p + "self_attn.q_proj.weight": (q, h),
                p + "self_attn.k_proj.weight": (kv, h),
                p + "self_attn.v_proj.weight": (kv, h),
                p + "self_attn.o_proj.weight": (h, q),
                p + "self_attn.q_norm.weight": (hd,),
                p + "self_attn.k_norm.weight": (hd,),
                p + "mlp.gate_proj.weight": (inter, h),
                p + "mlp.up_proj.weight": (inter, h),
                p + "mlp.down_proj.weight": (h, inter),
                p + "input_layernorm.weight": (h,),
                p + "post_attention_layernorm.weight": (h,),
            }
        )
        if spec.attention_bias:
            shapes.update(
                {
                    p + "self_attn.q_proj.bias": (q,),
                    p + "self_attn.k_proj.bias": (kv,),
                    p + "self_attn.v_proj.bias": (kv,),
                    p + "self_attn.o_proj.bias": (h,),
                }
            )
    return shapes


def fused_weights(spec: DraftSpec) -> dict[str, list[tuple[str, int]]]:
    """SGLang's own fused parameter names, which its ``load_weights`` also accepts as they are:
    ``fused name -> [(separate name, rows), ...]`` in the order the rows are stacked (q, k, v; gate, up)."""
    q, kv = spec.num_attention_heads * spec.head_dim, spec.num_key_value_heads * spec.head_dim
    plan: dict[str, list[tuple[str, int]]] = {}
    for i in range(spec.num_hidden_layers):
        a, m = f"layers.{i}.self_attn.", f"layers.{i}.mlp."
        kinds = ("weight", "bias") if spec.attention_bias else ("weight",)
        for kind in kinds:
            plan[f"{a}qkv_proj.{kind}"] = [
                (f"{a}q_proj.{kind}", q),
                (f"{a}k_proj.{kind}", kv),
                (f"{a}v_proj.{kind}", kv),
            ]
        plan[f"{m}gate_up_proj.weight"] = [
            (f"{m}gate_proj.weight", spec.intermediate_size),
            (f"{m}up_proj.weight", spec.intermediate_size),
        ]
    return plan


def strip_model_prefix(name: str) -> str:
    """The name SGLang's ``load_weights`` resolves: one leading ``model.`` removed."""
    return name[len("model.") :] if name.startswith("model.") else name


def is_unused_weight(name: str) -> bool:
    """Tensors SGLang's DFlash model has no parameter for and needs none: target embeddings/head, rotary caches."""
    return bool(_UNUSED.search(strip_model_prefix(name)))


def _listed(names: Sequence[str], limit: int = 12) -> str:
    names = list(names)
    return ", ".join(names[:limit]) + (f" ... ({len(names)} in all)" if len(names) > limit else "")


def check_weights(shapes: Mapping[str, Sequence[int]], spec: DraftSpec) -> tuple[list[str], list[str]]:
    """``(errors, notes)`` for a checkpoint's ``name -> shape`` map against what SGLang loads for ``spec``."""
    errors: list[str] = []
    notes: list[str] = []
    expected = expected_weight_shapes(spec)
    found: dict[str, tuple[int, ...]] = {}
    originals: dict[str, list[str]] = {}
    for name, shape in shapes.items():
        bare = strip_model_prefix(name)
        originals.setdefault(bare, []).append(name)
        found[bare] = tuple(int(d) for d in shape)
    duplicated = sorted(b for b, names in originals.items() if len(names) > 1)
    if duplicated:
        errors.append(
            "weights given twice, with and without a 'model.' prefix (SGLang strips it and loads both into one "
            f"parameter): {_listed([' / '.join(originals[b]) for b in duplicated])}"
        )
    for fused_name, parts in fused_weights(spec).items():
        if fused_name not in found:
            continue
        separate = [name for name, _ in parts if name in found]
        if separate:
            errors.append(
                f"{fused_name} and {_listed(separate)} both given: SGLang loads them into the same parameter, "
                "the later one winning; keep one form"
            )
        first = expected.pop(parts[0][0])
        for name, _ in parts[1:]:
            expected.pop(name)
        expected[fused_name] = (sum(rows for _, rows in parts),) + first[1:]
    prefixed = sorted(n for n in shapes if n.startswith("model.") and strip_model_prefix(n) in expected)
    if prefixed:
        notes.append(f"{len(prefixed)} weight names carry a 'model.' prefix; SGLang strips it (fine)")

    unused = sorted(n for n in shapes if strip_model_prefix(n) not in expected and is_unused_weight(n))
    if unused:
        notes.append(
            f"tensors SGLang's DFlash model does not use, ignored (it takes the target's embeddings and lm_head, "
            f"and recomputes rotary tables): {_listed(unused)}"
        )
    unknown = [b for b in sorted(found) if b not in expected and not is_unused_weight(b)]
    fc_bias = [b for b in unknown if b == "fc.bias"]
    layer_fc_bias = [b for b in unknown if b != "fc.bias" and b.endswith("fc.bias")]
    attn_bias = [b for b in unknown if _ATTN_BIAS.match(b) and int(_LAYER.match(b).group(1)) < spec.num_hidden_layers]
    beyond = [b for b in unknown if (m := _LAYER.match(b)) and int(m.group(1)) >= spec.num_hidden_layers]
    rest = [b for b in unknown if b not in set(fc_bias + layer_fc_bias + attn_bias + beyond)]
    if fc_bias:
        errors.append(
            "fc.bias: SGLang's fc has no bias (Linear(..., bias=False) in models/dflash.py), so the trained bias "
            "would be dropped; accepted: no fc.bias"
        )
    if layer_fc_bias:
        errors.append(
            f"{_listed(layer_fc_bias)}: there is no per-layer fc in SGLang's DFlash model (only one top-level fc, "
            "without a bias); SGLang would drop these"
        )
    if attn_bias:
        errors.append(
            f"attention biases with attention_bias: false ({_listed(attn_bias)}): SGLang builds q/k/v/o_proj "
            "without a bias and would drop these trained values; set attention_bias: true"
        )
    if beyond:
        layers = sorted({int(_LAYER.match(b).group(1)) for b in beyond})
        errors.append(
            f"weights of layers {layers} exceed num_hidden_layers={spec.num_hidden_layers}: SGLang builds "
            f"{spec.num_hidden_layers} layers and silently drops {_listed(beyond)}"
        )
    if rest:
        errors.append(
            f"unknown weights SGLang would silently skip (they would serve as untrained values): {_listed(rest)}"
        )

    missing = [n for n in expected if n not in found]
    missing_bias = [n for n in missing if _ATTN_BIAS.match(n)]
    missing_other = [n for n in missing if n not in set(missing_bias)]
    if missing_bias:
        errors.append(
            f"attention_bias: true but the bias tensors are missing ({_listed(missing_bias)}): SGLang builds them "
            "and serves them untrained; set attention_bias: false if the drafter has no attention biases"
        )
    if missing_other:
        errors.append(f"missing weights (SGLang would serve them untrained): {_listed(missing_other)}")
    for name, want in expected.items():
        have = found.get(name)
        if have is None or have == want:
            continue
        if name == "fc.weight":
            k = len(spec.target_layer_ids)
            errors.append(
                f"fc.weight has shape {list(have)}, expected {list(want)} = [hidden_size, len(target_layer_ids) * "
                f"hidden_size] = [{spec.hidden_size}, {k} * {spec.hidden_size}] (SGLang's load_weights refuses it)"
            )
        else:
            errors.append(
                f"{name} has shape {list(have)}, expected {list(want)} from the config (SGLang's loader refuses it)"
            )
    return errors, notes


def check_draft(
    config: Any,
    shapes: Optional[Mapping[str, Sequence[int]]],
    *,
    target: Any = None,
    block_size: Optional[int] = None,
    check_architecture: bool = True,
) -> Verdict:
    """:func:`check_config`, then :func:`check_weights` when the sizes resolved and ``shapes`` is given."""
    verdict = check_config(config, target=target, block_size=block_size, check_architecture=check_architecture)
    if shapes is not None and verdict.spec is not None:
        errors, notes = check_weights(shapes, verdict.spec)
        verdict.errors.extend(errors)
        verdict.notes.extend(notes)
    return verdict


__all__ = [
    "ARCHITECTURE",
    "PRECEDENCE_FIELDS",
    "SGLANG_VERSION",
    "DraftSpec",
    "ServableError",
    "TargetShape",
    "Verdict",
    "accepted_layer_ids_text",
    "capturable_layer_ids",
    "check_config",
    "check_draft",
    "check_layer_ids",
    "check_weights",
    "default_target_layer_ids",
    "dflash_section",
    "expected_weight_shapes",
    "fused_weights",
    "is_unused_weight",
    "layer_id_problems",
    "recommended_layer_range",
    "resolve_field",
    "strip_model_prefix",
    "text_config",
]
