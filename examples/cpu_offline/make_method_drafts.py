#!/usr/bin/env python
"""Domino and DSpark draft configs for the tiny CPU setup (run after ``make_tiny_setup.py``).

Reads ``OUT_DIR/draft/config.json`` (the 1-layer DFlash draft config ``make_tiny_setup.py`` writes) and
writes, with the same sizes, target layers, block size and mask token:

  OUT_DIR/draft-domino/config.json   DominoDraftModel: GRU correction head, shift_label (slot 0 supervised)
  OUT_DIR/draft-dspark/config.json   DSparkDraftModel: vanilla Markov head, confidence head with Markov features

The ``domino_*.yaml`` / ``dspark_*.yaml`` configs next to this script point at them.  The features are
shared: DSpark reads ``target_last_hidden_states``, which ``make_tiny_setup.py`` stores by default.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

METHODS = {
    "domino": {
        "architectures": ["DominoDraftModel"],
        "auto_map": {"AutoModel": "domino.DominoDraftModel"},
        "dflash_config": {
            "projector_type": "domino",
            "emb_dim": 16,
            "gru_hidden_dim": 32,
            "pure_draft_prefix_len": 1,
            "shift_label": True,
        },
    },
    "dspark": {
        "architectures": ["DSparkDraftModel"],
        "auto_map": {"AutoModel": "dspark.DSparkDraftModel"},
        "dflash_config": {
            "projector_type": "dspark",
            "attention_mode": "gqa",
            "markov_rank": 16,
            "markov_head_type": "vanilla",
            "enable_confidence_head": True,
            "confidence_head_with_markov": True,
            "confidence_head_alpha": 1.0,
        },
    },
}


def method_config(dflash: dict, method: str) -> dict:
    """``dflash`` (a DFlash draft config.json payload) turned into ``method``'s draft config."""
    extra = METHODS[method]
    config = {**dflash, "architectures": extra["architectures"], "auto_map": extra["auto_map"]}
    config["dflash_config"] = {**dflash.get("dflash_config", {}), **extra["dflash_config"]}
    return config


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "out_dir", nargs="?", default="cpu_offline_run", help="the setup directory (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    source = os.path.join(args.out_dir, "draft", "config.json")
    if not os.path.isfile(source):
        print(
            f"error: {source} not found; run examples/cpu_offline/make_tiny_setup.py {args.out_dir} first",
            file=sys.stderr,
        )
        return 2
    with open(source, encoding="utf-8") as handle:
        dflash = json.load(handle)
    written = {}
    for method in METHODS:
        directory = os.path.join(args.out_dir, f"draft-{method}")
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, "config.json")
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(method_config(dflash, method), handle, indent=2)
        written[method] = path
    print(json.dumps(written, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
