"""Verification rules of speculative decoding: which drafted tokens a target accepts.

Pure functions over one block, so that the losslessness of each rule can be tested on
hand-made distributions without any model (see tests/evaluate/test_sampling.py).

Shapes for a block of ``K`` slots (slot 0 = last emitted token, slots 1..K-1 drafted):
``draft_tokens[K-1]``, ``draft_probs[K-1, V]`` (q, the distribution each drafted token was
sampled from), ``target_logits`` / ``target_probs[K, V]`` where row ``i`` is the target's
distribution for the token after block slot ``i`` (row K-1 gives the bonus token).
"""

from __future__ import annotations

from typing import Optional

import torch


def target_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Softmax at ``temperature`` in fp32 (the sampling distribution p or q)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 for a sampling distribution, got {temperature}")
    return torch.softmax(logits.float() / temperature, dim=-1)


def check_top_k_top_p(top_k, top_p) -> None:
    """SGLang's accepted ranges: ``top_k`` -1 (disabled) or an int >= 1; ``top_p`` in (0, 1]."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not (top_k == -1 or top_k >= 1):
        raise ValueError(f"top_k={top_k!r} is invalid; accepted: -1 (disabled) or an int >= 1")
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0.0 < float(top_p) <= 1.0:
        raise ValueError(f"top_p={top_p!r} is invalid; accepted: a number in (0, 1] (1 = disabled)")


def filter_probs(probs: torch.Tensor, top_k: int = -1, top_p: float = 1.0) -> torch.Tensor:
    """Top-k, then top-p, over the last dimension, each followed by renormalization.

    The order and the renormalization in between are SGLang's for DFlash verification
    (``compute_dflash_sampling_correct_drafts_and_bonus`` in ``sglang/srt/speculative/dflash_utils.py``:
    softmax over the top-k logits, then ``top_p_renorm_prob``); the top-p rule is that of
    ``top_p_normalize_probs_torch`` (``sglang/srt/layers/sampler.py``): a token is dropped when
    the tokens ranked above it already hold more than ``top_p``, so the most likely token always
    stays.  Ties are ranked by token id (stable sort).  ``top_k`` -1 and ``top_p`` 1 disable a filter."""
    check_top_k_top_p(top_k, top_p)
    vocab = probs.shape[-1]
    use_k = 0 < top_k < vocab
    use_p = float(top_p) < 1.0
    if not (use_k or use_p):
        return probs
    ranked, order = probs.sort(dim=-1, descending=True, stable=True)
    if use_k:
        ranked = ranked.clone()
        ranked[..., top_k:] = 0.0
        ranked = ranked / ranked.sum(dim=-1, keepdim=True)
    if use_p:
        above = ranked.cumsum(dim=-1) - ranked
        ranked = ranked.masked_fill(above > float(top_p), 0.0)
        ranked = ranked / ranked.sum(dim=-1, keepdim=True)
    return torch.zeros_like(probs).scatter(-1, order, ranked)


def sampling_probs(logits: torch.Tensor, temperature: float, top_k: int = -1, top_p: float = 1.0) -> torch.Tensor:
    """The distribution a token is sampled from: softmax at ``temperature``, then top-k / top-p.

    Speculative sampling stays lossless with filters as long as verification uses this same
    filtered target distribution p (and q is whatever distribution the draft sampled from)."""
    return filter_probs(target_probs(logits, temperature), top_k, top_p)


def verify_greedy(draft_tokens: torch.Tensor, target_logits: torch.Tensor) -> tuple[int, int]:
    """Greedy rule: accept the longest prefix equal to the target's argmax; the next token is
    the target's argmax after that prefix.  Returns ``(accepted, next_token)``."""
    target_choice = target_logits.argmax(dim=-1)  # [K]
    agree = (draft_tokens == target_choice[:-1]).to(torch.int64)
    accepted = int(agree.cumprod(dim=0).sum().item())
    return accepted, int(target_choice[accepted].item())


def _sample(probs: torch.Tensor, generator: Optional[torch.Generator]) -> int:
    return int(torch.multinomial(probs, 1, generator=generator).item())


