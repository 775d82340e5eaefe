"""Where a server reads a config field: one :class:`FieldRead` per field and version, resolved by
:func:`read_field` with the servers' own lookup semantics.

SGLang reads nested sections with ``dict.get(key, fallback)`` (``dflash_utils.parse_dflash_draft_config``,
0.5.14: 480-530, 0.5.23: 596-702): a key that is *present* in ``dflash_config`` ends the lookup even when its
value is ``null``, so ``"block_size": null`` there does not fall back to the top level (the worker then uses
its default, 16).  The top level is read with ``getattr(config, key, None)``: absent and null are the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

from ._common import get, has, section, text_config

PLACE_TEXT = {"top": "top-level {name}", "text_config": "text_config.{name}"}


@dataclass(frozen=True)
class FieldRead:
    """``name`` read from ``places`` in order (``"dflash_config"``, ``"dspark_config"``, ``"text_config"``,
    ``"top"``); ``source`` is the wheel file:line that reads it."""

    name: str
    places: tuple[str, ...]
    source: str

    def describe(self) -> str:
        """``dflash_config.block_size, then top-level block_size``."""
        return ", then ".join(place_name(p, self.name) for p in self.places)


def place_name(place: str, name: str) -> str:
    return PLACE_TEXT.get(place, place + ".{name}").format(name=name)


def read_field(config: Any, rule: FieldRead) -> tuple[Any, Optional[str]]:
    """``(value, where)``: the first place that holds the key (nested: present, even null; top level and
    ``text_config``: not null).  ``where`` is None when no place holds it."""
    for place in rule.places:
        if place == "top":
            if get(config, rule.name) is not None:
                return get(config, rule.name), place_name(place, rule.name)
        elif place == "text_config":
            inner = text_config(config)
            if inner is not config and get(inner, rule.name) is not None:
                return get(inner, rule.name), place_name(place, rule.name)
        else:
            nested = section(config, place)
            if isinstance(nested, Mapping) and rule.name in nested:
                return nested[rule.name], place_name(place, rule.name)
    return None, None


def present_elsewhere(config: Any, rule: FieldRead) -> list[str]:
    """Places a server does *not* read ``rule.name`` from that hold a non-null value (for hints)."""
    found = []
    for place in ("dflash_config", "dspark_config", "top"):
        if place in rule.places:
            continue
        if place == "top":
            if has(config, rule.name) and get(config, rule.name) is not None:
                found.append(place_name(place, rule.name))
        elif section(config, place).get(rule.name) is not None:
            found.append(place_name(place, rule.name))
    return found
