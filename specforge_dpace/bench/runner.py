"""Benchmark orchestration: for each server (baseline, then each drafter) x dataset x temperature,
send the prompts not yet in ``requests.jsonl`` and record the answers as they arrive.

Servers are launched from this (main) thread one at a time and always stopped in ``finally``;
a server that dies or answers malformed responses aborts the run with its log tail, and
everything recorded so far stays for the next (resumed) run.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from specforge_dpace.bench import client as client_mod
from specforge_dpace.bench import fields
from specforge_dpace.bench import provenance as prov
from specforge_dpace.bench import server as server_mod
from specforge_dpace.bench.datasets import Prompt, TemplateChoice
from specforge_dpace.bench.results import BASELINE, ResultStore, record_key


class BenchError(RuntimeError):
    """The benchmark cannot go on (server died, malformed answer, ...); results so far are kept."""


@dataclass
class BenchConfig:
    target: str
    drafters: dict[str, str]
    prompts: dict[str, list[Prompt]]
    out_dir: Path
    temperatures: list[float] = field(default_factory=lambda: [0.0])
    max_new_tokens: int = 256
    concurrency: int = 1
    server_args: list[str] = field(default_factory=list)
    launcher: Optional[str] = None
    server_urls: dict[str, str] = field(default_factory=dict)
    health_timeout_s: float = 900.0
    request_timeout_s: float = 600.0
    time_budget_s: float = 24 * 3600.0
    warmup: int = 2
    template: TemplateChoice = field(default_factory=lambda: TemplateChoice("raw", None))
    top_p: float = 1.0
    top_k: int = -1
    seed: Optional[int] = None
    baseline: bool = True
    backend: str = "sglang"
    block_sizes: dict[str, int] = field(default_factory=dict)
    # dataset label -> datasets.dataset_identity(...) of its file (None / missing: prompts given in memory)
    datasets: dict[str, dict] = field(default_factory=dict)
    tokenizer: Optional[str] = None  # tokenizer directory when it is not the target's
    drafter_hashes: dict[str, str] = field(default_factory=dict)  # filled by drafter_hashes()
    # --backend hf: the serving convention the evaluator decodes as, and its proposal mode at temperature > 0
    # (None: what that server does for the method)
    draft_sampling: Optional[str] = None
    convention: str = "sglang-0.5.23"
    # --backend sglang: the serving rule set of the SGLang version launched (flags, counters, refusals)
    sglang_rules: str = "sglang-0.5.23"
    methods: dict[str, str] = field(default_factory=dict)  # drafter name -> "dflash" | "domino" | "dspark"
    # --backend vllm: the rule set, and the --speculative-config choices every drafter is served with
    vllm_rules: str = "vllm-0.33.0"
    draft_sample_method: str = "greedy"
    rejection_sample_method: str = "standard"
    synthetic_acceptance_length: Optional[float] = None
    _settings: dict = field(default_factory=dict, repr=False)

    def servers(self) -> list[tuple[str, Optional[str]]]:
        out = [(BASELINE, None)] if self.baseline else []
        return out + list(self.drafters.items())


def drafter_hashes(cfg: BenchConfig) -> dict[str, str]:
    """sha256 of each drafter checkpoint (computed once per run)."""
    from specforge_dpace.bench.validate import checkpoint_hash

    for name, path in cfg.drafters.items():
        if name not in cfg.drafter_hashes:
            cfg.drafter_hashes[name] = checkpoint_hash(path)
    return cfg.drafter_hashes


def run_settings(cfg: BenchConfig) -> dict[str, Any]:
    """The ``run`` part of every result set's settings (see ``provenance``)."""
    uses_tokenizer = cfg.backend == "hf" or cfg.template.mode == "tokenizer"
    run: dict[str, Any] = {
        "backend": cfg.backend,
        "target": prov.target_identity(cfg.target),
        "tokenizer": prov.tokenizer_identity(cfg.tokenizer or cfg.target) if uses_tokenizer else None,
        "template": cfg.template.describe(),
        "sampling": {
            "top_k": cfg.top_k,
            "top_p": cfg.top_p,
            "seed": cfg.seed,
            "max_new_tokens": cfg.max_new_tokens,
        },
        "versions": prov.runner_versions(cfg.backend),
    }
    if cfg.backend == "sglang":
        run["concurrency"] = cfg.concurrency
        run["serving_rules"] = cfg.sglang_rules
    elif cfg.backend == "vllm":
        from specforge_dpace.bench.vllm_runner import speculative_settings

        run["concurrency"] = cfg.concurrency
        run["serving_rules"] = cfg.vllm_rules
        run["speculative"] = speculative_settings(cfg)
    else:  # the evaluator's decoding convention and draft sampling change tau
        run["sampling"]["draft_sampling"] = cfg.draft_sampling
        run["convention"] = cfg.convention
    return run


