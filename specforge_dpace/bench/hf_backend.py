"""``--backend hf``: the same datasets, records and reports, measured with the offline evaluator
(HF target + SpecForge DFlash draft on this machine) instead of SGLang servers.

Prompts are evaluated in chunks so each finished chunk is appended to ``requests.jsonl`` and an
interrupted run resumes. The baseline is the target's plain greedy one-token-per-step decoding
(``greedy_reference``) timed per prompt (for each temperature key, always greedy).

Records follow SGLang's convention (``completion_tokens`` / verify steps, the prefill token
included, like ``spec_accept_length``); the third tau column holds the evaluator's own tau
(prefill token excluded), so the two conventions stay visible side by side.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

from specforge_dpace.bench.results import BASELINE, ResultStore
from specforge_dpace.bench.runner import BenchConfig, make_record, pending_items


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _progress(total: int, desc: str):
    try:
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit="prompt", leave=False)
    except ImportError:  # pragma: no cover
        return None


def run_hf(
    cfg: BenchConfig,
    store: ResultStore,
    render: Callable[[str], str],
    *,
    tokenizer_path: Optional[str] = None,
    chunk: int = 4,
) -> int:
    """Evaluate every pending (drafter, dataset, temperature, prompt); returns records written."""
    from specforge_dpace.evaluate import EvalConfig, evaluate_paths

    if chunk < 1:
        raise ValueError(f"--hf-chunk must be >= 1, got {chunk}")
    recorded = 0
    deadline = time.monotonic() + cfg.time_budget_s
    for name, draft in cfg.servers():
        items = pending_items(cfg, store, name, render)
        if not items:
            continue
        if draft is None:
            recorded += _run_baseline(cfg, store, items, tokenizer_path, deadline)
            continue
        groups: dict[tuple, list] = {}
        for it in items:
            groups.setdefault((it.dataset, it.temperature), []).append(it)
        for (dataset, temperature), group in groups.items():
            bar = _progress(len(group), f"hf {name} {dataset} T={temperature:g}")
            for part in _chunks(group, chunk):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"time budget of {cfg.time_budget_s:.0f}s reached; run again to resume")
                result = evaluate_paths(
                    cfg.target,
                    draft,
                    [{"prompt": it.text} for it in part],
                    EvalConfig(
                        temperature=temperature,
                        max_new_tokens=cfg.max_new_tokens,
                        seed=cfg.seed or 0,
                        show_progress=False,
                    ),
                    tokenizer_path=tokenizer_path,
                )
                for it, rec in zip(part, result.per_prompt):
                    store.add(_record(cfg, name, it, rec))
                    recorded += 1
                store.add_server_stat(
                    {
                        "backend": cfg.backend,
                        "drafter": name,
                        "dataset": dataset,
                        "temperature": temperature,
                        "avg": result.overall.get("tau"),
                        "requests": len(part),
                        "verify_steps": result.overall.get("verify_steps"),
                    }
                )
                if bar is not None:
                    bar.update(len(part))
            if bar is not None:
                bar.close()
    return recorded


def _record(cfg: BenchConfig, name: str, item, rec: dict[str, Any]) -> dict:
    wall = rec.get("wall_s")
    if wall is None:
        wall = sum(float(rec.get(k) or 0.0) for k in ("prefill_s", "draft_s", "verify_s"))
    return make_record(
        cfg,
        name,
        item,
        completion_tokens=int(rec["completion_tokens"]),
        verify_ct=int(rec["verify_steps"]),
        accept_length=rec.get("tau"),
        num_correct_drafts=None,
        num_proposed_drafts=None,
        histogram=rec.get("accept_hist"),
        latency_s=wall,
    )


def _run_baseline(
    cfg: BenchConfig, store: ResultStore, items: list, tokenizer_path: Optional[str], deadline: float
) -> int:
    import torch
    from transformers import AutoTokenizer

    from specforge_dpace.evaluate import greedy_reference, load_target

    target = load_target(cfg.target)
    tok = AutoTokenizer.from_pretrained(str(tokenizer_path or cfg.target), local_files_only=True)
    bar = _progress(len(items), "hf baseline")
    n = 0
    with torch.inference_mode():
        for it in items:
            if time.monotonic() > deadline:
                raise RuntimeError(f"time budget of {cfg.time_budget_s:.0f}s reached; run again to resume")
            ids = tok(it.text, add_special_tokens=False)["input_ids"]
            start = time.perf_counter()
            out = greedy_reference(target, ids, cfg.max_new_tokens)
            store.add(
                make_record(
                    cfg,
                    BASELINE,
                    it,
                    completion_tokens=len(out),
                    verify_ct=None,
                    accept_length=None,
                    num_correct_drafts=None,
                    num_proposed_drafts=None,
                    histogram=None,
                    latency_s=time.perf_counter() - start,
                )
            )
            n += 1
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return n
