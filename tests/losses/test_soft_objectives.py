"""Soft-label objectives against loop-written float64 references (DESIGN.md section 3.1).

Values and gradients of the per-slot statistics (alpha, KL, -log alpha) follow the gradient
table; every objective matches a per-slot loop reference; soft twins equal their hard objective
bit for bit when p = onehot(label); chunking changes nothing; alpha -> 0 and bf16 stay finite.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from specforge_dpace.losses import (
    HARD_NAMES,
    SOFT_NAMES,
    BlockObjective,
    LossRegistry,
    Option,
    available_losses,
    build_loss,
    soft_acceptance_terms,
    soft_slot_stats,
    stat_grads,
)

B, N, K, V = 2, 3, 6, 7


def batch(seed=0, dtype=torch.float64, masked=True):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(B, N, K, V, generator=gen, dtype=dtype) * 1.5
    zp = torch.randn(B, N, K, V, generator=gen, dtype=dtype) * 1.5
    y = torch.randint(0, V, (B, N, K), generator=gen)
    mask = torch.ones(B, N, K, dtype=dtype)
    mask[..., 0] = 0
    if masked:
        mask[0, 1, 3] = 0  # a hole inside a block
        mask[1, 2] = 0  # a fully masked block
    return z.requires_grad_(True), zp, y, mask


def ref_slot(z_row, zp_row, T):
    """alpha, KL, and the DESIGN table's d/dz rows for one slot, written out (float64)."""
    q = torch.softmax(z_row / T, -1)
    p = torch.softmax(zp_row / T, -1)
    alpha = sum(min(p[x].item(), q[x].item()) for x in range(len(q)))
    kl = sum(p[x].item() * (math.log(p[x].item()) - math.log(q[x].item())) for x in range(len(q)))
    u = (q <= p).to(q.dtype)
    s = (q * u).sum()
    d_alpha = q * (u - s) / T
    d_kl = (q - p) / T
    return alpha, kl, d_alpha, d_kl


def decay(gamma):
    k = torch.arange(K, dtype=torch.float64)
    return torch.exp(-(k - 1).clamp(min=0) / gamma) if gamma else torch.ones(K, dtype=torch.float64)


@pytest.mark.parametrize("T", [1.0, 0.7])
def test_slot_statistics_and_gradients_follow_the_table(T):
    z, zp, _, _ = batch()
    stats = soft_slot_stats(z, T, target_logits=zp)
    for b in range(B):
        for n in range(N):
            for k in range(K):
                alpha, kl, d_alpha, d_kl = ref_slot(z[b, n, k].detach(), zp[b, n, k], T)
                assert stats.alpha[b, n, k].item() == pytest.approx(alpha, rel=1e-12)
                assert stats.kl[b, n, k].item() == pytest.approx(kl, rel=1e-10, abs=1e-12)
                g_alpha, g_log_alpha, g_kl = (
                    torch.autograd.grad(stat[b, n, k], z, retain_graph=True)[0][b, n, k]
                    for stat in (stats.alpha, stats.log_alpha, stats.kl)
                )
                torch.testing.assert_close(g_alpha, d_alpha, rtol=1e-10, atol=1e-12)
                torch.testing.assert_close(g_log_alpha, d_alpha / alpha, rtol=1e-10, atol=1e-12)
                torch.testing.assert_close(g_kl, d_kl, rtol=1e-10, atol=1e-12)


def test_tv_is_one_minus_alpha():
    z, zp, _, _ = batch()
    stats = soft_slot_stats(z, 1.0, target_logits=zp)
    tv = 0.5 * (torch.softmax(z, -1) - torch.softmax(zp, -1)).abs().sum(-1)
    torch.testing.assert_close(1 - stats.alpha, tv, rtol=1e-12, atol=1e-12)


def ref_objective(name, options, z, zp, y, mask, T=1.0):
    """Loop-written float64 reference of each soft objective's loss."""
    gamma = options.get("gamma")
    eta = options.get("eta", 3.0)
    w = mask * decay(gamma)
    rows = {}
    for b in range(B):
        for n in range(N):
            for k in range(K):
                alpha, kl, _, _ = ref_slot(z[b, n, k].detach(), zp[b, n, k], T)
                rows[b, n, k] = (alpha, kl)
    stat = {
        "lk-alpha": lambda a, kl: -math.log(a),
        "kl": lambda a, kl: kl,
        "tv": lambda a, kl: 1 - a,
    }
    if name in stat:
        num = sum(w[i].item() * stat[name](*rows[i]) for i in rows)
        return num / w.sum().item()
    assert name == "lk-lambda"
    if options.get("per_token"):
        num = 0.0
        for i, (a, kl) in rows.items():
            lam = math.exp(-eta * a)
            num += w[i].item() * (lam * kl + (1 - lam) * (1 - a))
        return num / w.sum().item()
    num = 0.0
    for k in range(K):
        slots = [i for i in rows if i[2] == k and mask[i] > 0]
        if not slots:
            continue
        lam = math.exp(-eta * sum(rows[i][0] for i in slots) / len(slots))
        num += sum(w[i].item() * (lam * rows[i][1] + (1 - lam) * (1 - rows[i][0])) for i in slots)
    return num / w.sum().item()


