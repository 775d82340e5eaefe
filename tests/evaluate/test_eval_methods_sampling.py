"""Lossless speculative sampling end to end for every method and draft-sampling mode: a real tiny
target with a real random DFlash, Domino or DSpark draft, temperature > 0; the marginal of each of the
first three generated tokens matches the target's exact marginal (chi-square), as
``test_eval_decoding.test_speculative_sampling_is_lossless_end_to_end`` does for DFlash with sampled
proposals.  Under both conventions: ``specforge-0.2.0`` (the classes' block sampling) and ``sglang-0.5.23``
(Domino's GRU rollout, greedy, here with a candidate pool smaller than the vocabulary; DSpark's gamma
proposals from the anchor row, sampled or greedy).  ``greedy`` = argmax proposals, target-only verification."""

from __future__ import annotations

import pytest
import torch
from _eval_helpers import chi2_gof_pvalue, exact_marginals

pytest.importorskip("specforge")

from specforge_dpace.evaluate import DFlashDecoder, tiny_draft, tiny_target  # noqa: E402

SF, SG = "specforge-0.2.0", "sglang-0.5.23"
CASES = [
    # (method, head, draft_sampling, top_k, top_p, convention)
    ("dflash", None, "greedy", -1, 1.0, SG),
    ("domino", None, "sample", -1, 1.0, SF),
    ("domino", {"shift_label": True}, "greedy", -1, 1.0, SF),
    ("dspark", {"markov_head_type": "rnn"}, "sample", 6, 0.9, SF),
    ("dspark", {"markov_head_type": "vanilla"}, "greedy", 6, 0.9, SF),
    ("domino", {"pure_draft_prefix_len": 1, "shift_label": True}, "greedy", -1, 1.0, SG),
    ("dspark", {"markov_head_type": "gated"}, "sample", 6, 0.9, SG),
    ("dspark", {"markov_head_type": "rnn"}, "greedy", -1, 1.0, SG),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    "method, head, draft_sampling, top_k, top_p, convention",
    CASES,
    ids=[f"{c[0]}-{c[2]}-k{c[3]}-{c[5]}" for c in CASES],
)
def test_sampling_is_lossless_for_every_method_and_mode(method, head, draft_sampling, top_k, top_p, convention):
    target = tiny_target(vocab_size=16, hidden_size=32, num_hidden_layers=2, seed=7)
    with torch.no_grad():
        target.lm_head.weight.mul_(4.0)  # peakier than a random init, so draft and target differ
    draft = tiny_draft(target, block_size=4, seed=8, method=method, head=head)
    with torch.no_grad():
        for name, param in draft.named_parameters():
            if name.startswith(("embed_proj.", "markov_head.")):
                param.mul_(8.0)  # heads that change the proposals
    prompt, temperature, samples = [3, 9, 1], 0.8, 1200
    decoder = DFlashDecoder(
        target,
        draft,
        block_size=4,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        draft_sampling=draft_sampling,
        convention=convention,
        candidate_pool=6 if convention == SG and method == "domino" else None,
    )
    counts = torch.zeros(3, 16)
    accepted = []
    for s in range(samples):
        trace = decoder.decode(prompt, 3, generator=torch.Generator().manual_seed(s))
        counts[torch.arange(3), torch.tensor(trace.output_ids)] += 1
        accepted.extend(trace.accepted)
    marginals = exact_marginals(target, prompt, temperature, top_k, top_p)
    pvalues = [chi2_gof_pvalue(counts[i], marginals[i]) for i in range(3)]
    assert min(pvalues) > 1e-3, pvalues
    assert 0 in accepted and any(a > 0 for a in accepted)  # both branches of the rule were exercised
