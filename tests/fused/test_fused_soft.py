"""Soft-label objectives on the fused path equal the plain path (hooks/_blocks.objective_chunk_terms:
autograd through lm_head, the target logits and the soft statistics)."""

from __future__ import annotations

import logging

import pytest
import torch
from test_fused_path import make_batch, rel_err

from specforge_dpace.fused import fused_objective_terms, supports_fused
from specforge_dpace.fused._soft import SCRATCH_SHARE, SOFT_BUFFERS, SoftPass, soft_plan
from specforge_dpace.hooks._blocks import objective_chunk_terms
from specforge_dpace.hooks._fused_bridge import fused_totals
from specforge_dpace.losses import HARD_NAMES, SOFT_NAMES, SoftObjective, build_loss

TWINS = tuple(f"soft-{name}" for name in HARD_NAMES)
MIXED = (
    "dpace + 0.5*lk-lambda",  # nlq + la + kl, 1 + 2K numerator entries: three buffers
    "kl(temperature=0.5) + tv",  # two temperatures
    "lk-lambda(per_token=true)",  # la + kl summed in the forward pass (one entry)
    "lk-lambda(eta=1,gamma=7)",
    "lk-alpha(temperature=2)",
    "dpace + lk-alpha(temperature=2)",  # nlq at T = 1 beside log alpha at T = 2
    "soft-dpace(alpha=0.3,temperature=0.7) + 0.3*soft-first-error-focal",
    "chain + 0.2*tv",
    "dpace + kl",  # kl in the logits buffer, cross-entropy beside it
    "lk-alpha + soft-dpace",  # one direction, two numerator entries
    # the extended pass: Renyi-1/2, top-k KL, cross-entropy on the target's argmax
    "soft-dpace(divergence=renyi-half,alpha=0.3)",
    "dpace(labels=target)",
    "first-error-focal(labels=target) + 0.5*topk-kl(k=3)",
    "renyi-half(temperature=0.5) + dpace",
    "lk-lambda + renyi-half + chain(labels=target)",
    "topk-kl(k=2,temperature=0.7) + kl(temperature=0.7)",
)
SPECS = SOFT_NAMES + TWINS + MIXED


def target_states(hidden, seed=3, spread=0.7):
    """The target's hidden states: close to the drafter's (alpha neither 0 nor 1)."""
    gen = torch.Generator().manual_seed(seed)
    return hidden.detach() + spread * torch.randn(hidden.shape, generator=gen).to(hidden.dtype)


def run_both(spec, dtype=torch.float32, sub_chunk_tokens=None, mask_fn=None, **batch_kwargs):
    objective = build_loss(spec)
    head, hidden, target, mask = make_batch(dtype, **batch_kwargs)
    if mask_fn is not None:
        mask = mask_fn(mask)
    states = target_states(hidden)
    plain = objective_chunk_terms(objective, head, hidden, target, mask, states)
    plain_value = objective.reduce(plain[0], plain[1], hidden.shape[0])
    fused = fused_totals(objective, head, hidden, target, mask, sub_chunk_tokens, states)
    fused_value = objective.reduce(fused[0], fused[1], hidden.shape[0])
    # random cotangents on every numerator entry: checks d num_t / d hidden for each t
    cot = torch.rand(plain[0].shape[0], generator=torch.Generator().manual_seed(7), dtype=dtype) + 0.5
    (plain_grad,) = torch.autograd.grad((plain[0] * cot).sum(), hidden, retain_graph=True)
    (fused_grad,) = torch.autograd.grad((fused[0] * cot).sum(), hidden, retain_graph=True)
    (plain_loss_grad,) = torch.autograd.grad(plain_value.loss, hidden)
    (fused_loss_grad,) = torch.autograd.grad(fused_value.loss, hidden)
    return plain, fused, plain_value, fused_value, (plain_grad, fused_grad, plain_loss_grad, fused_loss_grad), mask


