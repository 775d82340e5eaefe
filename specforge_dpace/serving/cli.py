"""``specforge-dpace convert``: a drafter in the layout a named server version loads, or the reasons it cannot be
served there."""

from __future__ import annotations

import argparse

HELP = "write a drafter (SpecForge export or plugin-trained) in the layout a server version loads (sglang-0.5.23 ...)"
DESCRIPTION = """\
Read a DFlash, Domino or DSpark draft directory (config.json + *.safetensors) in any layout the project
knows -- SpecForge's `specforge export --to hf` (architectures DFlashDraftModel / DominoDraftModel /
DSparkDraftModel, head fields in dflash_config), a plugin-trained drafter (`specforge-dpace demo`, the
evaluator's saver), or a server's -- check it by the rules of that layout, and write it to --out in the
layout --server loads, checked by that server's rules.  Nothing is written when the server cannot serve
the drafter; every reason is named.

Which SGLang version serves which method (docs/serving-sglang.md, with the wheels' file:line):
  sglang-0.5.14: DFlash (--speculative-algorithm DFLASH).
  sglang-0.5.23: DFlash; Domino as a DFLASH sub-mode (written as architectures DFlashDraftModel with
    dflash_config.projector_type domino, an explicit boolean shift_label; only a drafter trained with
    pure_draft_prefix_len 1 is served); DSpark (--speculative-algorithm DSPARK; markov_rank,
    markov_head_type, enable_confidence_head and confidence_head_with_markov written at the top level,
    where its model constructor reads them; a DSpark drafter without a Markov head is not served;
    block_size = gamma, --speculative-dspark-block-size).
  vllm-0.33.0: DFlash, in the z-lab layout (--layout zlab, the default: DFlashDraftModel + dflash_config)
    or the speculators layout (--layout speculators: speculators_model_type dflash, transformer_layer_config,
    aux_hidden_state_layer_ids = target layer ids + 1); DSpark (--layout dspark: DSparkDraftModel with
    model_type qwen3, which vLLM maps to Qwen3DSparkModel; only the vanilla Markov head; head fields at the
    top level).  No Domino (nothing in the vLLM 0.33 wheel serves it).  docs/serving-vllm.md.
  specforge-0.2.0: SpecForge's own layout (what from_pretrained loads, e.g. to fine-tune again).

Tensor names are normalised on the way (a 'model.' prefix, SGLang's fused qkv_proj / gate_up_proj,
SpecForge's early 'logit_head.' head names); tensors no server loads (lm_head, embed_tokens, rotary
caches) are dropped.  The launch flags for the written directory are printed.

example:
  specforge export --to hf ... --output-dir exported/
  specforge-dpace convert exported/ --server sglang-0.5.23 --target /models/Qwen3-8B --out served/
  specforge-dpace convert exported/ --server vllm-0.33.0 --layout speculators --target /models/Qwen3-8B --out vllm/
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SRC", help="draft directory to convert (config.json + *.safetensors)")
    parser.add_argument("--out", required=True, metavar="DIR", help="directory to write (new or empty)")
    parser.add_argument(
        "--server",
        default="sglang-0.5.23",
        help="the server version whose layout to write: sglang-0.5.23 (default), sglang-0.5.14, vllm-0.33.0 or "
        "specforge-0.2.0",
    )
    parser.add_argument(
        "--layout",
        default=None,
        help="vllm-0.33.0 only: the layout to write, zlab (DFlash default) or speculators for DFlash, dspark for "
        "DSpark; other servers have one layout each",
    )
    parser.add_argument(
        "--from",
        dest="source_server",
        default=None,
        metavar="RULES",
        help="the rule set SRC's layout is read by (default: detected: SpecForge's for DominoDraftModel and for a "
        "DSparkDraftModel without top-level markov_rank, else sglang-0.5.23's)",
    )
    parser.add_argument(
        "--target",
        default=None,
        metavar="PATH",
        help="the target model directory: layer ids, hidden size, vocabulary and mask token are checked against "
        "its config.json (recommended)",
    )
    parser.add_argument(
        "--ragged-verify-mode",
        choices=("static", "cap-accept", "compact"),
        default="static",
        help="DSpark on sglang-0.5.23: the SGLANG_RAGGED_VERIFY_MODE the server runs with (default static, its "
        "default); outside static SGLang builds a confidence head and needs its weights",
    )
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")


def run(args: argparse.Namespace) -> int:
    import json
    import shlex
    from pathlib import Path

    from ._convert import convert

    target = None
    if args.target is not None:
        config = Path(args.target) / "config.json"
        if not config.is_file():
            raise ValueError(f"--target {args.target!r} has no config.json; accepted: a local model directory")
        target = json.loads(config.read_text(encoding="utf-8"))
    done = convert(
        args.source,
        args.out,
        server=args.server,
        source_server=args.source_server,
        target=target,
        options={"ragged_verify_mode": args.ragged_verify_mode},
        overwrite=args.overwrite,
        layout=args.layout,
    )
    for note in done.notes:
        print(f"specforge-dpace convert: note: {note}")
    print(f"wrote {args.out}: a {done.method} drafter read as {done.source_rules}, written for {done.rules}")
    if done.launch:
        print("launch flags: " + shlex.join(done.launch))
    return 0
