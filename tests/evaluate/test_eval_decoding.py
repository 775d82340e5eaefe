"""Speculative decoding with a real tiny Qwen3 target and a real SpecForge DFlash draft:
greedy losslessness, tau arithmetic on hand-built cases, sampling losslessness (chi-square)."""

from __future__ import annotations

import pytest
import torch
from _eval_helpers import OracleDecoder, chi2_gof_pvalue

pytest.importorskip("specforge")

from specforge_dpace.evaluate import (  # noqa: E402
    DFlashDecoder,
    EvalConfig,
    context_features,
    evaluate_drafter,
    greedy_reference,
    tiny_draft,
    tiny_target,
)


def _prompts(n, vocab, seed=0, max_len=12):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_len + 1, (n,), generator=gen)
    return [torch.randint(0, vocab - 1, (int(n_),), generator=gen) for n_ in lengths]


@pytest.fixture(scope="module")
def pair64():
    target = tiny_target(vocab_size=96, hidden_size=32, num_hidden_layers=3, seed=0, dtype=torch.float64)
    draft = tiny_draft(target, num_hidden_layers=1, block_size=5, target_layer_ids=[0, 1], seed=1)
    return target, draft


def test_greedy_is_lossless_on_many_prompts(pair64):
    target, draft = pair64
    prompts = _prompts(24, 96, seed=0)
    result = evaluate_drafter(target, draft, prompts, EvalConfig(max_new_tokens=20, show_progress=False))
    for prompt, record in zip(prompts, result.per_prompt):
        assert record["output_ids"] == greedy_reference(target, prompt.tolist(), 20)
    assert result.overall["num_prompts"] == 24
    assert result.overall["completion_tokens"] == 24 * 20


def test_greedy_matches_hf_generate(pair64):
    target, draft = pair64
    prompts = _prompts(4, 96, seed=1)
    result = evaluate_drafter(target, draft, prompts, EvalConfig(max_new_tokens=16, show_progress=False))
    for prompt, record in zip(prompts, result.per_prompt):
        out = target.generate(
            prompt.unsqueeze(0),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=16,
            min_new_tokens=16,
            do_sample=False,
            pad_token_id=0,
        )
        assert record["output_ids"] == out[0, len(prompt) :].tolist()


def test_oracle_drafter_with_known_errors_is_lossless_and_counts_exactly(pair64):
    """Stand-in drafter (see OracleDecoder): the target's greedy continuation with slot
    ``c`` corrupted, so each verify step accepts exactly ``c - 1`` tokens (K - 1 if none)."""
    target, draft = pair64
    k = 5
    schedule = [None, 1, 3, None, 2, 4, None, 1]  # cycled; None = perfect block
    decoder = OracleDecoder(target, draft, block_size=k, corrupt_at=lambda s: schedule[s % len(schedule)])
    for prompt in _prompts(6, 96, seed=2):
        decoder.step = 0
        trace = decoder.decode(prompt.tolist(), 40)
        assert trace.output_ids == greedy_reference(target, prompt.tolist(), 40)
        slots = [schedule[s % len(schedule)] for s in range(len(trace.accepted))]
        expected = [(k - 1) if c is None else c - 1 for c in slots]
        assert trace.accepted == expected
        assert sum(trace.emitted) == 39


def test_perfect_oracle_gives_tau_equal_block_size(pair64):
    target, draft = pair64
    for k in (2, 4, 5):
        decoder = OracleDecoder(target, draft, block_size=k)
        trace = decoder.decode([3, 1, 4], 1 + 6 * k)
        assert trace.accepted == [k - 1] * 6 and trace.emitted == [k] * 6


def _forced_pair(agree: bool, block_size=4):
    """Real models whose greedy choices are forced through their weights: the target's final
    norm is zeroed (all logits 0, argmax token 0); the draft's final norm is zeroed too (it then
    also predicts 0: always agrees) or kept while the lm_head maps it to tokens 1/2 only (never 0:
    never agrees)."""
    target = tiny_target(vocab_size=64, seed=3)
    draft = tiny_draft(target, block_size=block_size, seed=4)
    with torch.no_grad():
        target.model.norm.weight.zero_()
        if agree:
            draft.norm.weight.zero_()
        else:
            u = torch.randn(target.config.hidden_size)
            target.lm_head.weight.zero_()
            target.lm_head.weight[1] = 10 * u
            target.lm_head.weight[2] = -10 * u
    return target, draft


