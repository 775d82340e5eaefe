"""The accepted range of every number a command takes, checked at the door.

One :class:`Range` per kind of value (seed, threads, temperature, block size, ...), used three ways:
as an argparse ``type`` (the flag's text must parse, be finite and lie in the range; argparse names the
flag), as the check of the same value given through the Python API (``Range.check(value, name)``), and
as the sentence ``--help`` shows (:func:`annotate_help` appends ``accepted: ...`` to every flag that
uses one).  Upper bounds exist where a value sizes memory, processes or threads, so an absurd value is
refused with the range instead of allocating tens of GB, segfaulting or overflowing deep in a library.

Repeatable flags use :class:`AppendUnique` (``action="append"``) or :class:`UniqueValues`
(``nargs="+"``): a value given twice is refused, naming it, since it would be measured (and counted)
twice.  Values are compared after parsing (``0`` and ``0.0`` are the same temperature) or by a ``key``
(objective specs by their canonical form).
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Sequence


def _fmt(value: float) -> str:
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) < 1e15):
        return str(int(value))
    return f"{value:g}"


@dataclass(frozen=True)
class Range:
    """Numbers of one ``kind`` (``int`` or ``float``) between ``low`` and ``high`` (``None``: unbounded;
    ``*_open``: the bound itself excluded), plus ``special`` values accepted outside that interval with
    their meaning (e.g. ``((0, "greedy"),)``).  Floats must be finite.  ``why`` says what the upper bound
    protects (shown in errors and ``--help``)."""

    kind: type
    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False
    special: tuple = ()
    why: str = ""

    def accepted(self) -> str:
        """The range in words: ``an int in [2, 256]``, ``0 (greedy) or a finite number in [1e-06, 100]``."""
        noun = "an int" if self.kind is int else "a finite number"
        low, high = self.low, self.high
        if low is not None and high is not None:
            text = f"{noun} in {'(' if self.low_open else '['}{_fmt(low)}, {_fmt(high)}{')' if self.high_open else ']'}"
        elif low is not None:
            text = f"{noun} {'>' if self.low_open else '>='} {_fmt(low)}"
        elif high is not None:
            text = f"{noun} {'<' if self.high_open else '<='} {_fmt(high)}"
        else:
            text = noun
        if self.special:
            text = " or ".join(f"{_fmt(v)} ({meaning})" for v, meaning in self.special) + " or " + text
        return f"{text} ({self.why})" if self.why else text

    def contains(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind is int and not isinstance(value, int):
            return False
        if any(value == v for v, _ in self.special):
            return True
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True

    def _invalid(self, value: Any) -> str:
        """``is invalid (why); accepted: <range>`` for a value outside the range."""
        if isinstance(value, float) and not math.isfinite(value):
            why = " (not finite)"
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            why = " (not a number)"
        elif self.kind is int and not isinstance(value, int):
            why = " (not an int)"
        else:
            why = ""
        return f"is invalid{why}; accepted: {self.accepted()}"

    def check(self, value: Any, name: str) -> Any:
        """``value`` (a float for a float range, ``-0.0`` as ``0.0``), or a ``ValueError`` naming ``name``,
        the value and the accepted range."""
        if not self.contains(value):
            raise ValueError(f"{name}={value!r} {self._invalid(value)}")
        return float(value) + 0.0 if self.kind is float else value

    def check_optional(self, value: Any, name: str) -> Any:
        """``None`` (not given) or :meth:`check`."""
        return None if value is None else self.check(value, name)

    def __call__(self, text: str) -> Any:
        """argparse ``type``: parse ``text`` and check it; argparse prefixes the message with the flag."""
        try:
            value = self.kind(text.strip())
        except (TypeError, ValueError):
            kind = "an int" if self.kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text} is invalid (not {kind}); accepted: {self.accepted()}") from None
        if not self.contains(value):
            raise argparse.ArgumentTypeError(f"{text} {self._invalid(value)}")
        return float(value) + 0.0 if self.kind is float else value


def _cpu_count() -> int:
    return os.cpu_count() or 1


_MEMORY = "it sizes memory"
_SECONDS = "about 11.5 days; longer is a hung run"

# -- the ranges, by the value they hold -------------------------------------------------------------
#: Seeds: torch, numpy and SpecForge all take them (numpy's limit); SGLang sends them as i64.
SEED = Range(int, 0, 2**32 - 1)
#: torch CPU threads: more than this machine's CPUs only oversubscribes (and 100000 segfaults).
THREADS = Range(int, 1, _cpu_count(), why="this machine's CPU count")
#: Worker processes of the acceptance experiment (each holds a target and drafters).
JOBS = Range(int, 1, _cpu_count(), why="this machine's CPU count; each worker holds its own models")
#: Sampling temperature: SGLang samples at >= 1e-6 and is greedy below; above 100 every distribution is
#: flat (the tau of a uniform draft and target means nothing).
TEMPERATURE = Range(float, 1e-6, 100.0, special=((0, "greedy"),))
#: Temperature of a T > 0 walk predictor (the T = 0 walk is always reported): the sampling range above.
WALK_TEMPERATURE = Range(float, 1e-6, 100.0)
FRACTION = Range(float, 0.0, 1.0, low_open=True)
TOP_P = FRACTION
TOP_K = Range(int, 1, 2**31 - 1, special=((-1, "off"),))
#: Tokens generated per prompt / sequence (a KV cache and a trace per token); the target's context
#: window is checked where the target is known.
NEW_TOKENS = Range(int, 1, 131_072, why=_MEMORY)
#: Tokens the demo's target generates per training sequence (at least one label after an anchor).
GEN_LEN = Range(int, 2, 131_072, why=_MEMORY)
#: DFlash block size K incl. the anchor slot (the draft attends over every slot of every block).
BLOCK_SIZE = Range(int, 2, 256, why=_MEMORY)
#: Blocks (anchors) sampled per training sequence.
NUM_ANCHORS = Range(int, 1, 16_384, why=_MEMORY)
#: Sequences per training micro-batch.
BATCH_SIZE = Range(int, 1, 4096, why=_MEMORY)
#: Decoder layers (of a draft, or of the demo's target when it is rebuilt).
DRAFT_LAYERS = LAYERS = Range(int, 1, 128, why=_MEMORY)
#: Hidden size of a model built here (the demo's target).
HIDDEN_SIZE = Range(int, 8, 16_384, why=_MEMORY)
#: Sequences generated and captured as demo training data.
TRAIN_SEQUENCES = Range(int, 1, 16_384, why=_MEMORY)
#: Counts that size nothing (steps, prompts, epochs, intervals).
POSITIVE = Range(int, 1)
NON_NEGATIVE = Range(int, 0)
#: Peak learning rate (AdamW; > 1 diverges at once).
LEARNING_RATE = Range(float, 0.0, 1.0, low_open=True)
UNIT_INTERVAL = Range(float, 0.0, 1.0)
#: Confidence level of an interval.
CONFIDENCE = Range(float, 0.0, 1.0, low_open=True, high_open=True)
#: A wall-clock limit in seconds.
SECONDS = Range(float, 0.0, 1e6, low_open=True, why=_SECONDS)
#: A real number that only has to be finite (e.g. a decay gamma, where <= 0 means "off").
FINITE = Range(float)
POSITIVE_FINITE = Range(float, 0.0, low_open=True)
#: Token ids (vocabularies stay below 2^31).
TOKEN_ID = Range(int, 0, 2**31 - 1)
#: Request concurrency per server (one thread each).
CONCURRENCY = Range(int, 1, 1024, why="one thread per request in flight")
#: Processes (data-loader workers, preprocessing processes) and devices.
PROCESSES = Range(int, 0, 1024, why="one process each")
PROCESSES_POSITIVE = Range(int, 1, 1024, why="one process each")
#: Sequence length of training data (attention is quadratic in it).
SEQUENCE_LENGTH = Range(int, 1, 1_048_576, why=_MEMORY)
#: Vocabulary of a random batch (``losses --try``).
VOCAB = Range(int, 2, 262_144, why=_MEMORY)


def annotate_help(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Append ``accepted: <range>`` to the help of every flag whose ``type`` is a :class:`Range`, and
    ``each value once`` to every repeatable flag that refuses repeats, so ``--help`` states them."""
    for action in parser._actions:
        if not action.help or action.help == argparse.SUPPRESS:
            continue
        notes = []
        if isinstance(action.type, Range) and "accepted:" not in action.help:
            notes.append(f"accepted: {action.type.accepted()}")
        if isinstance(action, (AppendUnique, UniqueValues)) and "each value once" not in action.help:
            notes.append("each value once")
        if notes:
            action.help = f"{action.help}; {'; '.join(notes)}"
    return parser


