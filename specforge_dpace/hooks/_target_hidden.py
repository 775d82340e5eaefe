"""DFlash's (and Domino's) data path with the target's last hidden state, for soft-label objectives.

SpecForge 0.2.0's DFlash registration (``specforge.algorithms.dflash.providers``) reads, captures,
collates and feeds ``input_ids``, ``loss_mask`` and ``hidden_states`` only; so does Domino's
(``specforge.algorithms.domino.providers``: DFlash's features, reader, normalizer and collator).  DSpark already carries
the target's last hidden state (post final norm) end to end under the key
``target_last_hidden_states``: offline feature files, the server-capture layout's
``last_hidden_feature``, its reader, normalizer and collator.  A soft-label objective (LK losses,
``soft-<name>`` twins, composites with such a term) needs exactly that tensor, so
:func:`with_target_hidden` derives from the real DFlash registration one that also

- requires the key in both feature contracts (offline storage and streaming), target
  representation ``hidden_state`` as DSpark declares it;
- reads it from offline files (SpecForge's DSpark reader, strategy name ``dflash``), normalizes it
  with the DFlash sample (same truncation, same length check) and pads it (SpecForge's DSpark
  collator);
- asks a capture for it: the offline capture layout persists ``last_hidden_states`` under the key
  and the server-capture layout requests it as ``last_hidden_feature``; the capture method stays
  ``dflash`` (the drafter's context features are DFlash's own);
- passes it to ``OnlineDFlashModel.forward(..., target_last_hidden_states=...)`` through a step
  strategy that is SpecForge's ``DFlashTrainStrategy`` plus that one argument.

Everything else (algorithm name ``dflash``, draft and model providers, resume contract, step
options) is the DFlash registration's own, and the result goes through SpecForge's own
``make_registration`` checks.  Hard objectives never see any of this: the composition hook hands
them SpecForge's registration object unchanged.

The same derivation serves Domino (``strategy: domino``, :data:`STRATEGIES`): its registration gets
the key the same way, strategy name ``domino`` for the reader, and its step is SpecForge's
``DominoTrainStrategy`` (``lambda_base`` schedule and step options unchanged) whose model call also
gets the key, read by ``OnlineDominoModel.forward`` once the plugin patches it.  DSpark needs none
of this: its own registration carries the key already.
"""

from __future__ import annotations

import dataclasses
import os
from functools import partial
from typing import Any, Optional

#: The feature key (DSpark's name for the target's last hidden state, post final norm).
TARGET_HIDDEN_KEY = "target_last_hidden_states"
#: Target representation of that feature, as DSpark's contracts declare it.
TARGET_REPRESENTATION = "hidden_state"
STRATEGY = "dflash"
#: Strategies whose SpecForge registration lacks the key and gets it derived here (DSpark has its own).
STRATEGIES = ("dflash", "domino")
#: SpecForge's step-strategy class and its attribute holding the training model, per strategy.
_STEP_CLASSES = {"dflash": ("DFlashTrainStrategy", "dflash_model"), "domino": ("DominoTrainStrategy", "domino_model")}
NORMALIZER_ID = "specforge_dpace_dflash_target_hidden_offline_v1"
MARKER = "__specforge_dpace_target_hidden__"

#: How to produce feature files that carry the key (named by every error about a missing key).
CAPTURE = (
    "capture it with specforge_dpace.features.capture_offline_features(target, records, out_dir, layer_ids, "
    "last_hidden=True) (the tiny CPU example: python examples/cpu_offline/make_tiny_setup.py DIR writes it by "
    "default)"
)
CAPTURE_HINT = CAPTURE + ", or train with a hard objective"


def soft_spec(training: Any) -> Optional[str]:
    """The canonical spec of ``training``'s objective when it reads the target distribution, else ``None``."""
    from ._plan import plan_objective

    plan = plan_objective(
        training.loss_type,
        dpace_alpha=training.dpace_alpha,
        loss_decay_gamma=training.loss_decay_gamma,
        loss_options=getattr(training, "loss_options", None),
    )
    return plan.spec if getattr(plan.objective, "needs_target", False) else None


def carries_target_hidden(registration: Any) -> bool:
    """Whether ``registration`` is one :func:`with_target_hidden` made."""
    return bool(getattr(registration.providers.step.build, MARKER, False))


# -- data adapters -------------------------------------------------------------------------------