def check_totals(plain, fused, tol):
    assert len(fused) == len(plain)
    for index, (f, p) in enumerate(zip(fused, plain)):
        assert f.shape == p.shape, index
        assert torch.allclose(f.detach().double(), p.detach().double(), rtol=tol, atol=tol), (index, f, p)


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("sub_chunk_tokens", [None, 8, 32])
def test_fp32_equals_plain_path(spec, sub_chunk_tokens):
    plain, fused, plain_value, fused_value, grads, _ = run_both(spec, sub_chunk_tokens=sub_chunk_tokens)
    plain_grad, fused_grad, plain_loss_grad, fused_loss_grad = grads
    assert len(plain) > 10  # the soft metric terms are there ...
    check_totals(plain, fused, 1e-5)  # ... and equal, with every other total
    assert not fused[1].requires_grad
    assert rel_err(fused[0].detach(), plain[0].detach()) <= 1e-5
    assert float(fused_grad.abs().sum()) > 0
    assert rel_err(fused_grad, plain_grad) <= 1e-5
    assert abs(float(fused_value.loss.detach()) - float(plain_value.loss.detach())) <= 1e-5 * max(
        1.0, abs(float(plain_value.loss.detach()))
    )
    assert rel_err(fused_loss_grad, plain_loss_grad) <= 1e-5


@pytest.mark.parametrize(
    "spec",
    [
        "lk-alpha",
        "lk-lambda",
        "kl(temperature=0.5) + tv",
        "dpace + 0.5*lk-lambda",
        "renyi-half",
        "dpace + 0.5*topk-kl(k=3) + auf(labels=target)",
    ],
)
def test_fp64_equals_plain_path_tightly(spec):
    plain, fused, _, _, grads, _ = run_both(spec, dtype=torch.float64, sub_chunk_tokens=24)
    check_totals(plain, fused, 1e-12)
    assert rel_err(grads[1], grads[0]) <= 1e-12 and rel_err(grads[3], grads[2]) <= 1e-12


@pytest.mark.parametrize(
    "spec", ["lk-alpha", "lk-lambda", "soft-dpace", "dpace + 0.5*lk-lambda", "renyi-half + topk-kl(k=3)"]
)
def test_gradient_zero_on_masked_slots_and_blocks(spec):
    _, _, _, _, grads, mask = run_both(spec, sub_chunk_tokens=16)
    _, fused_grad, _, _ = grads
    assert float(fused_grad[0, 1].abs().max()) == 0.0  # a fully masked block
    dead = (mask == 0).unsqueeze(-1).expand_as(fused_grad)
    assert float(fused_grad[dead].abs().max()) == 0.0
    assert float(fused_grad[~dead].abs().max()) > 0.0


@pytest.mark.parametrize("spec", ["lk-alpha", "dpace + 0.5*lk-lambda", "kl(temperature=0.5) + tv"])
def test_fully_masked_chunk(spec):
    plain, fused, _, _, grads, _ = run_both(spec, mask_fn=torch.zeros_like)
    check_totals(plain, fused, 1e-6)
    assert float(fused[0].detach().abs().sum()) == 0.0
    assert float(grads[1].abs().max()) == 0.0 == float(grads[0].abs().max())


def test_larger_vocabulary_and_blocks_of_sixteen():
    for spec in ("lk-alpha", "lk-lambda", "soft-chain"):
        plain, fused, _, _, grads, _ = run_both(spec, slots=16, blocks=5, vocab=3000, width=48, sub_chunk_tokens=64)
        check_totals(plain, fused, 1e-5)
        assert rel_err(grads[1], grads[0]) <= 1e-5


@pytest.mark.parametrize(
    "spec",
    [
        "lk-alpha",
        "kl",
        "lk-lambda(per_token=true)",
        "lk-lambda",
        "dpace + 0.5*lk-lambda",
        "lk-alpha + 0.5*tv(temperature=0.5)",  # an alpha direction in a second buffer
        "renyi-half + lk-alpha",  # the extended pass: log space throughout
    ],
)
def test_tiny_alpha_stays_exact(spec):
    """Drafter and target peaked on different tokens: alpha underflows fp32 (log alpha far below -80),
    so those rows are recomputed in log space; values and gradients stay finite and equal."""
    objective = build_loss(spec)
    head, hidden, target, mask = make_batch(bias=False)
    with torch.no_grad():
        hidden.mul_(60.0)
    states = -hidden.detach()
    plain = objective_chunk_terms(objective, head, hidden, target, mask, states)
    fused = fused_totals(objective, head, hidden, target, mask, 16, states)
    terms = fused_objective_terms(objective, hidden, head, target, mask, target_hidden=states)
    assert float(terms.soft[1.0].log_alpha.min()) < -80.0  # the log-space branch runs
    assert bool(torch.isfinite(fused[0]).all())
    check_totals(plain[:2], fused[:2], 1e-5)
    (plain_grad,) = torch.autograd.grad(plain[0].sum(), hidden)
    (fused_grad,) = torch.autograd.grad(fused[0].sum(), hidden)
    assert bool(torch.isfinite(fused_grad).all())
    assert rel_err(fused_grad, plain_grad) <= 1e-5


