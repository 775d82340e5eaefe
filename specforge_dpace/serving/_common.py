"""Small shared pieces of the serving rules: errors, verdicts, the resolved draft settings and the
field access that reads a ``config.json`` dict and an HF config object alike (pure Python)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional


class ServableError(ValueError):
    """A draft a server would refuse or serve wrong; ``errors`` lists every problem."""

    def __init__(self, message: str, errors: Optional[Sequence[str]] = None):
        super().__init__(message)
        self.errors = list(errors) if errors is not None else [message]


def get(config: Any, key: str, default: Any = None) -> Any:
    """``config[key]`` of a mapping, ``config.key`` of an object (the servers' ``_cfg_get``)."""
    if isinstance(config, Mapping):
        return config.get(key, default)
    return getattr(config, key, default)


def has(config: Any, key: str) -> bool:
    if isinstance(config, Mapping):
        return key in config
    return hasattr(config, key)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def listed(names: Sequence[str], limit: int = 12) -> str:
    names = list(names)
    return ", ".join(names[:limit]) + (f" ... ({len(names)} in all)" if len(names) > limit else "")


def section(config: Any, name: str = "dflash_config") -> Mapping:
    """A nested mapping of a config (``dflash_config``, ``dspark_config``); ``{}`` when absent."""
    value = get(config, name)
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return value
    raise ServableError(f"{name} must be a mapping, got {type(value).__name__}: {value!r}")


def dflash_section(config: Any) -> Mapping:
    return section(config, "dflash_config")


def text_config(config: Any) -> Any:
    """The text part of a (possibly multimodal) config, the way the servers read ``hf_text_config``."""
    if isinstance(config, Mapping):
        inner = config.get("text_config")
        return inner if isinstance(inner, Mapping) else config
    getter = getattr(config, "get_text_config", None)
    if callable(getter):
        try:
            resolved = getter()
            if resolved is not None:
                return resolved
        except TypeError:
            pass
    return config


@dataclass(frozen=True)
class TargetShape:
    """What the checks need of the target: sizes the servers read from its ``hf_text_config``."""

    hidden_size: int
    vocab_size: int
    num_hidden_layers: int

    @classmethod
    def from_config(cls, config: Any) -> "TargetShape":
        if isinstance(config, TargetShape):
            return config
        text = text_config(config)
        values, missing = {}, []
        for key in ("hidden_size", "vocab_size", "num_hidden_layers"):
            value = get(text, key)
            if not is_int(value) or value < 1:
                missing.append(f"{key}={value!r}")
            values[key] = value
        if missing:
            raise ServableError(
                "target config needs positive ints hidden_size, vocab_size and num_hidden_layers; "
                f"got {', '.join(missing)}"
            )
        return cls(**values)


@dataclass
class DraftSpec:
    """A draft config resolved the way a server resolves it; ``sources`` says where each field came from.

    ``block_size`` is the config's (the trained block: K slots for DFlash / Domino, gamma drafted tokens
    for DSpark); ``head`` holds the method's head settings (empty for DFlash)."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    attention_bias: bool
    vocab_size: Optional[int]
    block_size: Optional[int]
    num_target_layers: Optional[int]
    target_layer_ids: list[int]
    mask_token_id: Optional[int]
    sources: dict = field(default_factory=dict)
    method: str = "dflash"
    head: dict = field(default_factory=dict)


@dataclass
class Verdict:
    """``errors``: the server would refuse the draft or serve it wrong.  ``notes``: harmless, worth saying.
    ``spec``: the resolved config (complete when ``ok``)."""

    errors: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    spec: Optional[DraftSpec] = None

    @property
    def ok(self) -> bool:
        return not self.errors

    def raise_for_errors(self, header: str, error_type: type = ServableError) -> "Verdict":
        if self.errors:
            raise error_type(header + "\n  - " + "\n  - ".join(self.errors))
        return self
