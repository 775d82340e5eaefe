"""``specforge-dpace train-dflash`` (and ``scripts/train_dflash.py``): train a DFlash drafter.

Takes the familiar legacy ``scripts/train_dflash.py`` flags plus ``--loss-type SPEC`` and
``--loss-option KEY=VALUE``; runs a legacy checkout's script in-process or SpecForge's unified
``specforge train`` on a translated YAML config (see :mod:`specforge_dpace.train.launch`).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Optional, Sequence

HELP = "train a DFlash drafter with the legacy train_dflash flags and any registered objective"
DESCRIPTION = """Train a DFlash drafter with the familiar legacy scripts/train_dflash.py flags.

The objective is one flag: --loss-type takes any registered objective or composite spec
('dpace', 'dflash(gamma=10) + 0.3*first-error-focal + 40*chain'); --loss-option KEY=VALUE
sets options of a single-term objective; --dpace-alpha keeps working.  --strategy domino|dspark
(unified runtime) trains SpecForge's Domino or DSpark drafter with the same objective flags.

Runtimes (--runtime auto picks):
  legacy   a SpecForge checkout of the legacy layout (--specforge-root PATH, or importable):
           its own scripts/train_dflash.py runs in this process with the specforge-dpace hook
           and widened --loss-type choices, so `torchrun scripts/train_dflash.py ...` works.
  unified  SpecForge's unified runtime (pip specforge 0.2.0): the flags become a YAML config,
           written to OUTPUT_DIR/specforge_config.yaml (printed by --dry-run), then
           `specforge train -c CONFIG` runs.  Flags with no unified equivalent are errors.

Every value given is honoured or refused, 0 included: unified, it is written to the config as
given and SpecForge's own schema checks it (a refusal, --dry-run included, exits 2 naming the
flag, the value and the field, e.g. --max-grad-norm 0 -> training.max_grad_norm); legacy, it is
forwarded to the checkout's script, except values that script cannot run (0 for --batch-size,
--accumulation-steps, --log/save/eval-interval, --max-grad-norm), which are refused.  Flags not
given keep the legacy script's defaults.  With --draft-config-path the draft config's block_size
and num_hidden_layers win unless --block-size / --num-draft-layers are given (unified; the legacy
script always uses the draft config's, so a conflicting flag is refused there).

Flags this command does not define can follow a literal `--` (legacy runtime only);
scripts/train_dflash.py forwards unknown flags to a legacy checkout automatically."""


def configure(parser: argparse.ArgumentParser) -> None:
    from .args import configure as add_flags

    add_flags(parser)


def run(args: argparse.Namespace) -> int:
    from .launch import launch

    missing = [
        name
        for name in ("target_model_path", "train_data_path", "output_dir")
        if getattr(args, name) is None and not (name == "train_data_path" and args.hidden_states_path is not None)
    ]
    if missing:
        flags = ", ".join("--" + name.replace("_", "-") for name in missing)
        print(f"error: the following arguments are required: {flags}", file=sys.stderr)
        return 2
    warnings.simplefilter("default", UserWarning)
    return launch(args)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry of ``scripts/train_dflash.py``: unknown flags are forwarded to a legacy checkout's script."""
    parser = argparse.ArgumentParser(
        prog="train_dflash.py", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    configure(parser)
    args, unknown = parser.parse_known_args(argv)
    args.passthrough = [*unknown, *(args.passthrough or [])]
    return run(args)
