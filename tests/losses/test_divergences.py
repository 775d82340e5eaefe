"""The divergences peers ship, against loop-written float64 references: ``renyi-half`` (and the Renyi twins
``soft-<name>(divergence=renyi-half)``), ``topk-kl`` and ``labels=target`` for every hard objective.

Values and d/dz of each new statistic follow the table of :mod:`specforge_dpace.losses._statistics`;
every objective matches a per-slot loop; with p = onehot(label) the Renyi objectives equal their hard
objectives; chunking changes nothing; the analytic slot gradients equal autograd's.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from specforge_dpace.losses import HARD_NAMES, RowStats, available_losses, build_loss, loss_info, soft_slot_stats
from specforge_dpace.losses._statistics import TEACHER_NLQ, log_bc_key, topk_kl_key

B, N, K, V = 2, 3, 6, 9


def batch(seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    z = (torch.randn(B, N, K, V, generator=gen, dtype=dtype) * 1.5).requires_grad_(True)
    zp = torch.randn(B, N, K, V, generator=gen, dtype=dtype) * 1.5
    y = torch.randint(0, V, (B, N, K), generator=gen)
    mask = torch.ones(B, N, K, dtype=dtype)
    mask[..., 0] = 0
    mask[0, 1, 3] = 0
    mask[1, 2] = 0
    return z, zp, y, mask


def ref_row(z_row, zp_row, T, k):
    """Loop-written float64 values and d/dz rows of the three statistics of one slot."""
    q = [math.exp(v) for v in torch.log_softmax(z_row.double() / T, -1).tolist()]
    p = [math.exp(v) for v in torch.log_softmax(zp_row.double() / T, -1).tolist()]
    bc = sum(math.sqrt(p[x] * q[x]) for x in range(V))
    d_log_bc = [(math.sqrt(p[j] * q[j]) / bc - q[j]) / (2 * T) for j in range(V)]
    top = sorted(range(V), key=lambda x: -p[x])[: min(k, V)]
    p_s, q_s = sum(p[x] for x in top), sum(q[x] for x in top)
    topk = sum(p[x] / p_s * math.log((p[x] / p_s) / (q[x] / q_s)) for x in top)
    d_topk = [((q[j] / q_s - p[j] / p_s) / T if j in top else 0.0) for j in range(V)]
    t = max(range(V), key=lambda x: p[x])
    q1 = [math.exp(v) for v in torch.log_softmax(z_row.double(), -1).tolist()]
    teacher = -math.log(q1[t])
    d_teacher = [q1[j] - (1.0 if j == t else 0.0) for j in range(V)]
    return math.log(bc), d_log_bc, topk, d_topk, teacher, d_teacher


@pytest.mark.parametrize("T, k", [(1.0, 3), (0.7, 4), (1.0, 20)])
def test_statistic_values_and_gradients_follow_the_table(T, k):
    z, zp, _, _ = batch(1)
    keys = (log_bc_key(T), topk_kl_key(T, k)) + ((TEACHER_NLQ,) if T == 1.0 else ())
    slots = soft_slot_stats(z, T, target_logits=zp, extras=keys)
    for b, n, s in [(0, 0, 1), (1, 1, 4), (0, 2, 5)]:
        log_bc, d_log_bc, topk, d_topk, teacher, d_teacher = ref_row(z[b, n, s].detach(), zp[b, n, s], T, k)
        expected = {keys[0]: (log_bc, d_log_bc), keys[1]: (topk, d_topk)}
        if T == 1.0:
            expected[TEACHER_NLQ] = (teacher, d_teacher)
        for key, (value, gradient) in expected.items():
            stat = slots.extra(key)
            assert stat[b, n, s].item() == pytest.approx(value, rel=1e-12, abs=1e-14)
            (grad,) = torch.autograd.grad(stat[b, n, s], z, retain_graph=True)
            torch.testing.assert_close(
                grad[b, n, s], torch.tensor(gradient, dtype=torch.float64), rtol=1e-10, atol=1e-13
            )
            grad[b, n, s] = 0.0
            assert float(grad.abs().max()) == 0.0  # one slot's statistic moves only that slot's logits


def test_row_stats_directions_are_the_log_softmax_backward_of_each_value():
    """RowStats.direction (what the fused path and the share metrics use) is autograd's d value / dz for
    every key, the existing ones included."""
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(5, V, generator=gen, dtype=torch.float64) * 2
    zp = torch.randn(5, V, generator=gen, dtype=torch.float64) * 2
    y = torch.randint(0, V, (5,), generator=gen)
    keys = ["nlq", TEACHER_NLQ, ("log_alpha", 0.6), ("alpha", 1.0), ("kl", 0.6), log_bc_key(1.3), topk_kl_key(0.8, 4)]
    for key in keys:
        leaf = z.clone().requires_grad_(True)
        value = RowStats(leaf, zp, y).value(key)
        (expected,) = torch.autograd.grad(value.sum(), leaf)
        torch.testing.assert_close(RowStats(z, zp, y).direction(key), expected, rtol=1e-10, atol=1e-13)


def weights_of(mask, gamma):
    k = torch.arange(K, dtype=torch.float64)
    decay = torch.exp(-(k - 1).clamp(min=0) / gamma) if gamma else torch.ones(K, dtype=torch.float64)
    return mask * decay


def loop_mean(z, zp, mask, gamma, T, per_slot):
    w = weights_of(mask, gamma)
    num = sum(
        w[b, n, s].item() * per_slot(z[b, n, s].detach(), zp[b, n, s], T)
        for b in range(B)
        for n in range(N)
        for s in range(K)
        if w[b, n, s] > 0
    )
    return num / w.sum().item()


def renyi_slot(z_row, zp_row, T):
    return -2 * ref_row(z_row, zp_row, T, 1)[0]


@pytest.mark.parametrize("options", [{}, {"gamma": 4.0}, {"temperature": 0.5}, {"gamma": 7.0, "temperature": 2.0}])
def test_renyi_half_matches_its_loop_reference(options):
    z, zp, y, mask = batch(4)
    objective = build_loss("renyi-half", options)
    T = options.get("temperature", 1.0)
    soft = soft_slot_stats(z, T, target_logits=zp, extras=objective.soft_extras[T])
    value = objective.reduce(*objective.chunk_terms(torch.zeros(B, N, K), mask, soft=soft), B).loss
    expected = loop_mean(z, zp, mask, options.get("gamma"), T, renyi_slot)
    assert value.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("k, gamma, T", [(2, None, 1.0), (4, 5.0, 1.0), (3, None, 0.6), (V, None, 1.0)])
def test_topk_kl_matches_its_loop_reference(k, gamma, T):
    z, zp, y, mask = batch(5)
    objective = build_loss("topk-kl", k=k, gamma=gamma, temperature=T)
    soft = soft_slot_stats(z, T, target_logits=zp, extras=objective.soft_extras[T])
    value = objective.reduce(*objective.chunk_terms(torch.zeros(B, N, K), mask, soft=soft), B).loss
    expected = loop_mean(z, zp, mask, gamma, T, lambda zr, zpr, t: ref_row(zr, zpr, t, k)[2])
    assert value.item() == pytest.approx(expected, rel=1e-12)


def test_topk_kl_with_every_token_is_kl_and_ignores_q_outside_the_targets_top_set():
    """Both distributions are renormalized on S: moving q's mass among tokens outside S changes neither the
    value nor any gradient there (and k >= V is the full KL)."""
    z, zp, y, mask = batch(6)
    whole = build_loss(f"topk-kl(k={V + 5})")
    kl = build_loss("kl")
    soft = soft_slot_stats(z, 1.0, target_logits=zp, extras=whole.soft_extras[1.0])
    topk_value = whole.reduce(*whole.chunk_terms(torch.zeros(B, N, K), mask, soft=soft), B).loss
    torch.testing.assert_close(topk_value, kl.reduce(*kl.chunk_terms(torch.zeros(B, N, K), mask, soft=soft), B).loss)
    three = build_loss("topk-kl(k=3)")

    def value_of(logits):
        soft = soft_slot_stats(logits, 1.0, target_logits=zp, extras=three.soft_extras[1.0])
        return three.reduce(*three.chunk_terms(torch.zeros(B, N, K), mask, soft=soft), B).loss

    outside = torch.ones_like(zp, dtype=torch.bool).scatter_(-1, zp.topk(3, dim=-1).indices, False)
    shifted = z.detach() + torch.where(outside, torch.randn(z.shape, dtype=z.dtype) * 3, torch.zeros_like(z))
    torch.testing.assert_close(value_of(shifted), value_of(z), rtol=1e-12, atol=1e-14)
    (grad,) = torch.autograd.grad(value_of(z), z)
    assert float(grad[outside].abs().max()) == 0.0 and float(grad[~outside].abs().max()) > 0.0


def _onehot(y, like):
    return torch.full_like(like, float("-inf")).scatter_(-1, y.unsqueeze(-1), 0.0)


@pytest.mark.parametrize("name", HARD_NAMES)
def test_renyi_twins_equal_their_hard_objectives_with_onehot_p(name):
    """With p = onehot(label), BC = sqrt(q_y): -2 log BC is the cross-entropy, so soft-<name>(divergence=renyi-half)
    (and renyi-half for dflash) is the hard objective, value and gradient."""
    z, _, y, mask = batch(7)
    z_hard = z.detach().clone().requires_grad_(True)
    nlq = F.cross_entropy(z_hard.reshape(-1, V), y.reshape(-1), reduction="none").view(B, N, K)
    hard = build_loss(name)
    hard_value = hard.reduce(*hard.chunk_terms(nlq, mask, z_hard.argmax(-1) == y), B).loss
    (hard_grad,) = torch.autograd.grad(hard_value, z_hard)
    specs = [f"soft-{name}(divergence=renyi-half)"] + (["renyi-half"] if name == "dflash" else [])
    for spec in specs:
        twin = build_loss(spec)
        soft = soft_slot_stats(z, 1.0, target_log_probs=_onehot(y, z.detach()), extras=twin.soft_extras[1.0])
        value = twin.reduce(*twin.chunk_terms(nlq.detach(), mask, soft=soft), B).loss
        torch.testing.assert_close(value, hard_value, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(torch.autograd.grad(value, z)[0], hard_grad, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("name", HARD_NAMES)
def test_target_labels_train_on_the_targets_argmax(name):
    """``<name>(labels=target)`` is the hard objective fed the cross-entropy against argmax p and correct =
    (argmax q == argmax p): loop-free reference from F.cross_entropy with the target's argmax as labels."""
    z, zp, y, mask = batch(8)
    teacher = zp.argmax(-1)
    z_ref = z.detach().clone().requires_grad_(True)
    nlq = F.cross_entropy(z_ref.reshape(-1, V), teacher.reshape(-1), reduction="none").view(B, N, K)
    hard = build_loss(name)
    expected = hard.reduce(*hard.chunk_terms(nlq, mask, z_ref.argmax(-1) == teacher), B).loss
    (expected_grad,) = torch.autograd.grad(expected, z_ref)
    objective = build_loss(f"{name}(labels=target)")
    assert objective.spec() == f"{name}(labels=target)" and objective.needs_target
    data_nlq = F.cross_entropy(z.detach().reshape(-1, V), y.reshape(-1), reduction="none").view(B, N, K)
    soft = soft_slot_stats(z, 1.0, target_logits=zp, extras=objective.soft_extras[1.0])
    value = objective.reduce(*objective.chunk_terms(data_nlq, mask, None, soft=soft), B).loss
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(torch.autograd.grad(value, z)[0], expected_grad, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize(
    "spec",
    [
        "renyi-half(gamma=3)",
        "topk-kl(k=3)",
        "dpace(labels=target)",
        "soft-dpace(divergence=renyi-half,alpha=0.3)",
        "dpace + 0.5*renyi-half + 0.2*topk-kl(k=4,temperature=0.5) + first-error-focal(labels=target)",
    ],
)
def test_chunking_and_analytic_gradients(spec):
    """Chunks of blocks sum to the whole; ``slot_grad`` (the fused path's coefficients) equals autograd's
    d numerator / d statistic for every new statistic."""
    z, zp, y, mask = batch(9)
    objective = build_loss(spec)

    def terms(blocks):
        nlq = F.cross_entropy(z.reshape(-1, V), y.reshape(-1), reduction="none").view(B, N, K)[:, blocks]
        soft = {
            t: soft_slot_stats(z[:, blocks], t, target_logits=zp[:, blocks], extras=objective.soft_extras.get(t, ()))
            for t in objective.soft_temperatures
        }
        return objective.chunk_terms(nlq, mask[:, blocks], (z.argmax(-1) == y)[:, blocks], soft=soft)

    whole = objective.reduce(*terms(slice(None)), B).loss
    parts = [terms(slice(i, i + 1)) for i in range(N)]
    chunked = objective.reduce(sum(p[0] for p in parts), sum(p[1] for p in parts), B).loss
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(
        torch.autograd.grad(chunked, z)[0], torch.autograd.grad(whole, z)[0], rtol=1e-10, atol=1e-14
    )
    # analytic coefficients vs autograd on leaves standing for each extra statistic
    from specforge_dpace.losses import stat_grads

    nlq = F.cross_entropy(z.detach().reshape(-1, V), y.reshape(-1), reduction="none").view(B, N, K)
    correct = z.argmax(-1) == y
    soft = {
        t: soft_slot_stats(z.detach(), t, target_logits=zp, extras=objective.soft_extras.get(t, ()))
        for t in objective.soft_temperatures
    }
    leaves = {t: {k: v.clone().requires_grad_(True) for k, v in s.extras.items()} for t, s in soft.items()}
    for t, slots in soft.items():
        slots.extras = leaves[t]
    num, _ = objective.chunk_terms(nlq, mask, correct, soft=soft)
    grads = stat_grads(objective, nlq, mask, correct, soft)
    for index in range(num.shape[0]):
        for by_key in leaves.values():
            for key, leaf in by_key.items():
                (auto,) = torch.autograd.grad(num[index], leaf, retain_graph=True, allow_unused=True)
                auto = torch.zeros_like(leaf) if auto is None else auto
                analytic = grads[key][index] if key in grads else torch.zeros_like(leaf)
                torch.testing.assert_close(analytic.to(auto.dtype), auto, rtol=1e-10, atol=1e-12)


def test_registered_listed_and_refused_where_meaningless():
    assert {"renyi-half", "topk-kl"} <= set(available_losses())
    assert loss_info("renyi-half").needs_target and loss_info("topk-kl").options["k"].default == 20
    assert loss_info("dpace").options["labels"].choices == ("data", "target")
    assert "divergence" in loss_info("soft-chain").options and "labels" not in loss_info("soft-chain").options
    assert build_loss("dpace(labels=data)").spec() == "dpace"
    with pytest.raises(ValueError, match=r"option labels='teacher' is not accepted; expected one of data, target"):
        build_loss("dpace(labels=teacher)")
    with pytest.raises(ValueError, match=r"soft-dpace: unknown option\(s\) \['labels'\]"):
        build_loss("soft-dpace(labels=target)")
    with pytest.raises(ValueError, match=r"kl: unknown option\(s\) \['labels'\]"):
        build_loss("kl(labels=target)")
    with pytest.raises(ValueError, match=r"k=1 is out of range; expected int in \[2, inf\]"):
        build_loss("topk-kl(k=1)")
    with pytest.raises(ValueError, match="'topk-kl' already reads the target distribution"):
        build_loss("soft-topk-kl")
    with pytest.raises(ValueError, match="divergence='kl' is not accepted; expected one of lk-alpha, renyi-half"):
        build_loss("soft-dpace(divergence=kl)")
    z, zp, _, mask = batch(11)
    soft = soft_slot_stats(z, 1.0, target_logits=zp)  # no extras formed
    with pytest.raises(ValueError, match=r"have no \('log_bc', 1.0\).*soft_extras"):
        build_loss("renyi-half").chunk_terms(torch.zeros(B, N, K), mask, soft=soft)