def _drafter_settings(cfg: BenchConfig, name: str) -> dict[str, Any]:
    part: dict[str, Any] = {"name": name}
    if name == BASELINE:
        part["speculative"] = False
    else:
        part.update(
            speculative=True,
            checkpoint_sha256=drafter_hashes(cfg)[name],
            block_size=cfg.block_sizes.get(name),
        )
        if cfg.methods.get(name, "dflash") != "dflash":  # DFlash records keep the settings they had
            part["method"] = cfg.methods[name]
    if cfg.backend in ("sglang", "vllm"):
        if name in cfg.server_urls:
            part["server"] = {"url": cfg.server_urls[name]}
        else:
            part["server"] = {"launcher": _launcher(cfg), "server_args": cfg.server_args}
    return part


def _launcher(cfg: BenchConfig) -> list[str]:
    if cfg.backend == "vllm":
        from specforge_dpace.bench.vllm_runner import DEFAULT_LAUNCHER, LAUNCHER_ENV

        return server_mod.launcher_command(cfg.launcher, default=DEFAULT_LAUNCHER, env=LAUNCHER_ENV)
    return server_mod.launcher_command(cfg.launcher)


def settings_for(cfg: BenchConfig, drafter: str, dataset: str) -> dict[str, Any]:
    """The settings record of one result set (backend, drafter, dataset); cached on ``cfg``."""
    key = (drafter, dataset)
    if key not in cfg._settings:
        if "run" not in cfg._settings:
            cfg._settings["run"] = run_settings(cfg)
        data = cfg.datasets.get(dataset) or prov.prompts_identity(cfg.prompts[dataset])
        settings = {"run": cfg._settings["run"], "drafter": _drafter_settings(cfg, drafter), "dataset": data}
        cfg._settings[key] = (settings, prov.settings_id(settings))
    return cfg._settings[key][0]


def setting_id_for(cfg: BenchConfig, drafter: str, dataset: str) -> str:
    settings_for(cfg, drafter, dataset)
    return cfg._settings[(drafter, dataset)][1]


def all_settings(cfg: BenchConfig) -> dict[tuple[str, str], dict[str, Any]]:
    return {(name, ds): settings_for(cfg, name, ds) for name, _ in cfg.servers() for ds in cfg.prompts}


def check_resume(cfg: BenchConfig, store: ResultStore) -> None:
    """Refuse to run (``provenance.ResumeMismatch``) when ``store`` holds results of other settings."""
    prov.check_resume(store.records(), all_settings(cfg), str(store.requests_path))


@dataclass(frozen=True)
class WorkItem:
    dataset: str
    temperature: float
    prompt: Prompt
    text: str


def make_record(cfg: BenchConfig, drafter: str, item: WorkItem, **values: Any) -> dict:
    settings = settings_for(cfg, drafter, item.dataset)
    return {
        "backend": cfg.backend,
        "drafter": drafter,
        "dataset": item.dataset,
        "temperature": item.temperature,
        "max_new_tokens": cfg.max_new_tokens,
        "template": cfg.template.describe(),
        "prompt_id": item.prompt.prompt_id,
        "setting_id": setting_id_for(cfg, drafter, item.dataset),
        **values,
        "finished_at": time.time(),
        "settings": settings,
    }


def pending_items(cfg: BenchConfig, store: ResultStore, drafter: str, render: Callable[[str], str]) -> list[WorkItem]:
    items = []
    for dataset, prompts in cfg.prompts.items():
        for temperature in cfg.temperatures:
            for p in prompts:
                item = WorkItem(dataset, temperature, p, "")
                if not store.is_done(record_key(make_record(cfg, drafter, item))):
                    items.append(WorkItem(dataset, temperature, p, render(p.message)))
    return items


def _progress(total: int, desc: str):
    try:
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit="req", leave=False)
    except ImportError:  # pragma: no cover - tqdm is in the bench extra
        return None


