"""``specforge-dpace evaluate``: offline acceptance (tau) of a DFlash, Domino or DSpark draft checkpoint."""

from __future__ import annotations

import argparse

from .. import _numbers as num
from . import cli_teacher_forced

HELP = "measure a DFlash/Domino/DSpark drafter's acceptance length (tau) offline with an HF target (no SGLang, CPU ok)"
DESCRIPTION = (
    """Speculative decoding, batch 1, with an HF causal-LM target and a SpecForge DFlash-family draft
checkpoint (DFlash, Domino or DSpark; in the layout SGLang 0.5.23 loads, which `specforge-dpace convert`
and the demo write, or in SpecForge's `export --to hf` layout), decoded as the --convention server decodes
its method.  The default, sglang-0.5.23, is what SGLang 0.5.23 serves (and vLLM 0.33's DSpark shares):
DFlash proposes block slots 1..K-1; Domino (DFLASH + projector_type domino) with SGLang's GRU rollout
(first slot from the base logits, the GRU seeded with [anchor, first proposal], a block-shared candidate
pool of --candidate-pool tokens); DSpark (DSPARK) drafts gamma = the config's block_size tokens from the
anchor row with its Markov head, verified in a window of gamma + 1.  specforge-0.2.0 decodes as SpecForge's
classes sample blocks (DSpark: slot k from hidden position k, one position later than training).  A drafter
the convention's server would not serve (a Domino trained with pure_draft_prefix_len other than 1, a
DSpark without a Markov head) is refused, naming why.

Temperature 0 verifies greedily (output identical to the target's greedy decoding); temperature > 0 is
lossless in distribution, with the proposals chosen by --draft-sampling: 'sample' draws each from the
draft's distribution q and verifies with standard speculative sampling; 'greedy' proposes the draft's
argmax and verifies target-only; the default is what the convention's server does (SGLang 0.5.23: greedy
for DFlash and Domino, sample for DSpark).  eval.json records the convention and the draft sampling.

Drafters are validated before decoding against the rules of the layout they are in (docs/serving-sglang.md),
against the target (--target is a local directory): target layer ids 0..n-2 only for an n-layer target
(SGLang never captures the last layer), config fields, weight names and shapes, the method's head.

Prints tau (tokens per verify step, bonus token included) in two labelled conventions -- per verify
step with the prefill token excluded ("tau"), and SGLang's completion_tokens / spec_verify_ct with the
prefill token included ("tau_sglang", what SGLang's spec_accept_length reports) -- the accepted-length
histogram, per-slot acceptance, tokens/s and the draft/verify time split; writes eval.json and
per_prompt.jsonl.  --output-dir is checked for writing before any model is loaded.

Prompts file: JSONL, one object per line with "input_ids" (list of ints) or "prompt" (text, encoded
without chat template by the tokenizer in --tokenizer or --target)."""
    + cli_teacher_forced.DESCRIPTION
)


