"""``specforge-dpace bench``: tau, throughput and speed-up of DFlash drafters, side by side."""

from __future__ import annotations

import argparse
import shlex
import sys

HELP = "benchmark drafters with SGLang (or the offline evaluator): tau three ways, tokens/s, speed-up"
DESCRIPTION = """\
Serve the target once without speculation (baseline) and once per drafter with SGLang
(--speculative-algorithm DFLASH), send each dataset's prompts through /generate, and report
acceptance length tau (mean per request, token-weighted, server average), output tokens/s,
latency and speed-up over the baseline.  Results go to OUT/requests.jsonl as they arrive (run
the same command again to resume), then OUT/summary.{json,md,csv} and OUT/tau_speedup.png.

The real SGLang path needs a GPU machine with SGLang >= 0.5.11 installed.  On a CPU machine,
--launcher "python -m specforge_dpace.bench.loopback" runs the whole pipeline against a loopback
stand-in with a simulated acceptance pattern (SGLANG_SIMULATE_ACC_LEN), and --backend hf measures
real tau with the offline evaluator.

example:
  specforge-dpace bench --target Qwen/Qwen3-8B-local --drafter dflash=ckpt/a --drafter dpace=ckpt/b \\
      --dataset gsm8k=data/gsm8k_test.jsonl --dataset mt-bench=data/mt_bench.jsonl \\
      --num-prompts 80 --temperature 0 --max-new-tokens 512 --chat-template tokenizer --thinking off \\
      --out bench_out
"""


def _pairs(values, flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for text in values or []:
        name, sep, value = text.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ValueError(f"{flag} {text!r}: expected NAME=VALUE")
        if name in out:
            raise ValueError(f"{flag}: name {name!r} given twice")
        out[name.strip()] = value.strip()
    return out


def configure(parser: argparse.ArgumentParser) -> None:
    p = parser
    p.add_argument(
        "--target", required=True, help="target model directory (served by SGLang / loaded by the evaluator)"
    )
    p.add_argument(
        "--drafter",
        action="append",
        metavar="NAME=PATH",
        help="a DFlash draft directory to benchmark (repeat for several; NAME labels it in the report)",
    )
    p.add_argument(
        "--dataset",
        action="append",
        metavar="KIND=PATH",
        help="KIND is gsm8k, math500, humaneval, mbpp, mt-bench, alpaca or prompts; PATH a local "
        ".jsonl/.json/.parquet file; 'smoke' alone uses the bundled 8-prompt set (default)",
    )
    p.add_argument(
        "--num-prompts", type=int, default=None, help="use the first N prompts of each dataset (default all)"
    )
    p.add_argument(
        "--temperature",
        type=float,
        action="append",
        help="sampling temperature (repeat for several; default 0 = greedy)",
    )
    p.add_argument("--max-new-tokens", type=int, default=256, help="max_new_tokens of every request (default 256)")
    p.add_argument("--top-p", type=float, default=1.0, help="top_p sent with every request (default 1.0)")
    p.add_argument(
        "--top-k",
        type=int,
        default=-1,
        help="top_k sent with every request (default -1 = disabled; never a silent greedy 1)",
    )
    p.add_argument("--seed", type=int, default=None, help="sampling seed sent with every request (default none)")
    p.add_argument("--concurrency", type=int, default=1, help="requests in flight per server (default 1)")
    p.add_argument(
        "--chat-template",
        choices=("tokenizer", "raw"),
        default="tokenizer",
        help="'tokenizer': apply the target tokenizer's chat template; 'raw': send the prompt as is",
    )
    p.add_argument(
        "--thinking",
        choices=("on", "off"),
        default="off",
        help="Qwen3 thinking mode in the chat template (changes tau drastically; default off)",
    )
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: --target)")
    p.add_argument("--out", required=True, help="output directory (results append here; rerun to resume)")
    p.add_argument(
        "--backend",
        choices=("sglang", "hf"),
        default="sglang",
        help="'sglang': launch/attach SGLang servers; 'hf': the offline evaluator on this machine",
    )
    p.add_argument("--server-args", default="", help="extra flags for every SGLang server, one quoted string")
    p.add_argument(
        "--launcher",
        default=None,
        help="command that starts a server (default: python -m sglang.launch_server; env "
        "SPECFORGE_DPACE_BENCH_LAUNCHER); 'python -m specforge_dpace.bench.loopback' is the CPU stand-in",
    )
    p.add_argument(
        "--server-url",
        action="append",
        metavar="NAME=URL",
        help="use an already running server for drafter NAME (or 'baseline') instead of launching one",
    )
    p.add_argument("--no-baseline", action="store_true", help="skip the no-speculation baseline (no speed-up column)")
    p.add_argument("--warmup", type=int, default=2, help="unrecorded warm-up requests per server (default 2)")
    p.add_argument("--health-timeout", type=float, default=900.0, help="seconds to wait for /health (default 900)")
    p.add_argument("--request-timeout", type=float, default=600.0, help="seconds per request (default 600)")
    p.add_argument(
        "--time-budget",
        type=float,
        default=86400.0,
        help="stop submitting after this many seconds per group; rerun resumes (default 86400)",
    )
    p.add_argument(
        "--hf-chunk",
        type=int,
        default=4,
        help="--backend hf: prompts per evaluator call (results are saved per chunk; default 4)",
    )
    p.add_argument("--no-plot", action="store_true", help="skip the PNG plot")