CASES = [
    ("lk-alpha", {}),
    ("lk-alpha", {"gamma": 4.0}),
    ("kl", {}),
    ("kl", {"gamma": 7.0}),
    ("tv", {}),
    ("lk-lambda", {}),
    ("lk-lambda", {"eta": 1.0, "gamma": 5.0}),
    ("lk-lambda", {"per_token": True}),
]


@pytest.mark.parametrize("name,options", CASES)
@pytest.mark.parametrize("T", [1.0, 0.5])
def test_soft_objectives_match_loop_references(name, options, T):
    z, zp, y, mask = batch(seed=3)
    objective = build_loss(name, {**options, "temperature": T})
    nlq = F.cross_entropy(z.reshape(-1, V), y.reshape(-1), reduction="none").view(B, N, K)
    soft = soft_slot_stats(z, T, target_logits=zp)
    num, den = objective.chunk_terms(nlq, mask, soft=soft)
    value = objective.reduce(num, den, B)
    assert value.loss.item() == pytest.approx(ref_objective(name, options, z, zp, y, mask, T), rel=1e-10)
    torch.testing.assert_close(value.loss, value.numerator / value.denominator)


@pytest.mark.parametrize(
    "name,options",
    [case for case in CASES if case[0] != "lk-lambda"] + [("renyi-half", {"gamma": 3.0}), ("topk-kl", {"k": 3})],
)
def test_soft_objective_gradients_match_finite_differences(name, options):
    z, zp, y, mask = batch(seed=4)
    objective = build_loss(name, options)
    nlq = F.cross_entropy(z.reshape(-1, V), y.reshape(-1), reduction="none").view(B, N, K)

    def loss_of(logits):
        soft = soft_slot_stats(logits, 1.0, target_logits=zp, extras=objective.soft_extras.get(1.0, ()))
        num, den = objective.chunk_terms(nlq, mask, soft=soft)
        return objective.reduce(num, den, B).loss

    grad = torch.autograd.grad(loss_of(z), z)[0]
    gen = torch.Generator().manual_seed(9)
    for _ in range(6):
        idx = tuple(int(torch.randint(0, s, (1,), generator=gen)) for s in (B, N, K, V))
        bump = torch.zeros_like(z)
        bump[idx] = 1e-6
        with torch.no_grad():
            numeric = (loss_of(z + bump) - loss_of(z - bump)) / 2e-6
        assert grad[idx].item() == pytest.approx(numeric.item(), rel=1e-5, abs=1e-8)


@pytest.mark.parametrize("per_token", [False, True])
def test_lk_lambda_gradient_holds_lambda_fixed(per_token):
    """lambda is a stop-gradient: the gradient is lambda * dKL + (1 - lambda) * dTV."""
    z, zp, y, mask = batch(seed=4)
    objective = build_loss("lk-lambda", gamma=5.0, per_token=per_token)
    soft = soft_slot_stats(z, 1.0, target_logits=zp)
    loss = objective.reduce(*objective.chunk_terms(torch.zeros(B, N, K), mask, soft=soft), B).loss
    (grad,) = torch.autograd.grad(loss, z)
    stats = soft_slot_stats(z, 1.0, target_logits=zp)
    alpha = stats.alpha.detach()
    if per_token:
        lam = torch.exp(-3.0 * alpha)
    else:
        lam = torch.exp(-3.0 * (alpha * mask).sum((0, 1)) / mask.sum((0, 1)).clamp_min(1)).expand_as(alpha)
    w = mask * decay(5.0)
    fixed = (w * (lam * stats.kl + (1 - lam) * (1 - stats.alpha))).sum() / w.sum()
    (expected,) = torch.autograd.grad(fixed, z)
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-14)


def _onehot_log_probs(y, like):
    log_p = torch.full_like(like, float("-inf"))
    return log_p.scatter_(-1, y.unsqueeze(-1), 0.0)


@pytest.mark.parametrize("name", HARD_NAMES)
def test_soft_twin_equals_its_hard_objective_bit_for_bit_with_onehot_p(name):
    z, _, y, mask = batch(seed=5, dtype=torch.float32)
    z_hard = z.detach().clone().requires_grad_(True)
    nlq = F.cross_entropy(z_hard.reshape(-1, V), y.reshape(-1), reduction="none").view(B, N, K)
    correct = z_hard.argmax(-1) == y
    hard = build_loss(name)
    hard_value = hard.reduce(*hard.chunk_terms(nlq, mask, correct), B)
    hard_value.loss.backward()

    twin = build_loss(f"soft-{name}")
    soft = soft_slot_stats(z, 1.0, target_log_probs=_onehot_log_probs(y, z.detach()))
    nlq_unused = nlq.detach()
    twin_value = twin.reduce(*twin.chunk_terms(nlq_unused, mask, None, soft=soft), B)
    twin_value.loss.backward()
    assert torch.equal(twin_value.loss, hard_value.loss)
    assert torch.equal(z.grad, z_hard.grad)


