"""``normalize=true``: each composite term divided by a detached running estimate of its own magnitude.

Values and gradients against a float64 reference written out (bias-corrected moving average of
``|L_i|`` over training micro-batches), evaluation calls, chunking, the spec grammar and
``loss_options`` spelling, and the rules shared with ``lk-lambda(lagged=true)``: a read during
backward sees the forward's estimate.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from specforge_dpace.losses import build_loss, soft_slot_stats
from specforge_dpace.losses._normalize import MAGNITUDE_FLOOR, RunningMagnitude
from specforge_dpace.losses._spec import format_spec, parse_composite

B, N, K, V = 2, 3, 6, 7


def batch(seed):
    gen = torch.Generator().manual_seed(seed)
    z = (torch.randn(B, N, K, V, generator=gen, dtype=torch.float64) * 1.5).requires_grad_(True)
    zp = torch.randn(B, N, K, V, generator=gen, dtype=torch.float64) * 1.5
    y = torch.randint(0, V, (B, N, K), generator=gen)
    mask = torch.ones(B, N, K, dtype=torch.float64)
    mask[..., 0] = 0
    mask[1, 2] = 0
    return z, zp, y, mask


def terms_of(objective, z, zp, y, mask, blocks=slice(None)):
    nlq = F.cross_entropy(z.reshape(-1, V), y.reshape(-1), reduction="none").view(B, N, K)[:, blocks]
    soft = soft_slot_stats(z[:, blocks], 1.0, target_logits=zp[:, blocks])
    correct = (z.argmax(-1) == y)[:, blocks]
    return objective.chunk_terms(nlq, mask[:, blocks], correct, soft=soft)


def value_of(objective, z, zp, y, mask):
    return objective.reduce(*terms_of(objective, z, zp, y, mask), B)


def single_values(specs, z, zp, y, mask):
    """Each term alone (float64), the reference's L_i."""
    out = []
    for spec in specs:
        single = build_loss(spec)
        out.append(single.reduce(*terms_of(single, z, zp, y, mask), B).loss)
    return out


@pytest.mark.parametrize("decay", [0.0, 0.5, 0.99])
def test_values_follow_the_bias_corrected_running_magnitude(decay):
    spec = f"dpace + 0.5*lk-lambda + 2*chain; normalize=true,normalize_decay={decay}"
    objective = build_loss(spec)
    weights = [1.0, 0.5, 2.0]
    averages, steps = [0.0, 0.0, 0.0], 0
    for seed in range(4):
        z, zp, y, mask = batch(seed)
        value = value_of(objective, z, zp, y, mask)
        singles = single_values(["dpace", "lk-lambda", "chain"], z, zp, y, mask)
        steps += 1
        averages = [decay * a + (1 - decay) * abs(float(v.detach())) for a, v in zip(averages, singles)]
        magnitudes = [a / (1 - decay**steps) for a in averages]
        expected = sum(w * float(v) / m for w, v, m in zip(weights, singles, magnitudes))
        assert float(value.loss) == pytest.approx(expected, rel=1e-12)
        torch.testing.assert_close(value.magnitudes, torch.tensor(magnitudes, dtype=torch.float64))
        torch.testing.assert_close(value.loss, value.numerator / value.denominator)
        torch.testing.assert_close(value.weighted.sum(), value.loss)
        if seed == 0:  # the first micro-batch is divided by its own magnitude: each term gives +-w_i
            assert [float(t) for t in value.weighted] == pytest.approx([1.0, 0.5, -2.0], rel=1e-12)
        # the gradient holds the magnitudes fixed: sum_i w_i / m_i * dL_i
        (grad,) = torch.autograd.grad(value.loss, z)
        fixed = sum(
            w / m * v
            for w, v, m in zip(weights, single_values(["dpace", "lk-lambda", "chain"], z, zp, y, mask), magnitudes)
        )
        (expected_grad,) = torch.autograd.grad(fixed, z)
        torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-14)


def test_without_normalize_nothing_changes():
    z, zp, y, mask = batch(0)
    plain = value_of(build_loss("dpace + 0.5*lk-lambda"), z, zp, y, mask)
    singles = single_values(["dpace", "lk-lambda"], z, zp, y, mask)
    assert float(plain.loss) == pytest.approx(float(singles[0] + 0.5 * singles[1]), rel=1e-12)
    assert plain.magnitudes is None
    # the problem normalize solves: on this batch D-PACE dwarfs the LK term
    normalized = value_of(build_loss("dpace + 0.5*lk-lambda; normalize=true"), z, zp, y, mask)
    shares = normalized.weighted.abs() / normalized.weighted.abs().sum()
    assert shares.tolist() == pytest.approx([2 / 3, 1 / 3], rel=1e-12)


def test_evaluation_calls_use_the_committed_estimate_and_record_nothing():
    objective = build_loss("dpace + kl; normalize=true,normalize_decay=0.5")
    z0, zp0, y0, m0 = batch(10)
    z1, zp1, y1, m1 = batch(11)
    with torch.no_grad():  # nothing committed yet: an evaluation divides by its own magnitudes
        first_eval = value_of(objective, z1, zp1, y1, m1)
    torch.testing.assert_close(
        first_eval.magnitudes, torch.stack(single_values(["dpace", "kl"], z1, zp1, y1, m1)).abs()
    )
    trained = value_of(objective, z0, zp0, y0, m0)
    with torch.no_grad():
        evaluated = value_of(objective, z1, zp1, y1, m1)
    torch.testing.assert_close(evaluated.magnitudes, trained.magnitudes)  # committed, not moved by z1
    again = value_of(objective, z0, zp0, y0, m0)  # a second training call on z0: the average of z0 and z0
    torch.testing.assert_close(again.magnitudes, trained.magnitudes)


