#!/usr/bin/env python
"""Train the demo's BPE tokenizer and tiny Qwen3 target on the Python standard library and write
them to ``specforge_dpace/demo/assets`` (the checkpoint the demo ships with).

Exact command used for the shipped assets: see specforge_dpace/demo/assets/README.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    from specforge_dpace import _numbers as num
    from specforge_dpace.demo import assets_dir
    from specforge_dpace.demo.target import TargetConfig

    defaults = TargetConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--out-dir", type=Path, default=assets_dir(), help="where to write (default: the package assets)"
    )
    parser.add_argument(
        "--steps", type=num.POSITIVE, default=defaults.steps, help=f"optimizer steps (default {defaults.steps})"
    )
    parser.add_argument("--batch-size", type=num.BATCH_SIZE, default=defaults.batch_size, help="sequences per step")
    parser.add_argument(
        "--seq-len", type=num.SEQUENCE_LENGTH, default=defaults.seq_len, help="tokens per training window"
    )
    parser.add_argument("--lr", type=num.LEARNING_RATE, default=defaults.lr, help="peak AdamW learning rate")
    parser.add_argument(
        "--vocab-size", type=num.VOCAB, default=defaults.vocab_size, help="BPE vocabulary incl. 2 specials"
    )
    parser.add_argument("--hidden-size", type=num.HIDDEN_SIZE, default=defaults.hidden_size, help="target hidden size")
    parser.add_argument("--layers", type=num.LAYERS, default=defaults.num_hidden_layers, help="target decoder layers")
    parser.add_argument("--seed", type=num.SEED, default=defaults.seed, help="seed for init and batches")
    parser.add_argument("--threads", type=num.THREADS, default=1, help="torch CPU threads (fixed for reproducibility)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="stored weight dtype")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = num.annotate_help(parser).parse_args(argv)

    from specforge_dpace.demo.build import build_target_assets

    config = TargetConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        lr=args.lr,
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        num_hidden_layers=args.layers,
        seed=args.seed,
    )
    meta = build_target_assets(
        args.out_dir, config, dtype=args.dtype, threads=args.threads, show_progress=not args.no_progress
    )
    print(json.dumps(meta, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