@pytest.mark.parametrize("spec", ["lk-alpha", "lk-lambda", "dpace + 0.5*lk-lambda"])
def test_bf16_within_one_percent(spec):
    plain, fused, _, _, grads, _ = run_both(spec, dtype=torch.bfloat16, sub_chunk_tokens=16)
    assert grads[1].dtype == torch.bfloat16
    assert rel_err(fused[0].detach(), plain[0].detach()) <= 1e-2
    assert rel_err(grads[1], grads[0]) <= 2e-2


def test_without_grad_only_values():
    objective = build_loss("lk-lambda")
    head, hidden, target, mask = make_batch()
    states = target_states(hidden)
    with torch.no_grad():
        fused = fused_objective_terms(objective, hidden, head, target, mask, target_hidden=states)
        plain = objective_chunk_terms(objective, head, hidden, target, mask, states)
    assert fused.num.grad_fn is None
    assert rel_err(fused.num, plain[0]) <= 1e-5


@pytest.mark.parametrize(
    "spec, buffers",
    [
        ("lk-alpha", 1),
        ("lk-lambda(per_token=true)", 1),
        ("lk-lambda(lagged=true)", 1),  # lambda known before the pass: summed like per_token
        ("soft-chain", 1),
        ("lk-lambda", 2),
        ("dpace + 0.5*lk-lambda", 3),
        ("renyi-half", 1),  # the extended pass sums its directions too
        ("dpace(labels=target) + renyi-half", 2),  # cross-entropy on argmax p, log BC
    ],
)
def test_one_hidden_sized_buffer_per_direction_and_no_logits(spec, buffers):
    """Single-entry objectives sum their directions in the forward pass (one [B,N,K,H] buffer);
    per-position lk-lambda keeps KL and alpha apart (two), the composite adds cross-entropy's (three).
    Nothing of size [tokens, V] is saved for backward."""
    objective = build_loss(spec)
    head, hidden, target, mask = make_batch(vocab=4096)
    fused = fused_objective_terms(objective, hidden, head, target, mask, target_hidden=target_states(hidden))
    saved = fused.num.grad_fn.saved_tensors
    hidden_sized = [t for t in saved if t.shape == hidden.shape]
    assert len(hidden_sized) == buffers
    assert all(t.numel() < hidden.numel() for t in saved if t.shape != hidden.shape)  # coefficients only


@pytest.mark.parametrize(
    "spec, mode, tiles",
    [
        ("lk-alpha", "la", 0),  # full width, no scratch
        ("tv", "la", 0),
        ("soft-dpace", "la", 0),
        ("kl", "single", 1),  # one column-tile scratch
        ("lk-lambda(per_token=true)", "single", 1),
        ("lk-lambda(lagged=true)", "single", 1),
        ("lk-lambda", "single", 1),
        ("dpace + 0.5*lk-lambda", "single", 1),
        ("lk-alpha + soft-dpace", "single", 1),
        ("dpace + lk-alpha(temperature=2)", "general", 3),  # log q at T = 1 kept for cross-entropy
        ("kl(temperature=0.5) + tv", "general", 5),  # two temperatures
    ],
)
def test_scratch_stays_within_the_documented_buffers(spec, mode, tiles):
    """Peak [tokens, V] memory: the draft logits, half-height target logits and column tiles that
    together stay within SCRATCH_SHARE of the logits (so at most SOFT_BUFFERS buffers)."""
    objective = build_loss(spec)
    head, hidden, target, mask = make_batch(vocab=800)
    plan, _ = soft_plan(objective)
    soft_pass = SoftPass(objective, plan, head.weight, head.bias, step=4, slots=8, want_grad=True)
    soft_pass.run(hidden, target_states(hidden), target, mask)
    assert soft_pass.mode == mode
    used = len(soft_pass.scratch._store)
    assert used == tiles == len(soft_pass.scratch_names)
    piece_rows, step_rows = 2 * 8, 4 * 8
    scratch = used * piece_rows * soft_pass.tile
    rounding = used * piece_rows  # tile widths round up by less than one column
    assert scratch <= SCRATCH_SHARE * step_rows * 800 + rounding
    assert (step_rows + piece_rows) * 800 + scratch <= SOFT_BUFFERS * step_rows * 800 + rounding


