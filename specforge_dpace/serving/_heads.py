"""The Domino and DSpark logits heads: their config fields and tensors, as SpecForge 0.2.0's classes read
them and as SGLang 0.5.23's loader reads them (pure Python).

The tensor names are the same on both sides (SpecForge ``specforge/modeling/draft/{domino,dspark}.py``,
SGLang ``srt/models/dflash.py:777-804`` and ``srt/models/dspark.py:186-405, 424-510``):

- Domino: ``prefix_gru.weight_ih_l0 [3G, H]``, ``prefix_gru.weight_hh_l0 [3G, G]`` (``nn.GRU(H, G,
  bias=False)``), ``embed_proj.0.weight [E, H + G]``, ``embed_proj.2.weight [V, E]``.
- DSpark: ``markov_head.markov_w1.weight [V, r]``, ``markov_head.markov_w2.weight [V, r]``, plus
  ``markov_head.gate_proj.{weight [r, H + r], bias [r]}`` (gated) or ``markov_head.joint_proj.{weight
  [3r, 2r + H], bias [3r]}`` (rnn); ``confidence_head.proj.{weight [1, H (+ r)], bias [1]}``.

Where the two differ is where each reads the fields (see :func:`specforge_settings`,
:func:`sglang_domino_settings`, :func:`sglang_dspark_settings`) and how the loaders treat names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional

from ._common import ServableError, dflash_section, get, is_int, listed
from ._fields import FieldRead, read_field
from ._methods import DFLASH, DOMINO, DSPARK, METHOD_NAMES

MARKOV_HEAD_TYPES = ("vanilla", "gated", "rnn")
ATTENTION_MODES = ("gqa", "mha")
HEAD_PREFIXES = ("prefix_gru.", "embed_proj.", "markov_head.", "confidence_head.")
RAGGED_VERIFY_MODES = ("static", "cap-accept", "compact")  # sglang/srt/speculative/ragged_verify.py:13-16


def strip_model(name: str) -> str:
    return name[len("model.") :] if name.startswith("model.") else name


def specforge_head_name(name: str) -> str:
    """A weight name as SpecForge loads it: ``model.`` stripped, then an early checkpoint's
    ``logit_head.<head>.`` mapped to ``<head>.`` (``normalize_draft_head_checkpoint_keys``)."""
    name = strip_model(name)
    if name.startswith("logit_head.") and name[len("logit_head.") :].startswith(HEAD_PREFIXES):
        return name[len("logit_head.") :]
    return name


def is_head_weight(name: str) -> bool:
    return specforge_head_name(name).startswith(HEAD_PREFIXES)


def expected_head_shapes(method: str, settings: Mapping[str, Any], *, hidden: int, vocab: int) -> dict:
    """Every head tensor the method's class has for ``settings``, with its shape."""
    if method == DOMINO:
        e, g = settings["emb_dim"], settings["gru_hidden_dim"]
        return {
            "prefix_gru.weight_ih_l0": (3 * g, hidden),
            "prefix_gru.weight_hh_l0": (3 * g, g),
            "embed_proj.0.weight": (e, hidden + g),
            "embed_proj.2.weight": (vocab, e),
        }
    if method == DSPARK:
        shapes: dict[str, tuple[int, ...]] = {}
        r = settings["markov_rank"]
        if r:
            shapes["markov_head.markov_w1.weight"] = (vocab, r)
            shapes["markov_head.markov_w2.weight"] = (vocab, r)
            if settings["markov_head_type"] == "gated":
                shapes["markov_head.gate_proj.weight"] = (r, hidden + r)
                shapes["markov_head.gate_proj.bias"] = (r,)
            elif settings["markov_head_type"] == "rnn":
                shapes["markov_head.joint_proj.weight"] = (3 * r, 2 * r + hidden)
                shapes["markov_head.joint_proj.bias"] = (3 * r,)
        if settings["enable_confidence_head"]:
            width = hidden + (r if settings["confidence_head_with_markov"] else 0)
            shapes["confidence_head.proj.weight"] = (1, width)
            shapes["confidence_head.proj.bias"] = (1,)
        return shapes
    return {}


