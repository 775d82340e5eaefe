"""SGLang's rule sets, one table entry per version (0.5.14, 0.5.23), and SGLang's loader check.

Every rule names its origin in the wheel (paths under ``sglang/srt/``; read from
``pip download --no-deps sglang==0.5.14 / 0.5.23``).  docs/serving-sglang.md lists them with line numbers.

- 0.5.14 serves DFlash only: ``speculative/spec_info.py`` has no Domino or DSpark; ``models/dflash.py:459``
  ``EntryClass = DFlashDraftModel``; no file of the wheel mentions Domino or DSpark.
- 0.5.23 serves DFlash (``--speculative-algorithm DFLASH``), Domino as a DFLASH sub-mode
  (``architectures: ["DFlashDraftModel"]`` + ``dflash_config.projector_type: "domino"``,
  ``speculative/dflash_utils.py:727-791``, ``models/dflash.py:777-804, 923-999``,
  ``speculative/domino_utils.py``) and DSpark as its own algorithm (``--speculative-algorithm DSPARK``,
  ``--speculative-dspark-block-size`` = gamma, ``arg_groups/speculative_hook.py:665-860``,
  ``models/dspark.py``, ``speculative/dspark_components/``).

Pure Python: importing this module imports neither torch nor SGLang.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, Optional

from ._backbone import BackboneRules, check_backbone_config, check_backbone_weights
from ._common import Verdict, get, is_int, listed
from ._fields import FieldRead
from ._heads import (
    HEAD_PREFIXES,
    expected_head_shapes,
    head_weight_errors,
    sglang_domino_settings,
    sglang_dspark_settings,
    strip_model,
)
from ._methods import DFLASH, DOMINO, DSPARK
from ._table import ANCHOR_MARKOV, BLOCK, DOMINO_ROLLOUT, Decoding, MethodRules, ServerRules

# -- field reads -------------------------------------------------------------------------------------


def _dflash_reads(lines: dict, mask_places: tuple) -> dict:
    """``parse_dflash_draft_config``'s reads (``srt/speculative/dflash_utils.py``, at ``lines``): dflash_config
    first, then the top level; ``mask_token_id`` from ``mask_places``."""
    return {
        name: FieldRead(
            name,
            mask_places if name == "mask_token_id" else ("dflash_config", "top"),
            f"srt/speculative/dflash_utils.py:{line}",
        )  # fmt: skip
        for name, line in lines.items()
    }


BACKBONE_0_5_14 = BackboneRules(
    version="0.5.14",
    reads=_dflash_reads(
        {
            "block_size": "491-499",
            "num_target_layers": "480-489",
            "target_layer_ids": "501-519",
            "mask_token_id": "530-542",
        },  # fmt: skip
        ("dflash_config",),
    ),
)
BACKBONE_0_5_23 = BackboneRules(
    version="0.5.23",
    reads=_dflash_reads(
        {
            "block_size": "609-617",
            "num_target_layers": "598-606",
            "target_layer_ids": "657-674",
            "mask_token_id": "688-702",
        },  # fmt: skip
        ("dflash_config", "top"),
    ),
    weight_aliases={  # models/dflash.py:900-903 (_VENDOR_ENCODER_ALIASES)
        "encoder.fc.weight": "fc.weight",
        "encoder.output_norm_enc.weight": "hidden_norm.weight",
    },
    activations=("silu", "swigluoai"),
    activations_source="models/dflash.py:493-510 DFlashMLP",
)
# DSpark's parser reads mask_token_id from dspark_config / dflash_config, then text_config and the top level
# (speculative/dspark_components/dspark_config.py:277-293); the rest of its backbone as DFLASH.
BACKBONE_0_5_23_DSPARK = BackboneRules(
    version="0.5.23",
    reads={
        **BACKBONE_0_5_23.reads,
        "mask_token_id": FieldRead(
            "mask_token_id",
            ("dspark_config", "dflash_config", "text_config", "top"),
            "srt/speculative/dspark_components/dspark_config.py:277-293",
        ),
    },
    weight_aliases=BACKBONE_0_5_23.weight_aliases,
    activations=BACKBONE_0_5_23.activations,
    activations_source=BACKBONE_0_5_23.activations_source,
)

# -- request counters (managers/tokenizer_manager.py _calculate_spec_decoding_metrics) ----------------

META_FIELD_PROFILES: dict[str, dict[str, str]] = {
    # recorded from 0.5.11 payloads before this rule set existed (no 0.5.11 wheel was read for it)
    "0.5.11": {
        "completion_tokens": "completion_tokens",
        "verify_ct": "spec_verify_ct",
        "num_correct_drafts": "spec_accept_token_num",
        "num_proposed_drafts": "spec_draft_token_num",
        "histogram": "spec_accept_histogram",
    },
    # 0.5.14: managers/tokenizer_manager.py:2311-2345 (2327: spec_accept_rate; 2337-2339 also emit the
    # backward-compatibility aliases spec_accepted_drafts / spec_proposed_drafts, which fields.ALIASES accepts)
    "0.5.14": {
        "completion_tokens": "completion_tokens",
        "verify_ct": "spec_verify_ct",
        "accept_length": "spec_accept_length",
        "num_correct_drafts": "spec_num_correct_drafts",
        "num_proposed_drafts": "spec_num_proposed_drafts",
        "histogram": "spec_correct_drafts_histogram",
        "accept_rate": "spec_accept_rate",
    },
}
# 0.5.23: managers/tokenizer_manager.py:3148-3208 writes 0.5.14's names (without the aliases)
META_FIELD_PROFILES["0.5.23"] = META_FIELD_PROFILES["0.5.14"]

# -- launch -------------------------------------------------------------------------------------------


def _dflash_launch(draft_path: str, block_size: Optional[int]) -> list:
    args = ["--speculative-algorithm", "DFLASH", "--speculative-draft-model-path", str(draft_path)]
    if block_size is not None:  # speculative_hook: the verify window (alias --speculative-dflash-block-size)
        args += ["--speculative-num-draft-tokens", str(int(block_size))]
    return args


def _dspark_launch(draft_path: str, block_size: Optional[int]) -> list:
    args = ["--speculative-algorithm", "DSPARK", "--speculative-draft-model-path", str(draft_path)]
    if block_size is not None:  # speculative_hook.py:807-842: gamma; the verify window becomes gamma + 1
        args += ["--speculative-dspark-block-size", str(int(block_size))]
    return args


DFLASH_BLOCK_FLAGS = {"--speculative-num-draft-tokens": lambda k: k, "--speculative-dflash-block-size": lambda k: k}
DSPARK_BLOCK_FLAGS = {"--speculative-dspark-block-size": lambda g: g, "--speculative-num-draft-tokens": lambda g: g + 1}

# -- layouts ------------------------------------------------------------------------------------------


def _dflash_layout(config: dict) -> dict:
    out = copy.deepcopy(config)
    out["architectures"] = ["DFlashDraftModel"]
    return out


def _domino_layout_0_5_23(config: dict) -> dict:
    """SpecForge's Domino fields (all in ``dflash_config``) as SGLang 0.5.23 reads them: the DFLASH
    architecture, ``projector_type: "domino"`` and an explicit boolean ``shift_label``."""
    out = copy.deepcopy(config)
    out["architectures"] = ["DFlashDraftModel"]
    dflash = dict(out.get("dflash_config") or {})
    dflash["projector_type"] = "domino"
    dflash["shift_label"] = bool(dflash.get("shift_label") or False)
    dflash["pure_draft_prefix_len"] = dflash.get("pure_draft_prefix_len") or 0
    out["dflash_config"] = dflash
    return out


def _dspark_layout_0_5_23(config: dict) -> dict:
    """SpecForge's DSpark fields (in ``dflash_config``) copied to the top level, where SGLang 0.5.23's model
    constructor reads them, with SpecForge's defaults made explicit (SGLang's differ)."""
    out = copy.deepcopy(config)
    out["architectures"] = ["DSparkDraftModel"]
    dflash = dict(out.get("dflash_config") or {})
    rank = dflash.get("markov_rank") or 0
    head_type = str(dflash.get("markov_head_type") or "vanilla").lower()
    alpha = float(dflash.get("confidence_head_alpha") or 0.0)
    enable = dflash.get("enable_confidence_head")
    enable = bool(alpha > 0.0 if enable is None else enable)
    with_markov = bool(dflash.get("confidence_head_with_markov") or False)
    dflash.update(
        markov_rank=rank, markov_head_type=head_type, enable_confidence_head=enable,
        confidence_head_with_markov=with_markov,
    )  # fmt: skip
    out["dflash_config"] = dflash
    out.update(
        markov_rank=rank, markov_head_type=head_type, enable_confidence_head=enable,
        confidence_head_with_markov=with_markov,
    )  # fmt: skip
    return out


# -- the loader check ---------------------------------------------------------------------------------


def _architecture(config: Any, rules: MethodRules, verdict: Verdict) -> None:
    archs = get(config, "architectures")
    if not isinstance(archs, (list, tuple)) or not set(archs) & set(rules.architectures):
        fallback = ""
        if isinstance(archs, (list, tuple)) and archs:
            fallback = (
                " (SGLang's model registry resolves an unknown architecture to its Transformers fallback "
                "class, models/registry.py _normalize_archs, never to this method's decoder)"
            )
        verdict.errors.append(
            f"architectures must contain {' or '.join(repr(a) for a in rules.architectures)} for a {rules.name} "
            f"drafter, got {archs!r}{fallback}"
        )


def _split_head(shapes: Mapping[str, Sequence[int]]) -> tuple[dict, dict]:
    head, backbone = {}, {}
    for name, shape in shapes.items():
        (head if strip_model(name).startswith(HEAD_PREFIXES) else backbone)[name] = shape
    return head, backbone


def _legacy_names(shapes: Mapping[str, Sequence[int]]) -> list[str]:
    return sorted(n for n in shapes if strip_model(n).startswith("logit_head."))


def _check_domino_weights(head: dict, settings: dict, spec, verdict: Verdict) -> None:
    if any(settings.get(k) is None for k in ("emb_dim", "gru_hidden_dim")) or not is_int(spec.vocab_size):
        return
    found = {strip_model(n): s for n, s in head.items()}  # load_weights resolves a 'model.' prefix both ways
    prefixed = sorted(n for n in head if n.startswith("model."))
    if prefixed:
        verdict.notes.append(f"{len(prefixed)} projector weight names carry a 'model.' prefix; SGLang strips it (fine)")
    stray = sorted(n for n in found if n.startswith(("markov_head.", "confidence_head.")))
    for name in stray:
        found.pop(name)
    if stray:
        verdict.errors.append(
            f"DSpark head weights in a Domino checkpoint ({listed(stray)}): SGLang's DFlashDraftModel has no "
            "parameter for them and skips them"
        )
    expected = expected_head_shapes(DOMINO, settings, hidden=spec.hidden_size, vocab=spec.vocab_size)
    verdict.errors.extend(head_weight_errors(found, expected, "SGLang 0.5.23's Domino projector", settings))


def _check_dspark_weights(head: dict, settings: dict, spec, verdict: Verdict) -> None:
    if settings.get("markov_rank") is None or not is_int(spec.vocab_size):
        return
    found: dict[str, Sequence[int]] = {}
    ignored = []
    for name, shape in head.items():
        bare = strip_model(name)
        if bare.startswith("confidence_head."):
            if not settings["enable_confidence_head"]:
                ignored.append(name)  # models/dspark.py:641-644: skipped when no confidence head is built
                continue
            if name != bare:  # models/dspark.py:641 matches the raw name; a prefixed one is counted missing
                verdict.errors.append(
                    f"{name}: SGLang 0.5.23 routes confidence-head weights by their exact name "
                    "(models/dspark.py:641) and then reports them missing; store it as {bare}"
                )
                continue
        elif bare.startswith(("prefix_gru.", "embed_proj.")):
            verdict.errors.append(
                f"{name}: a Domino projector weight in a DSpark checkpoint (DFLASH's loader refuses it, "
                "models/dflash.py:923-929)"
            )
            continue
        found[bare] = shape
    if ignored:
        verdict.notes.append(
            f"confidence-head weights ({listed(sorted(ignored))}) are not loaded under "
            f"SGLANG_RAGGED_VERIFY_MODE={settings['ragged_verify_mode']} (no confidence head is built, "
            "models/dspark.py:487-489); they load with cap-accept / compact"
        )
    expected = expected_head_shapes(DSPARK, settings, hidden=spec.hidden_size, vocab=spec.vocab_size)
    verdict.errors.extend(head_weight_errors(found, expected, "SGLang 0.5.23's DSpark", settings))


def check_sglang_draft(
    config: Any,
    shapes: Optional[Mapping[str, Sequence[int]]],
    *,
    server: ServerRules,
    backbone: Mapping[str, BackboneRules],
    method: str,
    target: Any = None,
    block_size: Optional[int] = None,
    options: Optional[Mapping[str, Any]] = None,
) -> Verdict:
    """A draft (config + ``name -> shape``, or None for the config alone) against SGLang ``server``'s loader.

    ``options``: ``ragged_verify_mode`` (DSpark, SGLANG_RAGGED_VERIFY_MODE; default ``static``)."""
    options = dict(options or {})
    verdict = Verdict()
    rules = server.method(method)
    if not rules.served:
        verdict.errors.append(server.serving_problem(method))
        return verdict
    _architecture(config, rules, verdict)
    check_backbone_config(
        config, backbone[method], target=target, block_size=block_size, verdict=verdict, method=method
    )
    settings: dict = {}
    if method == DOMINO:
        settings, errors = sglang_domino_settings(config)
        verdict.errors.extend(errors)
    elif method == DSPARK:
        mode = options.get("ragged_verify_mode", "static")
        settings, errors, notes = sglang_dspark_settings(config, ragged_verify_mode=mode)
        verdict.errors.extend(errors)
        verdict.notes.extend(notes)
    if verdict.spec is not None:
        verdict.spec.head = settings
    if shapes is None or verdict.spec is None:
        return verdict
    legacy = _legacy_names(shapes)
    if legacy:
        verdict.errors.append(
            f"early 'logit_head.' weight names ({listed(legacy)}): SpecForge maps them when loading, SGLang does not "
            "and serves those heads untrained; rewrite them with `specforge-dpace convert`"
        )
    head, backbone_shapes = _split_head({n: s for n, s in shapes.items() if n not in legacy})
    errors, notes = check_backbone_weights(backbone_shapes, verdict.spec, backbone[method])
    verdict.errors.extend(errors)
    verdict.notes.extend(notes)
    if method == DFLASH:
        projector = sorted(n for n in head if strip_model(n).startswith(("prefix_gru.", "embed_proj.")))
        others = sorted(set(head) - set(projector))
        if projector and server.version != "0.5.14":
            verdict.errors.append(
                f"Domino projector weights ({listed(projector)}) with no projector_type 'domino': SGLang "
                f"{server.version}'s DFLASH loader refuses them (models/dflash.py:923-929); accepted: "
                "dflash_config.projector_type 'domino' for a Domino drafter"
            )
        elif projector:
            others = sorted(head)
        if others:
            verdict.errors.append(
                f"Domino / DSpark head weights in a DFlash checkpoint ({listed(others)}): SGLang's DFlashDraftModel "
                "has no parameter for them and skips them; accepted: the architecture of the method they belong to"
            )
    elif method == DOMINO:
        _check_domino_weights(head, settings, verdict.spec, verdict)
    else:
        _check_dspark_weights(head, settings, verdict.spec, verdict)
    return verdict


# -- the table entries --------------------------------------------------------------------------------


def _check_with(backbone: Mapping[str, BackboneRules]):
    def check(config, shapes, *, server, method, target=None, block_size=None, options=None):
        return check_sglang_draft(
            config, shapes, server=server, backbone=backbone, method=method, target=target,
            block_size=block_size, options=options,
        )  # fmt: skip

    return check


_NOT_IN_0_5_14 = (
    "SGLang 0.5.14's speculative algorithms are DFLASH, EAGLE, EAGLE3, NEXTN, FROZEN_KV_MTP, STANDALONE, NGRAM "
    "(speculative/spec_info.py) and DFLASH loads only DFlashDraftModel (models/dflash.py:459 EntryClass); no file "
    "of the wheel mentions {name}: serve it with SGLang 0.5.23"
)

_DFLASH_0_5_14 = MethodRules(
    DFLASH,
    served=True,
    algorithm="DFLASH",
    architectures=("DFlashDraftModel",),
    export_architecture="DFlashDraftModel",
    decoding=Decoding(BLOCK, ("greedy", "sample"), "srt/speculative/dflash_worker_v2.py (argmax proposals)"),
    launch=_dflash_launch,
    block_flags=DFLASH_BLOCK_FLAGS,
    devices=("cuda", "npu", "xpu"),  # arg_groups/speculative_hook.py _handle_dflash
    sampling_verify=True,
    write_config=_dflash_layout,
    source="srt/models/dflash.py:308-459, srt/speculative/dflash_utils.py:470-551",
)

SGLANG_0_5_14 = ServerRules(
    name="sglang-0.5.14",
    server="sglang",
    version="0.5.14",
    methods={
        DFLASH: _DFLASH_0_5_14,
        DOMINO: MethodRules(DOMINO, served=False, reason=_NOT_IN_0_5_14.format(name="Domino")),
        DSPARK: MethodRules(DSPARK, served=False, reason=_NOT_IN_0_5_14.format(name="DSpark")),
    },
    check=_check_with({DFLASH: BACKBONE_0_5_14}),
    meta_fields=META_FIELD_PROFILES["0.5.14"],
    sampling_verify_devices=("cuda",),
)

_FP32_DFLASH = (
    "SGLang 0.5.23's DFLASH crashes with --dtype float32 on every device: model_executor/model_runner.py:1772 "
    "casts the draft's input embeddings to bfloat16 (float16 or bfloat16 serve)"
)
_DOMINO_DTYPES = {
    "float32": "SGLang 0.5.23's Domino rollout requires BF16 target and projector weights "
    "(speculative/domino_utils.py validate_domino_runtime); serve with --dtype bfloat16",
    "float16": "SGLang 0.5.23's Domino rollout requires BF16 target and projector weights "
    "(speculative/domino_utils.py validate_domino_runtime); serve with --dtype bfloat16",
    "half": "SGLang 0.5.23's Domino rollout requires BF16 weights (validate_domino_runtime); use --dtype bfloat16",
}

SGLANG_0_5_23 = ServerRules(
    name="sglang-0.5.23",
    server="sglang",
    version="0.5.23",
    methods={
        DFLASH: replace(
            _DFLASH_0_5_14,
            decoding=Decoding(
                BLOCK, ("greedy", "sample"), "srt/speculative/dflash_worker_v2.py:491-505 (greedy draft proposals)"
            ),
            dtypes={"float32": _FP32_DFLASH, "float": _FP32_DFLASH},
            source="srt/models/dflash.py:671-999, srt/speculative/dflash_utils.py:588-813",
        ),
        DOMINO: MethodRules(
            DOMINO,
            served=True,
            algorithm="DFLASH",
            architectures=("DFlashDraftModel",),
            export_architecture="DFlashDraftModel",
            decoding=Decoding(
                DOMINO_ROLLOUT,
                ("greedy",),
                "srt/speculative/domino_utils.py domino_greedy_rollout; dflash_worker_v2.py:2699-2727",
                candidate_pool=2048,  # arg_groups/fields/spec.py:74-77 --speculative-domino-candidate-pool-size
            ),
            launch=_dflash_launch,
            block_flags=DFLASH_BLOCK_FLAGS,
            devices=("cuda",),  # domino_utils.py validate_domino_runtime: "DFLASH Domino currently requires CUDA"
            dtypes={**_DOMINO_DTYPES, "float": _FP32_DFLASH},
            sampling_verify=True,
            write_config=_domino_layout_0_5_23,
            source="srt/speculative/dflash_utils.py:727-791, srt/models/dflash.py:777-804, 923-999",
        ),
        DSPARK: MethodRules(
            DSPARK,
            served=True,
            algorithm="DSPARK",
            architectures=("DSparkDraftModel", "Qwen3DSparkModel"),
            export_architecture="DSparkDraftModel",
            decoding=Decoding(
                ANCHOR_MARKOV,
                ("sample", "greedy"),  # SGLANG_DSPARK_USE_GREEDY_DRAFT (environ.py:554, default false)
                "srt/speculative/dspark_components/dspark_draft.py:248-289, 351; dspark_verify.py:1249-1321",
                verify_extra=1,
            ),
            launch=_dspark_launch,
            block_flags=DSPARK_BLOCK_FLAGS,
            devices=("cuda", "npu", "xpu"),  # arg_groups/speculative_hook.py:669-672
            write_config=_dspark_layout_0_5_23,
            source="srt/models/dspark.py:385-696, srt/speculative/dspark_components/dspark_config.py:84-322",
        ),
    },
    check=_check_with({DFLASH: BACKBONE_0_5_23, DOMINO: BACKBONE_0_5_23, DSPARK: BACKBONE_0_5_23_DSPARK}),
    meta_fields=META_FIELD_PROFILES["0.5.23"],
    sampling_verify_devices=("cuda",),  # kernels/ops/speculative/verify_sampling.py: CUDA (and MUSA builds) only
    weight_aliases=BACKBONE_0_5_23.weight_aliases,
)

SGLANG_RULES = {r.version: r for r in (SGLANG_0_5_14, SGLANG_0_5_23)}


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in str(version).split("+")[0].split(".")[:3] if p.isdigit())


def sglang_rules(version: str) -> tuple[ServerRules, Optional[str]]:
    """``(rules, note)`` for SGLang ``version``: its own entry, else the newest entry not newer than it, or for
    0.5.11-0.5.13 (older than every entry) the oldest, 0.5.14's; the note then says which rules stand in.
    Versions before DFlash serving (0.5.11) are refused."""
    wanted = _key(version)
    if not wanted:
        raise ValueError(f"cannot parse SGLang version {version!r}; expected e.g. 0.5.23")
    if wanted < (0, 5, 11):
        raise ValueError(
            f"SGLang {version} predates DFlash serving (needs >= 0.5.11); rule sets: {sorted(SGLANG_RULES)}"
        )
    eligible = [v for v in SGLANG_RULES if _key(v) <= wanted]
    chosen = max(eligible, key=_key) if eligible else min(SGLANG_RULES, key=_key)
    rules = SGLANG_RULES[chosen]
    note = None
    if _key(chosen) != wanted:
        note = f"no rule set was read from SGLang {version}; the rules of SGLang {chosen} stand in"
    return rules, note


__all__ = ["META_FIELD_PROFILES", "SGLANG_0_5_14", "SGLANG_0_5_23", "SGLANG_RULES", "sglang_rules"]
