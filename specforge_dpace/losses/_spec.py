"""Parser for objective specs: one grammar for the CLI flag, YAML ``loss_type`` and Python.

spec   := term ('+' term)* [';' option (',' option)*]
term   := [number '*'] name ['(' option (',' option)* ')']
option := key '=' value            (numbers, true/false, none, names)

Options in parentheses belong to their term; options after ``;`` belong to the composite as a whole
(``normalize``, ``normalize_decay``: :class:`~._composite.CompositeObjective`), e.g.
``dpace + 0.5*lk-lambda; normalize=true``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

GRAMMAR = (
    "spec := term ('+' term)* [';' key=value (',' key=value)*] ; term := [number '*'] name "
    "['(' key=value (',' key=value)* ')'] ; values: numbers, true/false, none, names; options after ';' "
    "belong to the composite (normalize=true makes the weights relative). Examples: "
    "'dflash(gamma=10) + 0.3*first-error-focal + 40*chain', 'dpace + 0.5*lk-lambda; normalize=true'"
)

_NUMBER = r"(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_NAME = r"[A-Za-z_][A-Za-z0-9_.\-]*"
_TOKEN = re.compile(rf"\s*(?:(?P<number>{_NUMBER})|(?P<name>{_NAME})|(?P<punct>[*+(),=;-]))")


class SpecError(ValueError):
    """A malformed objective spec; the message shows the spec, the position and the grammar."""


@dataclass(frozen=True)
class Term:
    name: str
    weight: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)


def _tokenize(spec: str) -> list[tuple[str, str, int]]:
    tokens, pos = [], 0
    stripped = spec.rstrip()
    while pos < len(stripped):
        match = _TOKEN.match(stripped, pos)
        if not match or match.end() == pos:
            raise _error(spec, pos, f"unexpected character {stripped[pos]!r}")
        kind = match.lastgroup
        start = match.start(kind)
        tokens.append((kind, match.group(kind), start))
        pos = match.end()
    return tokens


def _error(spec: str, pos: int, what: str) -> SpecError:
    return SpecError(f"malformed objective spec {spec!r} at position {pos}: {what}. Grammar: {GRAMMAR}")


_NON_FINITE = ("nan", "inf", "infinity")


def _value(kind: str, text: str) -> Any:
    if kind == "number":
        number = float(text)
        return int(number) if re.fullmatch(r"[+-]?\d+", text) else number
    lowered = text.lower()
    if lowered.lstrip("-") in _NON_FINITE:  # a float, so the option check refuses it by name
        return float(lowered)
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    return text


def parse_spec(spec: str) -> list[Term]:
    """Split a spec into weighted terms; raises :class:`SpecError` with the grammar on bad input.

    Composite options (after ``;``) are parsed and checked for syntax but not returned:
    :func:`parse_composite` returns them too."""
    return parse_composite(spec)[0]


def parse_composite(spec: str) -> tuple[list[Term], dict[str, Any]]:
    """``(terms, composite options)`` of a spec; raises :class:`SpecError` with the grammar on bad input."""
    if not isinstance(spec, str) or not spec.strip():
        raise SpecError(f"empty objective spec {spec!r}. Grammar: {GRAMMAR}")
    tokens = _tokenize(spec)
    terms: list[Term] = []
    i = 0

    def peek(offset: int = 0):
        j = i + offset
        return tokens[j] if j < len(tokens) else ("end", "", len(spec))

    def parse_options(options: dict[str, Any], closers: tuple[str, ...]) -> int:
        """``key=value`` pairs separated by ',' up to a closer (')' or the end); returns the next index."""
        nonlocal i
        while True:
            kind, key, pos = peek()
            if kind != "name":
                raise _error(spec, pos, f"expected an option name, found {key or 'end of spec'!r}")
            if peek(1)[1] != "=":
                raise _error(spec, peek(1)[2], f"expected '=' after option {key!r}")
            vkind, vtext, vpos = peek(2)
            sign = ""
            if vtext == "-" and (peek(3)[0] == "number" or peek(3)[1].lower() in _NON_FINITE):
                sign, (vkind, vtext, vpos) = "-", peek(3)
                i += 1
            if vkind not in ("number", "name"):
                raise _error(spec, vpos, f"expected a value for option {key!r}")
            if key in options:
                raise _error(spec, pos, f"option {key!r} given twice")
            options[key] = _value(vkind, sign + vtext)
            i += 3
            kind, text, pos = peek()
            if kind in closers:
                return i
            i += 1
            if text in closers:
                return i
            if text != ",":
                expected = " or ".join(repr(c) if c != "end" else "the end of the spec" for c in (",", *closers))
                raise _error(spec, pos, f"expected {expected}, found {text!r}")

    while True:
        weight = 1.0
        kind, text, pos = peek()
        if text == "-" and peek(1)[0] == "number":
            raise _error(spec, pos, f"weight -{peek(1)[1]} is negative; weights must be >= 0")
        if kind == "name" and peek(1)[1] == "*" and text.lower() in _NON_FINITE:
            raise _error(spec, pos, f"weight {text!r} is not a finite number; weights must be finite numbers >= 0")
        if kind == "number":
            if peek(1)[1] != "*":
                raise _error(spec, peek(1)[2], "a weight must be followed by '*'")
            weight = float(text)
            if not math.isfinite(weight):
                raise _error(
                    spec,
                    pos,
                    f"weight {text} is not a finite number (overflows to {weight}); weights must "
                    "be finite numbers >= 0",
                )
            i += 2
            kind, text, pos = peek()
        if kind != "name":
            raise _error(spec, pos, f"expected an objective name, found {text or 'end of spec'!r}")
        name = text
        i += 1
        options: dict[str, Any] = {}
        if peek()[1] == "(":
            i += 1
            i = parse_options(options, (")",))
        terms.append(Term(name=name, weight=weight, options=options))
        kind, text, pos = peek()
        if kind == "end":
            return terms, {}
        if text == ";":
            i += 1
            composite: dict[str, Any] = {}
            parse_options(composite, ("end",))
            return terms, composite
        if text != "+":
            raise _error(spec, pos, f"expected '+' between terms or ';' before composite options, found {text!r}")
        i += 1


def format_spec(terms: list[Term], options: Optional[Mapping[str, Any]] = None) -> str:
    """Inverse of :func:`parse_composite` (canonical spacing; composite options after ``; ``)."""
    from ._base import _format_value

    parts = []
    for term in terms:
        text = term.name
        if term.options:
            text += "(" + ",".join(f"{k}={_format_value(v)}" for k, v in term.options.items()) + ")"
        if term.weight != 1.0:
            text = f"{term.weight:g}*{text}"
        parts.append(text)
    text = " + ".join(parts)
    if options:
        text += "; " + ",".join(f"{k}={_format_value(v)}" for k, v in options.items())
    return text
