"""SGLang's DFlash backbone loader rules (``srt/models/dflash.py`` ``DFlashDraftModel`` and
``srt/speculative/dflash_utils.py`` ``parse_dflash_draft_config``), parametrized by a :class:`BackboneRules`
per version; Domino and DSpark drafters share this backbone (``layers.*``, ``fc``, ``hidden_norm``, ``norm``).

The facts (paths under ``sglang/srt/``; ``14:`` = 0.5.14, ``23:`` = 0.5.23):

- ``block_size``, ``num_target_layers`` and ``target_layer_ids``: ``dflash_config`` first, then the top level
  (14: dflash_utils.py:480-519, 23: 596-674), ``dict.get`` semantics (see ``_fields``); ``mask_token_id`` only
  from ``dflash_config`` on 0.5.14 (14: 530) and from ``dflash_config``, then the top level, on 0.5.23 (23: 688-702).
- ``model_runner.py`` (DFlash set-up) checks the ids against the *runtime* target's ``num_hidden_layers``; a
  different ``num_target_layers`` only logs a warning.  ``dflash_worker_v2._resolve_mask_token_id``: the mask
  id must be inside the target vocabulary.  The draft has no embedding or ``lm_head``: it reads the target's.
- ``DFlashDraftModel``: ``fc`` is ``Linear(len(target_layer_ids) * hidden, hidden, bias=False)``; q/k/v/o carry
  a bias only with ``attention_bias: true``; ``DFlashMLP`` accepts ``hidden_act`` ``silu`` (0.5.23 also
  ``swigluoai``, which no SpecForge drafter uses).  ``load_weights`` strips a ``model.`` prefix, silently skips
  every name it has no parameter for (a dropped bias, a misnamed tensor or a layer beyond
  ``num_hidden_layers`` serves untrained values) and fails on a shape mismatch (14: dflash.py:449-520,
  23: 886-999; 0.5.23 also aliases ``encoder.fc.weight`` / ``encoder.output_norm_enc.weight``, 23: 900-903).

Pure Python: importing this module imports neither torch nor SpecForge.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ._capture import accepted_layer_ids_text, default_target_layer_ids, layer_id_problems
from ._common import DraftSpec, ServableError, TargetShape, Verdict, dflash_section, get, has, is_int, listed
from ._fields import FieldRead, read_field

SGLANG_DEFAULT_BLOCK_SIZE = 16  # dflash_worker_v2 / speculative_hook fallback when nothing gives one
REQUIRED_INTS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size")
QWEN3_DEFAULT_HEAD_DIM = 128  # transformers' Qwen3Config default, which SGLang's AutoConfig load applies
LAYER_TYPES = ("full_attention", "sliding_attention")

_LAYER = re.compile(r"^layers\.(\d+)\.(.+)$")
_ATTN_BIAS = re.compile(r"^layers\.\d+\.self_attn\.[qkvo]_proj\.bias$")
_UNUSED = re.compile(r"^(lm_head\.|embed_tokens\.|rotary_emb\.)|(^|\.)rotary_emb\.inv_freq$")


@dataclass(frozen=True)
class BackboneRules:
    """How one SGLang version reads a DFlash backbone: the field reads and the loader's name aliases."""

    version: str
    reads: Mapping[str, FieldRead]  # block_size, num_target_layers, target_layer_ids, mask_token_id
    weight_aliases: Mapping[str, str] = field(default_factory=dict)  # stored name -> parameter name
    default_block_size: int = SGLANG_DEFAULT_BLOCK_SIZE
    activations: tuple[str, ...] = ("silu",)  # hidden_act values DFlashMLP builds
    activations_source: str = "models/dflash.py DFlashMLP"
    label: str = "SGLang"  # the server's name in messages
    # the target layers this server captures: (ids, n) -> problems, and the accepted ids as one phrase
    layer_problems: Callable[[Any, int], list] = layer_id_problems
    accepted_ids: Callable[[int], str] = accepted_layer_ids_text
    fallback_ids: bool = True  # ids missing: SGLang's build_target_layer_ids stands in (else an error)
    missing_mask: str = (
        ": SGLang would add a '<|MASK|>' token to the tokenizer instead of the id the drafter was trained with"
    )

    def read(self, config: Any, name: str) -> tuple[Any, Optional[str]]:
        return read_field(config, self.reads[name])

    def missing_text(self, name: str) -> str:
        return f"{name} is missing ({self.label} {self.version} reads {self.reads[name].describe()})"


