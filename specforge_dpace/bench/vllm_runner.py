"""``bench --backend vllm``: launch (or attach to) ``vllm serve`` per drafter and for the no-speculation
baseline, send every pending prompt through ``/v1/completions``, record tokens and latency per request, and
read acceptance from vLLM's ``/metrics`` counters as deltas around each measured (dataset, temperature) set.

Lifecycle as for SGLang (``server.launch``: own process group, health wait, log file, stopped in ``finally``,
Ctrl-C / SIGTERM turned into the same path by the CLI).  The settings record's ``run.speculative`` holds the
``--speculative-config`` choices (``draft_sample_method``, ``rejection_sample_method``, synthetic acceptance),
so a rerun with other choices is refused rather than mixed.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Optional

from specforge_dpace.bench import client as client_mod
from specforge_dpace.bench import runner as runner_mod
from specforge_dpace.bench import server as server_mod
from specforge_dpace.bench.results import ResultStore
from specforge_dpace.bench.runner import BenchConfig, BenchError, WorkItem
from specforge_dpace.bench.vllm_client import CompletionSampling, VLLMClient, request_spec_metrics

DEFAULT_LAUNCHER = ("vllm", "serve")
LAUNCHER_ENV = "SPECFORGE_DPACE_VLLM_LAUNCHER"
RUNNER_FLAGS = ("--host", "--port", "--speculative-config", "--speculative_config")
# --disable-log-stats switches the scheduler's statistics off (scheduler.py make_spec_decoding_stats: "if not
# self.log_stats"), and with them every counter this runner reads
REFUSED_FLAGS = {"--disable-log-stats": "it switches off the /metrics counters tau is read from"}


def speculative_settings(cfg: BenchConfig) -> dict[str, Any]:
    """The ``--speculative-config`` choices every drafter is served with (part of the settings record)."""
    out: dict[str, Any] = {
        "draft_sample_method": cfg.draft_sample_method,
        "rejection_sample_method": cfg.rejection_sample_method,
    }
    if cfg.synthetic_acceptance_length is not None:
        out["synthetic_acceptance_length"] = cfg.synthetic_acceptance_length
    return out


def check_server_args(args: list[str]) -> None:
    for flag in RUNNER_FLAGS:
        if any(a == flag or a.startswith(flag + "=") for a in args):
            raise ValueError(f"--server-args must not set {flag}: the runner sets it (got {args})")
    for flag, why in REFUSED_FLAGS.items():
        if flag in args:
            raise ValueError(f"--server-args {flag} is refused: {why}")


def vllm_args(cfg: BenchConfig, name: str, draft: Optional[str]) -> Callable[[int], list]:
    """``vllm serve`` flags (after the launcher) for drafter ``name`` (``draft`` None: the baseline)."""
    from specforge_dpace import serving

    check_server_args(cfg.server_args)

    def build(port: int) -> list:
        args = [cfg.target, "--host", "127.0.0.1", "--port", str(port)]
        if draft is not None:
            mrules = serving.rules_for(cfg.vllm_rules).method(cfg.methods.get(name, serving.DFLASH))
            drafted = mrules.decoding.drafted_tokens(cfg.block_sizes[name])
            extra = {}
            if cfg.synthetic_acceptance_length is not None:
                extra["synthetic_acceptance_length"] = cfg.synthetic_acceptance_length
            spec = serving.speculative_config(
                mrules.algorithm, draft, drafted, draft_sample_method=cfg.draft_sample_method,
                rejection_sample_method=cfg.rejection_sample_method, extra=extra,
            )  # fmt: skip
            args += ["--speculative-config", json.dumps(spec)]
        return args + list(cfg.server_args)

    return build


def _start(cfg: BenchConfig, store: ResultStore, name: str, draft: Optional[str]):
    if name in cfg.server_urls:
        return server_mod.attach(name, cfg.server_urls[name], cfg.health_timeout_s)
    return server_mod.launch(
        name,
        cfg.target,
        store.logs_dir / f"{name}.log",
        extra_args=cfg.server_args,
        launcher=cfg.launcher,
        health_timeout=cfg.health_timeout_s,
        build_args=vllm_args(cfg, name, draft),
        launcher_default=DEFAULT_LAUNCHER,
        launcher_env=LAUNCHER_ENV,
    )


def run_vllm_server(
    cfg: BenchConfig,
    store: ResultStore,
    name: str,
    draft: Optional[str],
    render: Callable[[str], str],
    on_server: Callable[[str, dict], None] = lambda n, i: None,
) -> int:
    """Measure every pending item on one vLLM server; returns the number of requests recorded."""
    items = runner_mod.pending_items(cfg, store, name, render)
    if not items:
        print(f"[bench] {name}: already complete in {store.requests_path}, skipping")
        return 0
    srv = _start(cfg, store, name, draft)
    recorded = 0
    try:
        api = VLLMClient(srv.url, cfg.request_timeout_s)

        def fail(what: str, exc: BaseException) -> BenchError:
            return runner_mod.server_failure(srv, what, exc)

        try:
            model = api.model_id()
            on_server(name, {"model": model, "url": srv.url})
            for item in items[: cfg.warmup]:  # warm-up: not recorded; the counter deltas start after it
                api.complete(model, item.text, CompletionSampling(item.temperature, min(32, cfg.max_new_tokens)))
        except client_mod.RequestError as exc:
            raise fail("failed before measuring", exc) from exc
        groups: dict[tuple, list[WorkItem]] = {}
        for item in items:
            groups.setdefault((item.dataset, item.temperature), []).append(item)
        for (dataset, temperature), group in groups.items():
            sampling = CompletionSampling(temperature, cfg.max_new_tokens, cfg.top_p, cfg.top_k, cfg.seed)
            try:
                before = api.settled_counters()
            except client_mod.RequestError as exc:
                raise fail("refused /metrics", exc) from exc
            bar = runner_mod._progress(len(group), f"{name} {dataset} T={temperature:g}")
            segment = 0

            def work(it: WorkItem) -> tuple[dict, float]:
                start = time.perf_counter()
                out = api.complete(model, it.text, sampling)  # noqa: B023 (runs within this iteration)
                return out, time.perf_counter() - start

            def done(it: WorkItem, result: tuple[dict, float]) -> None:
                nonlocal segment, recorded
                out, latency = result
                spec = request_spec_metrics(out) if draft is not None else None
                store.add(
                    runner_mod.make_record(
                        cfg,
                        name,
                        it,
                        completion_tokens=out["usage"]["completion_tokens"],
                        verify_ct=spec.get("num_spec_steps") if spec else None,
                        num_correct_drafts=spec.get("num_accepted_draft_tokens") if spec else None,
                        num_proposed_drafts=spec.get("num_draft_tokens") if spec else None,
                        histogram=spec.get("acceptance_histogram") if spec else None,
                        finish_reason=(out.get("choices") or [{}])[0].get("finish_reason"),
                        latency_s=latency,
                    )
                )
                segment += 1
                recorded += 1
                if bar is not None:  # noqa: B023
                    bar.update(1)  # noqa: B023

            try:
                finished = client_mod.run_bounded(
                    group, work, done, concurrency=cfg.concurrency, deadline_s=cfg.time_budget_s
                )
                delta = api.settled_counters() - before
            except (client_mod.RequestError, TimeoutError) as exc:
                raise fail("gave a bad answer", exc) from exc
            finally:
                if bar is not None:
                    bar.close()
            store.add_server_stat(
                {
                    "backend": cfg.backend,
                    "drafter": name,
                    "dataset": dataset,
                    "temperature": temperature,
                    "setting_id": runner_mod.setting_id_for(cfg, name, dataset),
                    "avg": None,
                    "requests": segment,
                    "drafts": delta.drafts,
                    "draft_tokens": delta.draft_tokens,
                    "accepted": delta.accepted,
                    "accepted_per_pos": delta.accepted_per_pos,
                }
            )
            if draft is not None and segment and delta.drafts <= 0:
                raise BenchError(
                    f"{name}: /metrics counted no speculative drafts over {segment} requests (is the server "
                    "speculative, and are its statistics on?); nothing reports a tau for it"
                )
            runner_mod.check_budget(cfg, finished, len(group), name, dataset)
    finally:
        srv.stop()
    return recorded


def run_vllm(
    cfg: BenchConfig,
    store: ResultStore,
    render: Callable[[str], str],
    on_server: Callable[[str, dict], None] = lambda n, i: None,
) -> int:
    runner_mod.check_resume(cfg, store)
    total = 0
    for name, draft in cfg.servers():
        total += run_vllm_server(cfg, store, name, draft, render, on_server)
    return total
