#!/usr/bin/env python
"""The acceptance experiment on the embedded CPU demo: does objective X raise tau over objective Y?

Every arm (objective spec) of a seed shares that seed's target-regenerated data, features, drafter
initialization and batch order; the relative change against the baseline is taken per seed and
summarized over seeds with a Student-t interval (a paired bootstrap interval is in the JSON too);
'*' marks a change whose interval excludes zero. Each drafter is evaluated on the same held-out
prompts at T = 0, at T = 1 with sampled proposals (standard speculative sampling) and at T = 1 with
greedy proposals verified target-only (SGLang 0.5.14's DFlash), and the training-time predictors
(sim_tau, surrogate, soft_tau, greedy_draft_tau; teacher-forced on held-out data) are set against
the measured tau: per-arm ratio, rank correlation, and which one to trust.

Every cell is cached under --output-dir: a killed run resumes to the same numbers.
Writes experiment.json, experiment.md, experiment.png (tau with interval bars, one panel per
setting) and calibration.png (predicted vs measured).

Published anchors: D-PACE +8.5 .. +12.8 % tau over decayed cross-entropy (Qwen3 / Llama targets);
the three interventions +21 .. +76 % over a position-uniform baseline; LK losses up to +8 % at T = 1.
This is one tiny target on one corpus: a smoke-scale replication, not a benchmark.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    from specforge_dpace import _numbers as num
    from specforge_dpace.demo.experiment import BASELINE, DEFAULT_ARMS, ExperimentConfig

    defaults = ExperimentConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", type=Path, default=Path("bench-acceptance"), help="cache and report directory")
    p.add_argument(
        "--arms",
        nargs="+",
        action=num.UniqueValues,
        key=num.objective_key,
        default=None,
        metavar="SPEC",
        help=f"objective specs to compare (default: {' | '.join(DEFAULT_ARMS)})",
    )
    p.add_argument("--baseline", default=None, help=f"the arm every other is compared with (default {BASELINE})")
    p.add_argument(
        "--seeds",
        type=num.SEED,
        nargs="+",
        action=num.UniqueValues,
        default=None,
        help="paired seeds (default 0 1 2 3 4; one seed gives no interval)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="2 seeds x 3 arms on a tiny budget (a few minutes; what the test suite runs, not a measurement)",
    )
    p.add_argument(
        "--data-temperature",
        type=num.TEMPERATURE,
        default=None,
        help=f"temperature of the target's data regeneration (default {defaults.data_temperature:g}; 1 = sampled)",
    )
    p.add_argument(
        "--method",
        choices=("dflash", "domino", "dspark"),
        default=None,
        help="DFlash-family method of the drafters (default dflash); for domino and dspark only the measured tau "
        "is reported (the teacher-forced predictors are DFlash's)",
    )
    p.add_argument(
        "--convention",
        default=None,
        help="the serving rule set whose decoding the evaluator reproduces (default sglang-0.5.23: DSpark drafts "
        "gamma tokens from the anchor row, Domino with SGLang's GRU rollout and no sampled-proposal setting; "
        "specforge-0.2.0 = SpecForge's classes' block sampling)",
    )
    for name, kind, text in (
        ("steps", num.POSITIVE, "drafter optimizer steps per arm"),
        ("num-train-seqs", num.TRAIN_SEQUENCES, "target-generated training sequences per seed"),
        ("gen-len", num.GEN_LEN, "tokens generated per training sequence"),
        ("block-size", num.BLOCK_SIZE, "DFlash block size K"),
        ("batch-size", num.BATCH_SIZE, "sequences per drafter step"),
        ("lr", num.LEARNING_RATE, "drafter peak learning rate"),
        ("num-anchors", num.NUM_ANCHORS, "blocks sampled per sequence"),
        ("draft-layers", num.DRAFT_LAYERS, "draft decoder layers"),
        ("eval-prompts", num.POSITIVE, "held-out prompts per evaluation"),
        ("eval-max-new-tokens", num.NEW_TOKENS, "tokens decoded per held-out prompt"),
        ("confidence", num.CONFIDENCE, "confidence level of the intervals"),
        ("threads", num.THREADS, "torch CPU threads"),
    ):
        default = getattr(defaults, name.replace("-", "_"))
        p.add_argument(f"--{name}", type=kind, default=None, help=f"{text} (default {default})")
    p.add_argument(
        "--jobs",
        type=num.JOBS,
        default=1,
        help="worker processes, one seed each (default 1; 2 on a 2-core machine with --threads 1 roughly halves "
        "the wall time; the numbers do not depend on it)",
    )
    p.add_argument(
        "--allow-non-finite",
        action="store_true",
        help="train on through a NaN or infinite loss or gradient (recorded) instead of stopping with an error",
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return num.annotate_help(p)  # every number's accepted range in --help


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def config_from_args(args):
    from specforge_dpace.demo.experiment import ExperimentConfig

    overrides = {}
    for name in (
        "method",
        "convention",
        "baseline",
        "data_temperature",
        "steps",
        "num_train_seqs",
        "gen_len",
        "block_size",
        "batch_size",
        "lr",
        "num_anchors",
        "draft_layers",
        "eval_prompts",
        "eval_max_new_tokens",
        "confidence",
        "threads",
    ):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.allow_non_finite:
        overrides["allow_non_finite"] = True
    if args.arms is not None:
        overrides["arms"] = tuple(args.arms)
    if args.seeds is not None:
        overrides["seeds"] = tuple(args.seeds)
    return ExperimentConfig.quick(**overrides) if args.quick else ExperimentConfig(**overrides)


def main(argv=None) -> int:
    args = parse_args(argv)
    from specforge_dpace import report as rpt
    from specforge_dpace.demo import experiment

    try:
        config = config_from_args(args)
        config.validate()
    except ValueError as exc:
        print(f"bench_acceptance: {exc}", file=sys.stderr)
        return 2
    try:
        result = experiment.run_experiment(args.output_dir, config, show_progress=not args.no_progress, jobs=args.jobs)
    except KeyboardInterrupt:
        print(
            f"\nbench_acceptance: interrupted, rerun to resume (cells are cached in {args.output_dir})", file=sys.stderr
        )
        return 130
    except ValueError as exc:  # the output directory in use or unusable, a non-finite training step, ...
        print(f"bench_acceptance: error: {exc}", file=sys.stderr)
        return 2
    print(rpt.format_table(experiment.main_table(result), title=experiment.title(result)))
    print()
    print(rpt.format_table(experiment.calibration_table(result), floatfmt=".3f", title="predicted vs measured tau"))
    for line in experiment.verdict_lines(result):
        print(line)
    out = args.output_dir
    print(f"wrote {out}/experiment.json, .md, .png and calibration.png (wall {result['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