def strip_model_prefix(name: str) -> str:
    """The name SGLang's ``load_weights`` resolves: one leading ``model.`` removed."""
    return name[len("model.") :] if name.startswith("model.") else name


def is_unused_weight(name: str) -> bool:
    """Tensors SGLang's DFlash model has no parameter for and needs none: target embeddings/head, rotary caches."""
    return bool(_UNUSED.search(strip_model_prefix(name)))


# -- config ---------------------------------------------------------------------------------------


def _sizes(config: Any, verdict: Verdict) -> dict:
    sizes: dict[str, Any] = {}
    for key in REQUIRED_INTS:
        value = get(config, key)
        if not has(config, key) or value is None:
            verdict.errors.append(f"config.json is missing {key!r}")
        elif not is_int(value) or value < 1:
            verdict.errors.append(f"config.json {key!r} must be a positive integer, got {value!r}")
        else:
            sizes[key] = value
    return sizes


def _head_dim(config: Any, sizes: dict, verdict: Verdict) -> Optional[int]:
    head_dim = get(config, "head_dim")
    if head_dim is None and "num_attention_heads" in sizes:
        if get(config, "model_type") == "qwen3":
            verdict.notes.append(
                f"head_dim not given: Qwen3Config's default {QWEN3_DEFAULT_HEAD_DIM} applies (SGLang loads it the "
                "same way)"
            )
            return QWEN3_DEFAULT_HEAD_DIM
        return sizes["hidden_size"] // sizes["num_attention_heads"] if "hidden_size" in sizes else None
    if head_dim is not None and (not is_int(head_dim) or head_dim < 1):
        verdict.errors.append(f"config.json 'head_dim' must be a positive integer, got {head_dim!r}")
        return None
    return head_dim


def _layer_types(config: Any, sizes: dict, verdict: Verdict) -> None:
    layer_types = get(config, "layer_types")
    if layer_types is None or "num_hidden_layers" not in sizes:
        return
    if isinstance(layer_types, str) or not isinstance(layer_types, Sequence):
        verdict.errors.append(f"layer_types must be a list of {list(LAYER_TYPES)}, got {layer_types!r}")
    elif len(layer_types) < sizes["num_hidden_layers"]:
        verdict.errors.append(
            f"layer_types has {len(layer_types)} entries for num_hidden_layers={sizes['num_hidden_layers']}: "
            "SGLang needs one per draft layer"
        )
    else:
        bad = sorted({t for t in layer_types if t not in LAYER_TYPES})
        if bad:
            verdict.errors.append(f"layer_types {bad} unsupported; accepted: {list(LAYER_TYPES)}")
        elif "sliding_attention" in layer_types and get(config, "sliding_window") is None:
            verdict.errors.append("layer_types has sliding_attention but sliding_window is not set")


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


def _block_size(config: Any, rules: BackboneRules, block_size: Optional[int], verdict: Verdict):
    if block_size is not None:
        size, size_from = block_size, "the given block size"
    else:
        size, size_from = rules.read(config, "block_size")
    if size is None:
        hint = ""
        if size_from is not None:
            hint = f" ({size_from} is null, which ends {rules.label}'s lookup: it does not fall back to the top level)"
        verdict.errors.append(
            rules.missing_text("block_size") + hint + f"; {rules.label} would fall back to {rules.default_block_size}"
        )
        return None, size_from
    if not is_int(size) or size < 2:
        verdict.errors.append(
            f"block size {size!r} is invalid ({size_from}); accepted: an int >= 2 (1 anchor slot + drafted slots)"
        )
        return None, size_from
    return size, size_from


