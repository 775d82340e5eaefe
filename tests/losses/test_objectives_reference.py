"""Every objective against an independent plain-Python-loop reference (values and gradients).

The references below follow DESIGN.md section 3 literally, one block and one slot at a time,
in float64, with no code shared with the package.
"""

from __future__ import annotations

import math
import zlib

import pytest
import torch

from specforge_dpace.losses import HARD_NAMES, block_loss, build_loss

# ---------------------------------------------------------------------------------------------
# slow references: l, m, c are nested lists [B][N][K]; return the loss as a python float.


def _blocks(l, m, c):
    for b in range(len(l)):
        for n in range(len(l[b])):
            yield l[b][n], m[b][n], (c[b][n] if c is not None else None)


def ref_dflash(l, m, c, B, gamma=None):
    num = den = 0.0
    for lb, mb, _ in _blocks(l, m, c):
        for k in range(len(lb)):
            w = mb[k] * (math.exp(-max(k - 1, 0) / gamma) if gamma is not None and gamma > 0 else 1.0)
            num += w * lb[k]
            den += w
    return num / den if den > 0 else 0.0


def _dpace_PW(lb, mb, alpha):
    K = len(lb)
    P, prod = [], 1.0
    for k in range(K):
        s = (1 - alpha) * math.exp(-lb[k]) + alpha if mb[k] else 1.0
        prod *= s
        P.append(prod)
    W = [sum(mb[j] * P[j] for j in range(k, K)) for k in range(K)]
    return P, W


def ref_dpace(l, m, c, B, alpha=0.5, variant="full"):
    total = 0.0
    for lb, mb, _ in _blocks(l, m, c):
        P, W = _dpace_PW(lb, mb, alpha)
        for k in range(len(lb)):
            if not mb[k]:
                continue
            w = {"full": W[k], "prefix": P[k], "continuation": W[k] / max(P[k], 1.1754943508222875e-38)}[variant]
            total += w * lb[k]
    return total / B


def ref_first_error(l, m, c, B):
    total, count = 0.0, 0
    for lb, mb, cb in _blocks(l, m, c):
        for k in range(len(lb)):
            if mb[k] and not cb[k]:
                total += lb[k]
                count += 1
                break
    return total / max(1, count)


def ref_chain(l, m, c, B):
    total, count = 0.0, 0
    for lb, mb, _ in _blocks(l, m, c):
        K = len(lb)
        if not any(mb):
            continue
        count += 1
        log_p, reward = 0.0, 0.0
        for k in range(K):
            if mb[k]:
                log_p += -lb[k]
                reward += math.exp(log_p)
        total += reward / max(K - 1, 1)
    return -total / max(1, count)


def ref_auf(l, m, c, B):
    total, count = 0.0, 0
    for lb, mb, cb in _blocks(l, m, c):
        for k in range(len(lb)):
            if not mb[k]:
                continue
            total += lb[k]
            count += 1
            if not cb[k]:
                break
    return total / max(1, count)


REFERENCES = {
    "dflash": lambda l, m, c, B: ref_dflash(l, m, c, B),
    "dflash(gamma=7)": lambda l, m, c, B: ref_dflash(l, m, c, B, gamma=7.0),
    "dpace": lambda l, m, c, B: ref_dpace(l, m, c, B, 0.5, "full"),
    "dpace(alpha=0.2)": lambda l, m, c, B: ref_dpace(l, m, c, B, 0.2, "full"),
    "dpace-cumulative-confidence-only": lambda l, m, c, B: ref_dpace(l, m, c, B, 0.5, "prefix"),
    "dpace-continuation-value-only(alpha=0.3)": lambda l, m, c, B: ref_dpace(l, m, c, B, 0.3, "continuation"),
    "first-error-focal": ref_first_error,
    "chain": ref_chain,
    "auf": ref_auf,
}


def random_case(B, N, K, seed, p_mask=0.25):
    gen = torch.Generator().manual_seed(seed)
    nlq = (torch.rand(B, N, K, generator=gen, dtype=torch.float64) * 3.0).requires_grad_(True)
    mask = (torch.rand(B, N, K, generator=gen) > p_mask).double()
    mask[..., 0] = 0.0
    if N > 1:
        mask[0, 1] = 0.0  # a fully masked block
    if K > 3:
        mask[-1, 0, 2] = 0.0  # a masked slot in the middle of a block
    correct = torch.rand(B, N, K, generator=gen) > 0.4
    return nlq, mask, correct


SHAPES = [(2, 3, 16), (3, 4, 2), (2, 3, 1), (1, 5, 5)]