def _choice(section: Mapping, key: str, default: str, choices: tuple, errors: list, hint: str = "") -> Optional[str]:
    """``dflash_config.KEY`` lower-cased when it is one of ``choices`` (case-insensitive), else None + an error."""
    value = section.get(key, default)
    if not isinstance(value, str) or value.lower() not in choices:
        errors.append(f"dflash_config.{key}={value!r} is invalid; accepted: {list(choices)}{hint}")
        return None
    return value.lower()


def _bool(value: Any, default: bool, where: str, errors: list) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        errors.append(f"{where}={value!r} is invalid; accepted: true or false")
        return default
    return value


# -- SpecForge 0.2.0's classes ---------------------------------------------------------------------


def specforge_settings(config: Any, method: str, *, block_size: Optional[int] = None) -> tuple[dict, list[str]]:
    """``(settings, errors)``: the head settings as SpecForge's class reads them (``dflash_config`` only):

    - ``DominoDraftModel._init_draft_head``: ``emb_dim`` / ``gru_hidden_dim`` (``int(dflash_config[...])``),
      ``pure_draft_prefix_len`` (default 0), ``shift_label`` (default false); ``projector_type`` absent or
      ``"domino"`` (``__init__``).
    - ``DSparkDraftModel``: ``attention_mode`` ``gqa`` (default: fewer KV heads) or ``mha`` (equal counts);
      ``markov_rank`` >= 0 (0: no Markov head), ``markov_head_type`` (``build_markov_head``); a confidence head
      when ``enable_confidence_head`` (default ``confidence_head_alpha > 0``), fed the Markov embedding too with
      ``confidence_head_with_markov`` (default false; needs ``markov_rank > 0``).  ``shift_label`` /
      ``pure_draft_prefix_len`` are read by the DFlash base class and used by neither DSpark's block sampling
      nor ``OnlineDSparkModel``: a non-default value is refused rather than silently ignored."""
    errors: list[str] = []
    if method == DFLASH:
        return {}, errors
    try:
        section = dflash_section(config)
    except ServableError as exc:
        return {}, [str(exc)]
    expected_projector = {DOMINO: "domino", DSPARK: "dspark"}[method]
    value = section.get("projector_type")
    if value is not None and value != expected_projector:
        errors.append(
            f"dflash_config.projector_type={value!r} does not match the {METHOD_NAMES[method]} class; "
            f"accepted: {expected_projector!r} or absent"
        )
    if method == DOMINO:
        sizes = {}
        for key in ("emb_dim", "gru_hidden_dim"):
            value = section.get(key)
            if value is None:
                hint = ""
                if get(config, key) is not None:
                    hint = f" (a top-level {key} is ignored: DominoDraftModel reads dflash_config.{key} only)"
                errors.append(f"dflash_config.{key} is missing{hint}; accepted: an int >= 1")
            elif not is_int(value) or value < 1:
                errors.append(f"dflash_config.{key}={value!r} is invalid; accepted: an int >= 1")
            else:
                sizes[key] = value
        prefix = section.get("pure_draft_prefix_len", 0)
        prefix = 0 if prefix is None else prefix
        if not is_int(prefix) or prefix < 0 or (block_size is not None and prefix >= block_size):
            limit = f" below the block size {block_size}" if block_size is not None else ""
            errors.append(f"dflash_config.pure_draft_prefix_len={prefix!r} is invalid; accepted: an int >= 0{limit}")
            prefix = None
        shift = _bool(section.get("shift_label"), False, "dflash_config.shift_label", errors)
        return {
            "emb_dim": sizes.get("emb_dim"),
            "gru_hidden_dim": sizes.get("gru_hidden_dim"),
            "pure_draft_prefix_len": prefix,
            "shift_label": shift,
        }, errors

    heads, kv_heads = get(config, "num_attention_heads"), get(config, "num_key_value_heads")
    mode = _choice(section, "attention_mode", "gqa", ATTENTION_MODES, errors, " ('gqa' is the default)")
    if is_int(heads) and is_int(kv_heads) and heads > 0 and kv_heads > 0:
        if heads % kv_heads:
            errors.append(
                f"num_key_value_heads={kv_heads} does not divide num_attention_heads={heads}; DSpark accepts only "
                "KV head counts that divide the query heads"
            )
        elif mode == "gqa" and kv_heads >= heads:
            errors.append(
                f"dflash_config.attention_mode 'gqa' (the default) needs num_key_value_heads < num_attention_heads, "
                f"got {kv_heads} and {heads}; accepted: fewer KV heads, or attention_mode 'mha' for equal counts"
            )
        elif mode == "mha" and kv_heads != heads:
            errors.append(
                f"dflash_config.attention_mode 'mha' needs num_key_value_heads == num_attention_heads, got "
                f"{kv_heads} and {heads}; accepted: equal counts, or attention_mode 'gqa'"
            )
    rank = section.get("markov_rank", 0)
    rank = 0 if rank is None else rank
    if not is_int(rank) or rank < 0:
        errors.append(f"dflash_config.markov_rank={rank!r} is invalid; accepted: an int >= 0 (0 = no Markov head)")
        rank = None
    head_type = _choice(section, "markov_head_type", "vanilla", MARKOV_HEAD_TYPES, errors)
    alpha = section.get("confidence_head_alpha", 0.0)
    alpha = 0.0 if alpha is None else alpha
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha >= 0:
        errors.append(f"dflash_config.confidence_head_alpha={alpha!r} is invalid; accepted: a number >= 0")
        alpha = 0.0
    enable, markov = "enable_confidence_head", "confidence_head_with_markov"
    confidence = _bool(section.get(enable), float(alpha) > 0.0, f"dflash_config.{enable}", errors)
    with_markov = _bool(section.get(markov), False, f"dflash_config.{markov}", errors)
    if with_markov and rank == 0:
        errors.append(
            "dflash_config.confidence_head_with_markov=true needs a Markov head; accepted: markov_rank > 0, or "
            "confidence_head_with_markov false"
        )
    for key, default in (("shift_label", False), ("pure_draft_prefix_len", 0)):
        value = section.get(key)
        if value is not None and value != default:
            errors.append(
                f"dflash_config.{key}={value!r} is not used by DSpark (DSparkDraftModel's block sampling and "
                f"OnlineDSparkModel ignore it); accepted: {str(default).lower()} or absent"
            )
    return {
        "attention_mode": mode,
        "markov_rank": rank,
        "markov_head_type": head_type if rank else None,
        "enable_confidence_head": confidence,
        "confidence_head_with_markov": with_markov,
    }, errors


