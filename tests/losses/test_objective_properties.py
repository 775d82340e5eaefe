"""Chunk invariance, composites, the gradient facts of DESIGN.md section 3, and numerics."""

from __future__ import annotations

import pytest
import torch

from specforge_dpace.losses import (
    HARD_NAMES,
    CompositeObjective,
    acceptance_terms,
    block_loss,
    build_loss,
    dpace_weights,
)

THREE_INTERVENTIONS = "dflash(gamma=10) + 0.3*first-error-focal + 40*chain"
SPECS = [*HARD_NAMES, "dflash(gamma=7)", THREE_INTERVENTIONS, "dpace(alpha=0.3) + 0.3*first-error-focal"]


def case(B=3, N=10, K=16, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    nlq = (torch.rand(B, N, K, generator=gen, dtype=torch.float64) * 4).to(dtype).requires_grad_(True)
    mask = (torch.rand(B, N, K, generator=gen) > 0.2).to(dtype)
    mask[..., 0] = 0
    mask[1, 2] = 0
    correct = torch.rand(B, N, K, generator=gen) > 0.3
    return nlq, mask, correct


def chunked_loss(objective, nlq, mask, correct, chunk, B):
    num = den = 0
    for start in range(0, nlq.shape[1], chunk):
        sl = slice(start, start + chunk)
        n, d = objective.chunk_terms(nlq[:, sl], mask[:, sl], correct[:, sl])
        num, den = num + n, den + d
    return objective.reduce(num, den, B).loss


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("chunk", [1, 3, 7])
def test_chunk_invariance_of_value_and_gradient(spec, chunk):
    objective = build_loss(spec)
    nlq, mask, correct = case()
    whole = objective.reduce(*objective.chunk_terms(nlq, mask, correct), 3).loss
    (g_whole,) = torch.autograd.grad(whole, nlq)
    parts = chunked_loss(objective, nlq, mask, correct, chunk, 3)
    (g_parts,) = torch.autograd.grad(parts, nlq)
    torch.testing.assert_close(parts, whole, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_parts, g_whole, rtol=1e-12, atol=1e-14)


def test_composite_equals_weighted_sum_of_its_parts():
    nlq, mask, correct = case(seed=3)
    composite = build_loss(THREE_INTERVENTIONS)
    assert isinstance(composite, CompositeObjective)
    value = composite.reduce(*composite.chunk_terms(nlq, mask, correct), 3)
    expected = (
        block_loss("dflash(gamma=10)", nlq, mask, batch_size=3)
        + 0.3 * block_loss("first-error-focal", nlq, mask, batch_size=3, correct=correct)
        + 40 * block_loss("chain", nlq, mask, batch_size=3)
    )
    torch.testing.assert_close(value.loss, expected, rtol=1e-12, atol=1e-12)
    g1 = torch.autograd.grad(value.loss, nlq)[0]
    g2 = torch.autograd.grad(expected, nlq)[0]
    torch.testing.assert_close(g1, g2)
    # what SpecForge sees: numerator / denominator == loss, denominator = first term's denominator
    torch.testing.assert_close(value.numerator / value.denominator, value.loss)
    assert value.denominator.item() == pytest.approx(
        float((mask * torch.exp(-(torch.arange(16) - 1).clamp(min=0) / 10.0)).sum())
    )
    assert set(value.parts) == {"dflash(gamma=10)", "first-error-focal", "chain"}


def test_single_term_reports_specforge_pair_exactly():
    nlq, mask, correct = case(seed=4)
    dflash = build_loss("dflash")
    value = dflash.reduce(*dflash.chunk_terms(nlq, mask, correct), 3)
    assert value.denominator.item() == mask.sum().item()
    dpace = build_loss("dpace")
    value = dpace.reduce(*dpace.chunk_terms(nlq, mask, correct), 3)
    assert value.denominator.item() == 3.0  # D-PACE normalizes by the number of sequences


def surrogate(nlq, mask):
    """Expected accepted length under independence, sum_k prod_{i<=k} q_i (with grad)."""
    q = torch.where(mask > 0, torch.exp(-nlq), torch.ones_like(nlq))
    return (torch.cumprod(q, dim=-1) * mask).sum()


def test_dpace_alpha0_is_the_gradient_of_the_surrogate():
    nlq, mask, _ = case(seed=5)
    (grad,) = torch.autograd.grad(surrogate(nlq, mask), nlq)
    # d E / d log q_j = -d E / d l_j = W_j at alpha = 0
    weights = dpace_weights(nlq, mask, 0.0, "full") * mask
    torch.testing.assert_close(-grad, weights, rtol=1e-12, atol=1e-15)


def test_chain_gradient_is_dpace_alpha0_weight_over_k_minus_1():
    nlq, mask, _ = case(seed=6)
    K = nlq.shape[-1]
    chain = build_loss("chain")
    num, _ = chain.chunk_terms(nlq, mask)
    (grad,) = torch.autograd.grad(num.sum(), nlq)
    torch.testing.assert_close(grad, dpace_weights(nlq, mask, 0.0, "full") * mask / (K - 1), rtol=1e-12, atol=1e-15)


def test_alpha1_weights_are_linear_not_uniform():
    nlq, mask, _ = case(seed=7)
    weights = dpace_weights(nlq, mask, 1.0, "full")
    remaining = torch.flip(torch.cumsum(torch.flip(mask, [-1]), -1), [-1])  # valid slots at or after k
    torch.testing.assert_close(weights, remaining)
    assert len(set(weights[0, 0][mask[0, 0] > 0].tolist())) > 1


def test_detach_semantics():
    """D-PACE weights and first-error positions are detached; the chain term is not."""
    nlq, mask, correct = case(seed=8)
    dpace = build_loss("dpace")
    num, _ = dpace.chunk_terms(nlq, mask)
    (grad,) = torch.autograd.grad(num, nlq)
    # gradient is exactly the (detached) weight, no derivative through the weights themselves
    torch.testing.assert_close(grad, dpace_weights(nlq, mask, 0.5, "full") * mask)
    chain = build_loss("chain")
    num, _ = chain.chunk_terms(nlq, mask)
    assert num.requires_grad
    focal = build_loss("first-error-focal")
    num, _ = focal.chunk_terms(nlq, mask, correct)
    (grad,) = torch.autograd.grad(num, nlq)
    assert set(grad.unique().tolist()) <= {0.0, 1.0}


def test_no_underflow_with_tiny_probabilities():
    """16 slots of q = 1e-4: raw products would underflow to exactly 0 in fp32."""
    K = 16
    nlq = torch.full((1, 1, K), -torch.log(torch.tensor(1e-4)).item(), requires_grad=True)
    mask = torch.ones(1, 1, K)
    mask[..., 0] = 0
    assert torch.prod(torch.full((K,), 1e-4)) == 0  # the hazard is real in fp32
    for spec in ("dpace", "dpace-cumulative-confidence-only", "dpace-continuation-value-only"):
        weights = dpace_weights(
            nlq, mask, 0.5, {"dpace": "full"}.get(spec, "prefix" if "cumulative" in spec else "continuation")
        )
        assert (weights[..., 1:] > 0).all(), spec
        loss = block_loss(spec, nlq, mask, batch_size=1)
        (grad,) = torch.autograd.grad(loss, nlq)
        assert torch.isfinite(loss) and torch.isfinite(grad).all() and (grad[..., 1:] > 0).all()
    chain = block_loss("chain", nlq, mask, batch_size=1)
    (grad,) = torch.autograd.grad(chain, nlq)
    assert torch.isfinite(grad).all()
    assert chain.item() < 0 and grad[0, 0, 1] > 0  # log-space cumsum keeps the leading terms alive


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_accumulate_in_fp32(dtype):
    nlq64, mask, correct = case(seed=9, dtype=torch.float64)
    low = nlq64.detach().to(dtype).requires_grad_(True)
    ref = nlq64.detach().to(dtype).double().requires_grad_(True)
    for spec in SPECS:
        got = block_loss(spec, low, mask.to(dtype), batch_size=3, correct=correct)
        want = block_loss(spec, ref, mask, batch_size=3, correct=correct)
        assert got.dtype == torch.float32, spec
        assert got.item() == pytest.approx(want.item(), rel=1e-5, abs=1e-6), spec


def test_acceptance_metrics_on_hand_built_blocks():
    K = 5
    nlq = torch.zeros(1, 3, K)  # q = 1 everywhere
    mask = torch.ones(1, 3, K)
    mask[..., 0] = 0
    mask[0, 2] = 0  # fully masked block: not counted
    correct = torch.tensor([[[True, True, True, True, True], [True, True, False, True, True], [False] * K]])
    terms = acceptance_terms(nlq, mask, correct)
    tau_num, tau_den = terms["sim_tau"]
    assert tau_den.item() == 2
    assert tau_num.item() == (1 + 4) + (1 + 1)  # block 0 accepts all 4, block 1 accepts 1
    sur_num, sur_den = terms["surrogate"]
    assert sur_num.item() == 8.0 and sur_den.item() == 2  # q = 1: every valid slot adds 1
    pos_num, pos_den = terms["accept_pos"]
    assert pos_den.tolist() == [0, 2, 2, 2, 2]
    assert pos_num.tolist() == [0, 2, 1, 1, 1]


def test_masked_slot_in_the_middle_is_a_noop_for_acceptance():
    nlq = torch.zeros(1, 1, 4)
    mask = torch.tensor([[[0.0, 1.0, 0.0, 1.0]]])
    correct = torch.tensor([[[False, True, False, True]]])
    tau_num, tau_den = acceptance_terms(nlq, mask, correct)["sim_tau"]
    assert (tau_num / tau_den).item() == 3.0  # both valid slots accepted; the masked one is skipped


@pytest.mark.parametrize("spec", [*HARD_NAMES, "dflash(gamma=7)"])
def test_specforge_cross_microbatch_normalization_is_exact_for_single_terms(spec):
    """SpecForge back-propagates each micro-batch's numerator and divides by the summed denominators
    (accumulation steps and ranks): for one objective that equals the loss of the union batch."""
    objective = build_loss(spec)
    a = case(B=2, seed=21)
    b = case(B=3, seed=22)
    reported = [objective.reduce(*objective.chunk_terms(*mb), mb[0].shape[0]) for mb in (a, b)]
    trainer_loss = sum(r.numerator for r in reported) / sum(r.denominator for r in reported)
    union = [torch.cat([x, y]) for x, y in zip(a, b)]
    union_loss = objective.reduce(*objective.chunk_terms(*union), 5).loss
    torch.testing.assert_close(trainer_loss, union_loss, rtol=1e-12, atol=1e-12)