def test_chunking_changes_neither_value_nor_gradient():
    spec = "dpace + 0.5*lk-lambda(lagged=true) + soft-chain; normalize=true"
    whole_objective, chunked_objective = build_loss(spec), build_loss(spec)
    for seed in range(3):
        z, zp, y, mask = batch(20 + seed)
        whole = whole_objective.reduce(*terms_of(whole_objective, z, zp, y, mask), B)
        parts = [terms_of(chunked_objective, z, zp, y, mask, slice(i, i + 1)) for i in range(N)]
        chunked = chunked_objective.reduce(sum(p[0] for p in parts), sum(p[1] for p in parts), B)
        torch.testing.assert_close(chunked.loss, whole.loss, rtol=1e-12, atol=1e-14)
        g_whole, g_chunked = (torch.autograd.grad(v.loss, z)[0] for v in (whole, chunked))
        torch.testing.assert_close(g_chunked, g_whole, rtol=1e-10, atol=1e-14)


def test_a_read_during_backward_sees_the_forwards_estimate():
    """The rule shared with the lagged lambda: a training reduce records its estimate as pending, and only a
    read outside backward commits it, so a recomputation inside backward divides by the same magnitudes."""
    running = RunningMagnitude(0.5)
    first = running.magnitudes(torch.tensor([4.0, 2.0], requires_grad=True), training=True)
    values = torch.tensor([8.0, 1.0], requires_grad=True)
    seen = {}

    class Probe(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            seen["backward"] = running.magnitudes(values, training=True)  # what a recomputation would do
            return grad

    forward = running.magnitudes(values, training=True)  # commits the first, records the second
    Probe.apply(values).sum().backward()
    torch.testing.assert_close(first, torch.tensor([4.0, 2.0]))
    torch.testing.assert_close(forward, torch.tensor([(0.25 * 4 + 0.5 * 8) / 0.75, (0.25 * 2 + 0.5 * 1) / 0.75]))
    torch.testing.assert_close(seen["backward"], forward)
    assert float(running.magnitudes(torch.zeros(2), training=False)[0]) == pytest.approx(float(forward[0]))


def test_a_zero_term_is_not_divided_by_zero():
    running = RunningMagnitude(0.9)
    out = running.magnitudes(torch.tensor([0.0, 3.0]), training=True)
    assert out.tolist() == pytest.approx([MAGNITUDE_FLOOR, 3.0], rel=1e-6)


def test_spec_grammar_and_loss_options_spell_the_same_objective():
    from specforge_dpace.hooks._plan import plan_objective

    terms, options = parse_composite(" dpace + 0.5 * lk-lambda(eta=1) ;normalize = true , normalize_decay=0.9 ")
    assert [t.name for t in terms] == ["dpace", "lk-lambda"] and options == {"normalize": True, "normalize_decay": 0.9}
    assert format_spec(terms, options) == "dpace + 0.5*lk-lambda(eta=1); normalize=true,normalize_decay=0.9"
    in_spec = plan_objective("dpace + 0.5*lk-lambda; normalize=true")
    in_options = plan_objective("dpace + 0.5*lk-lambda", loss_options={"normalize": True, "fused": True})
    assert in_spec.spec == in_options.spec == "dpace + 0.5*lk-lambda; normalize=true"
    assert in_options.fused and in_options.objective.normalize
    assert build_loss(in_spec.spec).spec() == in_spec.spec  # the canonical spec rebuilds the same objective
    with pytest.raises(ValueError, match=r"loss_options \{'normalize': True\} apply to a composite of two or more"):
        plan_objective("dpace", loss_options={"normalize": True})
    with pytest.raises(ValueError, match=r"\['normalize'\] given both in loss_type"):
        plan_objective("dpace + kl; normalize=true", loss_options={"normalize": False})
    with pytest.raises(ValueError, match="normalize=true makes a composite's weights relative.*one term"):
        build_loss("2*dpace; normalize=true")
    with pytest.raises(ValueError, match=r"unknown composite option\(s\) \['normalise'\]; accepted after ';'"):
        build_loss("dpace + kl; normalise=true")
    with pytest.raises(ValueError, match="normalize_decay=0.5 has no effect without normalize=true"):
        build_loss("dpace + kl; normalize_decay=0.5")
    with pytest.raises(ValueError, match=r"normalize_decay=1.0 is out of range; expected float in \[0, 1\)"):
        build_loss("dpace + kl; normalize=true, normalize_decay=1")
    with pytest.raises(ValueError, match="expected ',' or the end of the spec, found '\\+'"):
        build_loss("dpace; normalize=true + kl")
    with pytest.raises(ValueError, match="invalid objective name 'a;b'"):
        from specforge_dpace.losses import LossRegistry

        LossRegistry(discover=False).register("a;b", build_loss("dpace").__class__)
