"""The verification rules as pure functions: greedy prefix matching and speculative sampling."""

from __future__ import annotations

import pytest
import torch
from _eval_helpers import chi2_gof_pvalue, chi2_sf

from specforge_dpace.evaluate import verify_greedy, verify_sampling


def _onehot_logits(tokens, vocab=8):
    logits = torch.zeros(len(tokens), vocab)
    logits[torch.arange(len(tokens)), torch.tensor(tokens)] = 5.0
    return logits


@pytest.mark.parametrize(
    "draft, target, expected",
    [
        ([3, 4, 5], [3, 4, 5, 6], (3, 6)),  # all accepted: bonus from the last row
        ([3, 4, 5], [1, 4, 5, 6], (0, 1)),  # first wrong: target's own token
        ([3, 4, 5], [3, 4, 7, 6], (2, 7)),
        ([3, 0, 5], [3, 4, 5, 6], (1, 4)),  # a later agreement after an error does not count
    ],
)
def test_verify_greedy_hand_cases(draft, target, expected):
    assert verify_greedy(torch.tensor(draft), _onehot_logits(target)) == expected


def test_chi2_sf_known_values():
    assert chi2_sf(3.841458820694124, 1) == pytest.approx(0.05, rel=1e-6)
    assert chi2_sf(18.307038053275146, 10) == pytest.approx(0.05, rel=1e-6)
    assert chi2_gof_pvalue([50, 50], [0.5, 0.5]) == pytest.approx(1.0)
    assert chi2_gof_pvalue([90, 10], [0.5, 0.5]) < 1e-10


def test_verify_sampling_rejects_bad_shapes():
    with pytest.raises(ValueError, match="shapes do not match"):
        verify_sampling(torch.tensor([1, 2]), torch.full((2, 4), 0.25), torch.full((2, 4), 0.25))


def _random_dist(gen, rows, vocab, sharp=2.0):
    return torch.softmax(sharp * torch.randn(rows, vocab, generator=gen, dtype=torch.float64), dim=-1)


def test_equal_distributions_accept_everything():
    gen = torch.Generator().manual_seed(0)
    p = _random_dist(gen, 4, 8)
    for _ in range(200):
        drafted = torch.multinomial(p[:3], 1, generator=gen).squeeze(-1)
        accepted, _ = verify_sampling(drafted, p[:3], p, gen)
        assert accepted == 3


def test_disjoint_support_always_rejects_and_samples_target():
    gen = torch.Generator().manual_seed(1)
    p = torch.zeros(3, 6, dtype=torch.float64)
    p[:, :3] = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    q = torch.zeros(2, 6, dtype=torch.float64)
    q[:, 5] = 1.0
    counts = torch.zeros(6)
    for _ in range(3000):
        accepted, token = verify_sampling(torch.tensor([5, 5]), q, p, gen)
        assert accepted == 0
        counts[token] += 1
    assert counts[3:].sum() == 0
    assert chi2_gof_pvalue(counts, p[0]) > 1e-3


def _simulate(p_table, q_table, block, n_tokens, gen, rule="speculative"):
    """Tokens of one sequence decoded block by block with position-indexed p and q tables
    (a target and a draft whose distributions depend only on the position)."""
    out: list[int] = []
    while len(out) < n_tokens:
        pos = len(out)
        q = q_table[pos : pos + block - 1]
        p = p_table[pos : pos + block]
        drafted = torch.multinomial(q, 1, generator=gen).squeeze(-1)
        if rule == "speculative":
            accepted, nxt = verify_sampling(drafted, q, p, gen)
        else:  # "accept-all": a lossy rule the test must catch
            accepted, nxt = len(drafted), int(torch.multinomial(p[-1], 1, generator=gen))
        out.extend(drafted[:accepted].tolist() + [nxt])
    return out[:n_tokens]


def test_speculative_sampling_is_lossless_per_position():
    """Every emitted position follows the target's distribution, whatever the drafter proposes:
    positions 0..4 cover first slots, later slots, bonus tokens and the steps after a rejection."""
    vocab, block, n_pos, samples = 8, 3, 5, 3000
    gen = torch.Generator().manual_seed(2)
    p_table = _random_dist(gen, n_pos + block, vocab)
    q_table = _random_dist(gen, n_pos + block, vocab)
    counts = torch.zeros(n_pos, vocab)
    for _ in range(samples):
        seq = _simulate(p_table, q_table, block, n_pos, gen)
        counts[torch.arange(n_pos), torch.tensor(seq)] += 1
    pvalues = [chi2_gof_pvalue(counts[i], p_table[i]) for i in range(n_pos)]
    assert min(pvalues) > 1e-3, pvalues
    # the same samples clearly reject the drafter's own distribution: the test has power
    assert max(chi2_gof_pvalue(counts[i], q_table[i]) for i in range(n_pos)) < 1e-6


