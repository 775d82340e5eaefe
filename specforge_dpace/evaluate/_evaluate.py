"""The evaluator's entry points: an in-memory (target, draft) pair or checkpoint directories."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

from ._metrics import EvalResult, overall_metrics, prompt_record


@dataclass
class EvalConfig:
    """Decoding settings.  ``temperature`` 0 = greedy verification, > 0 = speculative sampling
    from the temperature / ``top_k`` / ``top_p`` distribution (-1 and 1.0 = no filter; SGLang's
    ranges and order, see ``_sampling.filter_probs``); ``block_size`` None = the draft's own;
    ``seed`` seeds one generator per prompt (``seed + prompt index``) so results do not depend on
    the prompt order or count; ``prompt_seeds`` (one int per prompt) replaces those seeds, for
    callers that evaluate a data set piece by piece (``bench --backend hf``).

    ``convention``: the serving rule set whose decoding is reproduced (``serving.rules_for``; default
    SGLang 0.5.23's: DSpark drafts gamma = ``block_size`` tokens from the anchor row, Domino with SGLang's
    GRU rollout; ``serving.SPECFORGE`` = SpecForge's classes' own block sampling).  ``draft_sampling``
    (temperature > 0 only; at 0 both are greedy verification): ``"sample"`` draws each proposal from the
    draft's distribution q and verifies with standard speculative sampling; ``"greedy"`` proposes the draft's
    argmax and verifies target-only; None = what the convention's server does for the method (SGLang 0.5.23:
    greedy for DFlash and Domino, sample for DSpark).  Both are lossless; tau differs.  ``candidate_pool``:
    the Domino rollout's candidate pool (None = the server's default, 2048; 0 = the full vocabulary)."""

    temperature: float = 0.0
    max_new_tokens: int = 128
    block_size: Optional[int] = None
    stop_token_ids: Sequence[int] = ()
    seed: int = 0
    show_progress: bool = True
    baseline: bool = False  # also time plain autoregressive decoding of each prompt (for speed-up)
    top_k: int = -1
    top_p: float = 1.0
    prompt_seeds: Optional[Sequence[int]] = None
    draft_sampling: Optional[str] = None
    convention: str = "sglang-0.5.23"
    candidate_pool: Optional[int] = None

    def validate(self) -> None:
        from .. import _numbers as num
        from .. import serving
        from ._sampling import check_draft_sampling, check_top_k_top_p

        num.TEMPERATURE.check(self.temperature, "temperature")
        check_top_k_top_p(self.top_k, self.top_p)
        if self.draft_sampling is not None:
            check_draft_sampling(self.draft_sampling)
        serving.rules_for(self.convention)  # a ValueError listing the known conventions
        num.NON_NEGATIVE.check_optional(self.candidate_pool, "candidate_pool")  # None: the server's default
        num.NEW_TOKENS.check(self.max_new_tokens, "max_new_tokens")
        num.BLOCK_SIZE.check_optional(self.block_size, "block_size")
        num.SEED.check(self.seed, "seed")
        for token in self.stop_token_ids:
            num.TOKEN_ID.check(token, "stop_token_ids")
        num.check_unique(self.stop_token_ids, "stop_token_ids:", why="")


def _progress(items, enabled: bool, desc: str):
    if not enabled:
        return items
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional for the library API
        return items
    return tqdm(items, desc=desc, unit="prompt")


def _check_context_window(target_config, prompt_ids, max_new_tokens: int) -> None:
    """Refuse prompts that ``max_new_tokens`` would decode past the target's context window (positions the
    target was never trained on: its output there means nothing)."""
    text = target_config.get_text_config() if hasattr(target_config, "get_text_config") else target_config
    window = getattr(text, "max_position_embeddings", None)
    if not isinstance(window, int) or not prompt_ids:
        return
    index = max(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    longest = len(prompt_ids[index])
    if longest + max_new_tokens > window:
        raise ValueError(
            f"max_new_tokens={max_new_tokens} is invalid for these prompts: prompt {index} has {longest} tokens, so "
            f"decoding would run to position {longest + max_new_tokens}, past the target's context window "
            f"(max_position_embeddings={window}); accepted: max_new_tokens <= {max(window - longest, 0)} (or "
            "shorter prompts)"
        )


def evaluate_drafter(target, draft, prompts, config: Optional[EvalConfig] = None) -> EvalResult:
    """Speculative-decode every prompt (batch 1) and measure acceptance.

    ``target``: an HF causal LM; ``draft``: a SpecForge ``DFlashDraftModel``, ``DominoDraftModel``
    or ``DSparkDraftModel`` fitting it (decoded as ``config.convention``'s server decodes the method);
    ``prompts``: token-id lists or 1-D LongTensors.  Raises ``ValueError`` when the pair does
    not fit (hidden size, vocabulary, layer ids, mask token, block size, head fields), or when the
    convention's server would not serve the drafter (naming why)."""
    import torch

    from specforge_dpace import serving

    from ._checkpoint import check_served, validate_pair
    from ._prompts import load_prompts
    from ._proposals import model_method
    from ._speculative import DFlashDecoder, autoregressive_reference

    config = config or EvalConfig()
    config.validate()
    method = model_method(draft)
    settings = validate_pair(target.config, draft.config, config.block_size or draft.block_size, method=method)
    check_served(draft, config.convention, target.config)  # decode only what that server would serve
    prompt_ids = load_prompts(prompts)
    vocab = (target.config.get_text_config() if hasattr(target.config, "get_text_config") else target.config).vocab_size
    for i, ids in enumerate(prompt_ids):
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"prompt {i} has token ids {bad[:5]} outside the target vocabulary [0, {vocab - 1}]")
    _check_context_window(target.config, prompt_ids, config.max_new_tokens)
    block_size = settings["block_size"]
    if config.prompt_seeds is not None and len(config.prompt_seeds) != len(prompt_ids):
        raise ValueError(f"prompt_seeds has {len(config.prompt_seeds)} seeds for {len(prompt_ids)} prompts")
    decoder = DFlashDecoder(
        target,
        draft,
        block_size=block_size,
        temperature=config.temperature,
        top_k=config.top_k,
        top_p=config.top_p,
        draft_sampling=config.draft_sampling,
        convention=config.convention,
        candidate_pool=config.candidate_pool,
    )
    window = decoder.window
    target.eval()
    draft.eval()
    records = []
    for index in _progress(range(len(prompt_ids)), config.show_progress, "evaluate"):
        seed = int(config.seed) + index if config.prompt_seeds is None else int(config.prompt_seeds[index])
        generator = torch.Generator(device=decoder.device).manual_seed(seed)
        trace = decoder.decode(prompt_ids[index], config.max_new_tokens, config.stop_token_ids, generator)
        record = prompt_record(index, len(prompt_ids[index]), trace, window)
        record["seed"] = seed
        if config.baseline:
            generator = torch.Generator(device=decoder.device).manual_seed(seed)
            t0 = time.perf_counter()
            plain = autoregressive_reference(
                target,
                prompt_ids[index],
                config.max_new_tokens,
                config.stop_token_ids,
                config.temperature,
                generator,
                top_k=config.top_k,
                top_p=config.top_p,
            )
            if decoder.device.type == "cuda":
                torch.cuda.synchronize(decoder.device)
            record["baseline_tokens"] = len(plain)
            record["baseline_s"] = time.perf_counter() - t0
        records.append(record)
    run_settings = asdict(config)
    run_settings.pop("show_progress")
    run_settings.pop("prompt_seeds")  # each record has its own "seed"
    run_settings["stop_token_ids"] = [int(t) for t in config.stop_token_ids]
    run_settings["block_size"] = block_size
    run_settings["verify_window"] = window
    run_settings["draft_sampling"] = decoder.draft_sampling
    run_settings["proposals"] = decoder.decoding.proposals
    run_settings["candidate_pool"] = decoder.candidate_pool if decoder.decoding.candidate_pool is not None else None
    run_settings["method"] = method
    run_settings["draft_architecture"] = serving.ARCHITECTURES[method]
    overall = overall_metrics(records, window, run_settings)
    if config.baseline:
        base_s = sum(r["baseline_s"] for r in records)
        overall["baseline_tokens_per_s"] = sum(r["baseline_tokens"] for r in records) / base_s if base_s else None
        speed, base = overall["tokens_per_s"], overall["baseline_tokens_per_s"]
        overall["speedup"] = speed / base if speed and base else None
    return EvalResult(per_prompt=records, overall=overall)


