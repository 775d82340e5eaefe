"""vLLM 0.33's rule set (one table entry, ``vllm-0.33.0``) and vLLM's loader check.

Every rule names its origin in the wheel (paths under ``vllm/``; read from ``pip download --no-deps
vllm==0.33.0``).  docs/serving-vllm.md lists them.

- Launch: ``vllm serve TARGET --speculative-config '{"method": "dflash"|"dspark", "model": DIR,
  "num_speculative_tokens": N, "draft_sample_method": "greedy"|"probabilistic"}'`` (``config/speculative.py``:
  methods 69-84, ``rejection_sample_method`` 562-569 ``standard``/``synthetic``/``block``/``fly``,
  ``draft_sample_method`` 634-640, default ``greedy``).  DFlash has no default N (1614-1618: required); DSpark's
  is the top-level ``block_size`` (1596-1602).
- DFlash loads from the z-lab layout (``architectures: ["DFlashDraftModel"]`` + ``dflash_config``;
  ``model_executor/models/registry.py:664``, ``transformers_utils/configs/eagle.py:65-75`` keeps a ``DFlash``
  name) or the speculators layout (``speculators_model_type: "dflash"``, ``transformer_layer_config``,
  ``aux_hidden_state_layer_ids`` = target layer ids + 1, ``mask_token_id`` required, ``sample_from_anchor``
  false; ``transformers_utils/configs/speculators/algos.py:91-126``, ``base.py:47-62``).
- DSpark: ``DSparkDraftModel`` with ``model_type: "qwen3"`` is rewritten to ``Qwen3DSparkModel``
  (``config/speculative.py:1463-1466, 1534-1542``; ``registry.py:681``); with another ``model_type`` it is taken
  for DeepSeek-V4's DSpark (1543-1565).  ``model_executor/models/qwen3_dspark.py`` builds the vanilla Markov head
  only, from the top-level ``markov_rank``; the confidence head from the top-level ``enable_confidence_head`` /
  ``confidence_head_with_markov``.
- No Domino: no method, model or file of the wheel mentions it.
- Both loaders (``qwen3_dflash.py:851-892``, ``qwen3_dspark.py:325-372``) prefix ``model.`` to every name but
  ``lm_head`` and load through ``AutoWeightsLoader``, which raises on a name it has no parameter for
  (``model_executor/models/utils.py:437-448``) except a ``.bias`` (ignored silently, 458); a missing tensor is
  not detected (``load_weights`` returns None, so ``default_loader.py:511-523`` does not track it).

Pure Python: importing this module imports neither torch nor vLLM.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from typing import Any, Optional

from ._backbone import BackboneRules, check_backbone_config, check_backbone_weights
from ._common import Verdict, get, is_int, listed, section
from ._fields import FieldRead
from ._heads import expected_head_shapes, head_weight_errors
from ._methods import DFLASH, DOMINO, DSPARK
from ._sglang import _dspark_layout_0_5_23
from ._table import ANCHOR_MARKOV, BLOCK, Decoding, MethodRules, ServerRules

VERSION = "0.33.0"
DRAFT_SAMPLE_METHODS = ("greedy", "probabilistic")  # config/speculative.py:84
REJECTION_SAMPLE_METHODS = ("standard", "synthetic", "block", "fly")  # config/speculative.py:83
# the evaluator's proposal mode that stands for each draft_sample_method (speculative.py:634-640)
DRAFT_SAMPLING_OF = {"greedy": "greedy", "probabilistic": "sample"}
SAMPLE_METHOD_OF = {v: k for k, v in DRAFT_SAMPLING_OF.items()}
LAYOUTS = {DFLASH: ("zlab", "speculators"), DSPARK: ("dspark",)}

# -- the speculators layout (transformers_utils/configs/speculators) -----------------------------------


def is_speculators(config: Any) -> bool:
    """A speculators-format config (``speculators_model_type`` / ``speculators_config``, ``config.py:361-366``)."""
    return get(config, "speculators_model_type") is not None or get(config, "speculators_config") is not None


def speculators_view(config: Mapping) -> tuple[dict, list[str]]:
    """``(view, errors)``: a speculators DFlash config as vLLM resolves it (``base.py:47-62``: start from
    ``transformer_layer_config``; ``algos.py:91-126``: ``DFlashDraftModel``, ``eagle_aux_hidden_state_layer_ids``
    = the aux ids, ``dflash_config`` = {``mask_token_id``, ``target_layer_ids`` = aux ids - 1,
    ``sample_from_anchor`` (default false), ``causal`` = not ``sliding_window_non_causal`` (default true)}).
    The block size (vLLM does not read it for DFlash) comes from ``transformer_layer_config.block_size``, else the
    first proposal method's ``speculative_tokens`` + 1."""
    errors: list[str] = []
    kind = config.get("speculators_model_type")
    if kind != "dflash":
        errors.append(
            f"speculators_model_type={kind!r}: this rule set reads the speculators layout of DFlash only "
            "(algos.py:91-126); accepted: 'dflash', or the z-lab / DSpark layouts"
        )
    layer = config.get("transformer_layer_config")
    if not isinstance(layer, Mapping):
        errors.append(
            f"transformer_layer_config={layer!r}: vLLM builds the drafter's config from it (base.py:56-58, "
            "'Must provide transformer_layer_config'); accepted: the drafter's Qwen3 config as a mapping"
        )
        layer = {}
    aux = config.get("aux_hidden_state_layer_ids")
    if not isinstance(aux, list) or not aux or not all(is_int(i) for i in aux):
        errors.append(
            f"aux_hidden_state_layer_ids={aux!r}: required by vLLM (algos.py:114, a KeyError when absent); "
            "accepted: a non-empty list of ints, each the target layer id + 1"
        )
        aux = None
    mask = config.get("mask_token_id")
    if "mask_token_id" not in config:
        errors.append("mask_token_id is missing: vLLM requires it in the speculators layout (algos.py:119, a KeyError)")
    view = copy.deepcopy(dict(layer))
    view["architectures"] = ["DFlashDraftModel"]
    if config.get("draft_vocab_size") is not None:
        view["draft_vocab_size"] = config["draft_vocab_size"]
    dflash = {
        "mask_token_id": mask,
        "sample_from_anchor": config.get("sample_from_anchor", False),
        "causal": not config.get("sliding_window_non_causal", True),
    }
    if aux is not None:
        dflash["target_layer_ids"] = [int(i) - 1 for i in aux]
    view["dflash_config"] = dflash
    if view.get("block_size") is None:
        try:
            tokens = config["speculators_config"]["proposal_methods"][0]["speculative_tokens"]
        except (KeyError, IndexError, TypeError):
            tokens = None
        if is_int(tokens):
            view["block_size"] = tokens + 1
    return view, errors


