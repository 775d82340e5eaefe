"""The ``specforge-dpace`` console script.

Each sub-command lives in its own module exposing ``HELP``, ``configure(parser)`` and
``run(args) -> int``; those modules import heavy libraries only inside ``run`` so that
``specforge-dpace --help`` stays fast.  Missing sub-commands (an optional part not built or
not installed) are skipped rather than breaking the others.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Optional, Sequence

COMMANDS = {
    "losses": "specforge_dpace.losses.cli",
    "train-dflash": "specforge_dpace.train.cli",
    "evaluate": "specforge_dpace.evaluate.cli",
    "demo": "specforge_dpace.demo.cli",
    "bench": "specforge_dpace.bench.cli",
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
        command.set_defaults(_run=module.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except ValueError as exc:  # validation errors name the bad value; a traceback adds nothing
        if os.environ.get("SPECFORGE_DPACE_TRACEBACK"):
            raise
        print(f"specforge-dpace {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