def test_lk_alpha_equals_cross_entropy_with_onehot_p():
    z, _, y, mask = batch(seed=6, dtype=torch.float32)
    nlq = F.cross_entropy(z.reshape(-1, V), y.reshape(-1), reduction="none").view(B, N, K)
    soft = soft_slot_stats(z, 1.0, target_log_probs=_onehot_log_probs(y, z.detach()))
    for gamma in (None, 7.0):
        lk = build_loss("lk-alpha", gamma=gamma)
        dflash = build_loss("dflash", gamma=gamma)
        got = lk.reduce(*lk.chunk_terms(nlq, mask, soft=soft), B).loss
        assert torch.equal(got, dflash.reduce(*dflash.chunk_terms(nlq, mask), B).loss)


def test_twins_of_third_party_objectives_come_with_them():
    class Squares(BlockObjective):
        name = "squares"
        options = {"scale": Option(1.0)}

        def _terms(self, nlq, mask, correct):
            return (self.scale * nlq**2 * mask).sum(), mask.sum()

        def _slot_grad(self, nlq, mask, correct):
            return 2 * self.scale * nlq * mask

    registry = LossRegistry(discover=False)
    registry.register("squares", Squares)
    assert "soft-squares" in registry and "soft-squares" in registry.twin_names()
    twin = registry.build("soft-squares(scale=2,temperature=0.5)")
    assert twin.spec() == "soft-squares(scale=2,temperature=0.5)"
    z, zp, y, mask = batch(seed=7)
    soft = soft_slot_stats(z, 0.5, target_logits=zp)
    num, den = twin.chunk_terms(torch.zeros(B, N, K, dtype=z.dtype), mask, soft=soft)
    expected = (2 * soft.log_alpha**2 * mask).sum() / mask.sum()
    torch.testing.assert_close(twin.reduce(num, den, B).loss, expected)


def test_soft_chain_is_a_differentiable_expected_accepted_length():
    z, zp, y, mask = batch(seed=8)
    soft = soft_slot_stats(z, 1.0, target_logits=zp)
    chain = build_loss("soft-chain")
    value = chain.reduce(*chain.chunk_terms(torch.zeros(B, N, K, dtype=z.dtype), mask, soft=soft), B).loss
    alpha = soft.alpha.detach()
    total, blocks = 0.0, 0
    for b in range(B):
        for n in range(N):
            if mask[b, n].sum() == 0:
                continue
            blocks += 1
            prefix = 1.0
            for k in range(K):
                if mask[b, n, k] > 0:
                    prefix *= alpha[b, n, k].item()
                    total += prefix
    assert value.item() == pytest.approx(-total / (K - 1) / blocks, rel=1e-10)


def test_soft_first_error_uses_the_targets_argmax():
    z, zp, y, mask = batch(seed=10)
    soft = soft_slot_stats(z, 1.0, target_logits=zp)
    focal = build_loss("soft-first-error-focal")
    num, den = focal.chunk_terms(torch.zeros(B, N, K, dtype=z.dtype), mask, soft=soft)
    agree = z.argmax(-1) == zp.argmax(-1)
    expected_num, expected_blocks = 0.0, 0
    for b in range(B):
        for n in range(N):
            for k in range(K):
                if mask[b, n, k] > 0 and not agree[b, n, k]:
                    expected_num += -soft.log_alpha[b, n, k].item()
                    expected_blocks += 1
                    break
    assert num.item() == pytest.approx(expected_num, rel=1e-12) and den.item() == expected_blocks


@pytest.mark.parametrize(
    "spec", ["lk-lambda", "lk-lambda(per_token=true)", "kl(gamma=3)", "soft-dpace", "dpace + 0.5*lk-lambda", "tv"]
)
def test_chunking_changes_neither_value_nor_gradient(spec):
    z, zp, y, mask = batch(seed=11)
    objective = build_loss(spec)
    nlq_of = lambda logits: F.cross_entropy(logits.reshape(-1, V), y.reshape(-1), reduction="none").view(B, N, K)  # noqa: E731

    def terms(logits, blocks):
        nlq = nlq_of(logits)
        correct = logits.argmax(-1) == y
        soft = soft_slot_stats(logits[:, blocks], 1.0, target_logits=zp[:, blocks])
        return objective.chunk_terms(nlq[:, blocks], mask[:, blocks], correct[:, blocks], soft=soft)

    whole = objective.reduce(*terms(z, slice(None)), B).loss
    g_whole = torch.autograd.grad(whole, z)[0]
    parts = [terms(z, slice(i, i + 1)) for i in range(N)]
    num = sum(p[0] for p in parts)
    den = sum(p[1] for p in parts)
    chunked = objective.reduce(num, den, B).loss
    g_chunked = torch.autograd.grad(chunked, z)[0]
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(g_chunked, g_whole, rtol=1e-10, atol=1e-14)