@pytest.mark.parametrize("k", [2, 4, 7])
def test_always_agreeing_draft_gives_tau_equal_block_size(k):
    target, draft = _forced_pair(agree=True, block_size=k)
    config = EvalConfig(max_new_tokens=1 + 5 * k, show_progress=False)
    result = evaluate_drafter(target, draft, _prompts(3, 64, seed=5), config)
    o = result.overall
    assert o["tau"] == k and o["tau_mean_per_prompt"] == k
    assert o["accept_hist"] == [0] * (k - 1) + [15]
    assert o["accept_pos"] == [1.0] * (k - 1)
    assert o["verify_steps"] == 15


def test_never_agreeing_draft_gives_tau_one():
    target, draft = _forced_pair(agree=False, block_size=4)
    config = EvalConfig(max_new_tokens=11, show_progress=False)
    result = evaluate_drafter(target, draft, _prompts(3, 64, seed=6), config)
    o = result.overall
    assert o["tau"] == 1.0
    assert o["accept_hist"] == [30, 0, 0, 0]
    assert o["accept_pos"] == [0.0, 0.0, 0.0]
    assert all(r["output_ids"] == [0] * 11 for r in result.per_prompt)


def test_truncation_and_stop_tokens_bookkeeping():
    target, draft = _forced_pair(agree=True, block_size=4)
    # 1 prefill token + 9: steps emit 4, 4, then 1 (cut by max_new_tokens); the histogram still sees 3 full accepts
    result = evaluate_drafter(target, draft, [[5, 6]], EvalConfig(max_new_tokens=10, show_progress=False))
    r = result.per_prompt[0]
    assert r["completion_tokens"] == 10 and r["verify_steps"] == 3
    assert r["tau"] == pytest.approx(9 / 3) and r["accept_hist"] == [0, 0, 0, 3]
    # token 0 is the forced greedy choice: stopping on it ends at the prefill token
    config = EvalConfig(max_new_tokens=10, stop_token_ids=(0,), show_progress=False)
    stopped = evaluate_drafter(target, draft, [[5, 6]], config)
    r = stopped.per_prompt[0]
    assert r["output_ids"] == [0] and r["stopped"] and r["verify_steps"] == 0 and r["tau"] is None
    assert stopped.overall["tau"] is None


def test_draft_cache_matches_full_recompute(pair64):
    """The decoder keeps a draft KV cache of context keys/values; recomputing the draft over the
    whole context each step (target features from scratch) must give the same draft logits."""
    target, draft = pair64
    checked = []

    class Checking(DFlashDecoder):
        def _propose(self, draft_cache, new_features, tokens, generator):
            drafted, q = super()._propose(draft_cache, new_features, tokens, generator)
            start = len(tokens) - 1
            ids = torch.tensor([tokens[:-1]])
            feats = context_features(target(input_ids=ids, output_hidden_states=True).hidden_states, self.layer_ids)
            block = torch.full((1, self.block_size), self.mask_token_id)
            block[0, 0] = tokens[-1]
            hidden = draft(
                target_hidden=feats,
                noise_embedding=self.embed(block),
                position_ids=torch.arange(0, start + self.block_size).unsqueeze(0),
                is_causal=False,
            )
            reference = self.lm_head(hidden[:, 1:])[0].argmax(-1)
            checked.append(bool(torch.equal(reference, drafted)))
            return drafted, q

    trace = Checking(target, draft, block_size=5).decode([7, 8, 9, 10], 30)
    assert len(checked) == len(trace.accepted) > 5 and all(checked)


def _exact_marginals(target, prompt, temperature):
    """Exact distribution of the first three generated tokens' marginals (vocab^2 contexts)."""
    with torch.no_grad():
        vocab = target.config.vocab_size
        p0 = torch.softmax(target(input_ids=torch.tensor([prompt])).logits[0, -1].double() / temperature, -1)
        ctx1 = torch.tensor([prompt + [a] for a in range(vocab)])
        p1 = torch.softmax(target(input_ids=ctx1).logits[:, -1].double() / temperature, -1)  # [V, V]
        ctx2 = torch.tensor([prompt + [a, b] for a in range(vocab) for b in range(vocab)])
        p2 = torch.softmax(target(input_ids=ctx2).logits[:, -1].double() / temperature, -1).view(vocab, vocab, vocab)
    joint01 = p0[:, None] * p1
    return p0, joint01.sum(0), (joint01[..., None] * p2).sum((0, 1))