# -- SGLang 0.5.23 ----------------------------------------------------------------------------------

DOMINO_READS = {  # sglang/srt/speculative/dflash_utils.py:734-791
    "shift_label": FieldRead("shift_label", ("dflash_config", "top"), "srt/speculative/dflash_utils.py:735-737"),
    "pure_draft_prefix_len": FieldRead(
        "pure_draft_prefix_len", ("dflash_config", "top"), "srt/speculative/dflash_utils.py:738-745"
    ),
    "gru_hidden_dim": FieldRead("gru_hidden_dim", ("dflash_config", "top"), "srt/speculative/dflash_utils.py:746-752"),
    "emb_dim": FieldRead("emb_dim", ("dflash_config", "top"), "srt/speculative/dflash_utils.py:753-772"),
}


def sglang_domino_settings(config: Any) -> tuple[dict, list[str]]:
    """``(settings, errors)`` of a Domino config as SGLang 0.5.23's ``parse_dflash_draft_config`` reads it
    (``srt/speculative/dflash_utils.py:734-791``): ``shift_label`` a bool (required), ``pure_draft_prefix_len``
    exactly 1 (the GRU is seeded with the verified token and the first proposal,
    ``srt/speculative/domino_utils.py`` ``domino_greedy_rollout``), ``gru_hidden_dim`` and ``emb_dim`` ints
    >= 1 (required; ``emb_dim`` in ``dflash_config`` and at the top level must agree)."""
    errors: list[str] = []
    shift, shift_from = read_field(config, DOMINO_READS["shift_label"])
    if not isinstance(shift, bool):
        where = shift_from or "shift_label"
        errors.append(
            f"{where}={shift!r}: SGLang 0.5.23 requires dflash_config.shift_label to be a bool ('DFLASH Domino "
            "requires dflash_config.shift_label to be a bool'); write the value the drafter was trained with "
            "(SpecForge's default is false)"
        )
        shift = None
    prefix, prefix_from = read_field(config, DOMINO_READS["pure_draft_prefix_len"])
    if prefix != 1 or isinstance(prefix, bool):
        errors.append(
            f"{prefix_from or 'pure_draft_prefix_len'}={prefix!r}: SGLang 0.5.23 serves Domino only with "
            "pure_draft_prefix_len=1 (its rollout seeds the GRU with [verified token, first proposal] and corrects "
            "every later slot, domino_utils.py domino_greedy_rollout); a drafter trained with another value "
            "cannot be served: train with pure_draft_prefix_len: 1"
        )
        prefix = None if not is_int(prefix) else prefix
    sizes: dict[str, Optional[int]] = {}
    for key in ("gru_hidden_dim", "emb_dim"):
        value, where = read_field(config, DOMINO_READS[key])
        if value is None:
            where = DOMINO_READS[key].describe()
            errors.append(f"{key} is missing (SGLang 0.5.23 reads {where}); accepted: an int >= 1")
        elif not is_int(value) or value < 1:
            errors.append(f"{where}={value!r} is invalid; accepted: an int >= 1")
            value = None
        sizes[key] = value
    nested, top = dflash_section(config).get("emb_dim"), get(config, "emb_dim")
    if nested is not None and top is not None and nested != top:
        errors.append(
            f"dflash_config.emb_dim={nested!r} and top-level emb_dim={top!r} differ: SGLang 0.5.23 refuses them "
            "('DFLASH Domino emb_dim differs between dflash_config and the top-level config')"
        )
    return {
        "emb_dim": sizes["emb_dim"],
        "gru_hidden_dim": sizes["gru_hidden_dim"],
        "pure_draft_prefix_len": prefix,
        "shift_label": shift,
    }, errors