def test_composite_of_hard_and_soft_terms_is_the_weighted_sum():
    z, zp, y, mask = batch(seed=12)
    nlq = F.cross_entropy(z.reshape(-1, V), y.reshape(-1), reduction="none").view(B, N, K)
    soft = soft_slot_stats(z, 1.0, target_logits=zp)
    composite = build_loss("dpace + 0.5*lk-lambda + 2*soft-chain")
    value = composite.reduce(*composite.chunk_terms(nlq, mask, z.argmax(-1) == y, soft=soft), B)
    expected = 0
    for weight, spec in ((1.0, "dpace"), (0.5, "lk-lambda"), (2.0, "soft-chain")):
        single = build_loss(spec)
        expected = (
            expected + weight * single.reduce(*single.chunk_terms(nlq, mask, z.argmax(-1) == y, soft=soft), B).loss
        )
    torch.testing.assert_close(value.loss, expected, rtol=1e-12, atol=1e-12)
    assert set(value.parts) == {"dpace", "lk-lambda", "soft-chain"}
    torch.testing.assert_close(value.loss, value.numerator / value.denominator)


@pytest.mark.parametrize("spec", ["lk-alpha", "kl", "tv", "lk-lambda", "lk-lambda(per_token=true)", "soft-dpace"])
def test_analytic_slot_gradients_equal_autograd(spec):
    """``slot_grad`` (what the fused path uses) is d num / d statistic, term by term."""
    z, zp, y, mask = batch(seed=13)
    objective = build_loss(spec)
    stats = soft_slot_stats(z, 1.0, target_logits=zp)
    leaf_log_alpha = stats.log_alpha.detach().clone().requires_grad_(True)
    leaf_kl = stats.kl.detach().clone().requires_grad_(True)
    leaves = type(stats)(1.0, leaf_log_alpha, leaf_kl, stats.teacher_ids, stats.draft_ids)
    nlq = torch.zeros(B, N, K, dtype=z.dtype)
    num, _ = objective.chunk_terms(nlq, mask, soft=leaves)
    grads = stat_grads(objective, nlq, mask, soft=stats)
    for t in range(num.shape[0]):
        d_log_alpha, d_kl = torch.autograd.grad(num[t], (leaf_log_alpha, leaf_kl), retain_graph=True, allow_unused=True)
        alpha = stats.alpha.detach()
        analytic_log_alpha = torch.zeros_like(alpha)
        if ("alpha", 1.0) in grads:
            analytic_log_alpha = analytic_log_alpha + grads[("alpha", 1.0)][t] * alpha  # d alpha = alpha d log alpha
        if ("log_alpha", 1.0) in grads:
            analytic_log_alpha = analytic_log_alpha + grads[("log_alpha", 1.0)][t]
        analytic_kl = grads.get(("kl", 1.0), torch.zeros(num.shape[0], *alpha.shape, dtype=alpha.dtype))[t]
        torch.testing.assert_close(
            analytic_log_alpha, torch.zeros_like(alpha) if d_log_alpha is None else d_log_alpha, rtol=1e-10, atol=1e-12
        )
        torch.testing.assert_close(
            analytic_kl, torch.zeros_like(alpha) if d_kl is None else d_kl, rtol=1e-10, atol=1e-12
        )


@pytest.mark.parametrize("spec", ["lk-alpha", "kl", "tv", "lk-lambda", "soft-dpace", "soft-chain", "soft-auf"])
def test_alpha_towards_zero_stays_finite(spec):
    z = torch.zeros(1, 1, K, V)
    z[..., 0] = 60.0  # q puts all its mass on token 0
    zp = torch.zeros(1, 1, K, V)
    zp[..., 1] = 60.0  # p on token 1: alpha ~ e^-60
    z.requires_grad_(True)
    mask = torch.ones(1, 1, K)
    mask[..., 0] = 0
    soft = soft_slot_stats(z, 1.0, target_logits=zp)
    assert torch.isfinite(soft.log_alpha).all() and (soft.alpha < 1e-20).all()
    objective = build_loss(spec)
    loss = objective.reduce(*objective.chunk_terms(torch.zeros(1, 1, K), mask, soft=soft), 1).loss
    (grad,) = torch.autograd.grad(loss, z)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()


