"""Objective registry: names -> factories, filled from the ``specforge_dpace.losses`` entry points.

The built-ins come through this package's own entry points, like any third party's.
Discovery is lazy (first lookup) and a broken third-party entry point only warns.
A :class:`LossRegistry` holds no global state, so tests can build their own; the
module-level functions use one default instance.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable, Mapping, Optional, Union

from ._base import BlockObjective, Option
from ._composite import COMPOSITE_OPTIONS, CompositeObjective, composite_options
from ._spec import GRAMMAR, Term, parse_composite

ENTRY_POINT_GROUP = "specforge_dpace.losses"
DISTRIBUTION = "specforge-dpace"
BUILTIN_SOURCE = "built-in"
TWIN_PREFIX = "soft-"

Objective = Union[BlockObjective, CompositeObjective]


@dataclass(frozen=True)
class LossInfo:
    name: str
    factory: Callable[..., BlockObjective]
    options: Mapping[str, Option]
    source: str
    description: str = ""
    needs_correct: bool = False
    needs_target: bool = False  # reads the target distribution p (needs the target's last hidden state)
    twin_of: Optional[str] = None  # ``soft-<name>``: the hard objective it lifts


def _builtin_factories() -> dict[str, Callable[..., BlockObjective]]:
    """Used only when the package runs from a source tree without installed metadata."""
    from ._divergences import RenyiHalfLoss, TopKKLLoss
    from ._prefix import AcceptUntilFailLoss, ChainLoss, FirstErrorFocalLoss
    from ._soft import KLLoss, LKLambdaLoss, TVLoss
    from ._twin import LKAlphaLoss
    from ._weighted import (
        DFlashLoss,
        DPaceContinuationValueLoss,
        DPaceCumulativeConfidenceLoss,
        DPaceLoss,
    )

    classes = [
        DFlashLoss,
        DPaceLoss,
        DPaceCumulativeConfidenceLoss,
        DPaceContinuationValueLoss,
        FirstErrorFocalLoss,
        ChainLoss,
        AcceptUntilFailLoss,
        LKAlphaLoss,
        LKLambdaLoss,
        TVLoss,
        KLLoss,
        RenyiHalfLoss,
        TopKKLLoss,
    ]
    return {cls.name: cls for cls in classes}


def _listed_options(factory: Callable[..., Any]) -> dict[str, Option]:
    """The options a registered name takes: the factory's own, plus ``labels`` for a hard objective
    (the registry wraps it in :class:`~._twin.TargetLabels` for ``labels=target``)."""
    from ._twin import LABELS

    options = _options_of(factory)
    if not getattr(factory, "needs_target", False) and "labels" not in options:
        options["labels"] = LABELS
    return options


def _options_of(factory: Callable[..., Any]) -> dict[str, Option]:
    declared = getattr(factory, "options", None)
    if isinstance(declared, Mapping):
        return dict(declared)
    options = {}
    for param in inspect.signature(factory).parameters.values():
        if param.kind in (param.KEYWORD_ONLY, param.POSITIONAL_OR_KEYWORD) and param.default is not param.empty:
            default = param.default
            types = (type(default),) if default is not None else (object,)
            if types == (int,):
                types = (float, int)
            options[param.name] = Option(default, types, nullable=default is None)
    return options


class LossRegistry:
    """Name -> objective factory, with entry-point discovery on first use."""

    def __init__(self, *, discover: bool = True, group: str = ENTRY_POINT_GROUP) -> None:
        self._entries: dict[str, LossInfo] = {}
        self._discover = discover
        self._discovered = not discover
        self._group = group

    # --- registration -------------------------------------------------------------------
    def register(
        self,
        name: str,
        factory: Callable[..., BlockObjective],
        *,
        replace: bool = False,
        source: str = "register_loss()",
        description: Optional[str] = None,
    ) -> LossInfo:
        """Register ``factory`` under ``name``; a duplicate is refused unless ``replace=True``."""
        if not isinstance(name, str) or not name or any(c in name for c in "+*(),=; \t"):
            raise ValueError(
                f"invalid objective name {name!r}: use letters, digits, '-', '_' or '.' "
                "(the characters + * ( ) , = ; and spaces belong to the spec grammar)"
            )
        if not callable(factory):
            raise TypeError(f"objective factory for {name!r} must be callable, got {type(factory).__name__}")
        if name.startswith(TWIN_PREFIX):
            raise ValueError(
                f"invalid objective name {name!r}: the prefix {TWIN_PREFIX!r} spells the soft twin of a registered "
                "objective (register the hard objective and its twin comes with it)"
            )
        self._ensure_discovered()
        existing = self._entries.get(name)
        if existing is not None and not replace:
            raise ValueError(
                f"objective {name!r} is already registered (from {existing.source}); pass replace=True to override it"
            )
        info = LossInfo(
            name=name,
            factory=factory,
            options=_listed_options(factory),
            source=source,
            description=description if description is not None else getattr(factory, "description", "") or "",
            needs_correct=bool(getattr(factory, "needs_correct", False)),
            needs_target=bool(getattr(factory, "needs_target", False)),
        )
        self._entries[name] = info
        return info

    def unregister(self, name: str) -> None:
        self._ensure_discovered()
        self._entries.pop(name, None)

    # --- discovery ----------------------------------------------------------------------
    def _ensure_discovered(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        own_found = False
        for ep in sorted(metadata.entry_points(group=self._group), key=lambda e: e.name):
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else "<unknown distribution>"
            is_own = dist_name is not None and dist_name.replace("_", "-").lower() == DISTRIBUTION
            if ep.name in self._entries and is_own:
                continue
            try:
                factory = ep.load()
            except Exception as exc:  # a broken plugin must not take the others down
                warnings.warn(
                    f"specforge-dpace: skipping objective {ep.name!r} from distribution {dist_name!r}: "
                    f"entry point {ep.value!r} failed to load: {type(exc).__name__}: {exc}",
                    RuntimeWarning,
                    stacklevel=3,
                )
                continue
            if is_own:
                own_found = True
                source = BUILTIN_SOURCE
            else:
                version = dist.version if dist is not None else "?"
                source = f"{dist_name} {version} (entry point)"
            if ep.name in self._entries:
                warnings.warn(
                    f"specforge-dpace: objective {ep.name!r} from {source} clashes with one from "
                    f"{self._entries[ep.name].source}; keeping the first",
                    RuntimeWarning,
                    stacklevel=3,
                )
                continue
            self._entries[ep.name] = LossInfo(
                ep.name,
                factory,
                _listed_options(factory),
                source,
                getattr(factory, "description", "") or "",
                bool(getattr(factory, "needs_correct", False)),
                bool(getattr(factory, "needs_target", False)),
            )
        if not own_found:  # running from a source tree without installed metadata
            for name, factory in _builtin_factories().items():
                if name not in self._entries:
                    self._entries[name] = LossInfo(
                        name,
                        factory,
                        _listed_options(factory),
                        BUILTIN_SOURCE,
                        factory.description,
                        factory.needs_correct,
                        factory.needs_target,
                    )

    # --- lookup -------------------------------------------------------------------------
    def names(self) -> list[str]:
        self._ensure_discovered()
        return sorted(self._entries)

    def info(self, name: str) -> LossInfo:
        self._ensure_discovered()
        found = self._entries.get(name)
        if found is not None:
            return found
        if isinstance(name, str) and name.startswith(TWIN_PREFIX) and name[len(TWIN_PREFIX) :] in self._entries:
            return self._twin_info(name, self._entries[name[len(TWIN_PREFIX) :]])
        raise ValueError(
            f"unknown objective {name!r}; registered objectives: {', '.join(self.names())} (every hard "
            f"objective also has a soft twin '{TWIN_PREFIX}<name>'). Combine them with the spec grammar: {GRAMMAR}"
        )

    def _twin_info(self, name: str, base: LossInfo) -> LossInfo:
        from ._soft import TEMPERATURE
        from ._twin import DIVERGENCE, twin_factory

        if base.needs_target:
            raise ValueError(
                f"{name!r}: {base.name!r} already reads the target distribution, so it has no soft twin; "
                f"use {base.name!r} (with its temperature option)"
            )
        return LossInfo(
            name=name,
            factory=twin_factory(base.factory, name),
            options={
                **{k: v for k, v in base.options.items() if k != "labels"},
                "temperature": TEMPERATURE,
                "divergence": DIVERGENCE,
            },
            source=f"soft twin of {base.name} ({base.source})",
            description=f"soft twin of {base.name}: {base.description or base.name}, run on -log alpha "
            "(or -2 log sum sqrt(p q) with divergence=renyi-half)",
            needs_correct=False,
            needs_target=True,
            twin_of=base.name,
        )

    def twin_names(self) -> list[str]:
        """``soft-<name>`` for every registered hard objective (the twins are not stored, just derived)."""
        self._ensure_discovered()
        return [TWIN_PREFIX + name for name, info in sorted(self._entries.items()) if not info.needs_target]

    def __contains__(self, name: object) -> bool:
        self._ensure_discovered()
        if name in self._entries:
            return True
        if isinstance(name, str) and name.startswith(TWIN_PREFIX):
            base = self._entries.get(name[len(TWIN_PREFIX) :])
            return base is not None and not base.needs_target
        return False

    def create(self, name: str, **options: Any) -> BlockObjective:
        info = self.info(name)
        unknown = sorted(set(options) - set(info.options))
        if unknown:
            accepted = ", ".join(f"{k} ({o.describe()})" for k, o in info.options.items()) or "none"
            raise ValueError(f"{name}: unknown option(s) {unknown}; accepted options: {accepted}")
        coerced = {k: info.options[k].coerce(name, k, v) for k, v in options.items()}
        from ._twin import LABELS

        labels = coerced.pop("labels", "data") if info.options.get("labels") is LABELS else "data"
        objective = info.factory(**coerced)
        if labels == "target":
            from ._twin import TargetLabels

            objective = TargetLabels(objective)
        for attr in ("chunk_terms", "reduce"):
            if not callable(getattr(objective, attr, None)):
                raise TypeError(
                    f"objective {name!r} from {info.source}: factory returned {type(objective).__name__}, "
                    f"which has no {attr}(); subclass specforge_dpace.losses.BlockObjective"
                )
        return objective

    def build(self, spec: Any, options: Optional[Mapping[str, Any]] = None) -> Objective:
        """Objective from a name or composite spec (or an objective, returned as is).

        ``options`` apply to a single-term spec, on top of options written in the spec; beside a
        multi-term spec they may hold the composite options (``normalize``, ``normalize_decay``), as the
        spec's ``; key=value`` part does.
        """
        if isinstance(spec, (BlockObjective, CompositeObjective)):
            if options:
                raise ValueError(f"options {dict(options)} cannot be applied to an already built {spec!r}")
            return spec
        if not isinstance(spec, str):
            raise TypeError(f"objective spec must be a string, got {type(spec).__name__} {spec!r}")
        terms, composite = parse_composite(spec)
        options = dict(options or {})
        if len(terms) > 1:
            given = {k: options.pop(k) for k in list(options) if k in COMPOSITE_OPTIONS}
            clash = sorted(set(given) & set(composite))
            if clash:
                raise ValueError(f"composite option(s) {clash} given both in the spec {spec!r} and separately")
            composite.update(given)
        if options:
            if len(terms) != 1:
                raise ValueError(
                    f"separate options {options} apply only to a single-term spec, but {spec!r} has "
                    f"{len(terms)} terms; write them inside the spec, e.g. 'dpace(alpha=0.3) + 0.3*chain' "
                    f"(the composite's own options: {', '.join(COMPOSITE_OPTIONS)})"
                )
            clash = sorted(set(options) & set(terms[0].options))
            if clash:
                raise ValueError(f"option(s) {clash} given both in the spec {spec!r} and separately")
            terms = [Term(terms[0].name, terms[0].weight, {**terms[0].options, **options})]
        settings = {
            key: value
            for key, value in composite_options(composite, f"objective spec {spec!r}").items()
            if value != COMPOSITE_OPTIONS[key].default
        }
        built = [(t.weight, self.create(t.name, **t.options)) for t in terms]
        if len(built) == 1 and built[0][0] == 1.0 and not settings:
            return built[0][1]
        return CompositeObjective(built, **settings)


default_registry = LossRegistry()


def register_loss(
    name: str,
    factory: Callable[..., BlockObjective],
    *,
    replace: bool = False,
    description: Optional[str] = None,
) -> LossInfo:
    """Register an objective in the default registry (refuses duplicates unless ``replace``)."""
    return default_registry.register(name, factory, replace=replace, description=description)


def available_losses() -> list[str]:
    """Sorted names of every registered objective (built-ins and discovered plugins)."""
    return default_registry.names()


def loss_info(name: str) -> LossInfo:
    return default_registry.info(name)


def build_loss(spec: Any, options: Optional[Mapping[str, Any]] = None, **more: Any) -> Objective:
    """Build an objective from a name or composite spec, e.g. ``build_loss("dpace", alpha=0.3)``."""
    merged = {**(options or {}), **more}
    return default_registry.build(spec, merged or None)