def _mask_token(config: Any, rules: BackboneRules, shape: Optional[TargetShape], verdict: Verdict):
    mask, mask_from = rules.read(config, "mask_token_id")
    mask_limit = shape.vocab_size if shape is not None else get(config, "vocab_size")
    mask_of = "the target's" if shape is not None else "the draft's"
    if mask is None:
        hint = ""
        top = get(config, "mask_token_id")
        if top is not None and "top" not in rules.reads["mask_token_id"].places:
            hint = (
                f" (a top-level mask_token_id is ignored: {rules.label} {rules.version} reads only "
                "dflash_config.mask_token_id)"
            )
        verdict.errors.append(
            rules.missing_text("mask_token_id")
            + rules.missing_mask
            + hint
            + (f"; set it to the training mask id in [0, {mask_limit - 1}]" if is_int(mask_limit) else "")
        )
        return None, mask_from
    if not is_int(mask) or mask < 0 or (is_int(mask_limit) and mask >= mask_limit):
        accepted = (
            f"an int in [0, {mask_limit - 1}] ({mask_of} vocab_size={mask_limit})"
            if is_int(mask_limit)
            else "an int >= 0"
        )
        verdict.errors.append(f"{mask_from}={mask!r} is invalid; accepted: {accepted}")
        return None, mask_from
    return mask, mask_from


def check_backbone_config(
    config: Any,
    rules: BackboneRules,
    *,
    target: Any = None,
    block_size: Optional[int] = None,
    verdict: Optional[Verdict] = None,
    method: str = "dflash",
) -> Verdict:
    """The DFlash backbone fields of ``config`` against ``rules`` (architecture and head are the caller's).

    ``target``: the target's config when known (layer ids, hidden size, vocabulary and mask token are then
    checked against it, otherwise against the draft's own ``num_target_layers`` and ``vocab_size``).
    ``block_size`` overrides the config's (as a launch flag does).  ``verdict.spec`` is set whenever the
    sizes resolve, even next to config errors, so one run lists every problem."""
    verdict = verdict if verdict is not None else Verdict()
    errors, notes = verdict.errors, verdict.notes
    try:
        dflash_section(config)
    except ServableError as exc:
        errors.append(str(exc))
        return verdict
    sizes = _sizes(config, verdict)
    act = get(config, "hidden_act")
    if act is not None and act not in rules.activations:
        errors.append(
            f"hidden_act={act!r}: {rules.label} {rules.version}'s DFlash MLP supports "
            f"{' and '.join(rules.activations)} ({rules.activations_source})"
        )
    head_dim = _head_dim(config, sizes, verdict)
    attention_bias = get(config, "attention_bias", False)
    if not isinstance(attention_bias, bool):
        errors.append(f"attention_bias must be true or false, got {attention_bias!r}")
    _layer_types(config, sizes, verdict)
    size, size_from = _block_size(config, rules, block_size, verdict)

    n_declared, n_from = rules.read(config, "num_target_layers")
    if n_declared is None:
        errors.append(rules.missing_text("num_target_layers"))
    elif not is_int(n_declared) or n_declared < 1:
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
        d_vocab = get(config, "vocab_size")
        if d_vocab is None:
            notes.append(f"draft config has no vocab_size; {rules.label} uses the target's vocabulary")
        elif d_vocab != shape.vocab_size:
            errors.append(
                f"draft vocab_size={d_vocab} does not match the target's vocab_size={shape.vocab_size}: a DFlash "
                f"draft is trained on its target's vocabulary ({rules.label} would serve it with "
                "this target's embeddings "
                "and lm_head)"
            )
        if n_declared is not None and n_declared != shape.num_hidden_layers:
            notes.append(
                f"{n_from}={n_declared} but the target has "
                f"num_hidden_layers={shape.num_hidden_layers}: {rules.label} warns "
                "and captures from the runtime target"
            )
    capture_layers = shape.num_hidden_layers if shape is not None else n_declared
    layers_of = "the target" if shape is not None else (n_from or "num_target_layers")

    ids, ids_from = rules.read(config, "target_layer_ids")
    if ids is None and rules.fallback_ids and capture_layers is not None and "num_hidden_layers" in sizes:
        ids, ids_from = _fallback_layer_ids(capture_layers, sizes["num_hidden_layers"], n_declared, n_from, verdict)
    elif ids is None:
        errors.append(rules.missing_text("target_layer_ids"))
    if ids is not None and capture_layers is not None:
        problems = rules.layer_problems(ids, capture_layers)
        if problems:
            shown = list(ids) if isinstance(ids, (list, tuple)) else ids
            errors.append(
                f"{ids_from}={shown!r} invalid for {layers_of} ({capture_layers} layers): {'; '.join(problems)}. "
                f"Accepted: {rules.accepted_ids(capture_layers)}"
            )
    if not isinstance(ids, (list, tuple)) or not ids or not all(is_int(i) for i in ids):
        ids = None  # no list of ints to size fc from

    mask, mask_from = _mask_token(config, rules, shape, verdict)
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
        vocab_size=get(config, "vocab_size"),
        block_size=int(size) if size is not None else None,
        num_target_layers=int(n_declared) if n_declared is not None else capture_layers,
        target_layer_ids=[int(i) for i in ids],
        mask_token_id=int(mask) if mask is not None else None,
        sources={
            "block_size": size_from,
            "num_target_layers": n_from,
            "target_layer_ids": ids_from,
            "mask_token_id": mask_from,
        },
        method=method,
    )
    return verdict


