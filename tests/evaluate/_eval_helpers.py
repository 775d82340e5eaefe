"""Helpers for the evaluator tests: a chi-square goodness-of-fit test and oracle proposers."""

from __future__ import annotations

import torch

from specforge_dpace.evaluate._speculative import DFlashDecoder, greedy_reference


def chi2_sf(x: float, dof: int) -> float:
    """Survival function of the chi-square distribution (regularized upper incomplete gamma)."""
    half = torch.tensor([dof / 2, x / 2], dtype=torch.float64)
    return float(torch.special.gammaincc(half[0], half[1]))


def chi2_gof_pvalue(counts, probs, min_expected: float = 5.0) -> float:
    """Pearson chi-square p-value of observed ``counts`` against ``probs``; cells with an
    expected count below ``min_expected`` are pooled into one cell."""
    counts = torch.as_tensor(counts, dtype=torch.float64)
    probs = torch.as_tensor(probs, dtype=torch.float64)
    n = float(counts.sum())
    expected = probs * n
    small = expected < min_expected
    obs_cells = list(counts[~small].tolist())
    exp_cells = list(expected[~small].tolist())
    if small.any():
        obs_cells.append(float(counts[small].sum()))
        exp_cells.append(float(expected[small].sum()))
    if any(e == 0 and o > 0 for o, e in zip(obs_cells, exp_cells)):
        return 0.0  # a token the reference says is impossible
    stat = sum((o - e) ** 2 / e for o, e in zip(obs_cells, exp_cells) if e > 0)
    dof = len(obs_cells) - 1
    return chi2_sf(stat, dof) if dof > 0 else 1.0


class OracleDecoder(DFlashDecoder):
    """Stand-in proposer for tau arithmetic: drafts the target's own greedy continuation and
    optionally corrupts slot ``corrupt_at(step)`` (1-based; None = no corruption), so the
    accepted length of every verify step is known in advance.  The real DFlashDraftModel cannot
    be steered to a chosen accepted length, which is why this subclass exists; everything else
    (target verification, KV-cache cropping, bookkeeping) is the real decoder."""

    def __init__(self, *args, corrupt_at=lambda step: None, **kwargs):
        super().__init__(*args, **kwargs)
        self.corrupt_at = corrupt_at
        self.step = 0

    def _propose(self, draft_cache, new_features, tokens, generator):
        cont = greedy_reference(self.target, tokens, self.block_size - 1)
        drafted = torch.tensor(cont, dtype=torch.long)
        slot = self.corrupt_at(self.step)
        if slot is not None:
            vocab = self.lm_head.weight.shape[0]
            drafted[slot - 1] = (drafted[slot - 1] + 1) % vocab
        self.step += 1
        return drafted, None


def exact_marginals(target, prompt, temperature, top_k=-1, top_p=1.0):
    """Exact marginals of the first three tokens plain sampling draws from ``target`` at ``temperature``
    (top-k / top-p applied in every context), by enumerating the vocab^2 contexts."""
    from specforge_dpace.evaluate._sampling import sampling_probs

    def dist(logits):
        return sampling_probs(logits, temperature, top_k, top_p).double()

    with torch.no_grad():
        vocab = target.config.vocab_size
        p0 = dist(target(input_ids=torch.tensor([prompt])).logits[0, -1])
        p1 = dist(target(input_ids=torch.tensor([prompt + [a] for a in range(vocab)])).logits[:, -1])
        ctx2 = torch.tensor([prompt + [a, b] for a in range(vocab) for b in range(vocab)])
        p2 = dist(target(input_ids=ctx2).logits[:, -1]).view(vocab, vocab, vocab)
    joint01 = p0[:, None] * p1
    return p0, joint01.sum(0), (joint01[..., None] * p2).sum((0, 1))


def random_blocks(count: int, k: int, seed: int, hidden_size: int = 32, mask: int = 47):
    """``count`` random ``(hidden [1, k, H] float64, block ids [1, k])`` pairs: an anchor, then mask ids."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(count):
        hidden = 3 * torch.randn(1, k, hidden_size, generator=gen, dtype=torch.float64)
        block = torch.full((1, k), mask, dtype=torch.long)
        block[0, 0] = int(torch.randint(0, mask, (1,), generator=gen))
        yield hidden, block
