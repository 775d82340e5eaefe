"""Hook for SpecForge's legacy layout: ``specforge.core.dflash.OnlineDFlashModel`` (2026-01..07 checkouts).

Two constructor generations exist: before PR #578 (no ``loss_type`` / ``dpace_alpha``) and after
it (four built-in names, later also checkout-only names such as ``vp_drafter``).  ``forward``
returns ``(loss, accuracy)`` or, later, ``(loss, accuracy, metrics)``.  The patch lets
``loss_type`` take any registered objective or composite plus a ``loss_options`` mapping:

- a name the checkout implements itself, without plugin options, runs the checkout's own code
  unchanged (bit-identical by construction);
- anything else runs the checkout's own forward as plain DFlash and swaps the loss: the forward's
  single ``F.cross_entropy(..., reduction="none")`` call and its anchor sampling are observed,
  the block weight mask is rebuilt, checked against the checkout's own DFlash value, and the
  registered objective is evaluated on ``(neg_log_q, weight_mask, correct)``.  Observing instead
  of re-implementing keeps every legacy revision's attention, masking and noise code in charge.

The legacy trainer has no ``(numerator, denominator)`` channel: the loss returned is
``objective.reduce(...)`` of the micro-batch, like the checkout's own D-PACE (divided by B).
Observation swaps the checkout module's ``F`` alias for the duration of one plugin forward, so
two plugin forwards of that module must not run concurrently in threads of one process (the
legacy trainer runs one per process).  Revisions before 2026-02-14 use another forward design;
there plugin objectives are refused with a clear error and the checkout's own loss still runs.

Soft-label objectives (``lk-lambda``, ``soft-<name>``, composites with such a term) are refused on
every legacy revision: they need the target's last hidden state, which only the unified runtime's
data path carries (see :mod:`specforge_dpace.hooks._target_hidden`).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from typing import Any, Iterator, Mapping, Optional

from ._patching import PatchSet
from ._plan import PATH_OPTIONS, UPSTREAM_NAMES, ObjectivePlan, plan_objective

TARGET_MODULE = "specforge.core.dflash"
PLAN_ATTR = "_specforge_dpace_plan"
MARKER = "__specforge_dpace_patched__"
_RECORD_ATTR = "_specforge_dpace_legacy_patches"

#: Process-wide defaults used when a constructor call does not pass the argument (set by the
#: train_dflash wrapper around a checkout script whose constructor call predates the flag).
_DEFAULTS: dict[str, Any] = {}


@contextlib.contextmanager
def objective_defaults(
    loss_type: Optional[str] = None,
    dpace_alpha: Optional[float] = None,
    loss_options: Optional[Mapping[str, Any]] = None,
) -> Iterator[None]:
    """Defaults for ``OnlineDFlashModel(...)`` calls that omit these arguments (restored on exit)."""
    saved = dict(_DEFAULTS)
    _DEFAULTS.clear()
    for key, value in (("loss_type", loss_type), ("dpace_alpha", dpace_alpha), ("loss_options", loss_options)):
        if value is not None:
            _DEFAULTS[key] = dict(value) if key == "loss_options" else value
    try:
        yield
    finally:
        _DEFAULTS.clear()
        _DEFAULTS.update(saved)


def checkout_loss_names(module: Any, has_loss_type: bool) -> frozenset:
    """Names the checkout's own constructor accepts (``{"dflash"}`` before PR #578)."""
    if not has_loss_type:
        return frozenset({"dflash"})
    return frozenset(getattr(module, "_VALID_LOSS_TYPES", None) or {"dflash"})


def _reject_path_options(options: Mapping[str, Any]) -> None:
    used = sorted(key for key in PATH_OPTIONS if options.get(key) not in (None, False))
    if used:
        raise ValueError(
            f"loss_options {used} need SpecForge's unified runtime; the legacy layout "
            "(specforge.core.dflash) computes full-vocabulary logits inline and has no metrics channel"
        )


SOFT_REFUSAL = (
    "loss_type={spec!r} is a soft-label objective: soft-label objectives need the unified runtime. They read "
    "the target's distribution p from its last hidden state (target_last_hidden_states), which the legacy layout "
    "(specforge.core.dflash, scripts/train_dflash.py) never hands to OnlineDFlashModel; train with `specforge "
    "train` (SpecForge's unified runtime, PyPI specforge==0.2.0) on offline features that carry "
    "target_last_hidden_states, or choose a hard objective here"
)