def _rules_name(value: str) -> str:
    """A known serving rule set's name (checked when parsed)."""
    from .. import serving

    try:
        return serving.rules_for(value).name
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target",
        required=True,
        metavar="PATH",
        help="HF model directory of the target (local); the draft is validated against it (layer ids 0..n-2 only)",
    )
    parser.add_argument(
        "--draft",
        required=True,
        action="append",
        metavar="PATH",
        help="draft directory (config.json + *.safetensors): DFlash, Domino or DSpark, in SGLang 0.5.23's layout or "
        "SpecForge's export layout, validated by the rules of the layout it is in (docs/serving-sglang.md); "
        "repeatable with --teacher-forced",
    )
    parser.add_argument(
        "--prompts", default=None, metavar="FILE", help="prompts JSONL ('prompt' or 'input_ids'); required to decode"
    )
    parser.add_argument("--tokenizer", default=None, metavar="PATH", help="tokenizer directory (default: --target)")
    parser.add_argument(
        "--temperature",
        type=num.TEMPERATURE,
        default=0.0,
        help="0 = greedy verification (default); > 0 = speculative sampling",
    )
    parser.add_argument(
        "--draft-sampling",
        choices=("sample", "greedy"),
        default=None,
        help="temperature > 0: 'sample' draws the proposals from the draft's distribution q (standard speculative "
        "sampling); 'greedy' proposes the draft's argmax and verifies target-only; default: what the --convention "
        "server does for the method (sglang-0.5.23: greedy for DFlash and Domino, sample for DSpark); both lossless",
    )
    parser.add_argument(
        "--convention",
        default="sglang-0.5.23",
        type=_rules_name,
        help="the serving rule set whose decoding is reproduced: sglang-0.5.23 (default; DSpark from the anchor row, "
        "Domino with SGLang's GRU rollout), sglang-0.5.14 (DFlash only) or specforge-0.2.0 (SpecForge's classes); "
        "with --teacher-forced it sets DSpark's slot alignment the same way (a server's: the anchor row drafts the "
        "first token; specforge-0.2.0: slot k from hidden position k)",
    )
    parser.add_argument(
        "--candidate-pool",
        type=num.NON_NEGATIVE,
        default=None,
        help="Domino under sglang-0.5.23: the rollout's block-shared candidate pool (default 2048, SGLang's "
        "--speculative-domino-candidate-pool-size; 0 = the full vocabulary)",
    )
    parser.add_argument(
        "--max-new-tokens",
        type=num.NEW_TOKENS,
        default=128,
        help="tokens to generate per prompt (default 128; prompt + tokens must fit the target's context window)",
    )
    parser.add_argument(
        "--top-k",
        type=num.TOP_K,
        default=-1,
        help="temperature > 0: sample from the k most likely tokens (target and draft; -1 = off, the default)",
    )
    parser.add_argument(
        "--top-p",
        type=num.TOP_P,
        default=1.0,
        help="temperature > 0: nucleus sampling after top-k, in (0, 1] (1 = off, the default); "
        "verification uses the same filtered target distribution, so decoding stays lossless",
    )
    parser.add_argument(
        "--block-size",
        type=num.BLOCK_SIZE,
        default=None,
        help="block size K incl. the anchor slot (default: the draft's config)",
    )
    parser.add_argument(
        "--stop-token-id",
        type=num.TOKEN_ID,
        action=num.AppendUnique,
        why="",
        default=[],
        metavar="ID",
        help="stop a prompt's decoding after this token (repeatable)",
    )
    parser.add_argument("--num-prompts", type=num.POSITIVE, default=None, help="evaluate only the first N prompts")
    parser.add_argument("--seed", type=num.SEED, default=0, help="sampling seed; prompt i uses seed + i (default 0)")
    parser.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cpu)")
    parser.add_argument(
        "--threads",
        type=num.THREADS,
        default=None,
        help="torch CPU threads (default: torch's own); 1 is fastest for tiny models on a busy machine",
    )
    parser.add_argument(
        "--output-dir",
        default=None,
        metavar="DIR",
        help="write eval.json, per_prompt.jsonl and table.txt here (created; checked for writing before "
        "anything is decoded; default: none)",
    )
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="also time plain autoregressive decoding with the target alone and report the speed-up",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar over prompts")
    cli_teacher_forced.configure(parser)


#: What --output-dir receives, in writing order: eval.json last, so a complete eval.json means the others are too.
OUTPUT_FILES = ("per_prompt.jsonl", "table.txt", "eval.json")


def run(args: argparse.Namespace) -> int:
    from .._outdir import output_dir

    cli_teacher_forced.check_mode(args)  # flags of the other mode refused before anything else
    files = ("teacher_forced.json",) if args.teacher_forced else OUTPUT_FILES
    # --output-dir checked (a directory, writable, no directory where a report file goes) and locked
    # against a second run before any model is loaded
    with output_dir(args.output_dir, "--output-dir", "specforge-dpace evaluate", files=files):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    import warnings
    from pathlib import Path

    # SpecForge's package import warns about flash_attn for its EAGLE drafts; DFlash does not use it
    warnings.filterwarnings("ignore", message="flash_attn is not found")

    from ..report import write_json, write_jsonl, write_text
    from ._evaluate import EvalConfig, evaluate_paths

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    if args.teacher_forced:
        return cli_teacher_forced.run(args)
    config = EvalConfig(
        temperature=args.temperature,
        max_new_tokens=args.max_new_tokens,
        block_size=args.block_size,
        stop_token_ids=tuple(args.stop_token_id),
        seed=args.seed,
        show_progress=not args.no_progress,
        baseline=args.baseline,
        top_k=args.top_k,
        top_p=args.top_p,
        draft_sampling=args.draft_sampling,
        convention=args.convention,
        candidate_pool=args.candidate_pool,
    )
    result = evaluate_paths(
        args.target,
        args.draft[0],
        args.prompts,
        config,
        tokenizer_path=args.tokenizer,
        num_prompts=args.num_prompts,
        device=args.device,
    )
    result.overall.update({"target": str(args.target), "draft": str(args.draft[0]), "prompts": str(args.prompts)})
    table = result.table()
    print(table)
    if args.output_dir is not None:
        out = Path(args.output_dir)
        per_prompt = write_jsonl(out / "per_prompt.jsonl", result.per_prompt)  # each file whole or not at all
        write_text(out / "table.txt", table)
        write_json(out / "eval.json", result.to_dict())
        print(f"\nwrote {out / 'eval.json'}, {per_prompt} and {out / 'table.txt'}")
    return 0
