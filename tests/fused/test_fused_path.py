"""The fused objective path equals the plain path (autograd through lm_head + CE + chunk_terms)."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from specforge_dpace.fused import (
    LOGITS_BUDGET_BYTES,
    MIN_TOKENS,
    auto_sub_chunk_tokens,
    blocks_per_sub_chunk,
    fused_objective_terms,
    supports_fused,
)
from specforge_dpace.losses import HARD_NAMES, BlockObjective, acceptance_terms, build_loss

COMPOSITES = (
    "dflash(gamma=7)",
    "dflash(gamma=10) + 0.3*first-error-focal + 40*chain",
    "dpace(alpha=0.3) + 0.3*first-error-focal",
    "auf + 2*dpace-continuation-value-only(alpha=0.1) + chain",
)
SPECS = HARD_NAMES + COMPOSITES


def plain_reference(objective, hidden, lm_head, target_ids, weight_mask):
    """The plain path: full logits, autograd through the head, cross-entropy and chunk_terms."""
    batch, blocks, slots, width = hidden.shape
    logits = lm_head(hidden.reshape(batch, blocks * slots, width)).reshape(batch, blocks, slots, -1)
    nlq = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target_ids.reshape(-1), reduction="none")
    nlq = nlq.reshape_as(target_ids)
    with torch.no_grad():
        correct = logits.argmax(dim=-1) == target_ids
        correct_num = (correct & (weight_mask > 0.5)).sum().float()
        metrics = acceptance_terms(nlq, weight_mask, correct)
    num, den = objective.chunk_terms(nlq, weight_mask, correct)
    return num, den, correct_num, weight_mask.sum(), metrics


def make_batch(dtype=torch.float32, seed=0, batch=2, blocks=6, slots=8, width=32, vocab=97, bias=True):
    """Random chunk with masked slots, a fully masked block and ~60% of labels at the argmax."""
    gen = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(width, vocab, bias=bias).requires_grad_(False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(vocab, width, generator=gen) * 0.5)
        if bias:
            head.bias.copy_(torch.randn(vocab, generator=gen) * 0.1)
    head = head.to(dtype)
    hidden = torch.randn(batch, blocks, slots, width, generator=gen).to(dtype).requires_grad_(True)
    target = torch.randint(0, vocab, (batch, blocks, slots), generator=gen)
    with torch.no_grad():
        argmax = head(hidden).argmax(dim=-1)
    target = torch.where(torch.rand(batch, blocks, slots, generator=gen) < 0.6, argmax, target)
    mask = (torch.rand(batch, blocks, slots, generator=gen) > 0.25).float()
    mask[..., 0] = 0.0  # the anchor slot is never supervised
    mask[0, 1] = 0.0  # a fully masked block
    mask[1, 2, 3:5] = 0.0  # masked slots in the middle of a block
    return head, hidden, target, mask


def rel_err(a, b):
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def run_both(spec, dtype=torch.float32, sub_chunk_tokens=None, **batch_kwargs):
    objective = build_loss(spec)
    head, hidden, target, mask = make_batch(dtype, **batch_kwargs)
    ref = plain_reference(objective, hidden, head, target, mask)
    fused = fused_objective_terms(objective, hidden, head, target, mask, sub_chunk_tokens=sub_chunk_tokens)
    # random cotangents on every term: checks d num_t / d hidden for each t, not only one combination
    cot = torch.rand(ref[0].shape[0], generator=torch.Generator().manual_seed(7)) + 0.5
    (ref_grad,) = torch.autograd.grad((ref[0].float() * cot).sum(), hidden)
    (fused_grad,) = torch.autograd.grad((fused.num.float() * cot).sum(), hidden)
    return objective, ref, fused, ref_grad, fused_grad


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("sub_chunk_tokens", [None, 8, 24])
def test_fp32_equals_plain_path(spec, sub_chunk_tokens):
    objective, ref, fused, ref_grad, fused_grad = run_both(spec, sub_chunk_tokens=sub_chunk_tokens)
    num, den, correct_num, accuracy_den, metrics = ref
    assert fused.num.shape == num.shape == (objective.num_terms,)
    assert rel_err(fused.num.detach(), num.detach()) <= 1e-5
    assert rel_err(fused.den, den) <= 1e-6 or float(den.abs().sum()) == 0 == float(fused.den.abs().sum())
    assert not fused.den.requires_grad
    assert float(fused.correct_num) == float(correct_num) and float(fused.accuracy_den) == float(accuracy_den)
    for key, (m_num, m_den) in metrics.items():
        f_num, f_den = fused.metric_terms[key]
        assert torch.allclose(f_num, m_num, rtol=1e-5, atol=1e-6), key
        assert torch.equal(f_den, m_den), key
    assert float(fused_grad.abs().sum()) > 0
    assert rel_err(fused_grad, ref_grad) <= 1e-5
    loss_ref = objective.reduce(num, den, 2).loss
    loss_fused = objective.reduce(fused.num, fused.den, 2).loss
    loss_ref, loss_fused = loss_ref.detach(), loss_fused.detach()
    assert abs(float(loss_fused) - float(loss_ref)) <= 1e-5 * max(1.0, abs(float(loss_ref)))


@pytest.mark.parametrize("spec", ["dflash", "dpace", "first-error-focal", "chain", COMPOSITES[1]])
def test_bf16_within_one_percent(spec):
    objective, ref, fused, ref_grad, fused_grad = run_both(spec, dtype=torch.bfloat16, sub_chunk_tokens=16)
    assert fused_grad.dtype == torch.bfloat16
    assert rel_err(fused.num.detach(), ref[0].detach()) <= 1e-2
    assert rel_err(fused_grad, ref_grad) <= 1e-2


def test_gradient_zero_on_masked_slots_and_blocks():
    _, _, _, ref_grad, fused_grad = run_both("dpace")
    _, _, _, mask = make_batch()
    assert float(fused_grad[0, 1].abs().max()) == 0.0  # fully masked block
    dead = (mask == 0).unsqueeze(-1).expand_as(fused_grad)
    assert float(fused_grad[dead].abs().max()) == 0.0
    assert torch.equal(ref_grad[dead], torch.zeros_like(ref_grad[dead]))


def test_fully_masked_chunk_gives_zero_terms():
    objective = build_loss("dflash(gamma=10) + 0.3*first-error-focal + 40*chain")
    head, hidden, target, mask = make_batch()
    fused = fused_objective_terms(objective, hidden, head, target, torch.zeros_like(mask))
    assert torch.equal(fused.num.detach(), torch.zeros(3)) and torch.equal(fused.den, torch.zeros(3))
    (grad,) = torch.autograd.grad(fused.num.sum(), hidden)
    assert float(grad.abs().max()) == 0.0


def test_no_logits_saved_for_backward():
    """The graph keeps only g [T,B,N,K] and d l / d hidden [B,N,K,H], never [tokens, V]."""
    objective = build_loss("dpace + chain")
    head, hidden, target, mask = make_batch(vocab=4096)
    fused = fused_objective_terms(objective, hidden, head, target, mask)
    saved = fused.num.grad_fn.saved_tensors
    numel = sum(t.numel() for t in saved)
    assert numel == hidden.numel() + 2 * mask.numel()
    assert numel < hidden.shape[0] * hidden.shape[1] * hidden.shape[2] * 4096


def test_without_grad_only_values():
    objective = build_loss("dpace")
    head, hidden, target, mask = make_batch()
    with torch.no_grad():
        fused = fused_objective_terms(objective, hidden, head, target, mask)
        ref = plain_reference(objective, hidden, head, target, mask)
    assert fused.num.grad_fn is None
    assert rel_err(fused.num, ref[0]) <= 1e-5


def test_sub_chunk_sizes_agree_bitwise_on_values():
    objective = build_loss("auf")
    head, hidden, target, mask = make_batch()
    one = fused_objective_terms(objective, hidden, head, target, mask, sub_chunk_tokens=8)
    many = fused_objective_terms(objective, hidden, head, target, mask, sub_chunk_tokens=10_000)
    assert torch.equal(one.correct, many.correct)
    assert torch.allclose(one.neg_log_q, many.neg_log_q, rtol=1e-6, atol=1e-6)


def test_auto_sub_chunk_size_from_vocab():
    small, large = auto_sub_chunk_tokens(8192, 16), auto_sub_chunk_tokens(151936, 16)
    assert small % 16 == 0 and large % 16 == 0 and small > large >= 16
    assert small * 8192 * 4 <= LOGITS_BUDGET_BYTES["cpu"]  # small vocabularies: the byte budget decides
    assert large == MIN_TOKENS["cpu"]  # large ones: the floor that keeps the matrix product efficient
    assert auto_sub_chunk_tokens(151936, 16, "cuda") > large
    assert auto_sub_chunk_tokens(10**9, 1000) == 1000  # never less than one block
    assert blocks_per_sub_chunk(32000, 16, 40) == 2  # override rounds down to whole blocks
    assert blocks_per_sub_chunk(32000, 16, 3) == 1  # but at least one block
    for bad in (0, -5, 2.5, True, "64"):
        with pytest.raises(ValueError, match="sub_chunk_tokens must be a positive int"):
            blocks_per_sub_chunk(32000, 16, bad)


def test_input_errors_name_the_shapes():
    objective = build_loss("dflash")
    head, hidden, target, mask = make_batch()
    with pytest.raises(ValueError, match=r"weight_mask shape \(2, 6\)"):
        fused_objective_terms(objective, hidden, head, target, mask[..., 0])
    with pytest.raises(ValueError, match="hidden must be"):
        fused_objective_terms(objective, hidden[0], head, target, mask)
    trainable = torch.nn.Linear(32, 97)
    with pytest.raises(ValueError, match="requires grad"):
        fused_objective_terms(objective, hidden, trainable, target, mask)
    with pytest.raises(TypeError, match="Linear-like"):
        fused_objective_terms(objective, hidden, torch.nn.ReLU(), target, mask)


class _ThirdPartyLoss(BlockObjective):
    """A third-party objective with values only (no analytic slot gradient)."""

    name = "third-party-squared"
    normalization = "sum"

    def _terms(self, nlq, mask, correct):
        return (nlq.square() * mask).sum(), mask.sum()


class _NoSlotGrad:
    """Not even a BlockObjective: only chunk_terms."""

    num_terms = 1

    def spec(self):
        return "bare-object"

    def chunk_terms(self, nlq, mask, correct=None):
        return (nlq * mask).sum().reshape(1), mask.sum().reshape(1)


@pytest.mark.parametrize("objective", [_ThirdPartyLoss(), _NoSlotGrad()])
def test_fallback_for_objective_without_slot_grad(objective, caplog):
    head, hidden, target, mask = make_batch()
    with caplog.at_level(logging.WARNING, logger="specforge_dpace"):
        assert supports_fused(objective) is False
        assert supports_fused(objective) is False
        fused = fused_objective_terms(objective, hidden, head, target, mask, sub_chunk_tokens=16)
    lines = [r for r in caplog.records if "falls back to the plain path" in r.getMessage()]
    assert len(lines) <= 1  # logged once per objective spec (zero if an earlier test logged it)
    ref = plain_reference(objective, hidden, head, target, mask)
    (ref_grad,) = torch.autograd.grad(ref[0].sum(), hidden)
    (fused_grad,) = torch.autograd.grad(fused.num.sum(), hidden)
    assert rel_err(fused.num.detach(), ref[0].detach()) <= 1e-5
    assert rel_err(fused_grad, ref_grad) <= 1e-5


def test_fallback_logs_exactly_once(caplog):
    class Fresh(_ThirdPartyLoss):
        name = "third-party-fresh-name"

    with caplog.at_level(logging.WARNING, logger="specforge_dpace"):
        for _ in range(3):
            assert not supports_fused(Fresh())
    assert sum("third-party-fresh-name" in r.getMessage() for r in caplog.records) == 1


def test_every_registered_objective_supports_fused():
    for spec in SPECS:
        assert supports_fused(build_loss(spec)), spec


def test_matches_upstream_specforge_chunk_function():
    """Against SpecForge 0.2.0's own ``_dflash_objective_chunk_terms`` (dpace and decayed dflash)."""
    pytest.importorskip("specforge")
    import types

    from specforge.algorithms.common.dflash_family_model import OnlineDFlashModel

    head, hidden, target, mask = make_batch(slots=16, blocks=3)
    for loss_type, spec, gamma in (("dpace", "dpace(alpha=0.3)", None), ("dflash", "dflash(gamma=7)", 7.0)):
        host = types.SimpleNamespace(
            lm_head=head, loss_type=loss_type, block_size=16, loss_decay_gamma=gamma, dpace_alpha=0.3
        )
        host._dpace_weight = types.MethodType(OnlineDFlashModel._dpace_weight, host)
        num, den, correct_num, acc_den = OnlineDFlashModel._dflash_objective_chunk_terms(host, hidden, target, mask)
        fused = fused_objective_terms(build_loss(spec), hidden, head, target, mask, sub_chunk_tokens=16)
        (ref_grad,) = torch.autograd.grad(num, hidden)
        (fused_grad,) = torch.autograd.grad(fused.num.sum(), hidden)
        assert rel_err(fused.num.detach(), num.detach().reshape(1)) <= 1e-5
        assert float(fused.den) == pytest.approx(float(den), rel=1e-6)
        assert float(fused.correct_num) == float(correct_num) and float(fused.accuracy_den) == float(acc_den)
        assert rel_err(fused_grad, ref_grad) <= 1e-5


def test_argmax_ties_resolve_like_the_plain_path():
    """Duplicate head rows give exact logit ties; correctness must use the first maximal index, as argmax does."""
    objective = build_loss("first-error-focal")
    head, hidden, target, mask = make_batch(bias=False)
    with torch.no_grad():
        head.weight[5] = head.weight[3]
        head.weight[3:6] *= 0  # rows 3..5 tie at 0 ...
        head.weight[3:6] += 10 * hidden.detach().reshape(-1, hidden.shape[-1]).mean(0)  # ... and often win
    target = torch.where(target % 2 == 0, torch.full_like(target, 5), torch.full_like(target, 3))
    ref = plain_reference(objective, hidden, head, target, mask)
    fused = fused_objective_terms(objective, hidden, head, target, mask, sub_chunk_tokens=16)
    assert 0 < float(fused.correct_num) < float(fused.accuracy_den)
    assert float(fused.correct_num) == float(ref[2])