def normalize_offline_sample(raw: Any, max_len: int) -> dict:
    """SpecForge's DFlash normalization plus ``target_last_hidden_states`` ``[1, seq, H]`` (same truncation)."""
    from specforge.algorithms.common.dflash_family_data import normalize_offline_sample as normalize_dflash

    normalized = normalize_dflash(raw, max_len)
    if TARGET_HIDDEN_KEY not in raw:
        raise ValueError(
            f"offline DFlash features lack {TARGET_HIDDEN_KEY!r}, which this objective needs; {CAPTURE_HINT}"
        )
    value = raw[TARGET_HIDDEN_KEY]
    if value.dim() == 3 and value.shape[0] == 1:
        value = value.squeeze(0)
    if value.dim() != 2:
        raise ValueError(
            f"offline DFlash {TARGET_HIDDEN_KEY} must have shape [seq, hidden] or [1, seq, hidden], "
            f"got {tuple(raw[TARGET_HIDDEN_KEY].shape)}"
        )
    value = value[:max_len].unsqueeze(0)
    length = normalized["input_ids"].shape[1]
    if value.shape[1] != length:
        raise ValueError(
            "offline DFlash features have mismatched sequence lengths after truncation: "
            f"input_ids={length}, {TARGET_HIDDEN_KEY}={value.shape[1]}"
        )
    return {**normalized, TARGET_HIDDEN_KEY: value}


def build_offline_normalizer(max_len: int, **_topology: Any):
    return partial(normalize_offline_sample, max_len=max_len)


_strategy_classes: dict = {}


def strategy_class(strategy: str = STRATEGY):
    """SpecForge's step strategy of ``strategy`` (``DFlashTrainStrategy`` / ``DominoTrainStrategy``) that also
    feeds ``target_last_hidden_states`` to the model (built once per strategy)."""
    cached = _strategy_classes.get(strategy)
    if cached is not None:
        return cached
    from specforge.training.strategies import base

    class_name, model_attr = _STEP_CLASSES[strategy]
    upstream = getattr(base, class_name)

    class TargetHiddenTrainStrategy(upstream):
        """SpecForge's step, its model call also handed the target's last hidden state."""

        required_features = {*upstream.required_features, TARGET_HIDDEN_KEY}

        def validate_batch(self, batch):
            if TARGET_HIDDEN_KEY not in batch.tensors:
                raise ValueError(
                    f"{strategy} batch has no {TARGET_HIDDEN_KEY!r} (present: {sorted(batch.tensors)}), which the "
                    f"soft-label objective {getattr(getattr(self, model_attr), 'loss_type', '?')!r} needs; "
                    f"{CAPTURE_HINT}"
                )
            super().validate_batch(batch)

        def forward_loss(self, batch, ctx=None):
            """SpecForge's own step; only the model call also gets the target's last hidden state."""
            self.validate_batch(batch)  # names the key when it is missing, before SpecForge's own check
            model = getattr(self, model_attr)
            setattr(self, model_attr, _PassTargetHidden(model, batch.tensors[TARGET_HIDDEN_KEY]))
            try:
                return super().forward_loss(batch, ctx)
            finally:
                setattr(self, model_attr, model)

    TargetHiddenTrainStrategy.__name__ = TargetHiddenTrainStrategy.__qualname__ = f"TargetHidden{class_name}"
    _strategy_classes[strategy] = TargetHiddenTrainStrategy
    return TargetHiddenTrainStrategy


class _PassTargetHidden:
    """The wrapped model, called with ``target_last_hidden_states`` added (on the batch's device)."""

    def __init__(self, model: Any, target_hidden: Any) -> None:
        self._model = model
        self._target_hidden = target_hidden

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        device = kwargs["input_ids"].device if "input_ids" in kwargs else self._target_hidden.device
        return self._model(*args, **kwargs, target_last_hidden_states=self._target_hidden.to(device))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def build_step(wrapped_model: Any, *, target_head: Any = None, **_options: Any):
    del target_head
    return strategy_class()(wrapped_model)


def build_domino_step(wrapped_model: Any, *, target_head: Any = None, lambda_start=1.0, decay_ratio=0.5):
    """SpecForge's Domino ``build_step`` (same options: the ``lambda_base`` schedule) with the key fed."""
    del target_head
    return strategy_class("domino")(wrapped_model, lambda_start=lambda_start, decay_ratio=decay_ratio)


STEP_BUILDERS = {"dflash": build_step, "domino": build_domino_step}
for _builder in STEP_BUILDERS.values():
    setattr(_builder, MARKER, True)


# -- the derived registration ------------------------------------------------------------------


def _contract(contract: Any) -> Any:
    from specforge.algorithms.contracts import FeatureMode

    required = frozenset({*contract.required_tensors, TARGET_HIDDEN_KEY})
    changes: dict[str, Any] = {
        "required_tensors": required,
        "allowed_target_representations": frozenset({TARGET_REPRESENTATION}),
        "default_target_representation": TARGET_REPRESENTATION,
    }
    if contract.mode is FeatureMode.OFFLINE:
        changes["storage"] = dataclasses.replace(contract.storage, required_tensors=required, normalizer=NORMALIZER_ID)
    return dataclasses.replace(contract, **changes)


