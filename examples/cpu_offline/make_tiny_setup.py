#!/usr/bin/env python
"""Build a tiny, download-free setup for running ``specforge train`` on a CPU.

Writes into OUT_DIR (default ``cpu_offline_run``):
  target/             a random tiny Qwen3ForCausalLM + WordLevel tokenizer (save_pretrained)
  draft/config.json   a 1-layer DFlashDraftModel config (block size 4, target layers [1, 2])
  features/           SpecForge offline feature files (specforge_hidden_states_v1), one per sample, with the
                      target's last hidden state (target_last_hidden_states) for the soft-label configs
                      (--no-last-hidden leaves it out; the hard-objective configs ignore it either way)

The YAML files next to this script point at those paths, relative to the directory you run from.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "out_dir", nargs="?", default="cpu_offline_run", help="directory to create (default: %(default)s)"
    )
    parser.add_argument(
        "--num-samples", type=int, default=16, help="number of feature files to write (default: %(default)s)"
    )
    parser.add_argument(
        "--sample-length",
        type=int,
        default=40,
        help="words per synthetic sample, prompt included (default: %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed for the target weights and the corpus (default: %(default)s)"
    )
    parser.add_argument(
        "--no-last-hidden",
        action="store_true",
        help="do not store target_last_hidden_states (the soft-label configs, e.g. lk_lambda.yaml, need it)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from specforge_dpace.features import make_tiny_offline_setup

    paths = make_tiny_offline_setup(
        args.out_dir,
        num_samples=args.num_samples,
        sample_length=args.sample_length,
        seed=args.seed,
        progress=not args.quiet,
        last_hidden=not args.no_last_hidden,
    )
    print(json.dumps(paths, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