@pytest.mark.parametrize("spec", list(REFERENCES))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_value_matches_loop_reference(spec, shape):
    B, N, K = shape
    nlq, mask, correct = random_case(B, N, K, seed=zlib.crc32(f"{spec}{shape}".encode()) % 1000)
    value = block_loss(spec, nlq, mask, batch_size=B, correct=correct)
    expected = REFERENCES[spec](nlq.tolist(), mask.tolist(), correct.tolist(), B)
    assert value.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


# ----- gradients: analytic per-slot gradients from the definitions, loop-written -------------


def ref_grad(spec, l, m, c, B):
    """d loss / d l_{b,n,k} from the definitions, with detached parts held constant."""
    Bn, N, K = len(l), len(l[0]), len(l[0][0])
    g = [[[0.0] * K for _ in range(N)] for _ in range(Bn)]
    name = spec.split("(")[0]
    if name == "dflash":
        gamma = 7.0 if "gamma" in spec else None
        den = 0.0
        for b in range(Bn):
            for n in range(N):
                for k in range(K):
                    w = m[b][n][k] * (math.exp(-max(k - 1, 0) / gamma) if gamma else 1.0)
                    g[b][n][k] = w
                    den += w
        return [[[x / den if den else 0.0 for x in row] for row in blk] for blk in g]
    if name.startswith("dpace"):
        alpha = {"dpace(alpha=0.2)": 0.2, "dpace-continuation-value-only(alpha=0.3)": 0.3}.get(spec, 0.5)
        variant = "prefix" if "cumulative" in name else "continuation" if "continuation" in name else "full"
        for b in range(Bn):
            for n in range(N):
                P, W = _dpace_PW(l[b][n], m[b][n], alpha)
                for k in range(K):
                    if m[b][n][k]:
                        w = {"full": W[k], "prefix": P[k], "continuation": W[k] / max(P[k], 1.1754943508222875e-38)}
                        g[b][n][k] = w[variant] / B
        return g
    if name in ("first-error-focal", "auf"):
        count = 0
        for b in range(Bn):
            for n in range(N):
                for k in range(K):
                    if not m[b][n][k]:
                        continue
                    if name == "auf":
                        g[b][n][k] = 1.0
                        count += 1
                    if not c[b][n][k]:
                        if name == "first-error-focal":
                            g[b][n][k] = 1.0
                            count += 1
                        break
        return [[[x / max(1, count) for x in row] for row in blk] for blk in g]
    if name == "chain":
        count = sum(1 for b in range(Bn) for n in range(N) if any(m[b][n]))
        for b in range(Bn):
            for n in range(N):
                log_p, prefix = 0.0, []
                for k in range(K):
                    if m[b][n][k]:
                        log_p -= l[b][n][k]
                    prefix.append(math.exp(log_p) if m[b][n][k] else 0.0)
                for j in range(K):
                    if m[b][n][j]:
                        g[b][n][j] = sum(prefix[j:]) / max(K - 1, 1) / max(1, count)
        return g
    raise AssertionError(spec)


@pytest.mark.parametrize("spec", list(REFERENCES))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gradient_matches_loop_reference(spec, shape):
    B, N, K = shape
    nlq, mask, correct = random_case(B, N, K, seed=7 + zlib.crc32(f"{spec}{shape}".encode()) % 1000)
    block_loss(spec, nlq, mask, batch_size=B, correct=correct).backward()
    expected = torch.tensor(ref_grad(spec, nlq.tolist(), mask.tolist(), correct.tolist(), B), dtype=torch.float64)
    grad = nlq.grad if nlq.grad is not None else torch.zeros_like(nlq)
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("spec", list(REFERENCES))
def test_slot_grad_equals_autograd_of_numerator(spec):
    """The analytic per-slot gradient (used by the fused path) is the autograd gradient of num."""
    nlq, mask, correct = random_case(3, 4, 16, seed=11)
    objective = build_loss(spec)
    num, _ = objective.chunk_terms(nlq, mask, correct)
    (auto,) = torch.autograd.grad(num.sum(), nlq, allow_unused=True)
    auto = torch.zeros_like(nlq) if auto is None else auto
    torch.testing.assert_close(objective.slot_grad(nlq, mask, correct)[0], auto, rtol=1e-12, atol=1e-15)


def test_every_builtin_has_a_reference():
    covered = {spec.split("(")[0] for spec in REFERENCES}
    assert covered == set(HARD_NAMES)


def test_fully_masked_batch_gives_zero_loss_not_nan():
    nlq = torch.rand(2, 3, 8, requires_grad=True)
    mask = torch.zeros(2, 3, 8)
    correct = torch.zeros(2, 3, 8, dtype=torch.bool)
    for spec in HARD_NAMES:
        value = block_loss(spec, nlq, mask, batch_size=2, correct=correct)
        assert value.item() == 0.0, spec
        value.backward()
        assert torch.isfinite(nlq.grad).all()
