"""The DFlash family's three draft methods (DFlash, Domino, DSpark): what each needs in its checkpoint,
and which SGLang versions serve which of them.

:mod:`specforge_dpace.servable` holds SGLang 0.5.14's rules for a DFlash drafter and is left as it is
(its verdicts on DFlash checkpoints do not change).  Domino and DSpark drafters share that DFlash
backbone (``layers.*``, ``fc``, ``hidden_norm``, ``norm``, the same config fields) and add a logits head;
this module checks the backbone with servable's rules and the head with the rules of SpecForge 0.2.0's
own classes, which are the only code that builds and decodes these drafters:

- ``specforge/modeling/draft/domino.py`` ``DominoDraftModel``: ``dflash_config.projector_type`` absent
  or ``"domino"`` (``__init__``); ``dflash_config.emb_dim`` and ``gru_hidden_dim`` required ints
  (``_init_draft_head`` reads them with ``int(dflash_config[...])``); ``pure_draft_prefix_len`` (default
  0) and ``shift_label`` (default false) choose which block positions the GRU head corrects and which
  position predicts which slot (``suffix_start``, ``_sample_draft_tokens``).  Head weights:
  ``prefix_gru.weight_ih_l0 [3G, H]``, ``prefix_gru.weight_hh_l0 [3G, G]`` (``nn.GRU(H, G, bias=False)``),
  ``embed_proj.0.weight [E, H + G]``, ``embed_proj.2.weight [V, E]``.
- ``specforge/modeling/draft/dspark.py`` ``DSparkDraftModel``: ``projector_type`` absent or ``"dspark"``;
  ``attention_mode`` ``"gqa"`` (default: ``num_key_value_heads < num_attention_heads``) or ``"mha"``
  (equal counts), the KV heads dividing the query heads; ``markov_rank`` an int >= 0 (0: no Markov head),
  ``markov_head_type`` ``vanilla`` / ``gated`` / ``rnn`` (``build_markov_head``); a confidence head when
  ``enable_confidence_head`` (default: ``confidence_head_alpha > 0``), fed the Markov embedding too with
  ``confidence_head_with_markov`` (needs ``markov_rank > 0``).  Head weights:
  ``markov_head.markov_w1.weight [V, r]``, ``markov_head.markov_w2.weight [V, r]``, plus
  ``markov_head.gate_proj.{weight [r, H + r], bias [r]}`` (gated) or
  ``markov_head.joint_proj.{weight [3r, 2r + H], bias [3r]}`` (rnn); ``confidence_head.proj.{weight
  [1, H (+ r)], bias [1]}``.  ``shift_label`` / ``pure_draft_prefix_len`` are read by the DFlash base
  class but used by neither DSpark's block sampling nor ``OnlineDSparkModel``: a non-default value is
  refused rather than silently ignored.
- ``specforge/modeling/draft/dflash.py`` ``normalize_draft_head_checkpoint_keys``: early checkpoints
  saved these heads under ``logit_head.`` (``logit_head.prefix_gru.*``, ``logit_head.embed_proj.*``,
  ``logit_head.markov_head.*``, ``logit_head.confidence_head.*``); SpecForge maps them to the direct
  names when loading, and so does :func:`normalize_head_name`.
- Checkpoint layout: SpecForge's ``export --to hf`` (``specforge/export/to_hf.py``) writes
  ``save_pretrained``'s directory: ``config.json`` with ``architectures: [<class name>]`` and the
  ``dflash_config`` above, ``model.safetensors`` with the backbone and head tensors under those names.

What SGLang serves (read from SGLang 0.5.14's source, paths under ``sglang/srt/``):
``speculative/spec_info.py`` ``SpeculativeAlgorithm`` has the built-ins DFLASH, EAGLE, EAGLE3,
FROZEN_KV_MTP, STANDALONE, NGRAM (``server_args.py`` ``speculative_algorithm`` help: "EAGLE, EAGLE3,
NEXTN, STANDALONE, NGRAM, DFLASH", plus plugin names registered at run time, none in the wheel);
``--speculative-algorithm DFLASH`` loads the draft class named by the draft config's ``architectures``
from the model registry (``models/registry.py``), whose only DFlash-family entry is
``models/dflash.py`` ``EntryClass = DFlashDraftModel``.  No file of the wheel mentions Domino or DSpark:
a ``DominoDraftModel`` / ``DSparkDraftModel`` config is "not supported" there (or falls back to the
Transformers backend, never to a Domino/DSpark decoder).

Pure Python, like :mod:`servable`: importing this module imports neither torch nor SpecForge.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional

from specforge_dpace import servable

DFLASH, DOMINO, DSPARK = "dflash", "domino", "dspark"
ARCHITECTURES = {DFLASH: "DFlashDraftModel", DOMINO: "DominoDraftModel", DSPARK: "DSparkDraftModel"}
METHOD_OF_ARCHITECTURE = {arch: method for method, arch in ARCHITECTURES.items()}
METHOD_NAMES = {DFLASH: "DFlash", DOMINO: "Domino", DSPARK: "DSpark"}
MARKOV_HEAD_TYPES = ("vanilla", "gated", "rnn")
ATTENTION_MODES = ("gqa", "mha")
LEGACY_HEAD_PREFIXES = ("prefix_gru.", "embed_proj.", "markov_head.", "confidence_head.")

# SGLang version -> (speculative algorithms it serves, draft architectures its DFLASH algorithm loads).
SGLANG_SERVES: dict[str, dict[str, tuple[str, ...]]] = {
    "0.5.14": {
        "algorithms": ("DFLASH", "EAGLE", "EAGLE3", "NEXTN", "FROZEN_KV_MTP", "STANDALONE", "NGRAM"),
        "dflash_architectures": ("DFlashDraftModel",),
    },
}


def _get(config: Any, key: str, default: Any = None) -> Any:
    if isinstance(config, Mapping):
        return config.get(key, default)
    return getattr(config, key, default)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def accepted_architectures_text() -> str:
    return ", ".join(f"{arch!r} ({METHOD_NAMES[m]})" for m, arch in ARCHITECTURES.items())


def draft_method(config: Any, *, where: str = "draft config") -> str:
    """``"dflash"``, ``"domino"`` or ``"dspark"`` from the config's ``architectures`` (a ``ValueError``
    naming the value and the accepted names otherwise)."""
    archs = _get(config, "architectures")
    if not isinstance(archs, (list, tuple)) or not all(isinstance(a, str) for a in archs):
        raise ValueError(
            f"{where} has architectures={archs!r}; accepted: a list holding one of {accepted_architectures_text()}"
        )
    found = sorted({METHOD_OF_ARCHITECTURE[a] for a in archs if a in METHOD_OF_ARCHITECTURE})
    if not found:
        raise ValueError(
            f"{where} has architectures={list(archs)!r}; accepted: a list holding one of "
            f"{accepted_architectures_text()}"
        )
    if len(found) > 1:
        raise ValueError(
            f"{where} has architectures={list(archs)!r}, naming several draft methods "
            f"({', '.join(METHOD_NAMES[m] for m in found)}); accepted: exactly one of {accepted_architectures_text()}"
        )
    return found[0]


# -- SGLang ------------------------------------------------------------------------------------


def sglang_serving_problem(method: str, version: Optional[str]) -> Optional[str]:
    """Why SGLang ``version`` cannot serve a ``method`` drafter (None: it can, or the method is DFlash,
    whose checkpoint :mod:`servable` checks).

    ``version`` None means no SGLang could be found.  Only versions this module has read the source of
    (:data:`SGLANG_SERVES`) are known to serve DFlash; for any other version the DFlash rules of 0.5.14
    are assumed (the runner's validator already applies them), and Domino / DSpark are refused because
    no SGLang release read here serves them."""
    name = METHOD_NAMES.get(method, method)
    arch = ARCHITECTURES.get(method, method)
    known = ", ".join(f"SGLang {v} serves {', '.join(s['dflash_architectures'])}" for v, s in SGLANG_SERVES.items())
    accepted = (
        "accepted: a DFlash drafter (architectures ['DFlashDraftModel'], --speculative-algorithm DFLASH); "
        "measure Domino / DSpark drafters offline with --backend hf (or specforge-dpace evaluate)"
    )
    if method == DFLASH:
        return None  # what SGLang >= 0.5.11 serves; servable's rules check the checkpoint itself
    if version is None:
        return (
            f"a {name} drafter (architectures [{arch!r}]) cannot be benchmarked with SGLang here: SGLang's version "
            f"could not be read (no sglang package is installed in this Python), and no SGLang version this runner "
            f"knows serves {name} ({known}, only through --speculative-algorithm DFLASH); {accepted}"
        )
    served = SGLANG_SERVES.get(version)
    if served is not None:
        return (
            f"SGLang {version} (found here) cannot serve a {name} drafter (architectures [{arch!r}]): its speculative "
            f"algorithms are {', '.join(served['algorithms'])}, and DFLASH loads only "
            f"{', '.join(served['dflash_architectures'])} (sglang/srt/models/dflash.py EntryClass); {accepted}"
        )
    return (
        f"SGLang {version} (found here) is not a version this runner has checked, and none it has checked serves a "
        f"{name} drafter (architectures [{arch!r}]; {known}); {accepted}"
    )


# -- method config -----------------------------------------------------------------------------


def _bool_field(section: Mapping, key: str, default: bool, errors: list[str]) -> bool:
    value = section.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        errors.append(f"dflash_config.{key}={value!r} is invalid; accepted: true or false")
        return default
    return value


def _projector(section: Mapping, method: str, errors: list[str]) -> None:
    value = section.get("projector_type")
    if value is not None and value != method:
        errors.append(
            f"dflash_config.projector_type={value!r} does not match the {ARCHITECTURES[method]} architecture; "
            f"accepted: {method!r} or absent"
        )


def method_settings(config: Any, method: str, *, block_size: Optional[int] = None) -> tuple[dict, list[str]]:
    """``(settings, errors)``: the head settings of a Domino / DSpark config, as its SpecForge class
    reads them, and every invalid or missing value (naming the field and what is accepted).

    ``block_size`` is the resolved block size (checks Domino's ``pure_draft_prefix_len``).  DFlash has no
    head: ``({}, [])``."""
    errors: list[str] = []
    if method == DFLASH:
        return {}, errors
    try:
        section = servable.dflash_section(config)
    except servable.ServableError as exc:
        return {}, [str(exc)]
    _projector(section, method, errors)
    if method == DOMINO:
        sizes = {}
        for key in ("emb_dim", "gru_hidden_dim"):
            value = section.get(key)
            if value is None:
                hint = ""
                if _get(config, key) is not None:
                    hint = f" (a top-level {key} is ignored: DominoDraftModel reads dflash_config.{key} only)"
                errors.append(f"dflash_config.{key} is missing{hint}; accepted: an int >= 1")
            elif not _is_int(value) or value < 1:
                errors.append(f"dflash_config.{key}={value!r} is invalid; accepted: an int >= 1")
            else:
                sizes[key] = value
        prefix = section.get("pure_draft_prefix_len", 0)
        if prefix is None:
            prefix = 0
        if not _is_int(prefix) or prefix < 0 or (block_size is not None and prefix >= block_size):
            limit = f" below the block size {block_size}" if block_size is not None else ""
            errors.append(f"dflash_config.pure_draft_prefix_len={prefix!r} is invalid; accepted: an int >= 0{limit}")
            prefix = None
        shift = _bool_field(section, "shift_label", False, errors)
        settings = {"emb_dim": sizes.get("emb_dim"), "gru_hidden_dim": sizes.get("gru_hidden_dim")}
        settings.update(pure_draft_prefix_len=prefix, shift_label=shift)
        return settings, errors

    # DSpark
    heads, kv_heads = _get(config, "num_attention_heads"), _get(config, "num_key_value_heads")
    mode = section.get("attention_mode", "gqa")
    if not isinstance(mode, str) or mode.lower() not in ATTENTION_MODES:
        errors.append(f"dflash_config.attention_mode={mode!r} is invalid; accepted: 'gqa' (the default) or 'mha'")
        mode = None
    else:
        mode = mode.lower()
    if _is_int(heads) and _is_int(kv_heads) and heads > 0 and kv_heads > 0:
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
    if rank is None:
        rank = 0
    if not _is_int(rank) or rank < 0:
        errors.append(f"dflash_config.markov_rank={rank!r} is invalid; accepted: an int >= 0 (0 = no Markov head)")
        rank = None
    head_type = section.get("markov_head_type", "vanilla")
    if not isinstance(head_type, str) or head_type.lower() not in MARKOV_HEAD_TYPES:
        errors.append(f"dflash_config.markov_head_type={head_type!r} is invalid; accepted: {list(MARKOV_HEAD_TYPES)}")
        head_type = None
    else:
        head_type = head_type.lower()
    alpha = section.get("confidence_head_alpha", 0.0)
    if alpha is None:
        alpha = 0.0
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha >= 0:
        errors.append(f"dflash_config.confidence_head_alpha={alpha!r} is invalid; accepted: a number >= 0")
        alpha = 0.0
    confidence = _bool_field(section, "enable_confidence_head", float(alpha) > 0.0, errors)
    with_markov = _bool_field(section, "confidence_head_with_markov", False, errors)
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
    settings = {
        "attention_mode": mode,
        "markov_rank": rank,
        "markov_head_type": head_type if rank else None,
        "enable_confidence_head": confidence,
        "confidence_head_with_markov": with_markov,
    }
    return settings, errors


# -- head weights ------------------------------------------------------------------------------


def normalize_head_name(name: str) -> str:
    """A weight name as SpecForge loads it: one leading ``model.`` stripped (as SGLang and servable do),
    then an early checkpoint's ``logit_head.<head>.`` mapped to ``<head>.``."""
    name = servable.strip_model_prefix(name)
    if name.startswith("logit_head.") and name[len("logit_head.") :].startswith(LEGACY_HEAD_PREFIXES):
        return name[len("logit_head.") :]
    return name


def is_head_weight(name: str) -> bool:
    return normalize_head_name(name).startswith(LEGACY_HEAD_PREFIXES)


def expected_head_shapes(method: str, settings: Mapping[str, Any], *, hidden: int, vocab: int) -> dict:
    """Every head tensor the method's SpecForge class has for ``settings``, with its shape."""
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


def _listed(names: Sequence[str], limit: int = 12) -> str:
    names = list(names)
    return ", ".join(names[:limit]) + (f" ... ({len(names)} in all)" if len(names) > limit else "")


def check_head_weights(
    shapes: Mapping[str, Sequence[int]], method: str, settings: Mapping[str, Any], *, hidden: int, vocab: int
) -> tuple[list[str], list[str]]:
    """``(errors, notes)`` for the head tensors of a checkpoint (names as stored) against the class's."""
    errors: list[str] = []
    notes: list[str] = []
    name = ARCHITECTURES[method]
    found: dict[str, tuple[int, ...]] = {}
    legacy = []
    for stored, shape in shapes.items():
        if not is_head_weight(stored):
            continue
        bare = normalize_head_name(stored)
        if bare in found:
            errors.append(f"head weight {bare} is stored twice (also as {stored}); keep one name")
        found[bare] = tuple(int(d) for d in shape)
        if servable.strip_model_prefix(stored).startswith("logit_head."):
            legacy.append(stored)
    if legacy:
        notes.append(
            f"{len(legacy)} head weights use the early 'logit_head.' names; SpecForge maps them to the direct ones "
            "when loading (normalize_draft_head_checkpoint_keys)"
        )
    if method == DFLASH:
        if found:
            errors.append(
                f"Domino / DSpark head weights in a DFlash checkpoint ({_listed(sorted(found))}): DFlashDraftModel has "
                "no logits head and would drop them; accepted: architectures naming the method they belong to"
            )
        return errors, notes
    if any(settings.get(k) is None for k in (("emb_dim", "gru_hidden_dim") if method == DOMINO else ("markov_rank",))):
        return errors, notes  # the config errors already say why the head cannot be sized
    expected = expected_head_shapes(method, settings, hidden=hidden, vocab=vocab)
    missing = sorted(n for n in expected if n not in found)
    unknown = sorted(n for n in found if n not in expected)
    if missing:
        errors.append(f"{name} head weights missing (they would be untrained): {_listed(missing)}")
    if unknown:
        errors.append(
            f"head weights {name} has no parameter for with this config ({_listed(unknown)}): they would be dropped; "
            f"check dflash_config ({', '.join(f'{k}={v!r}' for k, v in settings.items())})"
        )
    for bare, want in expected.items():
        have = found.get(bare)
        if have is not None and have != want:
            errors.append(f"{bare} has shape {list(have)}, expected {list(want)} from the config ({name})")
    return errors, notes


def check_draft(
    config: Any,
    shapes: Optional[Mapping[str, Sequence[int]]],
    *,
    target: Any = None,
    block_size: Optional[int] = None,
    method: Optional[str] = None,
) -> servable.Verdict:
    """A DFlash-family draft (config + ``name -> shape``, or None to check the config alone) against the
    rules of its method.

    DFlash: exactly :func:`servable.check_draft` (SGLang 0.5.14's DFlash loader rules).  Domino / DSpark:
    the DFlash backbone by those same rules (architecture aside), the method's config fields and its head
    weights by its SpecForge class.  ``method`` defaults to :func:`draft_method` of the config."""
    method = method or draft_method(config)
    if method == DFLASH:
        return servable.check_draft(config, shapes, target=target, block_size=block_size)
    backbone = None if shapes is None else {n: s for n, s in shapes.items() if not is_head_weight(n)}
    verdict = servable.check_draft(config, backbone, target=target, block_size=block_size, check_architecture=False)
    resolved = verdict.spec.block_size if verdict.spec is not None else None
    settings, errors = method_settings(config, method, block_size=resolved)
    verdict.errors.extend(errors)
    if shapes is not None and verdict.spec is not None:
        vocab = verdict.spec.vocab_size
        if _is_int(vocab):
            head_errors, head_notes = check_head_weights(
                shapes, method, settings, hidden=verdict.spec.hidden_size, vocab=vocab
            )
            verdict.errors.extend(head_errors)
            verdict.notes.extend(head_notes)
        else:
            verdict.errors.append(f"config.json vocab_size={vocab!r}: the {METHOD_NAMES[method]} head is sized by it")
    return verdict


__all__ = [
    "ARCHITECTURES",
    "DFLASH",
    "DOMINO",
    "DSPARK",
    "METHOD_NAMES",
    "SGLANG_SERVES",
    "check_draft",
    "check_head_weights",
    "draft_method",
    "expected_head_shapes",
    "is_head_weight",
    "method_settings",
    "normalize_head_name",
    "sglang_serving_problem",
]
