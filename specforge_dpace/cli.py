"""The ``specforge-dpace`` console script.

Each sub-command lives in its own module exposing ``HELP``, ``configure(parser)`` and
``run(args) -> int``; those modules import heavy libraries only inside ``run`` so that
``specforge-dpace --help`` stays fast.  Missing sub-commands (an optional part not built or
not installed) are skipped rather than breaking the others.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import warnings
from typing import Iterator, Optional, Sequence

from ._atomic import WriteError
from ._numbers import annotate_help

COMMANDS = {
    "losses": "specforge_dpace.losses.cli",
    "train-dflash": "specforge_dpace.train.cli",
    "evaluate": "specforge_dpace.evaluate.cli",
    "demo": "specforge_dpace.demo.cli",
    "bench": "specforge_dpace.bench.cli",
    "convert": "specforge_dpace.serving.cli",
    "doctor": "specforge_dpace.hooks.cli",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="specforge-dpace",
        description="Acceptance-aware objectives for SpecForge DFlash drafters: list objectives, train, "
        "evaluate acceptance offline, run the CPU demo, benchmark with SGLang.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                continue
            raise
        command = sub.add_parser(
            name,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.configure(command)
        annotate_help(command)  # every number's accepted range, every repeatable flag's "each value once"
        command.set_defaults(_run=module.run)
    return parser


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


@contextlib.contextmanager
def _plain_warnings(command: str) -> Iterator[None]:
    """Show this package's own warnings as one ``specforge-dpace CMD: warning: ...`` line (they are
    advice about the user's flags, not code locations); other libraries' warnings keep their format."""
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if os.path.abspath(str(filename)).startswith(_PACKAGE_DIR + os.sep):
            print(f"specforge-dpace {command}: warning: {message}", file=file or sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = default


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    debug = bool(os.environ.get("SPECFORGE_DPACE_TRACEBACK"))
    try:
        with contextlib.nullcontext() if debug else _plain_warnings(args.command):
            return int(args._run(args) or 0)
    except ValueError as exc:  # validation errors name the bad value; a traceback adds nothing
        if debug:
            raise
        print(f"specforge-dpace {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except WriteError as exc:  # a full disk: names the file, which kept its previous content
        if debug:
            raise
        print(f"specforge-dpace {args.command}: error: {exc.strerror} (its previous version is kept)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