# -- weights --------------------------------------------------------------------------------------


def expected_weight_shapes(spec: DraftSpec) -> dict[str, tuple[int, ...]]:
    """Every tensor SGLang's ``DFlashDraftModel`` backbone loads for ``spec``, with its shape (bare names)."""
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


def _bare_names(shapes: Mapping[str, Sequence[int]], rules: BackboneRules, errors: list, notes: list):
    """``{bare name: shape}`` as the loader resolves names (``model.`` stripped, aliases applied)."""
    found: dict[str, tuple[int, ...]] = {}
    originals: dict[str, list[str]] = {}
    aliased = []
    for name, shape in shapes.items():
        bare = rules.weight_aliases.get(name, strip_model_prefix(name))
        if bare != strip_model_prefix(name):
            aliased.append(f"{name} -> {bare}")
        originals.setdefault(bare, []).append(name)
        found[bare] = tuple(int(d) for d in shape)
    duplicated = sorted(b for b, names in originals.items() if len(names) > 1)
    if duplicated:
        errors.append(
            f"weights given twice under names {rules.label} loads into one parameter (a 'model.' prefix or an alias): "
            f"{listed([' / '.join(originals[b]) for b in duplicated])}"
        )
    if aliased:
        notes.append(f"{rules.label} {rules.version} loads these under its own names: {listed(aliased)}")
    prefixed = sorted(n for n in shapes if n.startswith("model."))
    if prefixed:
        notes.append(f"{len(prefixed)} weight names carry a 'model.' prefix; {rules.label} strips it (fine)")
    return found