def evaluate_paths(
    target_path,
    draft_path,
    prompts_path_or_list,
    config: Optional[EvalConfig] = None,
    tokenizer_path=None,
    *,
    num_prompts: Optional[int] = None,
    device=None,
) -> EvalResult:
    """Load a target (HF directory) and a draft directory (servable DFlash, or a Domino / DSpark
    export), then evaluate.  ``config.block_size`` overrides the draft's own, as in :func:`load_draft`.

    Prompts: a JSONL path (``"prompt"`` text or ``"input_ids"`` per line) or a list.  Text is
    encoded with the tokenizer in ``tokenizer_path`` or, by default, ``target_path``."""
    from .._quiet import library_progress
    from ._checkpoint import load_draft, load_target, read_draft_config, validate_pair
    from ._prompts import load_prompts, needs_tokenizer, read_prompt_records

    config = config or EvalConfig()
    config.validate()
    with library_progress(config.show_progress):  # --no-progress silences transformers' loading bar too
        target = load_target(target_path, device=device)
    validate_pair(target.config, read_draft_config(draft_path), config.block_size)
    draft = load_draft(
        draft_path, target.config, dtype=next(target.parameters()).dtype, device=device, block_size=config.block_size
    )
    is_path = isinstance(prompts_path_or_list, str) or hasattr(prompts_path_or_list, "__fspath__")
    items = read_prompt_records(prompts_path_or_list) if is_path else list(prompts_path_or_list)
    encode = None
    if needs_tokenizer(items[:num_prompts] if num_prompts else items):
        from transformers import AutoTokenizer

        source = tokenizer_path or target_path
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(source), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"text prompts need a tokenizer, and none loads from {str(source)!r} ({exc}); pass a tokenizer "
                "path or give input_ids in the prompts file"
            ) from None

        def encode(text: str) -> list:
            return tokenizer(text, add_special_tokens=False)["input_ids"]

    prompts = load_prompts(items, encode, limit=num_prompts)
    return evaluate_drafter(target, draft, prompts, config)