# -- the layer-id convention (eagle3_utils.py:113-150, qwen2.py:422-434, interfaces.py:1640-1650) -------


def vllm_layer_id_problems(layer_ids: Any, num_target_layers: int) -> list[str]:
    """Why vLLM would not feed the drafter the features it was trained on (empty: it would).

    vLLM captures aux id ``a`` as the residual stream after decoder layer ``a - 1`` (``qwen2.py:427-434``), once
    and in layer order (``interfaces.py:1647``), and a DFlash / DSpark drafter's id ``i`` is aux id ``i + 1``
    (``eagle3_utils.py:123-140``).  So ids ``0 .. n - 1`` are captured; id ``n - 1`` is the last layer's output
    before the final norm, a feature neither SGLang's capture (which never reaches it) nor HF's
    ``hidden_states[n]`` (after the final norm) gives a trainer: ids ``0 .. n - 2`` match training."""
    n = int(num_target_layers)
    if not isinstance(layer_ids, (list, tuple)) or not all(is_int(i) for i in layer_ids):
        return [f"must be a list of ints, got {layer_ids!r}"]
    ids = list(layer_ids)
    if not ids:
        return ["is empty (vLLM then sizes fc for num_hidden_layers features, qwen3_dflash.py:84-93)"]
    problems = []
    if n - 1 in ids:
        problems.append(
            f"id {n - 1} is the last decoder layer: vLLM feeds its output before the final norm (aux id {n}, "
            "qwen2.py:433), a feature no trainer captures (SGLang never reaches it; HF's hidden_states[n] is after "
            "the final norm), so the drafter would read features it was not trained on"
        )
    outside = [i for i in ids if not 0 <= i < n]
    if outside:
        problems.append(
            f"{outside} out of range: the target has decoder layers 0..{n - 1}; vLLM captures fewer features and "
            "combine_hidden_states raises a feature-size mismatch (qwen3_dflash.py:836-846)"
        )
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        problems.append(f"{repeated} repeated: vLLM captures each layer once (interfaces.py:1647): a size mismatch")
    elif ids != sorted(ids):
        problems.append(
            "not in increasing order: vLLM concatenates the captured features in layer order (qwen2.py:427-434), "
            "so the drafter would read them in another order than it was trained on"
        )
    return problems