@pytest.mark.slow
def test_speculative_sampling_is_lossless_end_to_end():
    """Real target + real random draft on a 16-token vocabulary at temperature 0.8: the marginal
    of each of the first three generated tokens matches the target's exact marginal."""
    target = tiny_target(vocab_size=16, hidden_size=32, num_hidden_layers=2, seed=7)
    with torch.no_grad():
        target.lm_head.weight.mul_(4.0)  # peakier than a random init, so draft and target differ
    draft = tiny_draft(target, block_size=4, seed=8)
    prompt, temperature, samples = [3, 9, 1], 0.8, 1500
    decoder = DFlashDecoder(target, draft, block_size=4, temperature=temperature)
    counts = torch.zeros(3, 16)
    accepted = []
    for s in range(samples):
        trace = decoder.decode(prompt, 3, generator=torch.Generator().manual_seed(s))
        counts[torch.arange(3), torch.tensor(trace.output_ids)] += 1
        accepted.extend(trace.accepted)
    marginals = _exact_marginals(target, prompt, temperature)
    pvalues = [chi2_gof_pvalue(counts[i], marginals[i]) for i in range(3)]
    assert min(pvalues) > 1e-3, pvalues
    # both branches of the rule were exercised
    assert 0 in accepted and any(a > 0 for a in accepted)


def _exact_filtered_marginals(target, prompt, temperature, top_k, top_p):
    """Exact marginals of the first three tokens when each token is sampled from the temperature /
    top-k / top-p distribution (the filter applied in every one of the vocab^2 contexts)."""
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


@pytest.mark.slow
def test_top_k_top_p_sampling_is_lossless_end_to_end():
    """Speculative sampling with top-k and top-p on a real target + real random draft: each of the
    first three tokens follows the exact marginal of plain sampling from the filtered target, and so
    do samples of plain autoregressive sampling with the same filters; the unfiltered marginal is
    clearly rejected (the filters are applied, and the test has power)."""
    from specforge_dpace.evaluate import autoregressive_reference

    target = tiny_target(vocab_size=16, hidden_size=32, num_hidden_layers=2, seed=9)
    with torch.no_grad():
        target.lm_head.weight.mul_(4.0)
    draft = tiny_draft(target, block_size=4, seed=10)
    prompt, temperature, top_k, top_p, samples = [3, 9, 1], 0.9, 6, 0.85, 1500
    decoder = DFlashDecoder(target, draft, block_size=4, temperature=temperature, top_k=top_k, top_p=top_p)
    spec, plain = torch.zeros(3, 16), torch.zeros(3, 16)
    accepted = []
    for s in range(samples):
        trace = decoder.decode(prompt, 3, generator=torch.Generator().manual_seed(s))
        spec[torch.arange(3), torch.tensor(trace.output_ids)] += 1
        accepted.extend(trace.accepted)
        ref = autoregressive_reference(
            target,
            prompt,
            3,
            temperature=temperature,
            generator=torch.Generator().manual_seed(10_000 + s),
            top_k=top_k,
            top_p=top_p,
        )
        plain[torch.arange(3), torch.tensor(ref)] += 1
    exact = _exact_filtered_marginals(target, prompt, temperature, top_k, top_p)
    assert min(chi2_gof_pvalue(spec[i], exact[i]) for i in range(3)) > 1e-3
    assert min(chi2_gof_pvalue(plain[i], exact[i]) for i in range(3)) > 1e-3
    unfiltered = _exact_marginals(target, prompt, temperature)
    assert max(chi2_gof_pvalue(spec[i], unfiltered[i]) for i in range(3)) < 1e-6
    assert 0 in accepted and any(a > 0 for a in accepted)


