"""The plugin's evaluation settings in SpecForge's YAML: ``training.eval_walk`` and ``training.best_metric``.

``training.eval_walk`` (a mapping; every key optional) configures the walk predictors SpecForge's offline
evaluation of a DFlash, Domino or DSpark drafter also reports once the plugin is installed:

==========================  =========  ===================================================================
key                         default    meaning
==========================  =========  ===================================================================
``enabled``                 true       run the per-anchor pass in every evaluation
``anchor_stride``           1          draft a block at every k-th anchor of each continuation (1 = all)
``temperatures``            [1.0]      temperatures of the T > 0 walks (they need the target's last hidden
                                       state in the eval features; naming the key, or a best metric at a
                                       temperature, makes DFlash / Domino runs require it)
``blocks_per_forward``      null       blocks drafted per forward (null: ``training.num_anchors``)
==========================  =========  ===================================================================

``training.best_metric`` names the metric SpecForge's checkpoint manager keeps the best checkpoint by
(higher wins); unset, SpecForge's own default (``eval/simulated_acc_len``, the mean token accuracy) stays.
Accepted: ``eval/tau_walk``, ``eval/tau_walk_sample@T<t>`` and ``eval/tau_walk_greedy_draft@T<t>`` for a
configured temperature t, and SpecForge's higher-is-better ``eval/simulated_acc_len`` and ``eval/avg_acc``.

Nothing here imports SpecForge or torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional

#: SpecForge's ``CheckpointManager`` default (``specforge/training/checkpoint.py``).
SPECFORGE_DEFAULT_METRIC = "eval/simulated_acc_len"
#: SpecForge's evaluator metrics for which higher is better (``specforge/eval/evaluator.py``).
SPECFORGE_METRICS = (SPECFORGE_DEFAULT_METRIC, "eval/avg_acc")
TAU_WALK = "eval/tau_walk"
RECOMMENDED_METRIC = TAU_WALK
#: The resume-contract key that records the metric the best checkpoint is chosen by.
CONTRACT_KEY = "specforge_dpace_best_metric"

DEFAULTS = {"enabled": True, "anchor_stride": 1, "temperatures": [1.0], "blocks_per_forward": None}
ACCEPTED = (
    "training.eval_walk accepts a mapping with enabled (true/false), anchor_stride (an int >= 1), temperatures "
    "(a list of distinct finite numbers > 0, [] for T = 0 only) and blocks_per_forward (null or an int >= 1)"
)


@dataclass(frozen=True)
class EvalWalkSettings:
    enabled: bool = True
    anchor_stride: int = 1
    temperatures: tuple[float, ...] = (1.0,)
    blocks_per_forward: Optional[int] = None
    temperatures_required: bool = False  # the user named temperatures or a best metric at one
    best_metric: Optional[str] = None  # None: SpecForge's default

    def metric_names(self) -> list[str]:
        """The walk metrics this configuration can report."""
        if not self.enabled:
            return []
        names = [TAU_WALK]
        for t in self.temperatures:
            names += [sample_metric(t), greedy_draft_metric(t)]
        return names

    @property
    def effective_best_metric(self) -> str:
        return self.best_metric or SPECFORGE_DEFAULT_METRIC

    def contract_value(self) -> str:
        """What the resume contract records: the metric, with the stride a walk metric depends on."""
        metric = self.effective_best_metric
        if metric.startswith(TAU_WALK):
            return f"{metric} (anchor_stride {self.anchor_stride})"
        return metric


def sample_metric(temperature: float) -> str:
    return f"{TAU_WALK}_sample@T{temperature:g}"


def greedy_draft_metric(temperature: float) -> str:
    return f"{TAU_WALK}_greedy_draft@T{temperature:g}"


def _int_at_least(key: str, value: Any, low: int, nullable: bool = False) -> Optional[int]:
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"training.eval_walk.{key}={value!r} is invalid; {ACCEPTED}")
    return int(value)


def parse_eval_walk(value: Optional[Mapping[str, Any]]) -> EvalWalkSettings:
    """Validate ``training.eval_walk`` (``None`` or ``{}``: every default); errors name the key and the values
    accepted."""
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise ValueError(f"training.eval_walk={value!r} is invalid; {ACCEPTED}")
    unknown = sorted(set(value) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"training.eval_walk has unknown key(s) {unknown}; {ACCEPTED}")
    merged = {**DEFAULTS, **value}
    enabled = merged["enabled"]
    if not isinstance(enabled, bool):
        raise ValueError(f"training.eval_walk.enabled={enabled!r} is invalid; {ACCEPTED}")
    temperatures = merged["temperatures"]
    ok = isinstance(temperatures, (list, tuple)) and all(
        not isinstance(t, bool) and isinstance(t, (int, float)) and math.isfinite(t) and t > 0 for t in temperatures
    )
    if not ok or len({float(t) for t in temperatures}) != len(temperatures):
        raise ValueError(f"training.eval_walk.temperatures={temperatures!r} is invalid; {ACCEPTED}")
    return EvalWalkSettings(
        enabled=enabled,
        anchor_stride=_int_at_least("anchor_stride", merged["anchor_stride"], 1),
        temperatures=tuple(float(t) for t in temperatures),
        blocks_per_forward=_int_at_least("blocks_per_forward", merged["blocks_per_forward"], 1, nullable=True),
        temperatures_required=enabled and "temperatures" in value and bool(temperatures),
    )


def with_best_metric(settings: EvalWalkSettings, best_metric: Any) -> EvalWalkSettings:
    """``settings`` with ``training.best_metric`` checked against what this configuration reports."""
    if best_metric is None:
        return settings
    accepted = [*settings.metric_names(), *SPECFORGE_METRICS]
    if best_metric not in accepted:
        why = ""
        if best_metric == "eval/avg_loss":
            why = " (SpecForge's checkpoint manager keeps the highest score; a loss is better lower)"
        elif isinstance(best_metric, str) and best_metric.startswith(TAU_WALK) and not settings.enabled:
            why = " (training.eval_walk.enabled is false)"
        elif isinstance(best_metric, str) and best_metric.startswith(TAU_WALK + "_"):
            why = " (a walk at a temperature needs that temperature in training.eval_walk.temperatures)"
        raise ValueError(
            f"training.best_metric={best_metric!r} is not accepted{why}; accepted: {', '.join(accepted)} "
            f"(recommended: {RECOMMENDED_METRIC}, the served tau at T = 0)"
        )
    at_temperature = best_metric.startswith(TAU_WALK + "_")
    return EvalWalkSettings(
        enabled=settings.enabled,
        anchor_stride=settings.anchor_stride,
        temperatures=settings.temperatures,
        blocks_per_forward=settings.blocks_per_forward,
        temperatures_required=settings.temperatures_required or at_temperature,
        best_metric=best_metric,
    )


def settings_of_training(training: Any) -> EvalWalkSettings:
    """The settings of a ``TrainingConfig`` (fields absent when the schema hook is not active: defaults)."""
    settings = parse_eval_walk(getattr(training, "eval_walk", None))
    return with_best_metric(settings, getattr(training, "best_metric", None))


def check_eval_configured(cfg: Any) -> None:
    """Refuse plugin evaluation settings a run would ignore: no offline eval set, or a strategy outside the
    DFlash family."""
    training = cfg.training
    given = [
        name
        for name, default in (("eval_walk", None), ("best_metric", None))
        if getattr(training, name, default) not in (None, {})
    ]
    if not given:
        return
    shown = " and ".join(f"training.{name}={getattr(training, name)!r}" for name in given)
    from ._methods import FAMILY

    if training.strategy not in FAMILY:
        raise ValueError(
            f"{shown} applies to the DFlash-family strategies {', '.join(FAMILY)}, not "
            f"training.strategy={training.strategy!r}; accepted: leave them unset for this strategy"
        )
    if not (getattr(cfg.data, "eval_hidden_states_path", None) and training.eval_interval > 0):
        raise ValueError(
            f"{shown} has no effect without SpecForge's offline evaluation; accepted: set "
            "data.eval_hidden_states_path and training.eval_interval (> 0), or leave them unset"
        )


__all__ = [
    "CONTRACT_KEY",
    "RECOMMENDED_METRIC",
    "SPECFORGE_DEFAULT_METRIC",
    "SPECFORGE_METRICS",
    "TAU_WALK",
    "EvalWalkSettings",
    "check_eval_configured",
    "greedy_draft_metric",
    "parse_eval_walk",
    "sample_metric",
    "settings_of_training",
    "with_best_metric",
]