@pytest.mark.parametrize("spec", ["lk-alpha", "lk-lambda", "kl", "soft-dpace"])
def test_bf16_logits_are_computed_in_fp32_and_stay_finite(spec):
    z, zp, y, mask = batch(seed=14, dtype=torch.float32)
    z16 = z.detach().bfloat16().requires_grad_(True)
    soft = soft_slot_stats(z16, 1.0, target_logits=zp.bfloat16())
    assert soft.log_alpha.dtype == torch.float32
    objective = build_loss(spec)
    loss = objective.reduce(*objective.chunk_terms(torch.zeros(B, N, K), mask.float(), soft=soft), B).loss
    (grad,) = torch.autograd.grad(loss, z16)
    assert torch.isfinite(loss) and torch.isfinite(grad.float()).all()
    reference = soft_slot_stats(z16.detach().float(), 1.0, target_logits=zp.bfloat16().float())
    torch.testing.assert_close(soft.log_alpha, reference.log_alpha)


def test_names_options_and_errors():
    assert set(SOFT_NAMES) <= set(available_losses())
    with pytest.raises(ValueError, match=r"temperature=0.0 is out of range; expected float in \(0, inf\]"):
        build_loss("lk-alpha(temperature=0)")
    with pytest.raises(ValueError, match="'kl' already reads the target distribution"):
        build_loss("soft-kl")
    with pytest.raises(ValueError, match="unknown objective 'soft-nothing'.*soft twin 'soft-<name>'"):
        build_loss("soft-nothing")
    with pytest.raises(ValueError, match="the prefix 'soft-' spells the soft twin"):
        LossRegistry(discover=False).register("soft-x", build_loss("dpace").__class__)
    z, zp, y, mask = batch()
    with pytest.raises(ValueError, match="needs the target's distribution p.*target_last_hidden_states"):
        build_loss("lk-lambda").chunk_terms(torch.zeros(B, N, K), mask)
    soft = soft_slot_stats(z, 1.0, target_logits=zp)
    with pytest.raises(ValueError, match="needs soft statistics at temperature 0.5"):
        build_loss("kl(temperature=0.5)").chunk_terms(torch.zeros(B, N, K), mask, soft=soft)
    assert build_loss("dpace + kl(temperature=0.5) + lk-alpha").soft_temperatures == (0.5, 1.0)
    assert build_loss("dpace").soft_temperatures == ()


def test_soft_metrics():
    z, zp, y, mask = batch(seed=15)
    soft = soft_slot_stats(z, 1.0, target_logits=zp)
    terms = soft_acceptance_terms(soft, mask, y)
    alpha = soft.alpha.detach()
    total, blocks = 0.0, 0
    for b in range(B):
        for n in range(N):
            if mask[b, n].sum() == 0:
                continue
            blocks += 1
            prefix, tau = 1.0, 1.0
            for k in range(K):
                if mask[b, n, k] > 0:
                    prefix *= alpha[b, n, k].item()
                    tau += prefix
            total += tau
    num, den = terms["soft_tau"]
    assert num.item() == pytest.approx(total, rel=1e-12) and den.item() == blocks
    pos_num, pos_den = terms["alpha_pos"]
    torch.testing.assert_close(pos_num, (alpha * mask).sum((0, 1)))
    torch.testing.assert_close(pos_den, mask.sum((0, 1)))
    agree_num, agree_den = terms["teacher_agreement"]
    assert agree_num.item() == ((zp.argmax(-1) == y) & (mask > 0)).sum().item() and agree_den.item() == mask.sum()


@pytest.mark.parametrize(
    "spec", ["lk-alpha", "kl(gamma=7)", "tv", "soft-dpace", "soft-chain", "lk-lambda(per_token=true)"]
)
def test_cross_microbatch_normalization_is_exact_for_single_soft_terms(spec):
    """SpecForge sums each micro-batch's reported (numerator, denominator): for these objectives that
    equals the loss of the union batch (lk-lambda's per-position lambda is micro-batch local instead)."""
    objective = build_loss(spec)
    z, zp, y, mask = batch(seed=16)
    reported = []
    for part in (slice(0, 1), slice(1, 2)):
        soft = soft_slot_stats(z[part], 1.0, target_logits=zp[part])
        value = objective.reduce(*objective.chunk_terms(torch.zeros(1, N, K), mask[part], soft=soft), 1)
        reported.append(value)
    soft = soft_slot_stats(z, 1.0, target_logits=zp)
    whole = objective.reduce(*objective.chunk_terms(torch.zeros(B, N, K), mask, soft=soft), B)
    total = sum(v.numerator for v in reported) / sum(v.denominator for v in reported)
    torch.testing.assert_close(total, whole.loss, rtol=1e-12, atol=1e-14)