def test_top_k_one_at_temperature_is_greedy_and_seeds_are_per_prompt(pair64):
    """top_k = 1 leaves one token to sample, so sampling at any temperature is greedy decoding: the
    filter reaches the first token, the drafts and the verification. ``prompt_seeds`` are used as given."""
    target, draft = pair64
    prompts = _prompts(3, 96, seed=11)
    greedy = evaluate_drafter(target, draft, prompts, EvalConfig(max_new_tokens=12, show_progress=False))
    config = EvalConfig(temperature=1.5, top_k=1, max_new_tokens=12, show_progress=False, prompt_seeds=[7, 3, 5])
    sampled = evaluate_drafter(target, draft, prompts, config)
    for g, r in zip(greedy.per_prompt, sampled.per_prompt):
        assert r["output_ids"] == g["output_ids"] and r["accept_hist"] == g["accept_hist"]
    assert [r["seed"] for r in sampled.per_prompt] == [7, 3, 5]
    assert sampled.overall["top_k"] == 1 and sampled.overall["top_p"] == 1.0
    with pytest.raises(ValueError, match="prompt_seeds has 2 seeds for 3 prompts"):
        evaluate_drafter(target, draft, prompts, EvalConfig(prompt_seeds=[1, 2], show_progress=False))


def test_both_tau_conventions_are_reported_and_labelled():
    """tau per verify step leaves the prefill token out; SGLang's completion_tokens / spec_verify_ct
    counts it. An always-agreeing draft, K = 4, 10 tokens: 1 prefill + steps of 4, 4, 1 (cut)."""
    target, draft = _forced_pair(agree=True, block_size=4)
    result = evaluate_drafter(target, draft, [[5, 6], [7]], EvalConfig(max_new_tokens=10, show_progress=False))
    for r in result.per_prompt:
        assert r["tau"] == pytest.approx(9 / 3) and r["tau_sglang"] == pytest.approx(10 / 3)
    o = result.overall
    assert o["tau"] == pytest.approx(18 / 6) and o["tau_mean_per_prompt"] == pytest.approx(3.0)
    assert o["tau_sglang"] == pytest.approx(20 / 6) and o["tau_sglang_mean_per_prompt"] == pytest.approx(10 / 3)
    table = result.table()
    assert "tau (per verify step, prefill excluded)" in table
    assert "tau (SGLang convention: completion_tokens / spec_verify_ct, prefill token included)" in table
    assert "3.333" in table and "3.000" in table


def test_bad_prompts_and_settings_are_refused(pair64):
    target, draft = pair64
    with pytest.raises(ValueError, match=r"token ids \[96\] outside the target vocabulary \[0, 95\]"):
        evaluate_drafter(target, draft, [[1, 96]], EvalConfig(show_progress=False))
    for bad, pattern in [
        (dict(temperature=-1.0), "temperature=-1.0 is invalid"),
        (dict(max_new_tokens=0), "max_new_tokens=0 is invalid"),
        (dict(block_size=1), "block_size=1 is invalid"),
        (dict(top_k=0), "top_k=0 is invalid"),
        (dict(top_p=0.0), "top_p=0.0 is invalid"),
    ]:
        with pytest.raises(ValueError, match=pattern):
            evaluate_drafter(target, draft, [[1, 2]], EvalConfig(show_progress=False, **bad))


def test_result_dict_and_table(pair64):
    target, draft = pair64
    result = evaluate_drafter(target, draft, [[1, 2, 3]], EvalConfig(max_new_tokens=8, show_progress=False))
    data = result.to_dict()
    for key in (
        "tau",
        "tau_mean_per_prompt",
        "accept_hist",
        "accept_pos",
        "completion_tokens",
        "verify_steps",
        "tokens_per_s",
        "draft_s",
        "verify_s",
        "num_prompts",
    ):
        assert key in data["overall"], key
    assert len(data["overall"]["accept_hist"]) == 5 and len(data["overall"]["accept_pos"]) == 4
    # identity: mean accepted length = sum of the per-slot acceptance rates
    assert sum(data["overall"]["accept_pos"]) == pytest.approx(data["overall"]["mean_accepted"])
    table = result.table()
    assert "tau" in table and "accepted-length histogram" in table


def test_baseline_timing_and_speedup(pair64):
    target, draft = pair64
    config = EvalConfig(max_new_tokens=12, show_progress=False, baseline=True)
    result = evaluate_drafter(target, draft, [[1, 2, 3], [4]], config)
    assert all(r["baseline_tokens"] == r["completion_tokens"] == 12 and r["baseline_s"] > 0 for r in result.per_prompt)
    o = result.overall
    assert o["speedup"] == pytest.approx(o["tokens_per_s"] / o["baseline_tokens_per_s"])
    assert "speed-up" in result.table()
