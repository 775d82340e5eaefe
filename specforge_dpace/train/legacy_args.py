"""Objective flags for a legacy checkout's ``scripts/train_dflash.py`` argparse parser.

Used two ways: the ``patches/`` diffs call :func:`add_objective_args` on the script's parser,
and the wrapper runs an unpatched script inside :func:`widened_loss_type_choices`, which lifts
the closed ``--loss-type`` ``choices`` list while the script builds its parser.  Either way
``--loss-type`` accepts every registered objective and composite spec, plus the checkout's own
names (e.g. ``vp_drafter``) that the registry does not know.
"""

from __future__ import annotations

import argparse
import contextlib
import re
from typing import Any, Iterable, Iterator, Optional

_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def option_value(text: str) -> Any:
    """``KEY=VALUE`` values: numbers, true/false, none, anything else stays a string."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    if _NUMBER.fullmatch(text.strip()):
        number = float(text)
        return int(number) if re.fullmatch(r"[+-]?\d+", text.strip()) else number
    return text.strip()


def parse_loss_option(text: str) -> tuple[str, Any]:
    """``"alpha=0.3"`` -> ``("alpha", 0.3)``; argparse-friendly errors."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key.strip()):
        raise argparse.ArgumentTypeError(f"--loss-option expects KEY=VALUE (e.g. alpha=0.3), got {text!r}")
    return key.strip(), option_value(value)


class LossOptionAction(argparse.Action):
    """Collects repeated ``--loss-option KEY=VALUE`` into one dict (``dest``); a repeated key is an error."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Optional[str] = None) -> None:
        key, value = values
        options = dict(getattr(namespace, self.dest, None) or {})
        if key in options:
            parser.error(f"--loss-option {key} given twice ({options[key]!r} and {value!r})")
        options[key] = value
        setattr(namespace, self.dest, options)


def loss_spec_type(extra_names: Iterable[str] = ()):
    """An argparse ``type`` accepting registered names/composites and ``extra_names`` verbatim."""
    extra = frozenset(extra_names)

    def loss_type(text: str) -> str:
        if text in extra:
            return text
        from ..losses import available_losses, build_loss

        try:
            build_loss(text)
        except (ValueError, TypeError, KeyError) as exc:
            raise argparse.ArgumentTypeError(
                f"{exc}\n  registered objectives: {', '.join(available_losses())}"
                + (f"; checkout-only names: {', '.join(sorted(extra))}" if extra else "")
            ) from None
        return text

    loss_type.__name__ = "objective spec"
    return loss_type


LOSS_TYPE_HELP = (
    "objective: a registered name (see `specforge-dpace losses`) or a weighted composite spec such as "
    "'dflash(gamma=10) + 0.3*first-error-focal + 40*chain' (specforge-dpace)"
)
LOSS_OPTION_HELP = (
    "option of a single-term --loss-type (e.g. alpha=0.3), or of a composite (normalize=true, normalize_decay, "
    "share_blocks), or of the path (fused=true) (repeatable; specforge-dpace)"
)


def _widen(kwargs: dict) -> dict:
    own = list(kwargs.pop("choices", None) or ())
    kwargs["type"] = loss_spec_type(own)
    kwargs["help"] = LOSS_TYPE_HELP
    kwargs.setdefault("metavar", "SPEC")
    return kwargs


def add_objective_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Give a legacy script's parser ``--loss-type SPEC``, ``--dpace-alpha`` and ``--loss-option``.

    Widens an existing ``--loss-type`` in place (keeping the checkout's own names); adds the
    flags a pre-D-PACE script lacks.  ``args.loss_options`` is a dict or ``None``.
    """
    actions = {opt: action for action in parser._actions for opt in action.option_strings}
    existing = actions.get("--loss-type")
    if existing is not None:
        widened = _widen({"choices": existing.choices})
        existing.choices = None
        existing.type = widened["type"]
        existing.help = widened["help"]
    else:
        parser.add_argument("--loss-type", default="dflash", **_widen({}))
    if "--dpace-alpha" not in actions:
        parser.add_argument("--dpace-alpha", type=float, default=0.5, help="D-PACE smoothing alpha in [0, 1]")
    if "--loss-option" not in actions:
        parser.add_argument(
            "--loss-option",
            dest="loss_options",
            type=parse_loss_option,
            action=LossOptionAction,
            default=None,
            metavar="KEY=VALUE",
            help=LOSS_OPTION_HELP,
        )
    return parser


@contextlib.contextmanager
def widened_loss_type_choices() -> Iterator[None]:
    """While active, any parser's ``--loss-type`` argument accepts every objective spec."""
    original = argparse._ActionsContainer.add_argument

    def add_argument(self: Any, *args: Any, **kwargs: Any) -> Any:
        if "--loss-type" in args:
            kwargs = _widen(dict(kwargs))
        return original(self, *args, **kwargs)

    argparse._ActionsContainer.add_argument = add_argument  # groups and parsers share it
    try:
        yield
    finally:
        argparse._ActionsContainer.add_argument = original