def build_config(args: argparse.Namespace):
    from pathlib import Path

    from specforge_dpace.bench.datasets import TemplateChoice, load_dataset, parse_dataset_arg
    from specforge_dpace.bench.results import BASELINE
    from specforge_dpace.bench.runner import BenchConfig

    drafters = _pairs(args.drafter, "--drafter")
    if BASELINE in drafters:
        raise ValueError(f"--drafter name {BASELINE!r} is reserved for the no-speculation run")
    if not drafters:
        raise ValueError("give at least one --drafter NAME=PATH")
    urls = _pairs(args.server_url, "--server-url")
    unknown = sorted(set(urls) - set(drafters) - {BASELINE})
    if unknown:
        raise ValueError(f"--server-url names {unknown} match no --drafter (known: {sorted(drafters)} and 'baseline')")
    prompts = {}
    for text in args.dataset or ["smoke"]:
        kind, path = parse_dataset_arg(text)
        loaded = load_dataset(kind, path, args.num_prompts)
        label = loaded[0].dataset
        if label in prompts:
            raise ValueError(f"--dataset {label!r} given twice")
        prompts[label] = loaded
    for n, flag in (
        (args.num_prompts, "--num-prompts"),
        (args.concurrency, "--concurrency"),
        (args.max_new_tokens, "--max-new-tokens"),
    ):
        if n is not None and n < 1:
            raise ValueError(f"{flag} must be >= 1, got {n}")
    template = (
        TemplateChoice("raw", None)
        if args.chat_template == "raw"
        else TemplateChoice("tokenizer", args.thinking == "on")
    )
    return BenchConfig(
        target=args.target,
        drafters=drafters,
        prompts=prompts,
        out_dir=Path(args.out),
        temperatures=args.temperature or [0.0],
        max_new_tokens=args.max_new_tokens,
        concurrency=args.concurrency,
        server_args=shlex.split(args.server_args),
        launcher=args.launcher,
        server_urls=urls,
        health_timeout_s=args.health_timeout,
        request_timeout_s=args.request_timeout,
        time_budget_s=args.time_budget,
        warmup=args.warmup,
        template=template,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
        baseline=not args.no_baseline,
        backend=args.backend,
    )


def run(args: argparse.Namespace) -> int:
    import signal

    from specforge_dpace import report
    from specforge_dpace.bench.datasets import make_renderer
    from specforge_dpace.bench.results import TABLE_COLUMNS, ResultStore, versions
    from specforge_dpace.bench.runner import BenchError, config_summary, run_sglang
    from specforge_dpace.bench.server import ServerError
    from specforge_dpace.bench.validate import checkpoint_hash, validate_draft_dir

    cfg = build_config(args)
    for name, path in cfg.drafters.items():
        # SGLang's loader rules (specforge_dpace.servable), against the target when --target is a local
        # directory; DraftValidationError (a ValueError) names every problem.
        info = validate_draft_dir(path, target=cfg.target)
        for note in info.notes:
            print(f"specforge-dpace bench: note: drafter {name}: {note}", file=sys.stderr)
        cfg.block_sizes[name] = info.block_size
    render = make_renderer(cfg.template, args.tokenizer or cfg.target)
    store = ResultStore(cfg.out_dir)
    provenance = {
        "argv": sys.argv,
        "config": config_summary(cfg),
        "template": cfg.template.describe(),
        "versions": versions(),
        "drafter_sha256": {n: checkpoint_hash(p) for n, p in cfg.drafters.items()},
        "servers": {},
    }
    report.write_json(cfg.out_dir / "provenance.json", provenance)

    def on_server(name: str, info: dict) -> None:
        provenance["servers"][name] = {
            k: info.get(k) for k in ("version", "speculative_algorithm", "speculative_num_draft_tokens", "model_path")
        }

    def on_term(signum, frame):  # turn SIGTERM into the Ctrl-C path so `finally` stops servers
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, on_term)
    code = 0
    try:
        if cfg.backend == "hf":
            from specforge_dpace.bench.hf_backend import run_hf

            run_hf(cfg, store, render, tokenizer_path=args.tokenizer, chunk=args.hf_chunk)
        else:
            run_sglang(cfg, store, render, on_server)
    except KeyboardInterrupt:
        print("specforge-dpace bench: interrupted; servers stopped; rerun the same command to resume", file=sys.stderr)
        code = 130
    except (BenchError, ServerError, RuntimeError) as exc:
        print(f"specforge-dpace bench: error: {exc}", file=sys.stderr)
        code = 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    if store.records():
        paths = store.write_reports(provenance, plot=not args.no_plot)
        rows = store.summary_rows()
        print(
            report.format_table(rows, TABLE_COLUMNS, floatfmt=".3f", title=f"bench results ({cfg.template.describe()})")
        )
        print("written: " + ", ".join(str(p) for p in paths.values()))
    return code