def vllm_accepted_ids(num_target_layers: int) -> str:
    n = int(num_target_layers)
    if n < 2:
        return f"none: a {n}-layer target has no layer whose feature vLLM serves as a trainer captured it"
    return f"distinct ids in increasing order within 0..{n - 2} for a {n}-layer target (never its last layer, {n - 1})"


# -- field reads ----------------------------------------------------------------------------------------

BACKBONE_0_33 = BackboneRules(
    version=VERSION,
    reads={
        "block_size": FieldRead(
            "block_size",
            ("dflash_config", "top"),
            "DSpark: config/speculative.py:1596-1602 (top level); DFlash: not read by vLLM, needed for "
            "num_speculative_tokens = block_size - 1",
        ),
        "num_target_layers": FieldRead(
            "num_target_layers", ("dflash_config", "top"), "not read by vLLM (the layer ids are checked with it)"
        ),
        "target_layer_ids": FieldRead(
            "target_layer_ids", ("dflash_config", "top"), "v1/worker/gpu/spec_decode/eagle/eagle3_utils.py:119-140"
        ),
        "mask_token_id": FieldRead(
            "mask_token_id", ("dflash_config", "top"), "v1/worker/gpu/spec_decode/utils.py:92-114"
        ),
    },
    weight_aliases={  # qwen3_dflash.py:390-402 (hf_to_vllm_mapper)
        "encoder.fc.weight": "fc.weight",
        "encoder.output_norm_enc.weight": "hidden_norm.weight",
    },
    label="vLLM",
    activations=("silu",),
    activations_source="model_executor/models/qwen2.py:105 Qwen2MLP, qwen3_dflash.py:45",
    layer_problems=vllm_layer_id_problems,
    accepted_ids=vllm_accepted_ids,
    fallback_ids=False,
    missing_mask=": vLLM refuses to start ('Model config must specify dflash_config.mask_token_id ...')",
)

# -- the loader check -----------------------------------------------------------------------------------

DSPARK_HEAD_NAMES = (
    "markov_head.markov_w1.weight",
    "markov_head.markov_w2.weight",
    "confidence_head.proj.weight",
    "confidence_head.proj.bias",
)
OWN_TENSORS = ("embed_tokens.", "lm_head.")


def _architecture(config: Any, method: str, verdict: Verdict) -> None:
    archs = get(config, "architectures")
    archs = list(archs) if isinstance(archs, (list, tuple)) else []
    if method == DFLASH:
        if "DFlashDraftModel" not in archs:
            verdict.errors.append(
                f"architectures must contain 'DFlashDraftModel' for a DFlash drafter (registry.py:664), got {archs!r}"
            )
        return
    model_type = get(config, "model_type")
    if "Qwen3DSparkModel" in archs:
        return
    if "DSparkDraftModel" not in archs:
        verdict.errors.append(
            f"architectures must contain 'DSparkDraftModel' (with model_type 'qwen3') or 'Qwen3DSparkModel' for a "
            f"DSpark drafter (config/speculative.py:1534-1542, registry.py:681), got {archs!r}"
        )
    elif model_type != "qwen3":
        verdict.errors.append(
            f"model_type={model_type!r}: vLLM maps DSparkDraftModel to Qwen3DSparkModel only with model_type "
            "'qwen3' (config/speculative.py:1534-1542); otherwise it takes the drafter for DeepSeek-V4's DSpark and "
            "reads the target's weights (1543-1565); accepted: model_type 'qwen3'"
        )