def test_lossy_rule_is_detected():
    vocab, block, n_pos, samples = 8, 3, 3, 3000
    gen = torch.Generator().manual_seed(3)
    p_table = _random_dist(gen, n_pos + block, vocab)
    q_table = _random_dist(gen, n_pos + block, vocab)
    counts = torch.zeros(n_pos, vocab)
    for _ in range(samples):
        seq = _simulate(p_table, q_table, block, n_pos, gen, rule="accept-all")
        counts[torch.arange(n_pos), torch.tensor(seq)] += 1
    assert min(chi2_gof_pvalue(counts[i], p_table[i]) for i in range(n_pos)) < 1e-6


def test_filter_probs_follows_sglang_top_k_then_top_p():
    from specforge_dpace.evaluate._sampling import filter_probs

    probs = torch.tensor([0.1, 0.4, 0.2, 0.3])
    # top-k keeps the k most likely tokens, renormalized
    assert torch.allclose(filter_probs(probs, top_k=2), torch.tensor([0.0, 4 / 7, 0.0, 3 / 7]))
    # top-p drops a token once the tokens ranked above it hold more than top_p: 0.4 + 0.3 > 0.6
    assert torch.allclose(filter_probs(probs, top_p=0.6), torch.tensor([0.0, 4 / 7, 0.0, 3 / 7]))
    assert torch.allclose(filter_probs(probs, top_p=0.35), torch.tensor([0.0, 1.0, 0.0, 0.0]))  # top token stays
    # top-k first, then top-p on the renormalized top-k: [4/9, 3/9, 2/9] -> 4/9 + 3/9 > 0.75 drops the third
    assert torch.allclose(filter_probs(probs, top_k=3, top_p=0.75), torch.tensor([0.0, 4 / 7, 0.0, 3 / 7]))
    # -1 and 1.0 are "off"; k >= vocabulary is off too; rows are filtered independently
    assert torch.equal(filter_probs(probs, top_k=-1, top_p=1.0), probs)
    assert torch.equal(filter_probs(probs, top_k=9), probs)
    rows = filter_probs(torch.stack([probs, probs.flip(0)]), top_k=1)
    assert rows.tolist() == [[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]
    # ties are ranked by token id
    assert filter_probs(torch.full((4,), 0.25), top_k=2).tolist() == [0.5, 0.5, 0.0, 0.0]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(top_k=0), "top_k=0 is invalid"),
        (dict(top_k=-2), "top_k=-2 is invalid"),
        (dict(top_k=True), "top_k=True is invalid"),
        (dict(top_k=2.0), "top_k=2.0 is invalid"),
        (dict(top_p=0.0), "top_p=0.0 is invalid"),
        (dict(top_p=1.5), "top_p=1.5 is invalid"),
        (dict(top_p=float("nan")), "top_p=nan is invalid"),
    ],
)
def test_filter_probs_refuses_values_sglang_refuses(kwargs, message):
    from specforge_dpace.evaluate._sampling import filter_probs

    with pytest.raises(ValueError, match=message):
        filter_probs(torch.full((4,), 0.25), **kwargs)


def test_speculative_sampling_with_top_k_top_p_is_lossless_per_position():
    """Verification against the filtered target p (the draft proposing from its own filtered q)
    emits every position from the filtered target distribution -- the one plain sampling draws
    from -- and the same samples clearly reject the unfiltered p (the test has power)."""
    from specforge_dpace.evaluate._sampling import filter_probs

    vocab, block, n_pos, samples = 8, 3, 4, 3000
    gen = torch.Generator().manual_seed(4)
    raw_p = _random_dist(gen, n_pos + block, vocab, sharp=1.0)
    p_table = filter_probs(raw_p, top_k=5, top_p=0.8)
    q_table = filter_probs(_random_dist(gen, n_pos + block, vocab, sharp=1.0), top_k=5, top_p=0.8)
    assert (p_table == 0).any(dim=-1).all()  # the filters do cut tokens at every position
    counts = torch.zeros(n_pos, vocab)
    for _ in range(samples):
        seq = _simulate(p_table, q_table, block, n_pos, gen)
        counts[torch.arange(n_pos), torch.tensor(seq)] += 1
    assert min(chi2_gof_pvalue(counts[i], p_table[i]) for i in range(n_pos)) > 1e-3
    assert max(chi2_gof_pvalue(counts[i], raw_p[i]) for i in range(n_pos)) < 1e-6