def with_target_hidden(registration: Any) -> Any:
    """A registration like SpecForge's DFlash (or Domino) one that also carries ``target_last_hidden_states``."""
    from specforge.algorithms.common.dflash_family_data import build_dspark_collator, build_dspark_offline_reader
    from specforge.algorithms.common.providers import make_registration

    name = registration.name
    if name not in STRATEGIES:
        raise ValueError(
            f"with_target_hidden derives from the {' or '.join(map(repr, STRATEGIES))} registration, got {name!r}"
        )
    if carries_target_hidden(registration):
        return registration
    spec = dataclasses.replace(
        registration.spec, feature_contracts=tuple(_contract(c) for c in registration.spec.feature_contracts)
    )
    providers = registration.providers
    offline = tuple(
        dataclasses.replace(
            provider,
            normalizer_id=NORMALIZER_ID,
            build_reader=partial(build_dspark_offline_reader, name),
            build_normalizer=build_offline_normalizer,
            build_collator=build_dspark_collator,
            capture_layout=None
            if provider.capture_layout is None
            else dataclasses.replace(provider.capture_layout, last_hidden_feature=TARGET_HIDDEN_KEY),
        )
        for provider in providers.offline
    )
    streaming = tuple(
        dataclasses.replace(
            provider,
            target_representation=TARGET_REPRESENTATION,
            layout=dataclasses.replace(provider.layout, last_hidden_feature=TARGET_HIDDEN_KEY),
            build_collator=build_dspark_collator,
        )
        for provider in providers.server_streaming
    )
    step = dataclasses.replace(providers.step, build=STEP_BUILDERS[name])
    return make_registration(
        spec, dataclasses.replace(providers, step=step, offline=offline, server_streaming=streaming)
    )


# -- early data validation ---------------------------------------------------------------------


def needs_target_hidden(training: Any) -> Optional[str]:
    """Why a DFlash / Domino run needs the key, or ``None``: a soft-label objective, or walks at T > 0 the
    user asked for (``training.eval_walk.temperatures`` or a ``training.best_metric`` at a temperature)."""
    spec = soft_spec(training)
    if spec is not None:
        return f"training.loss_type={spec!r} is a soft-label objective: it needs the target's distribution p"
    from ._eval_settings import settings_of_training

    settings = settings_of_training(training)
    if settings.temperatures_required:
        return (
            f"the eval walks at T = {', '.join(f'{t:g}' for t in settings.temperatures)} (training.eval_walk / "
            "training.best_metric) need the target's distribution p"
        )
    return None


def why_target_hidden(training: Any, registration: Any) -> Optional[tuple[str, str]]:
    """``(why, hint)`` when a run's data path reads ``target_last_hidden_states`` (the sentence that opens the
    error when the features lack it, and how to get them), or ``None``: a derived DFlash / Domino registration
    whose run needs p (:func:`needs_target_hidden`), or any DSpark run (SpecForge's DSpark reader, normalizer and
    collator always read it, so a hard objective is no way out there)."""
    if training.strategy == "dspark" and registration.name == "dspark":
        why = (
            "training.strategy='dspark' trains against the target's distribution p whatever the objective "
            f"(training.loss_type={training.loss_type!r}): SpecForge's DSpark data path reads the target's last "
            "hidden state (post final norm)"
        )
        return why, CAPTURE
    if carries_target_hidden(registration):
        reason = needs_target_hidden(training)
        if reason is not None:
            return f"{reason}, computed from the target's last hidden state (post final norm)", CAPTURE_HINT
    return None


def check_offline_features(cfg: Any, why: str, hint: str = CAPTURE_HINT) -> None:
    """Refuse, before training starts, offline features whose first file lacks the key; ``why`` and ``hint``
    (from :func:`why_target_hidden`) open and close the message.

    One file per directory is opened (``data.hidden_states_path`` and ``data.eval_hidden_states_path``);
    SpecForge's own eager check of every file is ``SPECFORGE_VALIDATE_OFFLINE_FEATURES=1``.
    """
    from specforge.runtime.data_plane.feature_store import load_feature_file
    from specforge.runtime.data_plane.offline_reader import list_feature_files

    for field in ("hidden_states_path", "eval_hidden_states_path"):
        path = getattr(cfg.data, field, "") or ""
        if not path or not os.path.exists(path):
            continue  # SpecForge reports a missing path itself
        files = list_feature_files(path)
        if not files:
            continue
        raw = load_feature_file(files[0])
        if TARGET_HIDDEN_KEY not in raw:
            raise ValueError(
                f"{why}, but the offline feature file {files[0]} (data.{field}={path!r}) has no "
                f"{TARGET_HIDDEN_KEY!r} (it has {sorted(raw)}); " + hint
            )


__all__ = [
    "CAPTURE_HINT",
    "NORMALIZER_ID",
    "STRATEGIES",
    "TARGET_HIDDEN_KEY",
    "build_domino_step",
    "build_step",
    "carries_target_hidden",
    "check_offline_features",
    "needs_target_hidden",
    "normalize_offline_sample",
    "why_target_hidden",
    "soft_spec",
    "strategy_class",
    "with_target_hidden",
]
