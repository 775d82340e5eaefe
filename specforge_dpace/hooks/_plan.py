"""Turn SpecForge's objective arguments into one objective plan (shared by every layout's hook).

SpecForge knows ``loss_type`` (four names), ``dpace_alpha`` and ``loss_decay_gamma``.  The
plugin adds any registered name or composite spec in ``loss_type`` and a ``loss_options``
mapping.  Built-in names without plugin-only options are *passed through* to SpecForge's own
code, so installing the plugin changes nothing for users who do not ask for a new loss.

Defaults flow from SpecForge's arguments into spec terms that do not set them: ``dpace*``
terms take ``alpha = dpace_alpha`` and ``dflash`` terms take ``gamma = loss_decay_gamma``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from ..losses import CompositeObjective, Option, build_loss
from ..losses._composite import COMPOSITE_OPTIONS
from ..losses._shares import SHARE_BLOCKS
from ..losses._spec import Term, format_spec, parse_composite

UPSTREAM_NAMES = (
    "dflash",
    "dpace",
    "dpace-cumulative-confidence-only",
    "dpace-continuation-value-only",
)
_DPACE_PREFIX = "dpace"

#: Options about *how* the objective is computed, not *what* it is.
PATH_OPTIONS: dict[str, Option] = {
    "fused": Option(False, (bool,), help="use the fused objective path (gradient computed in the forward pass)"),
    "fused_sub_chunk": Option(
        None, (int,), nullable=True, minimum=1, help="tokens per fused sub-chunk (default: from vocab size)"
    ),
    "acceptance_metrics": Option(
        None, (bool,), nullable=True, help="log sim_tau/surrogate/accept_pos (default: on for plugin objectives)"
    ),
    "share_blocks": Option(
        SHARE_BLOCKS,
        (int,),
        minimum=0,
        help="composites: blocks per micro-batch sampled for the grad_share[term] metrics (0: loss_share only)",
    ),
}


@dataclass(frozen=True)
class ObjectivePlan:
    spec: str  # canonical spec; recorded as the model's loss_type for plugin objectives
    objective: Any
    passthrough: bool  # SpecForge's own code computes it (bit-identical by construction)
    upstream_loss_type: str  # loss_type handed to SpecForge's constructor
    dpace_alpha: float
    loss_decay_gamma: Optional[float]
    fused: bool = False
    fused_sub_chunk: Optional[int] = None
    acceptance_metrics: bool = True
    share_blocks: int = SHARE_BLOCKS  # composites: blocks sampled per micro-batch for grad_share (0: none)


def _check_same(name: str, key: str, spec_value: Any, arg: str, arg_value: Any, arg_default: Any) -> None:
    if arg_value != arg_default and spec_value != arg_value:
        raise ValueError(
            f"{name}: {key}={spec_value!r} in loss_type/loss_options conflicts with {arg}={arg_value!r}; set one"
        )


def plan_objective(
    loss_type: Any,
    *,
    dpace_alpha: float = 0.5,
    loss_decay_gamma: Optional[float] = None,
    loss_options: Optional[Mapping[str, Any]] = None,
    upstream_names: tuple[str, ...] = UPSTREAM_NAMES,
) -> ObjectivePlan:
    """Validate and resolve SpecForge's objective arguments (errors list names and grammar).

    Every error names the SpecForge argument it is about (``loss_type``, ``dpace_alpha``,
    ``loss_decay_gamma``, ``loss_options``), as SpecForge's own checks do.
    """
    _check_dpace_alpha(dpace_alpha)
    _check_decay_gamma(loss_decay_gamma)
    try:
        return _plan(loss_type, dpace_alpha, loss_decay_gamma, loss_options, upstream_names)
    except (ValueError, TypeError) as exc:
        if str(exc).startswith(("loss_type", "loss_options")):
            raise
        raise LossTypeError(f"loss_type={loss_type!r} is not accepted: {exc}") from exc


class LossTypeError(ValueError):
    """``loss_type`` / ``loss_options`` name an objective the registry cannot build."""


def _check_dpace_alpha(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"dpace_alpha must be a finite number in [0, 1], got {value!r}")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"dpace_alpha must be in [0, 1], got {value!r}")


def _check_decay_gamma(value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"loss_decay_gamma must be None or a finite number (<= 0 means no decay), got {value!r}")


def _plan(
    loss_type: Any,
    dpace_alpha: float,
    loss_decay_gamma: Optional[float],
    loss_options: Optional[Mapping[str, Any]],
    upstream_names: tuple[str, ...],
) -> ObjectivePlan:
    options = dict(loss_options or {})
    path = {}
    for key, spec in PATH_OPTIONS.items():
        if key in options:
            path[key] = spec.coerce("loss_options", key, options.pop(key))
    fused = bool(path.get("fused", False))
    sub_chunk = path.get("fused_sub_chunk")
    metrics_opt = path.get("acceptance_metrics")
    share_blocks = path.get("share_blocks", SHARE_BLOCKS)

    if not isinstance(loss_type, str):
        raise TypeError(f"loss_type must be a string (name or composite spec), got {loss_type!r}")
    terms, composite = parse_composite(loss_type)
    given = {k: options.pop(k) for k in list(options) if k in COMPOSITE_OPTIONS}
    if given and len(terms) == 1:
        raise ValueError(
            f"loss_options {given} apply to a composite of two or more terms, but loss_type {loss_type!r} has one; "
            "accepted: a multi-term loss_type ('dpace + 0.5*lk-lambda'), or leave them out"
        )
    clash = sorted(set(given) & set(composite))
    if clash:
        raise ValueError(f"option(s) {clash} given both in loss_type {loss_type!r} and in loss_options")
    composite.update(given)
    if options and len(terms) > 1:
        raise ValueError(
            f"loss_options {options} apply only to a single-term loss_type, but {loss_type!r} has {len(terms)} "
            "terms; write options inside the spec, e.g. 'dpace(alpha=0.3) + 0.3*first-error-focal' (the "
            f"composite's own options {', '.join(COMPOSITE_OPTIONS)} may be loss_options keys)"
        )
    if options:
        clash = sorted(set(options) & set(terms[0].options))
        if clash:
            raise ValueError(f"option(s) {clash} given both in loss_type {loss_type!r} and in loss_options")
        terms = [Term(terms[0].name, terms[0].weight, {**terms[0].options, **options})]

    single = terms[0] if len(terms) == 1 and terms[0].weight == 1.0 and not composite else None
    if "share_blocks" in path and single is not None:
        raise ValueError(
            f"loss_options share_blocks={share_blocks!r} applies to composites (it samples blocks for the "
            f"grad_share[term] metrics), but loss_type {loss_type!r} is one term; accepted: a multi-term "
            "loss_type, or leave share_blocks out"
        )
    # SpecForge's own code computes a built-in name whose options are all its own (alpha, gamma); any other
    # option (e.g. labels=target) makes it a plugin objective
    if single is not None and single.name in upstream_names and not set(single.options) - {"alpha", "gamma"}:
        name, opts = single.name, dict(single.options)
        if name.startswith(_DPACE_PREFIX) and "alpha" in opts:
            _check_same(name, "alpha", opts["alpha"], "dpace_alpha", dpace_alpha, 0.5)
            dpace_alpha = opts.pop("alpha")
        if name == "dflash" and "gamma" in opts:
            _check_same(name, "gamma", opts["gamma"], "loss_decay_gamma", loss_decay_gamma, None)
            loss_decay_gamma = opts.pop("gamma")
        resolved = {"alpha": dpace_alpha} if name.startswith(_DPACE_PREFIX) else {"gamma": loss_decay_gamma}
        objective = build_loss(name, {**resolved, **opts})  # leftover opts: unknown -> clear error
        metrics = bool(metrics_opt) if metrics_opt is not None else False
        return ObjectivePlan(
            spec=name,
            objective=objective,
            passthrough=not (fused or metrics),
            upstream_loss_type=name,
            dpace_alpha=dpace_alpha,
            loss_decay_gamma=loss_decay_gamma,
            fused=fused,
            fused_sub_chunk=sub_chunk,
            acceptance_metrics=metrics,
        )

    resolved_terms = []
    for term in terms:
        opts = dict(term.options)
        if term.name.startswith(_DPACE_PREFIX) and "alpha" not in opts:
            opts["alpha"] = dpace_alpha
        if term.name == "dflash" and "gamma" not in opts and loss_decay_gamma is not None:
            opts["gamma"] = loss_decay_gamma
        resolved_terms.append(Term(term.name, term.weight, opts))
    objective = build_loss(format_spec(resolved_terms, composite))
    spec = objective.spec()
    return ObjectivePlan(
        spec=spec,
        objective=objective,
        passthrough=False,
        upstream_loss_type="dflash",
        dpace_alpha=float(dpace_alpha),
        loss_decay_gamma=loss_decay_gamma,
        fused=fused,
        fused_sub_chunk=sub_chunk,
        acceptance_metrics=True if metrics_opt is None else bool(metrics_opt),
        share_blocks=share_blocks,
    )


def is_composite(objective: Any) -> bool:
    return isinstance(objective, CompositeObjective)