# -- repeated values --------------------------------------------------------------------------------


def _same(key: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def normalized(value: Any) -> Any:
        value = key(value)
        return value + 0.0 if isinstance(value, float) else value  # -0.0 and 0.0 are one value

    return normalized


def first_repeat(values: Iterable[Any], key: Callable[[Any], Any] = lambda v: v) -> Optional[tuple[Any, Any]]:
    """``(earlier, repeat)`` for the first value whose key an earlier one has, else ``None``."""
    seen: dict = {}
    norm = _same(key)
    for value in values:
        k = norm(value)
        if k in seen:
            return seen[k], value
        seen[k] = value
    return None


_TWICE = "it would be measured and counted twice"


def _repeat_message(earlier: Any, repeat: Any, what: str, why: str = _TWICE) -> str:
    same = "given twice" if earlier == repeat and type(earlier) is type(repeat) else f"repeats {earlier!r}"
    return f"{what + ' ' if what else ''}{repeat!r} {same}; give each value once" + (f" ({why})" if why else "")


def check_unique(
    values: Sequence[Any], what: str, key: Callable[[Any], Any] = lambda v: v, *, why: str = _TWICE
) -> list:
    """``list(values)``, or a ``ValueError`` naming the first value given twice (compared by ``key``)."""
    repeat = first_repeat(values, key)
    if repeat is not None:
        raise ValueError(_repeat_message(*repeat, what, why))
    return list(values)


class AppendUnique(argparse._AppendAction):
    """``action="append"`` that refuses a value given twice (compared after ``type``, or by ``key=``; ``why=``
    says what a repeat would do)."""

    def __init__(self, *args: Any, key: Callable[[Any], Any] = lambda v: v, why: str = _TWICE, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.key, self.why = key, why

    def __call__(self, parser, namespace, values, option_string=None):
        earlier = list(getattr(namespace, self.dest, None) or [])
        repeat = first_repeat([*earlier, values], self.key)
        if repeat is not None:
            raise argparse.ArgumentError(self, _repeat_message(*repeat, "", self.why))
        super().__call__(parser, namespace, values, option_string)


class UniqueValues(argparse._StoreAction):
    """``nargs="+"`` / ``"*"`` that refuses a value listed twice (compared after ``type``, or by ``key=``)."""

    def __init__(self, *args: Any, key: Callable[[Any], Any] = lambda v: v, why: str = _TWICE, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.key, self.why = key, why

    def __call__(self, parser, namespace, values, option_string=None):
        repeat = first_repeat(values or [], self.key)
        if repeat is not None:
            raise argparse.ArgumentError(self, _repeat_message(*repeat, "", self.why))
        super().__call__(parser, namespace, values, option_string)


def objective_key(spec: str) -> str:
    """An objective spec's canonical form (``dpace`` and ``dpace(alpha=0.5)`` are one objective); the
    text itself when it does not parse (the spec check names that problem)."""
    try:
        from specforge_dpace.losses import build_loss

        return build_loss(spec).spec()
    except Exception:  # noqa: BLE001 - an invalid spec is reported by the objective check itself
        return " ".join(str(spec).split())