def _anchor_and_causality(view: Any, method: str, verdict: Verdict) -> None:
    dflash = section(view, "dflash_config")
    if method == DFLASH and dflash.get("sample_from_anchor", False):
        verdict.errors.append(
            "dflash_config.sample_from_anchor=true: vLLM refuses it for DFlash (v1/worker/gpu/spec_decode/dflash/"
            "speculator.py:83-88; the anchor is the bonus token); accepted: false or absent"
        )
    if method == DSPARK and get(view, "sample_from_anchor", True) is not True:
        verdict.errors.append(
            f"top-level sample_from_anchor={get(view, 'sample_from_anchor')!r}: with false vLLM drafts a 1 + N "
            "fill-in block (v1/worker/gpu/spec_decode/dspark/speculator.py:46-55), but SpecForge's OnlineDSparkModel "
            "trains the anchor row to predict the first draft token; accepted: true or absent"
        )
    causal = get(view, "is_causal")
    where = "top-level is_causal"
    if causal is None:
        causal, where = dflash.get("causal"), "dflash_config.causal"
    if causal:
        verdict.errors.append(
            f"{where}=true: vLLM then attends causally inside the draft block (qwen3_dflash.py:62-73), but SpecForge "
            "trains DFlash-family drafters with bidirectional block attention; accepted: false or absent"
        )


def vllm_dspark_settings(config: Any) -> tuple[dict, list[str], list[str]]:
    """``(settings, errors, notes)``: the DSpark head as ``Qwen3DSparkModel`` builds it (``qwen3_dspark.py:205-231``):
    the vanilla Markov head of top-level ``markov_rank`` (an AttributeError when absent), a confidence head when
    the top-level ``enable_confidence_head`` (default false), fed the Markov embedding with
    ``confidence_head_with_markov`` (default false).  SpecForge's values in ``dflash_config`` must agree."""
    errors: list[str] = []
    notes: list[str] = []
    dflash = section(config, "dflash_config")
    rank = get(config, "markov_rank")
    if not is_int(rank) or rank <= 0:
        hint = ""
        if dflash.get("markov_rank") is not None:
            hint = f" (dflash_config.markov_rank={dflash['markov_rank']!r} is SpecForge's; vLLM reads the top level)"
        errors.append(
            f"top-level markov_rank={rank!r}: vLLM's Qwen3DSparkModel builds its Markov head from it "
            f"(qwen3_dspark.py:212) and always runs it; accepted: an int > 0{hint}"
        )
        rank = None
    elif dflash.get("markov_rank") is not None and dflash["markov_rank"] != rank:
        errors.append(
            f"dflash_config.markov_rank={dflash['markov_rank']!r} but top-level markov_rank={rank!r}: vLLM reads the "
            "second, SpecForge's class the first; keep them equal"
        )
    for place, value in (
        ("top-level", get(config, "markov_head_type")),
        ("dflash_config.", dflash.get("markov_head_type")),
    ):
        if value is not None and str(value).lower() != "vanilla":
            sep = "" if place.endswith(".") else " "
            errors.append(
                f"{place}{sep}markov_head_type={value!r}: vLLM 0.33 builds only the vanilla Markov head "
                "(qwen3_dspark.py:48-80, 205-218) and refuses the gated / rnn head's tensors; accepted: 'vanilla'"
            )
    settings = {"markov_rank": rank, "markov_head_type": "vanilla" if rank else None}
    for key in ("enable_confidence_head", "confidence_head_with_markov"):
        value = get(config, key)
        if value is not None and not isinstance(value, bool):
            errors.append(f"top-level {key}={value!r} is invalid; accepted: true or false")
            value = None
        settings[key] = bool(value)
        nested = dflash.get(key)
        if value is not None and nested is not None and nested != value:  # the head's width is checked on weights
            notes.append(
                f"dflash_config.{key}={nested!r} but top-level {key}={value!r}: vLLM reads the second, SpecForge's "
                "class the first (the confidence head does not change decoding)"
            )
    return settings, errors, notes


def _split(shapes: Mapping[str, Sequence[int]]) -> tuple[dict, dict, list[str]]:
    head, backbone, own = {}, {}, []
    for name, shape in shapes.items():
        if name.startswith(("markov_head.", "confidence_head.", "prefix_gru.", "embed_proj.", "logit_head.")):
            head[name] = shape
        elif name.startswith(OWN_TENSORS):
            own.append(name)
        else:
            backbone[name] = shape
    return head, backbone, own