def test_labels_give_the_cross_entropy_from_the_same_log_softmax():
    """The hook forms the hard cross-entropy from the statistics' own log q (one log-softmax of the
    logits): the value is F.cross_entropy's bit for bit, and a loss reading both the cross-entropy and
    the soft statistics has the gradient of the two formed separately."""
    z, zp, y, _ = batch(seed=11, dtype=torch.float32)
    slots, nlq = soft_slot_stats(z, 1.0, target_logits=zp, labels=y)
    expected = F.cross_entropy(z.reshape(-1, V), y.reshape(-1), reduction="none").view(B, N, K)
    assert torch.equal(nlq, expected)
    (0.3 * nlq.sum() - slots.log_alpha.sum() + 0.7 * slots.kl.sum()).backward()
    shared = z.grad.clone()
    z.grad = None
    apart = soft_slot_stats(z, 1.0, target_logits=zp)
    ce = F.cross_entropy(z.reshape(-1, V), y.reshape(-1), reduction="none").view(B, N, K)
    (0.3 * ce.sum() - apart.log_alpha.sum() + 0.7 * apart.kl.sum()).backward()
    torch.testing.assert_close(shared, z.grad, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="temperature 1"):
        soft_slot_stats(z, 0.5, target_logits=zp, labels=y)