# DSpark: the config parser (speculative/dspark_components/dspark_config.py:214-322) merges dflash_config and
# dspark_config (dspark_config wins), then text_config, then the top level; the model constructor
# (models/dspark.py:385-405, 487-510) reads the top level only.
DSPARK_PARSER_PLACES = ("dspark_config", "dflash_config", "text_config", "top")
DSPARK_READS = {
    "markov_rank": FieldRead("markov_rank", ("top",), "srt/models/dspark.py:386"),
    "markov_head_type": FieldRead("markov_head_type", ("top",), "srt/models/dspark.py:392"),
    "confidence_head_with_markov": FieldRead("confidence_head_with_markov", ("top",), "srt/models/dspark.py:497"),
    "enable_confidence_head": FieldRead("enable_confidence_head", ("top",), "srt/models/dspark.py:490"),
    "sample_from_anchor": FieldRead(
        "sample_from_anchor", ("top",), "srt/speculative/dspark_components/dspark_config.py:29-31"
    ),
}
DSPARK_PARSER_READS = {
    "markov_rank": FieldRead(
        "markov_rank", DSPARK_PARSER_PLACES, "srt/speculative/dspark_components/dspark_config.py:239-251"
    ),
    "markov_head_type": FieldRead(
        "markov_head_type", DSPARK_PARSER_PLACES, "srt/speculative/dspark_components/dspark_config.py:253-275"
    ),
}