def _check_weights(shapes, method: str, settings: dict, spec, verdict: Verdict) -> None:
    prefixed = sorted(n for n in shapes if n.startswith("model."))
    if prefixed:
        verdict.errors.append(
            f"{len(prefixed)} weight names carry a 'model.' prefix ({listed(prefixed, 4)}): vLLM prepends 'model.' "
            "to every name but lm_head (qwen3_dflash.py:866-867), so these become 'model.model.*' and "
            "AutoWeightsLoader raises (utils.py:437-448); store them without it (`specforge-dpace convert`)"
        )
    odd = sorted(n for n in shapes if "mask_hidden" in n or "d2t" in n or "t2d" in n)
    if odd:
        verdict.errors.append(
            f"{listed(odd)}: a mask_hidden tensor fails vLLM's assert (qwen3_dflash.py:856-860) and d2t / t2d "
            "reduced-vocabulary maps are not what a SpecForge drafter has; accepted: the full-vocabulary drafter"
        )
    shapes = {n: s for n, s in shapes.items() if n not in prefixed and n not in odd}
    head, backbone, own = _split(shapes)
    if own:
        verdict.notes.append(
            f"{listed(own)}: vLLM loads them as the drafter's own embedding / head (utils.py:1178-1198) instead of "
            "sharing the target's; fine when they are the target's"
        )
    errors, notes = check_backbone_weights(backbone, spec, BACKBONE_0_33)
    verdict.errors.extend(errors)
    verdict.notes.extend(notes)
    if method == DFLASH:
        if head:
            verdict.errors.append(
                f"head weights in a DFlash checkpoint ({listed(sorted(head))}): vLLM's DFlashQwen3ForCausalLM has no "
                "parameter for them and AutoWeightsLoader raises (utils.py:437-448)"
            )
        return
    if settings.get("markov_rank") is None or not is_int(spec.vocab_size):
        return
    unknown = sorted(n for n in head if n not in DSPARK_HEAD_NAMES)
    if unknown:
        verdict.errors.append(
            f"head weights vLLM's Qwen3DSparkModel has no parameter for ({listed(unknown)}): AutoWeightsLoader "
            "raises on them (a '.bias' is dropped silently, utils.py:458)"
        )
    confidence = {n: s for n, s in head.items() if n.startswith("confidence_head.")}
    built = settings["enable_confidence_head"]
    if confidence and not built:
        verdict.notes.append(
            "confidence-head weights without top-level enable_confidence_head: vLLM builds no confidence head and "
            "skips them (qwen3_dspark.py:220, 366-368); decoding does not read it"
        )
    elif built and not confidence:
        verdict.notes.append(
            "enable_confidence_head without confidence-head weights: vLLM drops the head (qwen3_dspark.py:366-368)"
        )
    expected = expected_head_shapes(
        DSPARK, {**settings, "enable_confidence_head": bool(built and confidence)}, hidden=spec.hidden_size,
        vocab=spec.vocab_size,
    )  # fmt: skip
    found = {n: s for n, s in head.items() if n in DSPARK_HEAD_NAMES and (built or n not in confidence)}
    verdict.errors.extend(head_weight_errors(found, expected, "vLLM 0.33's Qwen3DSparkModel", settings))