# -- target-only verification of greedy proposals (SGLang's DFlash convention) -------------------


def test_verify_target_only_hand_cases():
    from specforge_dpace.evaluate import verify_target_only

    gen = torch.Generator().manual_seed(5)
    p = torch.zeros(3, 4, dtype=torch.float64)
    p[0, 2], p[1, 1], p[2] = 1.0, 1.0, torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    for _ in range(50):  # p(x) = 1: always accepted; the bonus token comes from the last row
        accepted, token = verify_target_only(torch.tensor([2, 1]), p, gen)
        assert accepted == 2 and token in (0, 1, 2, 3)
    q = torch.zeros(3, 4, dtype=torch.float64)
    q[:, :3] = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    counts = torch.zeros(4)
    for _ in range(3000):  # p(x) = 0: always rejected, and the residual never emits x
        accepted, token = verify_target_only(torch.tensor([3, 3]), q, gen)
        assert accepted == 0
        counts[token] += 1
    assert counts[3] == 0 and chi2_gof_pvalue(counts, q[0]) > 1e-3
    with pytest.raises(ValueError, match="shapes do not match"):
        verify_target_only(torch.tensor([1, 2]), torch.full((2, 4), 0.25))


def _simulate_greedy(p_table, q_table, block, n_tokens, gen, rule="target-only"):
    """As ``_simulate``, with the drafter proposing the argmax of its q (SGLang's DFlash drafts greedily)."""
    from specforge_dpace.evaluate import verify_target_only

    out: list[int] = []
    while len(out) < n_tokens:
        pos = len(out)
        drafted = q_table[pos : pos + block - 1].argmax(dim=-1)
        p = p_table[pos : pos + block]
        if rule == "target-only":
            accepted, nxt = verify_target_only(drafted, p, gen)
        else:  # "no-residual": on a rejection sample p itself, so x comes out too often -- lossy
            accepted, nxt = verify_target_only(drafted, p, gen)
            if accepted < len(drafted):
                nxt = int(torch.multinomial(p[accepted], 1, generator=gen))
        out.extend(drafted[:accepted].tolist() + [nxt])
    return out[:n_tokens]


def test_target_only_verification_of_greedy_proposals_is_lossless_per_position():
    vocab, block, n_pos, samples = 8, 3, 5, 3000
    gen = torch.Generator().manual_seed(6)
    p_table = _random_dist(gen, n_pos + block, vocab)
    q_table = _random_dist(gen, n_pos + block, vocab)
    counts = torch.zeros(n_pos, vocab)
    for _ in range(samples):
        seq = _simulate_greedy(p_table, q_table, block, n_pos, gen)
        counts[torch.arange(n_pos), torch.tensor(seq)] += 1
    assert min(chi2_gof_pvalue(counts[i], p_table[i]) for i in range(n_pos)) > 1e-3


def test_target_only_rule_without_the_residual_is_detected():
    vocab, block, n_pos, samples = 8, 3, 3, 3000
    gen = torch.Generator().manual_seed(7)
    p_table = _random_dist(gen, n_pos + block, vocab)
    q_table = _random_dist(gen, n_pos + block, vocab)
    counts = torch.zeros(n_pos, vocab)
    for _ in range(samples):
        seq = _simulate_greedy(p_table, q_table, block, n_pos, gen, rule="no-residual")
        counts[torch.arange(n_pos), torch.tensor(seq)] += 1
    assert min(chi2_gof_pvalue(counts[i], p_table[i]) for i in range(n_pos)) < 1e-6


def test_draft_sampling_values_are_checked():
    from specforge_dpace.evaluate._sampling import check_draft_sampling

    assert check_draft_sampling("greedy") == "greedy" and check_draft_sampling("sample") == "sample"
    for bad in ("argmax", None, "Greedy"):
        with pytest.raises(ValueError, match=r"draft_sampling=.* is invalid; accepted: 'sample' .* or 'greedy'"):
            check_draft_sampling(bad)