@pytest.mark.parametrize("step", [4, 12, 100])
def test_target_logits_are_half_height_whatever_the_sub_chunk(step):
    """A chunk smaller than one sub-chunk (the default on CPU is 128 blocks) still splits its target
    logits in two halves: the target buffer holds half the rows the logits buffer holds."""
    objective = build_loss("lk-alpha")
    head, hidden, target, mask = make_batch(vocab=300)  # 12 blocks
    plan, _ = soft_plan(objective)
    soft_pass = SoftPass(objective, plan, head.weight, head.bias, step=step, slots=8, want_grad=True)
    allocated = []
    real_empty = torch.empty

    def spy(*shape, **kwargs):
        out = real_empty(*shape, **kwargs)
        if out.dim() == 2 and out.shape[1] == 300:
            allocated.append(out.shape[0])
        return out

    torch.empty = spy
    try:
        soft_pass.run(hidden, target_states(hidden), target, mask)
    finally:
        torch.empty = real_empty
    logits_rows = min(step, 12) * 8
    assert allocated == [logits_rows, logits_rows // 2]


def test_plan_names_directions():
    plan, _ = soft_plan(build_loss("dpace + 0.5*lk-lambda"))
    assert plan.directions == (("la", 1.0), ("kl", 1.0), "nlq") and not plan.combined
    plan, _ = soft_plan(build_loss("tv"))
    assert plan.directions == (("la", 1.0),) and plan.combined and not plan.kl_temperatures
    plan, _ = soft_plan(build_loss("kl(temperature=0.5) + tv"))
    assert plan.temperatures == (0.5, 1.0) and plan.kl_temperatures == {0.5}


def test_extended_plans_name_their_directions():
    plan, _ = soft_plan(build_loss("dpace + renyi-half + topk-kl(k=3) + chain(labels=target)"))
    assert plan.directions == (("bc", 1.0), ("topk", 1.0, 3), "teacher_nlq", "nlq") and plan.extended
    assert dict(plan.extras) == {1.0: (("log_bc", 1.0), ("topk_kl", 1.0, 3), "teacher_nlq")}
    head, hidden, target, mask = make_batch(vocab=300)
    soft_pass = SoftPass(
        build_loss("renyi-half"), soft_plan(build_loss("renyi-half"))[0], head.weight, None, 4, 8, True
    )
    assert soft_pass.mode == "extended" and not soft_pass.scratch_names
    assert not soft_plan(build_loss("dpace + 0.5*lk-lambda"))[0].extended


def test_kl_is_not_computed_where_unread():
    objective = build_loss("soft-dpace")
    head, hidden, target, mask = make_batch()
    fused = fused_objective_terms(objective, hidden, head, target, mask, target_hidden=target_states(hidden))
    assert bool(torch.isnan(fused.soft[1.0].kl).all())  # documented: NaN where no KL is read
    fused = fused_objective_terms(build_loss("kl"), hidden, head, target, mask, target_hidden=target_states(hidden))
    assert bool(torch.isfinite(fused.soft[1.0].kl).all())


def test_every_soft_spec_supports_fused():
    for spec in SPECS:
        assert supports_fused(build_loss(spec)), spec


def test_missing_or_misshapen_target_hidden_is_refused():
    objective = build_loss("lk-alpha")
    head, hidden, target, mask = make_batch()
    with pytest.raises(ValueError, match="target_hidden"):
        fused_objective_terms(objective, hidden, head, target, mask)
    with pytest.raises(ValueError, match=r"target_hidden shape \(2, 6, 8, 16\)"):
        fused_objective_terms(objective, hidden, head, target, mask, target_hidden=hidden[..., :16])


def test_hard_objectives_ignore_target_hidden_bitwise():
    for spec in ("dflash", "dpace", "dflash(gamma=10) + 0.3*first-error-focal + 40*chain"):
        objective = build_loss(spec)
        head, hidden, target, mask = make_batch()
        without = fused_totals(objective, head, hidden, target, mask, 16)
        with_states = fused_totals(objective, head, hidden, target, mask, 16, target_states(hidden))
        assert len(without) == len(with_states) == 10
        assert all(torch.equal(a.detach(), b.detach()) for a, b in zip(without, with_states))
        (g1,) = torch.autograd.grad(without[0].sum(), hidden)
        (g2,) = torch.autograd.grad(with_states[0].sum(), hidden)
        assert torch.equal(g1, g2)


class _SoftValuesOnly(SoftObjective):
    """A third-party soft objective with values only (no analytic gradient)."""

    name = "third-party-soft-square"

    def _soft_terms(self, slots, mask):
        return (slots.log_alpha.square() * mask).sum(), mask.sum()


def test_soft_objective_without_gradient_falls_back(caplog):
    objective = _SoftValuesOnly()
    head, hidden, target, mask = make_batch()
    states = target_states(hidden)
    with caplog.at_level(logging.WARNING, logger="specforge_dpace"):
        assert supports_fused(objective) is False
        fused = fused_totals(objective, head, hidden, target, mask, 16, states)
    lines = [r for r in caplog.records if "falls back to the plain path" in r.getMessage()]
    assert len(lines) == 1 and objective.name in lines[0].getMessage()  # logged once per spec
    plain = objective_chunk_terms(objective, head, hidden, target, mask, states)
    check_totals(plain, fused, 1e-5)
    (plain_grad,) = torch.autograd.grad(plain[0].sum(), hidden)
    (fused_grad,) = torch.autograd.grad(fused[0].sum(), hidden)
    assert rel_err(fused_grad, plain_grad) <= 1e-5


@pytest.mark.parametrize("spec", ["kl", "lk-lambda", "lk-alpha"])
def test_values_at_a_large_vocabulary_match_fp64(spec):
    """Sums over a large vocabulary keep fp32 precision (the KL is sum p (log p - log q), not the
    difference of two large sums): the fused fp32 value is as close to the fp64 truth as the plain one."""
    objective = build_loss(spec)
    head, hidden, target, mask = make_batch(batch=2, blocks=3, slots=8, width=64, vocab=60000, bias=False)
    states = target_states(hidden)
    head64 = torch.nn.Linear(64, 60000, bias=False).double().requires_grad_(False)
    with torch.no_grad():
        head64.weight.copy_(head.weight.double())
    truth = objective_chunk_terms(objective, head64, hidden.detach().double(), target, mask, states.double())[0]
    plain = objective_chunk_terms(objective, head, hidden, target, mask, states)[0]
    fused = fused_totals(objective, head, hidden, target, mask, None, states)[0]
    plain_err = rel_err(plain.detach(), truth)
    fused_err = rel_err(fused.detach(), truth)
    assert fused_err <= max(3 * plain_err, 1e-6), (fused_err, plain_err)


def test_soft_sub_chunk_size():
    """The soft path divides the byte budget by its buffers and has its own floor (SpecForge's default
    chunk of 128 blocks of 16 on CPU); the hard path's sizes are unchanged."""
    from specforge_dpace.fused import MIN_TOKENS, SOFT_MIN_TOKENS, auto_sub_chunk_tokens, blocks_per_sub_chunk

    assert SOFT_MIN_TOKENS["cpu"] == 2048 and MIN_TOKENS["cpu"] == 512
    for vocab in (32000, 151936):
        assert auto_sub_chunk_tokens(vocab, 16, "cpu", SOFT_BUFFERS, soft=True) == 2048
        assert auto_sub_chunk_tokens(vocab, 16) == 512  # hard: as before
    assert auto_sub_chunk_tokens(151936, 16, "cuda", SOFT_BUFFERS, soft=True) == 1056  # budget / 1.67 buffers
    assert auto_sub_chunk_tokens(151936, 16, "cuda") == 1760
    assert blocks_per_sub_chunk(151936, 16, None, "cpu", SOFT_BUFFERS, soft=True) == 128
    assert blocks_per_sub_chunk(151936, 16, 64, "cpu", SOFT_BUFFERS, soft=True) == 4  # the override wins


@pytest.mark.parametrize("spec", ["lk-alpha", "soft-dpace", "lk-lambda(per_token=true)", "lk-lambda"])
def test_exact_ties_at_a_large_vocabulary_go_where_the_plain_path_puts_them(spec):
    """At real sizes some log q == log p exactly (a dozen in 512 x 32000 here); u sends them to the q
    side, and the fused path must decide every one as the plain path does: a single one decided
    otherwise moves the gradient by ~1e-4 (alpha gradients cancel heavily over V)."""
    gen = torch.Generator().manual_seed(0)
    width, vocab, blocks, slots = 64, 32000, 32, 16
    head = torch.nn.Linear(width, vocab, bias=False).requires_grad_(False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(vocab, width, generator=gen) / width**0.5)
    hidden = torch.randn(1, blocks, slots, width, generator=gen).requires_grad_(True)
    states = 0.8 * hidden.detach() + 0.6 * torch.randn(hidden.shape, generator=gen)
    target = torch.randint(0, vocab, (1, blocks, slots), generator=gen)
    mask = torch.ones(1, blocks, slots)
    mask[..., 0] = 0.0
    with torch.no_grad():
        log_q = torch.log_softmax(head(hidden.reshape(-1, width)), -1)
        log_p = torch.log_softmax(head(states.reshape(-1, width)), -1)
    assert int((log_q == log_p).sum()) > 0  # the case this test is about occurs
    objective = build_loss(spec)
    plain = objective_chunk_terms(objective, head, hidden, target, mask, states)
    fused = fused_totals(objective, head, hidden, target, mask, None, states)
    (plain_grad,) = torch.autograd.grad(plain[0].sum(), hidden)
    (fused_grad,) = torch.autograd.grad(fused[0].sum(), hidden)
    assert rel_err(fused_grad, plain_grad) <= 1e-5


@pytest.mark.parametrize(
    "spec",
    [
        "lk-lambda(lagged=true)",
        "dpace + 0.5*lk-lambda(lagged=true,gamma=7)",
        "dpace + 0.5*lk-lambda; normalize=true",  # running magnitudes instead of (or beside) a lagged lambda
        "dpace + 0.5*lk-lambda(lagged=true) + tv; normalize=true,normalize_decay=0.5",
    ],
)
def test_lagged_lambda_over_successive_micro_batches_equals_the_plain_path(spec):
    """Each path keeps its own objective (the lagged state, the normalize magnitudes live on it): fed the
    same micro-batches in turn, both use the same lambda and magnitudes at every step, and agree on values
    and gradients."""
    plain_objective, fused_objective = build_loss(spec), build_loss(spec)
    losses = []
    for step in range(3):
        head, hidden, target, mask = make_batch(seed=step)
        states = target_states(hidden, seed=step)
        plain = objective_chunk_terms(plain_objective, head, hidden, target, mask, states)
        fused = fused_totals(fused_objective, head, hidden, target, mask, 16, states)
        plain_value = plain_objective.reduce(plain[0], plain[1], hidden.shape[0])
        fused_value = fused_objective.reduce(fused[0], fused[1], hidden.shape[0])
        check_totals(plain, fused, 1e-5)
        (plain_grad,) = torch.autograd.grad(plain_value.loss, hidden)
        (fused_grad,) = torch.autograd.grad(fused_value.loss, hidden)
        assert rel_err(fused_grad, plain_grad) <= 1e-5
        losses.append(float(fused_value.loss.detach()))
    # the state moves: the same batch scored by a fresh objective (lambda = 1) gives another value
    fresh = build_loss(spec)
    again = fused_totals(fresh, head, hidden, target, mask, 16, states)
    assert abs(float(fresh.reduce(again[0], again[1], hidden.shape[0]).loss.detach()) - losses[-1]) > 1e-4