def check_vllm_draft(
    config: Any,
    shapes: Optional[Mapping[str, Sequence[int]]],
    *,
    server: ServerRules,
    method: str,
    target: Any = None,
    block_size: Optional[int] = None,
    options: Optional[Mapping[str, Any]] = None,
) -> Verdict:
    """A draft (config + ``name -> shape``, or None for the config alone) against vLLM 0.33's loader.

    A speculators-layout config is checked as vLLM resolves it (:func:`speculators_view`)."""
    del options
    verdict = Verdict()
    problem = server.serving_problem(method)
    if problem:
        verdict.errors.append(problem)
        return verdict
    view = config
    if is_speculators(config):
        if method != DFLASH:
            verdict.errors.append("a speculators-layout config here must be DFlash (speculators_model_type 'dflash')")
            return verdict
        view, errors = speculators_view(config)
        if errors:
            verdict.errors.extend(errors)
            return verdict
    else:
        _architecture(config, method, verdict)
        aux = get(config, "eagle_aux_hidden_state_layer_ids")
        if aux:  # read before dflash_config.target_layer_ids (eagle3_utils.py:119)
            verdict.errors.append(
                f"top-level eagle_aux_hidden_state_layer_ids={aux!r} overrides dflash_config.target_layer_ids in vLLM "
                "(eagle3_utils.py:119) and is not what SpecForge reads; remove it"
            )
    _anchor_and_causality(view, method, verdict)
    check_backbone_config(view, BACKBONE_0_33, target=target, block_size=block_size, verdict=verdict, method=method)
    settings: dict = {}
    if method == DSPARK:
        settings, errors, notes = vllm_dspark_settings(view)
        verdict.errors.extend(errors)
        verdict.notes.extend(notes)
    if verdict.spec is not None:
        verdict.spec.head = settings
    if shapes is None or verdict.spec is None:
        return verdict
    _check_weights(shapes, method, settings, verdict.spec, verdict)
    return verdict


def vllm_setting(convention: str, method: str, draft_sampling: Optional[str], temperature: float) -> str:
    """Which vLLM 0.33 setting an offline-evaluator column (``convention``, ``method``, proposal mode
    ``draft_sampling``, ``temperature``) stands for: ``draft_sample_method`` ``greedy`` for argmax proposals,
    ``probabilistic`` for proposals sampled from q (``config/speculative.py:634-640``), both with
    ``rejection_sample_method`` ``standard``; none when vLLM does not serve the method or decodes it otherwise."""
    from . import rules_for

    mine = VLLM_0_33_0.methods[method]
    if not mine.served:
        return f"none: vLLM 0.33 serves no {mine.name}"
    decoding = rules_for(convention).method(method).decoding
    if decoding is None or decoding.proposals != mine.decoding.proposals:
        return f"none: decoded as {convention} decodes {mine.name}, not as vLLM 0.33 does"
    if temperature == 0:
        return "vLLM greedy verification (either draft_sample_method)"
    mode = draft_sampling or decoding.draft_samplings[0]
    return f'vLLM draft_sample_method "{SAMPLE_METHOD_OF[mode]}", rejection_sample_method "standard"'


# -- launch ---------------------------------------------------------------------------------------------


def speculative_config(
    method: str,
    draft_path: str,
    num_speculative_tokens: int,
    *,
    draft_sample_method: str = "greedy",
    rejection_sample_method: str = "standard",
    extra: Optional[Mapping[str, Any]] = None,
) -> dict:
    """The ``--speculative-config`` mapping for a drafter (``config/speculative.py`` field names)."""
    if draft_sample_method not in DRAFT_SAMPLE_METHODS:
        raise ValueError(f"draft_sample_method={draft_sample_method!r}; accepted: {list(DRAFT_SAMPLE_METHODS)}")
    if rejection_sample_method not in REJECTION_SAMPLE_METHODS:
        raise ValueError(
            f"rejection_sample_method={rejection_sample_method!r}; accepted: {list(REJECTION_SAMPLE_METHODS)}"
        )
    out = {
        "method": method,
        "model": str(draft_path),
        "num_speculative_tokens": int(num_speculative_tokens),
        "draft_sample_method": draft_sample_method,
        "rejection_sample_method": rejection_sample_method,
    }
    out.update(extra or {})
    return out


def _launch(method: str, drafted: int):
    """``MethodRules.launch``: the config ``block_size`` -> ``--speculative-config`` with vLLM's defaults."""

    def launch(draft_path: str, block_size: Optional[int]) -> list:
        config = {"method": method, "model": str(draft_path)}
        if block_size is not None:
            config["num_speculative_tokens"] = int(block_size) + drafted
        return ["--speculative-config", json.dumps(config)]

    return launch


# -- layouts --------------------------------------------------------------------------------------------


def _zlab_layout(config: dict) -> dict:
    """SpecForge's DFlash config as the z-lab layout: ``DFlashDraftModel`` and ``dflash_config`` (it already is)."""
    out = copy.deepcopy(config)
    out["architectures"] = ["DFlashDraftModel"]
    return out


