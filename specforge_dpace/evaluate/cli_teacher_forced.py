"""``specforge-dpace evaluate --teacher-forced``: flags and run (the decoding flags live in ``cli``)."""

from __future__ import annotations

import argparse

from .. import _numbers as num

DESCRIPTION = """
--teacher-forced: no decoding.  Drafts a block at every anchor of the eval features (SpecForge offline
feature files, e.g. the run's data.eval_hidden_states_path) and reports the walk predictors of served tau,
the numbers SpecForge's evaluation logs with the plugin (docs/eval-metrics.md): tau_walk (T = 0: equal to
greedy decoding's tau when the features are the target's greedy continuations) and, when the features carry
target_last_hidden_states, tau_walk_sample@T (sampled proposals) and tau_walk_greedy_draft@T (argmax
proposals verified target-only, SGLang's and vLLM's default).  --draft may repeat (export directories or
SpecForge checkpoints with --draft-config); the table ranks them by tau_walk.

  specforge-dpace evaluate --teacher-forced --target T --eval-features run/eval \\
      --draft out/run-step1000 --draft out/run-step2000 --draft-config draft/config.json"""

#: decoding flags (``cli.configure``) and their defaults: refused with --teacher-forced when changed
DECODING_DEFAULTS = {
    "prompts": None,
    "tokenizer": None,
    "temperature": 0.0,
    "draft_sampling": None,
    "candidate_pool": None,
    "max_new_tokens": 128,
    "top_k": -1,
    "top_p": 1.0,
    "stop_token_id": [],
    "num_prompts": None,
    "seed": 0,
    "baseline": False,
}
#: teacher-forced flags and their defaults (``None`` in the parser, so a given value is seen)
TEACHER_FORCED_DEFAULTS = {
    "eval_features": None,
    "draft_config": None,
    "walk_temperature": [1.0],
    "anchor_stride": 1,
    "blocks_per_forward": None,
    "batch_size": 8,
    "max_length": None,
}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def configure(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("teacher-forced walk predictors (--teacher-forced)")
    group.add_argument(
        "--teacher-forced",
        action="store_true",
        help="no decoding: the walk predictors of each --draft on --eval-features (see the description)",
    )
    group.add_argument(
        "--eval-features", metavar="DIR", default=None, help="SpecForge offline feature files (teacher-forced)"
    )
    group.add_argument(
        "--draft-config",
        metavar="FILE",
        default=None,
        help="draft config.json for --draft paths that are SpecForge checkpoints (training_state.pt)",
    )
    group.add_argument(
        "--walk-temperature",
        type=num.WALK_TEMPERATURE,
        action=num.AppendUnique,
        default=None,
        metavar="T",
        help="temperature of the T > 0 walks (repeatable; default 1.0; needs target_last_hidden_states)",
    )
    group.add_argument(
        "--anchor-stride", type=num.POSITIVE, default=None, help="draft at every k-th anchor (default 1: every anchor)"
    )
    group.add_argument(
        "--blocks-per-forward", type=num.NUM_ANCHORS, default=None, help="blocks drafted per forward (default 512)"
    )
    group.add_argument("--batch-size", type=num.BATCH_SIZE, default=None, help="sequences per pass (default 8)")
    group.add_argument(
        "--max-length", type=num.SEQUENCE_LENGTH, default=None, help="truncate every sequence to this many tokens"
    )


def check_mode(args: argparse.Namespace) -> None:
    """Refuse flags of the other mode that were given (errors name them)."""
    if args.teacher_forced:
        given = [flag(k) for k, v in DECODING_DEFAULTS.items() if getattr(args, k) != v]
        if given:
            raise ValueError(f"{', '.join(given)} decode(s) prompts; --teacher-forced does not: leave them out")
        if args.eval_features is None:
            raise ValueError("--teacher-forced needs --eval-features DIR (SpecForge offline feature files)")
        return
    given = [flag(k) for k in TEACHER_FORCED_DEFAULTS if getattr(args, k) is not None]
    if given:
        raise ValueError(f"{', '.join(given)} apply only with --teacher-forced")
    if args.prompts is None:
        raise ValueError("--prompts FILE is required (or --teacher-forced with --eval-features)")
    if len(args.draft) != 1:
        raise ValueError(
            f"--draft is given {len(args.draft)} times; decoding evaluates one drafter (--teacher-forced ranks several)"
        )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..report import format_table, write_json
    from ._offline_pass import teacher_forced_paths

    options = {k: (getattr(args, k) if getattr(args, k) is not None else v) for k, v in TEACHER_FORCED_DEFAULTS.items()}
    for name in ("anchor_stride", "batch_size", "blocks_per_forward", "max_length"):
        value = options[name]
        if value is not None and value < (2 if name == "max_length" else 1):
            raise ValueError(f"{flag(name)} {value} is invalid; accepted: an int >= {2 if name == 'max_length' else 1}")
    results = teacher_forced_paths(
        args.target,
        args.draft,
        options["eval_features"],
        draft_config=options["draft_config"],
        temperatures=options["walk_temperature"],
        anchor_stride=options["anchor_stride"],
        blocks_per_forward=options["blocks_per_forward"],
        batch_size=options["batch_size"],
        max_length=options["max_length"],
        block_size=args.block_size,
        rules=args.convention,
        device=args.device,
        show_progress=not args.no_progress,
    )
    ranked = sorted(results, key=lambda r: -(r["tau_walk"] or 0.0))
    columns = [k for k in ranked[0] if k.startswith(("tau_walk", "sim_tau"))]
    rows = [
        {
            "rank": i + 1,
            "draft": r["draft"],
            **{c: r[c] for c in columns},
            "anchors": r["anchors"],
            "seconds": r["seconds"],
        }
        for i, r in enumerate(ranked)
    ]
    table = format_table(rows, title=f"teacher-forced walk predictors on {options['eval_features']}", floatfmt=".4f")
    print(table)
    if not ranked[0]["target_last_hidden"]:
        print("(no target_last_hidden_states in the features: the walks at T > 0 are not computed)")
    if args.output_dir is not None:
        out = Path(args.output_dir)
        write_json(out / "teacher_forced.json", {"results": results, "options": options})
        print(f"\nwrote {out / 'teacher_forced.json'}")
    return 0