def run_server(
    cfg: BenchConfig,
    store: ResultStore,
    name: str,
    draft: Optional[str],
    render: Callable[[str], str],
    on_server: Callable[[str, dict], None] = lambda n, i: None,
) -> int:
    """Measure every pending item on one server; returns the number of requests recorded."""
    items = pending_items(cfg, store, name, render)
    if not items:
        print(f"[bench] {name}: already complete in {store.requests_path}, skipping")
        return 0
    speculative = draft is not None
    if name in cfg.server_urls:
        srv = server_mod.attach(name, cfg.server_urls[name], cfg.health_timeout_s)
    else:
        from specforge_dpace import serving

        method_rules = None
        if draft is not None:
            method_rules = serving.rules_for(cfg.sglang_rules).method(cfg.methods.get(name, serving.DFLASH))
        srv = server_mod.launch(
            name,
            cfg.target,
            store.logs_dir / f"{name}.log",
            draft_path=draft,
            block_size=cfg.block_sizes.get(name),
            extra_args=cfg.server_args,
            launcher=cfg.launcher,
            health_timeout=cfg.health_timeout_s,
            method_rules=method_rules,
        )
    recorded = 0
    try:
        api = client_mod.SGLangClient(srv.url, cfg.request_timeout_s)

        def fail(what: str, exc: BaseException) -> BenchError:
            return server_failure(srv, what, exc)

        try:
            on_server(name, api.server_info())
        except client_mod.RequestError:
            on_server(name, {})
        for item in items[: cfg.warmup]:  # warm-up: not recorded; flushed before measuring
            try:
                api.generate(
                    item.text,
                    client_mod.Sampling(item.temperature, min(32, cfg.max_new_tokens), cfg.top_p, cfg.top_k, cfg.seed),
                )
            except client_mod.RequestError as exc:
                raise fail("failed the warm-up request", exc) from exc
        groups: dict[tuple, list[WorkItem]] = {}
        for item in items:
            groups.setdefault((item.dataset, item.temperature), []).append(item)
        for (dataset, temperature), group in groups.items():
            sampling = client_mod.Sampling(temperature, cfg.max_new_tokens, cfg.top_p, cfg.top_k, cfg.seed)
            try:  # waits until the warm-up (or the previous group) has left the server
                api.flush_cache(timeout_s=min(cfg.request_timeout_s, 600.0))
            except client_mod.RequestError as exc:
                raise fail("refused /flush_cache", exc) from exc
            bar = _progress(len(group), f"{name} {dataset} T={temperature:g}")
            segment = 0
            segment_steps = 0

            def work(it: WorkItem) -> tuple[dict, float]:
                start = time.perf_counter()
                out = api.generate(it.text, sampling)  # noqa: B023 (runs within this iteration)
                return out, time.perf_counter() - start

            def done(it: WorkItem, result: tuple[dict, float]) -> None:
                nonlocal segment, segment_steps, recorded
                out, latency = result
                meta = fields.extract(out.get("meta_info"), speculative=speculative)
                store.add(
                    make_record(
                        cfg,
                        name,
                        it,
                        completion_tokens=meta.completion_tokens,
                        verify_ct=meta.verify_ct if speculative else None,
                        accept_length=meta.accept_length,
                        num_correct_drafts=meta.num_correct_drafts,
                        num_proposed_drafts=meta.num_proposed_drafts,
                        histogram=meta.histogram,
                        latency_s=latency,
                    )
                )
                segment += 1
                segment_steps += meta.verify_ct or 0
                recorded += 1
                if bar is not None:  # noqa: B023 (runs within this iteration)
                    bar.update(1)  # noqa: B023

            try:
                finished = client_mod.run_bounded(
                    group, work, done, concurrency=cfg.concurrency, deadline_s=cfg.time_budget_s
                )
            except (client_mod.RequestError, fields.MetaFieldError, TimeoutError) as exc:
                raise fail("gave a bad /generate answer", exc) from exc
            finally:
                if bar is not None:
                    bar.close()
            avg = None
            if speculative and segment:
                try:
                    avg = fields.server_average_accept_length(api.server_info())
                except client_mod.RequestError:
                    avg = None
            store.add_server_stat(
                {
                    "backend": cfg.backend,
                    "drafter": name,
                    "dataset": dataset,
                    "temperature": temperature,
                    "setting_id": setting_id_for(cfg, name, dataset),
                    "avg": avg,
                    "requests": segment,
                    "verify_steps": segment_steps,
                }
            )
            check_budget(cfg, finished, len(group), name, dataset)
    finally:
        srv.stop()
    return recorded


def server_failure(srv, what: str, exc: BaseException) -> BenchError:
    """The error for a failed request: the server's death (with its log tail) when it died, else ``what``."""
    for _ in range(20):  # a crashing server may take a moment to be reaped
        if not srv.alive():
            break
        time.sleep(0.05)
    if not srv.alive():
        return BenchError(srv.describe_failure(f"died during the run ({exc})"))
    return BenchError(srv.describe_failure(f"{what}: {exc}"))


def check_budget(cfg: BenchConfig, finished: int, total: int, name: str, dataset: str) -> None:
    if finished < total:
        raise BenchError(
            f"time budget of {cfg.time_budget_s:.0f}s reached on {name} {dataset}; run the same command again to resume"
        )


def run_sglang(
    cfg: BenchConfig,
    store: ResultStore,
    render: Callable[[str], str],
    on_server: Callable[[str, dict], None] = lambda n, i: None,
) -> int:
    check_resume(cfg, store)
    total = 0
    for name, draft in cfg.servers():
        total += run_server(cfg, store, name, draft, render, on_server)
    return total


def config_summary(cfg: BenchConfig) -> dict[str, Any]:
    data = asdict(cfg)
    data.pop("_settings", None)
    data["prompts"] = {k: len(v) for k, v in cfg.prompts.items()}
    data["template"] = cfg.template.describe()
    data["out_dir"] = str(cfg.out_dir)
    return data