def soft_objective_error(
    loss_type: Any, dpace_alpha: Any = 0.5, loss_options: Optional[Mapping[str, Any]] = None
) -> Optional[str]:
    """The refusal for a soft-label objective on a legacy checkout, or ``None`` (also for specs that fail to
    plan: the constructor reports those with the full message)."""
    try:
        plan = plan_objective(
            loss_type, dpace_alpha=0.5 if dpace_alpha is None else dpace_alpha, loss_options=loss_options
        )
    except (ValueError, TypeError):
        return None
    return SOFT_REFUSAL.format(spec=plan.spec) if getattr(plan.objective, "needs_target", False) else None


def _make_init(original_init: Any, module: Any) -> Any:
    signature = inspect.signature(original_init)
    has_loss_type = "loss_type" in signature.parameters
    own_names = checkout_loss_names(module, has_loss_type)
    upstream = tuple(name for name in UPSTREAM_NAMES if name in own_names)

    @functools.wraps(original_init)
    def __init__(self, *args: Any, loss_options: Optional[Mapping[str, Any]] = None, **kwargs: Any) -> None:
        extra = {}
        if not has_loss_type:  # pre-D-PACE constructor: the objective arguments are ours alone
            extra = {key: kwargs.pop(key) for key in ("loss_type", "dpace_alpha") if key in kwargs}
        bound = signature.bind(self, *args, **kwargs)
        given = {**bound.arguments, **extra}
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        arguments.pop("self")
        loss_type = given.get("loss_type", _DEFAULTS.get("loss_type", "dflash"))
        dpace_alpha = given.get("dpace_alpha", _DEFAULTS.get("dpace_alpha", 0.5))
        options = dict(loss_options if loss_options is not None else _DEFAULTS.get("loss_options") or {})

        plan: Optional[ObjectivePlan] = None
        if options or not (isinstance(loss_type, str) and loss_type in own_names):
            _reject_path_options(options)
            plan = plan_objective(
                loss_type,
                dpace_alpha=dpace_alpha,
                loss_decay_gamma=arguments.get("loss_decay_gamma"),
                loss_options=options,
                upstream_names=upstream,
            )
            if getattr(plan.objective, "needs_target", False):
                raise ValueError(SOFT_REFUSAL.format(spec=plan.spec))
            if not plan.passthrough and not callable(getattr(type(self), "_sample_anchor_positions", None)):
                raise _layout_error("no anchor sampling: revisions before 2026-02-09 draw no DFlash anchor blocks")
            if "loss_decay_gamma" in signature.parameters:
                arguments["loss_decay_gamma"] = plan.loss_decay_gamma if plan.passthrough else None
            loss_type = plan.upstream_loss_type if plan.passthrough else "dflash"
            dpace_alpha = plan.dpace_alpha
        if has_loss_type:
            arguments["loss_type"] = loss_type
            arguments["dpace_alpha"] = dpace_alpha
        original_init(self, **arguments)
        if plan is not None and not plan.passthrough:
            self.loss_type = plan.spec
            self.loss_decay_gamma = plan.loss_decay_gamma
        object.__setattr__(self, PLAN_ATTR, plan)  # None: the checkout's own objective, untouched
        self.loss_options = options

    params = list(signature.parameters.values())
    tail = [p for p in params if p.kind is inspect.Parameter.VAR_KEYWORD]  # must stay last
    added = [("loss_type", "dflash"), ("dpace_alpha", 0.5)] if not has_loss_type else []
    __init__.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[
            *(p for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD),
            *(inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d) for n, d in added),
            inspect.Parameter("loss_options", inspect.Parameter.KEYWORD_ONLY, default=None),
            *tail,
        ]
    )
    setattr(__init__, MARKER, True)
    return __init__


class _RecordingFunctional:
    """Stands in for the checkout module's ``F`` during one forward; records ``cross_entropy`` calls."""

    def __init__(self, real: Any, calls: list) -> None:
        self._real = real
        self._calls = calls

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def cross_entropy(self, input: Any, target: Any, *args: Any, **kwargs: Any) -> Any:
        out = self._real.cross_entropy(input, target, *args, **kwargs)
        self._calls.append((input, target, kwargs.get("reduction", "mean"), out))
        return out