def verify_sampling(
    draft_tokens: torch.Tensor,
    draft_probs: torch.Tensor,
    target_probs_: torch.Tensor,
    generator: Optional[torch.Generator] = None,
) -> tuple[int, int]:
    """Speculative sampling (Leviathan et al. 2023; Chen et al. 2023), lossless in distribution.

    Drafted token ``x_j`` is accepted with probability ``min(1, p_j(x_j) / q_j(x_j))``; at the
    first rejection the next token is drawn from the normalized residual ``max(0, p_j - q_j)``;
    if every drafted token is accepted the bonus token is drawn from ``p_{K-1}``.
    Returns ``(accepted, next_token)``.
    """
    n_draft = int(draft_tokens.shape[0])
    if draft_probs.shape[0] != n_draft or target_probs_.shape[0] != n_draft + 1:
        raise ValueError(
            f"shapes do not match: draft_tokens {tuple(draft_tokens.shape)}, draft_probs "
            f"{tuple(draft_probs.shape)}, target_probs {tuple(target_probs_.shape)} (need K-1, K-1, K rows)"
        )
    device = generator.device if generator is not None else draft_probs.device
    uniforms = torch.rand(n_draft, generator=generator, dtype=torch.float64, device=device)
    for j in range(n_draft):
        token = int(draft_tokens[j].item())
        p = float(target_probs_[j, token].item())
        q = float(draft_probs[j, token].item())
        if q > 0 and float(uniforms[j].item()) * q < p:  # u < p/q without dividing by q
            continue
        residual = (target_probs_[j].double() - draft_probs[j].double()).clamp_min(0.0)
        total = float(residual.sum().item())
        # p == q up to rounding leaves an all-zero residual; a rejection then has probability ~0
        # and p itself is the exact fallback.
        choice = residual / total if total > 1e-12 else target_probs_[j].double()
        return j, _sample(choice, generator)
    return n_draft, _sample(target_probs_[n_draft].double(), generator)


DRAFT_SAMPLING = ("sample", "greedy")


def check_draft_sampling(value) -> str:
    """``"sample"`` (standard speculative sampling: proposals drawn from q) or ``"greedy"`` (SGLang's
    DFlash convention: argmax proposals, target-only verification)."""
    if value not in DRAFT_SAMPLING:
        raise ValueError(
            f"draft_sampling={value!r} is invalid; accepted: 'sample' (proposals drawn from the draft's "
            "distribution q, standard speculative sampling) or 'greedy' (argmax proposals, target-only "
            "verification, as SGLang's DFlash does)"
        )
    return value


def verify_target_only(
    draft_tokens: torch.Tensor,
    target_probs_: torch.Tensor,
    generator: Optional[torch.Generator] = None,
) -> tuple[int, int]:
    """SGLang's DFlash verification of greedy proposals at temperature > 0, lossless in distribution.

    Drafted token ``x_j`` is accepted with probability ``p_j(x_j)`` (no draft distribution is used);
    at the first rejection the next token is drawn from ``p_j`` with ``x_j`` removed, renormalized
    (``relu(p_j - p_j(x_j) e_{x_j})``); if every drafted token is accepted the bonus token is drawn
    from ``p_{K-1}``.  This is sgl_kernel's ``tree_speculative_sampling_target_only`` for a chain
    (``compute_dflash_sampling_correct_drafts_and_bonus`` in ``sglang/srt/speculative/dflash_utils.py``
    passes all-zero draft probabilities; the kernel accepts when ``coin <= p / threshold_acc`` or
    ``p >= threshold_single`` and, on a rejection, copies ``p(x)`` into the draft probabilities before
    sampling ``relu(p - draft)``) at the default thresholds ``--speculative-accept-threshold-single``
    = ``--speculative-accept-threshold-acc`` = 1.0, the only setting under which it is lossless.
    It equals :func:`verify_sampling` with q = the one-hot distribution of each proposal.
    Returns ``(accepted, next_token)``."""
    n_draft = int(draft_tokens.shape[0])
    if target_probs_.shape[0] != n_draft + 1:
        raise ValueError(
            f"shapes do not match: draft_tokens {tuple(draft_tokens.shape)}, target_probs "
            f"{tuple(target_probs_.shape)} (need K-1 and K rows)"
        )
    device = generator.device if generator is not None else target_probs_.device
    uniforms = torch.rand(n_draft, generator=generator, dtype=torch.float64, device=device)
    for j in range(n_draft):
        token = int(draft_tokens[j].item())
        if float(uniforms[j].item()) < float(target_probs_[j, token].item()):
            continue
        residual = target_probs_[j].double().clone()
        residual[token] = 0.0
        total = float(residual.sum().item())
        # p(x) == 1 up to rounding leaves nothing else: a rejection then has probability ~0
        choice = residual / total if total > 1e-12 else target_probs_[j].double()
        return j, _sample(choice, generator)
    return n_draft, _sample(target_probs_[n_draft].double(), generator)