def test_an_unused_statistic_costs_no_gradient_and_changes_nothing():
    """Only KL read, or only log alpha: the gradient is that statistic's alone (DESIGN table rows)."""
    z, zp, _, _ = batch(seed=12)
    soft_slot_stats(z, 1.0, target_logits=zp).kl.sum().backward()
    q, p = torch.softmax(z.detach(), -1), torch.softmax(zp, -1)
    torch.testing.assert_close(z.grad, q - p, rtol=1e-10, atol=1e-12)
    z.grad = None
    stats = soft_slot_stats(z, 1.0, target_logits=zp)
    stats.log_alpha.sum().backward()
    u = (q <= p).to(q.dtype)
    alpha = torch.minimum(p, q).sum(-1, keepdim=True)
    torch.testing.assert_close(z.grad, q * (u - (q * u).sum(-1, keepdim=True)) / alpha, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("tile_rows", [1, 5, 36])
def test_row_tiles_change_nothing(monkeypatch, tile_rows):
    """The statistics are formed tile by tile of rows (partial last tiles included): every value and
    gradient is the one-tile result bit for bit, at T = 1 with the shared cross-entropy and at T = 0.7."""
    from specforge_dpace.losses import _soft

    def run(temperature, with_labels):
        z, zp, y, _ = batch(seed=13, dtype=torch.float32)
        if with_labels:
            slots, nlq = soft_slot_stats(z, temperature, target_logits=zp, labels=y)
        else:
            slots, nlq = soft_slot_stats(z, temperature, target_logits=zp), torch.zeros(())
        (slots.log_alpha.exp().sum() + 0.3 * slots.kl.sum() + 0.2 * nlq.sum()).backward()
        return slots.log_alpha.detach(), slots.kl.detach(), nlq.detach(), z.grad

    for temperature, with_labels in ((1.0, True), (0.7, False)):
        whole = run(temperature, with_labels)
        monkeypatch.setattr(_soft, "TILE_ELEMENTS", tile_rows * V)
        tiled = run(temperature, with_labels)
        monkeypatch.undo()
        for got, want in zip(tiled, whole):
            assert torch.equal(got, want)


# --- lk-lambda(lagged=true): lambda from the previous training micro-batch ----------------------


def _position_means(z, zp, mask, T=1.0):
    """Loop-written per-position mean alpha over supervised slots (None where a position has none)."""
    means = []
    for k in range(K):
        values = [
            ref_slot(z[b, n, k].detach(), zp[b, n, k], T)[0] for b in range(B) for n in range(N) if mask[b, n, k] > 0
        ]
        means.append(sum(values) / len(values) if values else None)
    return means


def _ref_fixed_lambda(z, zp, mask, lam, gamma=None, T=1.0):
    w = mask * decay(gamma)
    num = 0.0
    for b in range(B):
        for n in range(N):
            for k in range(K):
                alpha, kl, _, _ = ref_slot(z[b, n, k].detach(), zp[b, n, k], T)
                num += w[b, n, k].item() * (lam[k] * kl + (1 - lam[k]) * (1 - alpha))
    return num / w.sum().item()


def _train_call(objective, z, zp, mask, T=1.0):
    soft = soft_slot_stats(z, T, target_logits=zp)
    return objective.reduce(*objective.chunk_terms(torch.zeros(B, N, K, dtype=z.dtype), mask, soft=soft), B)


@pytest.mark.parametrize("T", [1.0, 0.5])
def test_lagged_lk_lambda_takes_lambda_from_the_previous_micro_batch(T):
    objective = build_loss("lk-lambda", lagged=True, gamma=5.0, eta=2.0, temperature=T)
    z1, zp1, _, mask1 = batch(seed=21)
    z2, zp2, _, mask2 = batch(seed=22, masked=False)
    first = _train_call(objective, z1, zp1, mask1, T)  # nothing seen yet: lambda = 1 (KL only)
    assert first.loss.item() == pytest.approx(_ref_fixed_lambda(z1, zp1, mask1, [1.0] * K, 5.0, T), rel=1e-10)
    second = _train_call(objective, z2, zp2, mask2, T)
    means = _position_means(z1, zp1, mask1, T)
    lam = [1.0 if m is None else math.exp(-2.0 * m) for m in means]
    assert second.loss.item() == pytest.approx(_ref_fixed_lambda(z2, zp2, mask2, lam, 5.0, T), rel=1e-10)
    assert second.loss.item() != pytest.approx(_ref_fixed_lambda(z2, zp2, mask2, [1.0] * K, 5.0, T), rel=1e-6)
    torch.testing.assert_close(second.loss, second.numerator / second.denominator)
    # lambda is a constant of the micro-batch: the gradient is lambda_k dKL + (1 - lambda_k) dTV
    (grad,) = torch.autograd.grad(second.loss, z2)
    stats = soft_slot_stats(z2, T, target_logits=zp2)
    lam_t = torch.tensor(lam, dtype=torch.float64)
    w = mask2 * decay(5.0)
    fixed = (w * (lam_t * stats.kl + (1 - lam_t) * (1 - stats.alpha))).sum() / w.sum()
    torch.testing.assert_close(grad, torch.autograd.grad(fixed, z2)[0], rtol=1e-10, atol=1e-14)


def test_lagged_lambda_ignores_evaluation_calls_and_keeps_unsupervised_positions():
    z1, zp1, _, mask1 = batch(seed=23)
    z2, zp2, _, mask2 = batch(seed=24)
    z3, zp3, _, mask3 = batch(seed=25)
    mask2[..., 2] = 0  # position 2 unsupervised in the second training micro-batch
    objective = build_loss("lk-lambda(lagged=true)")
    _train_call(objective, z1, zp1, mask1)
    with torch.no_grad():  # an evaluation micro-batch between two training ones
        _train_call(objective, z3 * 3, zp3, mask3)
    _train_call(objective, z2, zp2, mask2)
    third = _train_call(objective, z3, zp3, mask3)
    first_means, second_means = _position_means(z1, zp1, mask1), _position_means(z2, zp2, mask2)
    lam = [1.0] + [math.exp(-3.0 * (second_means[k] if k != 2 else first_means[k])) for k in range(1, K)]
    assert second_means[2] is None and first_means[2] is not None
    assert third.loss.item() == pytest.approx(_ref_fixed_lambda(z3, zp3, mask3, lam), rel=1e-10)


def test_lagged_lambda_is_chunk_invariant_and_stacks_in_composites():
    z0, zp0, y0, mask0 = batch(seed=26)
    z, zp, y, mask = batch(seed=27)
    objectives = [build_loss("dpace + 0.5*lk-lambda(lagged=true)") for _ in range(3)]
    nlq_of = lambda logits, labels: F.cross_entropy(logits.reshape(-1, V), labels.reshape(-1), reduction="none").view(  # noqa: E731
        B, N, K
    )
    for objective in objectives:  # the same previous micro-batch for every copy
        soft = soft_slot_stats(z0, 1.0, target_logits=zp0)
        objective.reduce(*objective.chunk_terms(nlq_of(z0, y0), mask0, z0.argmax(-1) == y0, soft=soft), B)

    def loss(objective, pieces):
        parts = []
        for blocks in pieces:
            soft = soft_slot_stats(z[:, blocks], 1.0, target_logits=zp[:, blocks])
            nlq = nlq_of(z, y)[:, blocks]
            parts.append(objective.chunk_terms(nlq, mask[:, blocks], (z.argmax(-1) == y)[:, blocks], soft=soft))
        return objective.reduce(sum(p[0] for p in parts), sum(p[1] for p in parts), B)

    whole = loss(objectives[0], [slice(None)])
    chunked = loss(objectives[1], [slice(i, i + 1) for i in range(N)])
    torch.testing.assert_close(chunked.loss, whole.loss, rtol=1e-12, atol=1e-14)
    g_whole, g_chunked = (torch.autograd.grad(v.loss, z)[0] for v in (whole, chunked))
    torch.testing.assert_close(g_chunked, g_whole, rtol=1e-10, atol=1e-14)
    means = _position_means(z0, zp0, mask0)
    lam = [1.0 if m is None else math.exp(-3.0 * m) for m in means]
    dpace = build_loss("dpace")
    soft = soft_slot_stats(z, 1.0, target_logits=zp)
    dpace_loss = dpace.reduce(*dpace.chunk_terms(nlq_of(z, y), mask, z.argmax(-1) == y, soft=soft), B).loss
    expected = dpace_loss.item() + 0.5 * _ref_fixed_lambda(z, zp, mask, lam)
    assert whole.loss.item() == pytest.approx(expected, rel=1e-10)
    assert set(whole.parts) == {"dpace", "lk-lambda(lagged=true)"}


def test_lagged_and_per_token_are_alternatives():
    with pytest.raises(ValueError, match="per_token=true and lagged=true are alternatives"):
        build_loss("lk-lambda(per_token=true, lagged=true)")
    assert build_loss("lk-lambda(lagged=true)").spec() == "lk-lambda(lagged=true)"
    with pytest.raises(ValueError, match="lagged=1 has type int"):
        build_loss("lk-lambda", lagged=1)


# --- the checkpoint's recomputation takes the forward's statistics --------------------------------


def _checkpointed_soft_loss(z_leaf, zp, y, mask, spec, chunk_blocks):
    """A soft objective under torch's non-reentrant checkpoint, one chunk of blocks at a time, with the
    chunk's target logits as the ``reuse`` key (as the hook keys on the chunk's target hidden states)."""
    from torch.utils.checkpoint import checkpoint

    objective = build_loss(spec)

    def chunk(z_chunk, zp_chunk, y_chunk, mask_chunk):
        slots, nlq = soft_slot_stats(z_chunk * 1.0, 1.0, target_logits=zp_chunk, labels=y_chunk, reuse=zp_chunk)
        num, den = objective.chunk_terms(nlq, mask_chunk, soft=slots)
        return num, den

    pieces = []
    for start in range(0, N, chunk_blocks):
        part = slice(start, start + chunk_blocks)
        pieces.append(checkpoint(chunk, z_leaf[:, part], zp[:, part], y[:, part], mask[:, part], use_reentrant=False))
    num = sum(piece[0] for piece in pieces)
    den = sum(piece[1] for piece in pieces)
    return objective.reduce(num, den, B).loss


@pytest.mark.parametrize("spec", ["lk-alpha", "lk-lambda", "kl(gamma=3)"])
def test_recomputation_takes_the_forwards_statistics_and_changes_nothing(monkeypatch, spec):
    from specforge_dpace.losses import _soft

    z, zp, y, mask = batch(seed=31, dtype=torch.float32)
    calls = {"take": 0, "hit": 0}
    real_take = _soft.RECOMPUTE_STORE.take

    def counting_take(*args):
        calls["take"] += 1
        found = real_take(*args)
        calls["hit"] += found is not None
        return found

    monkeypatch.setattr(_soft.RECOMPUTE_STORE, "take", counting_take)
    loss = _checkpointed_soft_loss(z, zp, y, mask, spec, chunk_blocks=1)
    (grad,) = torch.autograd.grad(loss, z)
    assert calls["hit"] == calls["take"] == N  # every chunk's recomputation took the stored values
    monkeypatch.setattr(_soft.RECOMPUTE_STORE, "take", lambda *args: None)  # recompute them instead
    reference = _checkpointed_soft_loss(z, zp, y, mask, spec, chunk_blocks=1)
    (expected,) = torch.autograd.grad(reference, z)
    assert torch.equal(loss, reference) and torch.equal(grad, expected)
    whole = build_loss(spec)
    slots, nlq = soft_slot_stats(z, 1.0, target_logits=zp, labels=y)
    unchunked = whole.reduce(*whole.chunk_terms(nlq, mask, soft=slots), B).loss
    torch.testing.assert_close(grad, torch.autograd.grad(unchunked, z)[0], rtol=1e-6, atol=1e-9)


def test_stored_statistics_die_with_their_chunk():
    import gc

    from specforge_dpace.losses import _soft

    z, zp, y, mask = batch(seed=32, dtype=torch.float32)
    before = len(_soft.RECOMPUTE_STORE)
    loss = _checkpointed_soft_loss(z, zp, y, mask, "lk-alpha", chunk_blocks=1)
    assert len(_soft.RECOMPUTE_STORE) == before + N  # one entry per chunk, held while the graph lives
    torch.autograd.grad(loss, z)
    del loss
    gc.collect()
    assert len(_soft.RECOMPUTE_STORE) == before
    with torch.no_grad():  # no graph: the chunk's views die at once, and their entries with them
        _checkpointed_soft_loss(z, zp, y, mask, "lk-alpha", chunk_blocks=1)
    gc.collect()
    assert len(_soft.RECOMPUTE_STORE) == before


def test_a_stored_value_is_taken_only_in_backward_and_only_for_its_key():
    z, zp, y, _ = batch(seed=33, dtype=torch.float32)
    first = soft_slot_stats(z, 1.0, target_logits=zp, reuse=zp)
    other = soft_slot_stats(z * 2.0, 1.0, target_logits=zp, reuse=zp)  # same key, outside backward: recomputed
    assert not torch.equal(first.log_alpha, other.log_alpha)
    fresh_key = zp.clone()
    again = soft_slot_stats(z * 2.0, 1.0, target_logits=fresh_key, reuse=fresh_key)
    assert torch.equal(again.log_alpha, other.log_alpha)