def sglang_dspark_settings(config: Any, *, ragged_verify_mode: str = "static") -> tuple[dict, list[str], list[str]]:
    """``(settings, errors, notes)`` of a DSpark config as SGLang 0.5.23 reads it.

    The model constructor reads ``markov_rank``, ``markov_head_type`` (default ``vanilla``) and
    ``confidence_head_with_markov`` (default ``markov_rank > 0``) at the top level and needs ``markov_rank >
    0`` (``build_markov_head``: "DSpark requires markov_rank > 0"); the config parser reads them from
    ``dspark_config`` / ``dflash_config`` first and needs a ``markov_head_type`` there or at the top level: both
    must agree.  A confidence head is built unless ``SGLANG_RAGGED_VERIFY_MODE=static`` (the default,
    ``environ.py:1572``; ``build_confidence_head`` returns None then, and ``enable_confidence_head`` only
    silences a warning).  ``sample_from_anchor`` (top level, default true) must stay true: the drafters this
    project trains draft from the anchor row."""
    errors: list[str] = []
    notes: list[str] = []
    if ragged_verify_mode not in RAGGED_VERIFY_MODES:
        raise ValueError(
            f"ragged_verify_mode={ragged_verify_mode!r} is invalid; accepted: {list(RAGGED_VERIFY_MODES)} "
            "(SGLANG_RAGGED_VERIFY_MODE)"
        )
    rank = get(config, "markov_rank")
    parser_rank, parser_from = read_field(config, DSPARK_PARSER_READS["markov_rank"])
    if not is_int(rank) or rank <= 0:
        hint = ""
        if parser_from is not None and parser_from != "top-level markov_rank":
            hint = (
                f" ({parser_from}={parser_rank!r} is read by the config parser only; the model constructor reads "
                "the top level: write markov_rank at the top level too)"
            )
        errors.append(
            f"top-level markov_rank={rank!r}: SGLang 0.5.23's DSpark model constructor reads markov_rank at the "
            f"top level (models/dspark.py:386) and needs it > 0 ('DSpark requires markov_rank > 0'){hint}; a "
            "DSpark drafter without a Markov head cannot be served"
        )
        rank = None
    elif parser_rank != rank:
        errors.append(
            f"{parser_from}={parser_rank!r} but top-level markov_rank={rank!r}: SGLang's config parser reads the "
            "first, its model constructor the second, and SpecForge's class dflash_config; keep them equal"
        )
    head_type = get(config, "markov_head_type")
    parser_type, parser_type_from = read_field(config, DSPARK_PARSER_READS["markov_head_type"])
    resolved_type = str(head_type if head_type is not None else "vanilla").lower()
    if resolved_type not in MARKOV_HEAD_TYPES:
        errors.append(f"top-level markov_head_type={head_type!r} is invalid; accepted: {list(MARKOV_HEAD_TYPES)}")
        resolved_type = None
    if parser_type is None:
        errors.append(
            "markov_head_type is missing: SGLang 0.5.23's DSpark config parser requires it when markov_rank > 0 "
            f"(reads {DSPARK_PARSER_READS['markov_head_type'].describe()})"
        )
    elif resolved_type is not None and str(parser_type).lower() != resolved_type:
        errors.append(
            f"{parser_type_from}={parser_type!r} but the model constructor builds a {resolved_type!r} head from the "
            "top level (default 'vanilla'); keep them equal"
        )
    with_markov_raw = get(config, "confidence_head_with_markov")
    with_markov = _bool(with_markov_raw, bool(rank and rank > 0), "top-level confidence_head_with_markov", errors)
    if with_markov_raw is None:
        notes.append(
            "no top-level confidence_head_with_markov: SGLang defaults it to markov_rank > 0 (models/dspark.py:497), "
            "SpecForge to false; write it"
        )
    built = ragged_verify_mode != "static"
    anchor = get(config, "sample_from_anchor", True)
    if anchor is not True and anchor is not None:
        errors.append(
            f"top-level sample_from_anchor={anchor!r}: with false SGLang drafts from the rows after the anchor "
            "(dspark_draft.py select_draft_hidden_without_anchor), but SpecForge's OnlineDSparkModel trains the "
            "anchor row to predict the first draft token; accepted: true or absent"
        )
    return (
        {
            "markov_rank": rank,
            "markov_head_type": resolved_type if rank else None,
            "enable_confidence_head": built,
            "confidence_head_with_markov": with_markov,
            "ragged_verify_mode": ragged_verify_mode,
        },
        errors,
        notes,
    )


# -- head weights -----------------------------------------------------------------------------------


def head_weight_errors(
    found: Mapping[str, Sequence[int]], expected: Mapping[str, Sequence[int]], owner: str, settings: Mapping
) -> list[str]:
    """Missing, unknown and mis-shaped head tensors (``found``: names as the loader resolves them)."""
    errors = []
    missing = sorted(n for n in expected if n not in found)
    unknown = sorted(n for n in found if n not in expected)
    if missing:
        errors.append(f"{owner} head weights missing (they would be untrained or refused): {listed(missing)}")
    if unknown:
        errors.append(
            f"head weights {owner} has no parameter for with this config ({listed(unknown)}): they would be dropped "
            f"or refused; check the config ({', '.join(f'{k}={v!r}' for k, v in settings.items())})"
        )
    for bare, want in expected.items():
        have = found.get(bare)
        if have is not None and tuple(have) != tuple(want):
            errors.append(f"{bare} has shape {list(have)}, expected {list(want)} from the config ({owner})")
    return errors
