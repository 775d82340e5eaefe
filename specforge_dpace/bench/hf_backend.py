"""``--backend hf``: the same datasets, records and reports, measured with the offline evaluator
(HF target + SpecForge DFlash-family draft on this machine) instead of SGLang servers.

It stands in for a server: every drafter is decoded as the ``--convention`` rule set's server decodes
its method (default SGLang 0.5.23: DFlash and Domino propose the argmax and verify target-only at
temperature > 0, DSpark samples its proposals from q and drafts gamma tokens from the anchor row).
``--draft-sampling`` overrides the proposal mode where that server has the other one.  Both are part of
the settings record.

The target, its tokenizer and each draft are loaded once; prompts are evaluated in chunks so each
finished chunk is appended to ``requests.jsonl`` and an interrupted run resumes. Sampling applies
``--temperature``, ``--top-k`` and ``--top-p`` (speculative sampling verifies against the same
filtered target distribution, so it stays lossless), and the generator seed of a prompt is
``--seed`` (0 when not given) plus the prompt's position in its dataset, so a resumed or re-chunked
run samples each prompt exactly as an uninterrupted one. The baseline is the target's plain
greedy one-token-per-step decoding (``greedy_reference``) timed per prompt (for each temperature
key, always greedy: it only times the target).

Records follow SGLang's ``meta_info`` convention: ``completion_tokens`` counts every generated
token, the prefill's included, ``verify_ct`` the verify steps, and ``accept_length`` =
``completion_tokens / verify_ct`` like ``spec_accept_length``; ``accept_length_per_step`` holds
the evaluator's own tau (prefill token excluded). There is no server, so no server average.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

from specforge_dpace.bench.results import BASELINE, ResultStore
from specforge_dpace.bench.runner import BenchConfig, check_resume, make_record, pending_items


def validate_hf_drafter(path, target):
    """Check a drafter directory for ``--backend hf``; returns a ``validate.DraftInfo``.

    By the rules of the layout the directory is in (``serving.layout_of``: a server's, or SpecForge's
    ``export --to hf`` layout), what the evaluator's loader accepts; a ``DraftValidationError`` lists every
    problem."""
    from specforge_dpace.bench import validate

    return validate.validate_draft_dir(path, target=target, server=None)


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _progress(total: int, desc: str):
    try:
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit="prompt", leave=False)
    except ImportError:  # pragma: no cover
        return None


def _tokenizer(cfg: BenchConfig, tokenizer_path: Optional[str]):
    from transformers import AutoTokenizer

    source = tokenizer_path or cfg.tokenizer or cfg.target
    try:
        return AutoTokenizer.from_pretrained(str(source), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"--backend hf encodes prompts with a tokenizer, and none loads from {str(source)!r} ({exc}); "
            "pass --tokenizer DIR"
        ) from None


def run_hf(
    cfg: BenchConfig,
    store: ResultStore,
    render: Callable[[str], str],
    *,
    tokenizer_path: Optional[str] = None,
    chunk: int = 4,
) -> int:
    """Evaluate every pending (drafter, dataset, temperature, prompt); returns records written."""
    from specforge_dpace.evaluate import EvalConfig, evaluate_drafter
    from specforge_dpace.evaluate._checkpoint import load_draft, load_target, read_draft_config, validate_pair

    if chunk < 1:
        raise ValueError(f"--hf-chunk must be >= 1, got {chunk}")
    if tokenizer_path and not cfg.tokenizer:
        cfg.tokenizer = tokenizer_path
    check_resume(cfg, store)
    work = [(name, draft, pending_items(cfg, store, name, render)) for name, draft in cfg.servers()]
    if not any(items for _, _, items in work):
        return 0
    position = {(ds, p.prompt_id): i for ds, prompts in cfg.prompts.items() for i, p in enumerate(prompts)}
    base_seed = 0 if cfg.seed is None else int(cfg.seed)
    recorded = 0
    deadline = time.monotonic() + cfg.time_budget_s
    target = load_target(cfg.target)
    tok = _tokenizer(cfg, tokenizer_path)

    def encode(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    for name, draft_path, items in work:
        if not items:
            continue
        if draft_path is None:
            recorded += _run_baseline(cfg, store, items, target, encode, deadline)
            continue
        validate_pair(target.config, read_draft_config(draft_path))
        draft = load_draft(draft_path, target.config, dtype=next(target.parameters()).dtype)
        groups: dict[tuple, list] = {}
        for it in items:
            groups.setdefault((it.dataset, it.temperature), []).append(it)
        for (dataset, temperature), group in groups.items():
            bar = _progress(len(group), f"hf {name} {dataset} T={temperature:g}")
            for part in _chunks(group, chunk):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"time budget of {cfg.time_budget_s:.0f}s reached; run again to resume")
                result = evaluate_drafter(
                    target,
                    draft,
                    [encode(it.text) for it in part],
                    EvalConfig(
                        temperature=temperature,
                        max_new_tokens=cfg.max_new_tokens,
                        top_k=cfg.top_k,
                        top_p=cfg.top_p,
                        prompt_seeds=[base_seed + position[(it.dataset, it.prompt.prompt_id)] for it in part],
                        show_progress=False,
                        draft_sampling=cfg.draft_sampling,
                        convention=cfg.convention,
                    ),
                )
                block = int(result.overall["verify_window"])
                for it, rec in zip(part, result.per_prompt):
                    store.add(_record(cfg, name, it, rec, block))
                    recorded += 1
                if bar is not None:
                    bar.update(len(part))
            if bar is not None:
                bar.close()
    return recorded


def vllm_setting(convention: str, method: str, draft_sampling, temperature: float) -> str:
    from specforge_dpace.serving._vllm import vllm_setting as setting

    return setting(convention, method, draft_sampling, temperature)


def _record(cfg: BenchConfig, name: str, item, rec: dict[str, Any], block_size: int) -> dict:
    wall = rec.get("wall_s")
    if wall is None:
        wall = sum(float(rec.get(k) or 0.0) for k in ("prefill_s", "draft_s", "verify_s"))
    steps = int(rec["verify_steps"])
    tokens = int(rec["completion_tokens"])
    hist = rec.get("accept_hist")
    return make_record(
        cfg,
        name,
        item,
        completion_tokens=tokens,
        verify_ct=steps,
        accept_length=tokens / steps if steps else None,  # SGLang's spec_accept_length convention
        accept_length_per_step=rec.get("tau"),  # the evaluator's tau: prefill token excluded
        num_correct_drafts=sum(a * n for a, n in enumerate(hist)) if hist else None,
        num_proposed_drafts=steps * (block_size - 1),
        histogram=hist,
        seed=rec.get("seed"),
        latency_s=wall,
        vllm_setting=vllm_setting(
            cfg.convention, cfg.methods.get(name, "dflash"), cfg.draft_sampling, item.temperature
        ),
    )


def _run_baseline(cfg: BenchConfig, store: ResultStore, items: list, target, encode, deadline: float) -> int:
    import torch

    from specforge_dpace.evaluate import greedy_reference

    bar = _progress(len(items), "hf baseline")
    n = 0
    with torch.inference_mode():
        for it in items:
            if time.monotonic() > deadline:
                raise RuntimeError(f"time budget of {cfg.time_budget_s:.0f}s reached; run again to resume")
            ids = encode(it.text)
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
