"""``specforge-dpace bench``: tau, throughput and speed-up of DFlash, Domino and DSpark drafters, side by side
(SGLang 0.5.23 serves all three; 0.5.14 DFlash only; ``--backend hf`` measures them offline)."""

from __future__ import annotations

import argparse
import shlex
import sys

from specforge_dpace import _numbers as num

HELP = "benchmark drafters with SGLang (or the offline evaluator): tau three ways, tokens/s, speed-up"
DESCRIPTION = """\
Serve the target once without speculation (baseline) and once per drafter with SGLang
(--speculative-algorithm DFLASH), send each dataset's prompts through /generate, and report
acceptance length tau, output tokens/s, latency and speed-up over the baseline.  tau comes in two
labelled conventions: [S] SGLang's completion_tokens / spec_verify_ct, prefill token included
(tau_mean_per_request, tau_token_weighted), and [P] per verify step, prefill token excluded
(tau_per_step; tau_server_avg, SGLang's /server_info average, which lags: it folds steps in every
40 decode iterations).  Results go to OUT/requests.jsonl as they arrive, then
OUT/summary.{json,md,csv} and OUT/tau_speedup.png.

Resume: run the same command again and only the missing requests are measured.  Every record
carries the settings it was measured with (target and tokenizer identity, drafter checkpoint
sha256, dataset file path + sha256, chat template, top-k/top-p/seed/max-new-tokens, runner
versions, server launch or concurrency); a rerun whose settings differ from those OUT already
holds is refused before anything is launched, with the list of what changed: use a new --out for
new settings.  Adding drafters, datasets, temperatures or prompts to an OUT is fine.

Which SGLang serves which method (docs/serving-sglang.md, with the wheels' file:line):
  SGLang 0.5.14: DFlash (--speculative-algorithm DFLASH, block size --speculative-num-draft-tokens K).
  SGLang 0.5.23: DFlash; Domino as a DFLASH sub-mode (architectures DFlashDraftModel + dflash_config
    projector_type domino, pure_draft_prefix_len 1, shift_label; --speculative-algorithm DFLASH,
    --speculative-num-draft-tokens K); DSpark (--speculative-algorithm DSPARK,
    --speculative-dspark-block-size gamma = the config's block_size, verify window gamma + 1).
The rules follow the SGLang installed here (--sglang-version names another, e.g. for a stand-in
launcher or --server-url).  Drafters are validated before anything is launched against that
version's loader rules, against the target when --target is a local directory: target layer ids
0..n-2 only for an n-layer target, config fields and where each is read, weight names and shapes.
`specforge-dpace convert` writes a drafter in the layout a version loads.  Refused before launch:
a method the version does not serve, --dtype float32 with DFLASH on 0.5.23 (it crashes), and
temperature > 0 with DFLASH / Domino on a device without the target-only sampling kernel (CPU, XPU,
ROCm: SGLang would silently verify greedily after the first token).  The /flush_cache after the
warm-up waits until the server is idle (/flush_cache?timeout=S, retried on HTTP 400).

--backend hf decodes every drafter as the --convention server decodes its method (default
sglang-0.5.23: DFlash and Domino propose the argmax and verify target-only at temperature > 0,
Domino with SGLang's GRU rollout, DSpark samples gamma proposals from the anchor row);
--draft-sampling picks the other proposal mode where that server has one (DFlash 'sample' is
vLLM's probabilistic mode; DSpark 'greedy' is SGLANG_DSPARK_USE_GREEDY_DRAFT=1).  Both are part of
the settings record.

The real SGLang path needs a GPU machine with SGLang >= 0.5.11 installed.  On a CPU machine,
--launcher "python -m specforge_dpace.bench.loopback" runs the whole pipeline against a loopback
stand-in with a simulated acceptance pattern (SGLANG_SIMULATE_ACC_LEN), and --backend hf measures
real tau with the offline evaluator (it applies --temperature, --top-k, --top-p and --seed, and
refuses the server-only flags --server-args, --concurrency, --server-url, --launcher, --warmup,
--health-timeout and --request-timeout).

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
        "--target",
        required=True,
        help="target model directory (served by SGLang / loaded by the evaluator); when it is a local directory "
        "the drafters are validated against it (target layer ids 0..n-2 only)",
    )
    p.add_argument(
        "--drafter",
        action="append",
        metavar="NAME=PATH",
        help="a draft directory to benchmark (repeat for several; NAME labels it in the report), validated "
        "against the SGLang version's loader rules (docs/serving-sglang.md): DFlash on 0.5.14 and 0.5.23, Domino "
        "and DSpark on 0.5.23; --backend hf takes all three",
    )
    p.add_argument(
        "--dataset",
        action="append",
        metavar="KIND=PATH",
        help="KIND is gsm8k, math500, humaneval, mbpp, mt-bench, alpaca or prompts; PATH a local "
        ".jsonl/.json/.parquet file; 'smoke' alone uses the bundled 8-prompt set (default)",
    )
    p.add_argument(
        "--num-prompts", type=num.POSITIVE, default=None, help="use the first N prompts of each dataset (default all)"
    )
    p.add_argument(
        "--temperature",
        type=num.TEMPERATURE,
        action=num.AppendUnique,
        help="sampling temperature (repeat for several; default 0 = greedy)",
    )
    p.add_argument(
        "--max-new-tokens", type=num.NEW_TOKENS, default=256, help="max_new_tokens of every request (default 256)"
    )
    p.add_argument(
        "--top-p",
        type=num.TOP_P,
        default=1.0,
        help="top_p of every request, in (0, 1] (default 1.0 = off); --backend hf applies it after top-k",
    )
    p.add_argument(
        "--top-k",
        type=num.TOP_K,
        default=-1,
        help="top_k of every request: -1 (off, the default; never a silent greedy 1) or >= 1; "
        "--backend hf applies it to target and draft, verifying against the filtered target",
    )
    p.add_argument(
        "--seed",
        type=num.SEED,
        default=None,
        help="sampling seed: sglang sends it as sampling_seed with every request (default none); "
        "--backend hf seeds prompt i of a dataset with SEED + i (default 0)",
    )
    p.add_argument(
        "--concurrency", type=num.CONCURRENCY, default=None, help="sglang: requests in flight per server (default 1)"
    )
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
    p.add_argument(
        "--out",
        required=True,
        help="output directory (results append here; rerun the same command to resume; a rerun with other "
        "settings than the ones recorded there is refused, naming what changed)",
    )
    p.add_argument(
        "--backend",
        choices=("sglang", "vllm", "hf"),
        default="sglang",
        help="'sglang': launch/attach SGLang servers; 'vllm': launch/attach `vllm serve` (vLLM 0.33 rules, "
        "acceptance from /metrics counters); 'hf': the offline evaluator on this machine",
    )
    p.add_argument("--server-args", default=None, help="sglang: extra flags for every SGLang server, one quoted string")
    p.add_argument(
        "--launcher",
        default=None,
        help="sglang: command that starts a server (default: python -m sglang.launch_server; env "
        "SPECFORGE_DPACE_BENCH_LAUNCHER); 'python -m specforge_dpace.bench.loopback' is the CPU stand-in",
    )
    p.add_argument(
        "--server-url",
        action="append",
        metavar="NAME=URL",
        help="sglang: use an already running server for drafter NAME (or 'baseline') instead of launching one",
    )
    p.add_argument("--no-baseline", action="store_true", help="skip the no-speculation baseline (no speed-up column)")
    p.add_argument(
        "--warmup",
        type=num.NON_NEGATIVE,
        default=None,
        help="sglang: unrecorded warm-up requests per server (default 2)",
    )
    p.add_argument(
        "--health-timeout", type=num.SECONDS, default=None, help="sglang: seconds to wait for /health (default 900)"
    )
    p.add_argument(
        "--request-timeout", type=num.SECONDS, default=None, help="sglang: seconds per request (default 600)"
    )
    p.add_argument(
        "--time-budget",
        type=num.SECONDS,
        default=86400.0,
        help="stop submitting after this many seconds per group; rerun resumes (default 86400)",
    )
    p.add_argument(
        "--hf-chunk",
        type=num.POSITIVE,
        default=None,
        help="--backend hf only: prompts per evaluator call (results are saved per chunk; default 4)",
    )
    p.add_argument(
        "--draft-sampling",
        choices=("greedy", "sample"),
        default=None,
        help="--backend hf only, temperature > 0: 'greedy' (argmax proposals, target-only verification) or "
        "'sample' (proposals drawn from the draft's distribution q); default: what the --convention server "
        "does for the method (sglang-0.5.23: greedy for DFlash and Domino, sample for DSpark)",
    )
    p.add_argument(
        "--convention",
        default=None,
        help="--backend hf only: the serving rule set whose decoding the evaluator reproduces (default "
        "sglang-0.5.23; specforge-0.2.0 = SpecForge's classes' own block sampling)",
    )
    p.add_argument(
        "--sglang-version",
        default=None,
        help="sglang only: the SGLang version the servers run, choosing its rules (flags, counters, what it "
        "serves); default: the sglang installed here; needed for Domino / DSpark when none is installed",
    )
    p.add_argument(
        "--draft-sample-method",
        choices=("greedy", "probabilistic"),
        default=None,
        help="vllm only: --speculative-config draft_sample_method: 'greedy' (vLLM's default: argmax proposals, "
        "draft probabilities one-hot) or 'probabilistic' (proposals sampled from q, standard speculative sampling "
        "accepting with min(1, p/q)); part of the settings record (default greedy)",
    )
    p.add_argument(
        "--rejection-sample-method",
        choices=("standard", "synthetic", "block", "fly"),
        default=None,
        help="vllm only: --speculative-config rejection_sample_method (default standard; 'synthetic' accepts "
        "with the rates --synthetic-acceptance-length sets, to check arithmetic, not a drafter); part of the "
        "settings record",
    )
    p.add_argument(
        "--synthetic-acceptance-length",
        type=num.Range(float, 1.0),
        default=None,
        help="vllm only, with --rejection-sample-method synthetic (required there): the mean acceptance length "
        "vLLM's synthetic sampler targets, in [1, num_speculative_tokens + 1]",
    )
    p.add_argument("--no-plot", action="store_true", help="skip the PNG plot")


# flags only a server run uses: (attribute, flag, default)
SERVER_ONLY = (
    ("server_args", "--server-args", ""),
    ("concurrency", "--concurrency", 1),
    ("server_url", "--server-url", None),
    ("launcher", "--launcher", None),
    ("warmup", "--warmup", 2),
    ("health_timeout", "--health-timeout", 900.0),
    ("request_timeout", "--request-timeout", 600.0),
)
SGLANG_ONLY = (("sglang_version", "--sglang-version", None),)
VLLM_ONLY = (
    ("draft_sample_method", "--draft-sample-method", "greedy"),
    ("rejection_sample_method", "--rejection-sample-method", "standard"),
    ("synthetic_acceptance_length", "--synthetic-acceptance-length", None),
)
HF_ONLY = (
    ("hf_chunk", "--hf-chunk", 4),
    ("draft_sampling", "--draft-sampling", None),
    ("convention", "--convention", None),
)


def _backend_flags(args: argparse.Namespace) -> None:
    """Refuse the flags the chosen backend would ignore, then fill in the defaults of the others."""
    own = {"hf": HF_ONLY, "sglang": SERVER_ONLY + SGLANG_ONLY, "vllm": SERVER_ONLY + VLLM_ONLY}[args.backend]
    for attr, flag, _ in VLLM_ONLY if args.backend == "hf" else SGLANG_ONLY + VLLM_ONLY:
        if (attr, flag) not in {(a, f) for a, f, _ in own} and getattr(args, attr) is not None:
            owner = "sglang" if (attr, flag, None) in SGLANG_ONLY else "vllm"
            hint = " (the evaluator's stand-in for it is --draft-sampling)" if attr == "draft_sample_method" else ""
            raise ValueError(f"{flag} applies to --backend {owner} only{hint}; drop it, or use --backend {owner}")
    if args.backend == "hf":
        for attr, flag, _ in SERVER_ONLY + SGLANG_ONLY:
            if getattr(args, attr) is not None:
                raise ValueError(
                    f"{flag} does not apply to --backend hf (the offline evaluator runs here, one prompt at a "
                    f"time, with no server to launch, attach to or warm up); drop {flag}, or use --backend sglang"
                )
    else:
        for attr, flag, _ in HF_ONLY:
            if getattr(args, attr) is not None:
                why = (
                    " (a server's proposal mode is its own setting: SGLang's DFLASH proposes the argmax, its DSPARK "
                    "samples unless SGLANG_DSPARK_USE_GREEDY_DRAFT=1; vLLM's is --draft-sample-method)"
                    if attr == "draft_sampling"
                    else ""
                )
                raise ValueError(f"{flag} applies to --backend hf only{why}; drop it, or use --backend hf")
    for attr, _, default in SERVER_ONLY + SGLANG_ONLY + VLLM_ONLY + HF_ONLY:
        if getattr(args, attr) is None:
            setattr(args, attr, default)
    synthetic = args.rejection_sample_method == "synthetic"
    if synthetic != (args.synthetic_acceptance_length is not None):
        raise ValueError(
            f"--rejection-sample-method {args.rejection_sample_method} with --synthetic-acceptance-length "
            f"{args.synthetic_acceptance_length}: vLLM's synthetic sampler needs the length and nothing else takes "
            "it (config/speculative.py:600-632, 1973-1988); accepted: both, or neither"
        )


def build_config(args: argparse.Namespace):
    from pathlib import Path

    from specforge_dpace.bench.datasets import TemplateChoice, dataset_identity, load_dataset, parse_dataset_arg
    from specforge_dpace.bench.results import BASELINE
    from specforge_dpace.bench.runner import BenchConfig

    _backend_flags(args)  # every number was checked at parse time (specforge_dpace._numbers)
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
    identities = {}
    for text in args.dataset or ["smoke"]:
        kind, path = parse_dataset_arg(text)
        loaded = load_dataset(kind, path, args.num_prompts)  # refuses duplicate prompt ids, naming id and file
        label = loaded[0].dataset
        if label in prompts:
            raise ValueError(f"--dataset {label!r} given twice")
        prompts[label] = loaded
        identities[label] = dataset_identity(kind, path)
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
        datasets=identities,
        tokenizer=args.tokenizer,
        draft_sampling=args.draft_sampling,
        convention=_convention(args.convention),
        draft_sample_method=args.draft_sample_method,
        rejection_sample_method=args.rejection_sample_method,
        synthetic_acceptance_length=args.synthetic_acceptance_length,
    )


def _check_synthetic_length(cfg, name: str, info) -> None:
    """vLLM refuses a synthetic acceptance length outside [1, num_speculative_tokens + 1] (speculative.py:628-631)."""
    from specforge_dpace import serving

    length = cfg.synthetic_acceptance_length
    if length is None:
        return
    drafted = serving.rules_for(cfg.vllm_rules).method(info.method).decoding.drafted_tokens(info.block_size)
    if length > drafted + 1:
        raise ValueError(
            f"--synthetic-acceptance-length {length} is invalid for drafter {name!r}: vLLM serves it with "
            f"num_speculative_tokens {drafted}; accepted: a number in [1, {drafted + 1}]"
        )


def _convention(name):
    from specforge_dpace import serving

    return serving.rules_for(name).name if name is not None else serving.DEFAULT_SERVER


def run(args: argparse.Namespace) -> int:
    from specforge_dpace._outdir import output_dir
    from specforge_dpace.bench.results import APPENDED_FILES, REPORT_FILES

    cfg = build_config(args)
    # --out checked and locked before anything is validated, launched or measured: one run per directory
    with output_dir(
        cfg.out_dir,
        "--out",
        "specforge-dpace bench",
        files=REPORT_FILES,
        appended=APPENDED_FILES,
        directories=("logs",),
    ):
        return _run(args, cfg)


def _run(args: argparse.Namespace, cfg) -> int:
    import signal

    from specforge_dpace import report
    from specforge_dpace.bench.datasets import make_renderer
    from specforge_dpace.bench.results import TAU_LEGEND, ResultStore, display_table, versions
    from specforge_dpace.bench.runner import BenchError, check_resume, config_summary, drafter_hashes, run_sglang
    from specforge_dpace.bench.server import (
        ServerError,
        check_methods_served,
        launch_refusals,
        sglang_rules_for,
        sglang_version,
    )
    from specforge_dpace.bench.validate import validate_draft_dir

    if cfg.backend == "sglang":
        # the rules of the SGLang version launched (specforge_dpace.serving): a method it does not serve, a dtype
        # it crashes on, or a temperature it would silently verify greedily is refused (a ValueError) before
        # any server is launched or attached to
        version = args.sglang_version or sglang_version()
        rules, note = sglang_rules_for(version)
        if note:
            print(f"specforge-dpace bench: note: {note}", file=sys.stderr)
        cfg.sglang_rules = rules.name
        cfg.methods = check_methods_served(cfg.drafters, version)
        refusals = launch_refusals(rules, cfg.methods, cfg.server_args, cfg.temperatures, cfg.launcher)
        if refusals:
            raise ValueError("refusing to launch, nothing was started:\n  - " + "\n  - ".join(refusals))
    for name, path in cfg.drafters.items():
        # the server version's loader rules (specforge_dpace.serving), against the target when --target is a
        # local directory; DraftValidationError (a ValueError) names every problem.  --backend hf checks each
        # drafter by the rules of the layout it is in (what the evaluator loads).
        if cfg.backend == "vllm":  # vLLM 0.33's loader rules; Domino is refused with the reason
            info = validate_draft_dir(path, target=cfg.target, server=cfg.vllm_rules)
            _check_synthetic_length(cfg, name, info)
        elif cfg.backend == "hf":
            from specforge_dpace.bench.hf_backend import validate_hf_drafter

            info = validate_hf_drafter(path, cfg.target)
            from specforge_dpace.evaluate._speculative import decoding_for, resolve_draft_sampling

            # the convention must decode the method, with a proposal mode its server performs
            resolve_draft_sampling(
                decoding_for(cfg.convention, info.method), cfg.draft_sampling, cfg.convention, info.method
            )
        else:
            info = validate_draft_dir(path, target=cfg.target, server=cfg.sglang_rules)
        cfg.methods[name] = info.method
        for note in info.notes:
            print(f"specforge-dpace bench: note: drafter {name}: {note}", file=sys.stderr)
        cfg.block_sizes[name] = info.block_size
    render = make_renderer(cfg.template, args.tokenizer or cfg.target)
    store = ResultStore(cfg.out_dir)  # --out writable (or a ValueError); a torn last line dropped
    # results measured with other settings are refused (a ValueError) before anything is launched or rewritten
    check_resume(cfg, store)
    provenance = {
        "argv": sys.argv,
        "config": config_summary(cfg),
        "template": cfg.template.describe(),
        "versions": versions(),
        "drafter_sha256": dict(drafter_hashes(cfg)),
        "servers": {},
    }
    report.write_json(cfg.out_dir / "provenance.json", provenance)

    def on_server(name: str, info: dict) -> None:
        keys = ("version", "speculative_algorithm", "speculative_num_draft_tokens", "model_path")
        provenance["servers"][name] = dict(info) if cfg.backend == "vllm" else {k: info.get(k) for k in keys}

    def on_term(signum, frame):  # turn SIGTERM into the Ctrl-C path so `finally` stops servers
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, on_term)
    code = 0
    try:
        if cfg.backend == "hf":
            from specforge_dpace.bench.hf_backend import run_hf

            run_hf(cfg, store, render, tokenizer_path=args.tokenizer, chunk=args.hf_chunk)
        elif cfg.backend == "vllm":
            from specforge_dpace.bench.vllm_runner import run_vllm

            run_vllm(cfg, store, render, on_server)
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
        shown, headers = display_table(store.summary_rows())
        title = f"bench results ({cfg.template.describe()})"
        print(report.format_table(shown, headers, floatfmt=".3f", title=title))
        print(TAU_LEGEND)
        from specforge_dpace.bench.results import vllm_setting_lines

        for line in vllm_setting_lines(store.summary_rows()):
            print(f"vLLM setting: {line}")
        print("written: " + ", ".join(str(p) for p in paths.values()))
    return code