def check_backbone_weights(
    shapes: Mapping[str, Sequence[int]], spec: DraftSpec, rules: BackboneRules
) -> tuple[list[str], list[str]]:
    """``(errors, notes)`` for a backbone's ``name -> shape`` map (head tensors removed by the caller)."""
    errors: list[str] = []
    notes: list[str] = []
    expected = expected_weight_shapes(spec)
    found = _bare_names(shapes, rules, errors, notes)
    for fused_name, parts in fused_weights(spec).items():
        if fused_name not in found:
            continue
        separate = [name for name, _ in parts if name in found]
        if separate:
            errors.append(
                f"{fused_name} and {listed(separate)} both given: {rules.label} loads them into the same parameter, "
                "the later one winning; keep one form"
            )
        first = expected.pop(parts[0][0])
        for name, _ in parts[1:]:
            expected.pop(name)
        expected[fused_name] = (sum(rows for _, rows in parts),) + first[1:]

    unused = sorted(n for n in shapes if strip_model_prefix(n) not in expected and is_unused_weight(n))
    if unused:
        notes.append(
            f"tensors {rules.label}'s DFlash model does not use, ignored (it takes the target's "
            "embeddings and lm_head, "
            f"and recomputes rotary tables): {listed(unused)}"
        )
    unknown = [b for b in sorted(found) if b not in expected and not is_unused_weight(b)]
    fc_bias = [b for b in unknown if b == "fc.bias"]
    layer_fc_bias = [b for b in unknown if b != "fc.bias" and b.endswith("fc.bias")]
    attn_bias = [b for b in unknown if _ATTN_BIAS.match(b) and int(_LAYER.match(b).group(1)) < spec.num_hidden_layers]
    beyond = [b for b in unknown if (m := _LAYER.match(b)) and int(m.group(1)) >= spec.num_hidden_layers]
    rest = [b for b in unknown if b not in set(fc_bias + layer_fc_bias + attn_bias + beyond)]
    if fc_bias:
        errors.append(
            f"fc.bias: {rules.label}'s fc has no bias (Linear(..., bias=False) in "
            "models/dflash.py), so the trained bias "
            "would be dropped; accepted: no fc.bias"
        )
    if layer_fc_bias:
        errors.append(
            f"{listed(layer_fc_bias)}: there is no per-layer fc in {rules.label}'s DFlash model "
            "(only one top-level fc, "
            f"without a bias); {rules.label} would drop these"
        )
    if attn_bias:
        errors.append(
            f"attention biases with attention_bias: false ({listed(attn_bias)}): {rules.label} builds q/k/v/o_proj "
            "without a bias and would drop these trained values; set attention_bias: true"
        )
    if beyond:
        layers = sorted({int(_LAYER.match(b).group(1)) for b in beyond})
        errors.append(
            f"weights of layers {layers} exceed num_hidden_layers={spec.num_hidden_layers}: {rules.label} builds "
            f"{spec.num_hidden_layers} layers and silently drops {listed(beyond)}"
        )
    if rest:
        errors.append(
            f"unknown weights {rules.label} would silently skip (they would serve as untrained values): {listed(rest)}"
        )

    missing = [n for n in expected if n not in found]
    missing_bias = [n for n in missing if _ATTN_BIAS.match(n)]
    missing_other = [n for n in missing if n not in set(missing_bias)]
    if missing_bias:
        errors.append(
            f"attention_bias: true but the bias tensors are missing ({listed(missing_bias)}): "
            f"{rules.label} builds them "
            "and serves them untrained; set attention_bias: false if the drafter has no attention biases"
        )
    if missing_other:
        errors.append(f"missing weights ({rules.label} would serve them untrained): {listed(missing_other)}")
    for name, want in expected.items():
        have = found.get(name)
        if have is None or have == want:
            continue
        if name == "fc.weight":
            k = len(spec.target_layer_ids)
            errors.append(
                f"fc.weight has shape {list(have)}, expected {list(want)} = [hidden_size, len(target_layer_ids) * "
                f"hidden_size] = [{spec.hidden_size}, {k} * {spec.hidden_size}] ({rules.label}'s "
                "load_weights refuses it)"
            )
        else:
            errors.append(
                f"{name} has shape {list(have)}, expected {list(want)} from the config "
                f"({rules.label}'s loader refuses it)"
            )
    return errors, notes