def _speculators_layout(config: dict) -> dict:
    """SpecForge's DFlash config as vLLM's speculators layout (``algos.py:91-126``, ``base.py:70-137``): the
    Qwen3 config in ``transformer_layer_config``, aux ids = target layer ids + 1, one ``dflash`` proposal method
    of ``block_size - 1`` tokens.  ``verifier.name_or_path`` is left null: launch it as a ``--speculative-config``
    model of the target, not as the served model."""
    layer = copy.deepcopy(config)
    dflash = layer.pop("dflash_config", {}) or {}
    layer.pop("architectures", None)
    ids = list(dflash.get("target_layer_ids") or [])
    block = layer.get("block_size")
    return {
        "architectures": ["DFlashDraftModel"],
        "speculators_model_type": "dflash",
        "transformer_layer_config": layer,
        "aux_hidden_state_layer_ids": [int(i) + 1 for i in ids],
        "mask_token_id": dflash.get("mask_token_id"),
        "sample_from_anchor": False,
        "draft_vocab_size": layer.get("vocab_size"),
        "target_hidden_size": layer.get("hidden_size"),
        "speculators_config": {
            "algorithm": "dflash",
            "default_proposal_method": "dflash",
            "proposal_methods": [{"proposal_type": "dflash", "speculative_tokens": int(block) - 1 if block else None}],
            "verifier": {"name_or_path": None, "architectures": []},
        },
    }


def _dspark_layout(config: dict) -> dict:
    """SpecForge's DSpark config as ``Qwen3DSparkModel`` reads it: SGLang 0.5.23's top-level head fields (the same
    names, ``qwen3_dspark.py:205-231``) and ``model_type: "qwen3"`` (``config/speculative.py:1534-1542``)."""
    out = _dspark_layout_0_5_23(config)
    out["model_type"] = "qwen3"
    return out


_NO_DOMINO = (
    "vLLM 0.33 has no Domino: its speculative methods (config/speculative.py:69-84) and model registry "
    "(model_executor/models/registry.py:664-697) have no Domino projector, and no file of the wheel mentions one; "
    "serve Domino with SGLang 0.5.23"
)

VLLM_0_33_0 = ServerRules(
    name="vllm-0.33.0",
    server="vllm",
    version=VERSION,
    methods={
        DFLASH: MethodRules(
            DFLASH,
            served=True,
            algorithm="dflash",
            architectures=("DFlashDraftModel",),
            export_architecture="DFlashDraftModel",
            decoding=Decoding(
                BLOCK,
                ("greedy", "sample"),  # draft_sample_method greedy (default) / probabilistic, speculative.py:634-640
                "vllm/config/speculative.py:634-640; v1/worker/gpu/spec_decode/dflash/speculator.py",
            ),
            launch=_launch("dflash", -1),
            devices=("cuda",),
            write_config=_zlab_layout,
            layouts={"zlab": _zlab_layout, "speculators": _speculators_layout},
            source="vllm/model_executor/models/qwen3_dflash.py:387-931, transformers_utils/configs/speculators",
        ),
        DOMINO: MethodRules(DOMINO, served=False, reason=_NO_DOMINO),
        DSPARK: MethodRules(
            DSPARK,
            served=True,
            algorithm="dspark",
            architectures=("DSparkDraftModel", "Qwen3DSparkModel"),
            export_architecture="DSparkDraftModel",
            decoding=Decoding(
                ANCHOR_MARKOV,
                ("greedy", "sample"),
                "vllm/v1/worker/gpu/spec_decode/dspark/speculator.py:1-55, 181-260",
                verify_extra=1,
            ),
            launch=_launch("dspark", 0),
            devices=("cuda",),
            write_config=_dspark_layout,
            layouts={"dspark": _dspark_layout},
            source="vllm/model_executor/models/qwen3_dspark.py:193-372, config/speculative.py:1534-1602",
        ),
    },
    check=check_vllm_draft,
    weight_aliases=BACKBONE_0_33.weight_aliases,
)

__all__ = [
    "DRAFT_SAMPLE_METHODS",
    "DRAFT_SAMPLING_OF",
    "REJECTION_SAMPLE_METHODS",
    "VLLM_0_33_0",
    "check_vllm_draft",
    "is_speculators",
    "speculative_config",
    "speculators_view",
    "vllm_layer_id_problems",
    "vllm_setting",
]