@contextlib.contextmanager
def _observe(model: Any, module: Any, anchors: list, calls: list) -> Iterator[None]:
    """Run the checkout's forward as plain DFlash, recording anchors and per-token cross-entropy."""
    sample = model._sample_anchor_positions

    def recording_sample(*args: Any, **kwargs: Any) -> Any:
        result = sample(*args, **kwargs)
        anchors.append(result)
        return result

    saved_attrs = {name: vars(model)[name] for name in ("loss_type", "loss_decay_gamma") if name in vars(model)}
    real_functional = getattr(module, "F", None)
    if real_functional is None:
        raise _layout_error("the module has no torch.nn.functional alias F")
    vars(model)["_sample_anchor_positions"] = recording_sample
    vars(model)["loss_type"] = "dflash"
    vars(model)["loss_decay_gamma"] = None
    module.F = _RecordingFunctional(real_functional, calls)
    try:
        yield
    finally:
        module.F = real_functional
        for name in ("_sample_anchor_positions", "loss_type", "loss_decay_gamma"):
            vars(model).pop(name, None)
        vars(model).update(saved_attrs)


def _layout_error(detail: str) -> RuntimeError:
    return RuntimeError(
        f"specforge-dpace: unrecognized legacy OnlineDFlashModel.forward ({detail}); this checkout "
        "cannot run plugin objectives -- use a built-in loss_type or SpecForge's unified runtime"
    )


def _plugin_loss(
    model: Any, plan: ObjectivePlan, input_ids: Any, loss_mask: Any, anchors: list, calls: list, own_loss: Any
) -> Any:
    import torch

    from ._blocks import block_labels, check_finite_loss

    per_token = [call for call in calls if call[2] == "none"]
    if len(anchors) != 1 or len(per_token) != 1:
        raise _layout_error(f"{len(anchors)} anchor samplings, {len(per_token)} per-token cross-entropies")
    flat_logits, flat_targets, _, neg_log_q = per_token[0]
    anchor_positions, keep = anchors[0]
    target_ids, weight_mask = block_labels(input_ids, loss_mask, anchor_positions, keep, model.block_size)
    if flat_targets.shape != target_ids.reshape(-1).shape or not torch.equal(flat_targets, target_ids.reshape(-1)):
        raise _layout_error("block labels differ from the checkout's")
    check_finite_loss(plan.objective, own_loss)  # a NaN forward stops here, not as a "layout" mismatch below
    with torch.no_grad():
        flat_weights = weight_mask.reshape(-1)
        rebuilt = (neg_log_q * flat_weights).sum() / (flat_weights.sum() + 1e-6)
        if not torch.allclose(rebuilt, own_loss.detach().to(rebuilt.dtype), rtol=1e-4, atol=1e-6):
            raise _layout_error(f"rebuilt DFlash loss {rebuilt.item():.6g} != checkout's {own_loss.item():.6g}")
        correct = (flat_logits.argmax(dim=-1) == flat_targets).reshape(target_ids.shape)
    neg_log_q = neg_log_q.reshape(target_ids.shape)
    objective = plan.objective
    num, den = objective.chunk_terms(neg_log_q, weight_mask, correct)
    loss = objective.reduce(num, den, input_ids.shape[0]).loss
    check_finite_loss(objective, loss, count=False)  # the same forward call as the check above
    return loss


def _make_forward(original_forward: Any, module: Any) -> Any:
    signature = inspect.signature(original_forward)

    @functools.wraps(original_forward)
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        plan = getattr(self, PLAN_ATTR, None)
        if plan is None or plan.passthrough:
            return original_forward(self, *args, **kwargs)
        bound = signature.bind(self, *args, **kwargs)
        anchors: list = []
        calls: list = []
        with _observe(self, module, anchors, calls):
            out = original_forward(self, *args, **kwargs)
        loss = _plugin_loss(
            self, plan, bound.arguments["input_ids"], bound.arguments["loss_mask"], anchors, calls, out[0]
        )
        return (loss, *out[1:])

    setattr(forward, MARKER, True)
    return forward


def apply(module: Any) -> PatchSet:
    """Patch ``module.OnlineDFlashModel`` (idempotent); ``revert(module)`` undoes it."""
    cls = module.OnlineDFlashModel
    if getattr(vars(cls).get("__init__"), MARKER, False):
        return PatchSet(TARGET_MODULE)  # already patched: nothing new to record
    patches = PatchSet(TARGET_MODULE)
    patches.set(cls, "__init__", _make_init(vars(cls)["__init__"], module))
    patches.set(cls, "forward", _make_forward(vars(cls)["forward"], module))
    patches.set(module, _RECORD_ATTR, patches)
    return patches


def revert(module: Any) -> None:
    """Restore the very objects ``apply`` replaced; a no-op when not patched."""
    patches = vars(module).get(_RECORD_ATTR)
    if patches is not None:
        patches.revert()
