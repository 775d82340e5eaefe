"""The Triton kernels themselves against PyTorch (specforge_dpace.fused.kernels).

Without a CUDA GPU they run in Triton's interpreter on CPU tensors (tests/fused/conftest.py); on a GPU
machine the same tests run the compiled kernels on CUDA tensors.  Small sizes, and tile sizes forced small
(``block_sizes``) so that rows and columns both span several tiles with ragged tails.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from specforge_dpace.losses import soft_slot_stats

ROWS, VOCAB = 40, 97  # 3 row blocks of 16 and 4 column tiles of 32, both with a ragged tail


@pytest.fixture
def launch(kernel_device):
    from specforge_dpace.fused.kernels import launcher

    module = launcher()
    with module.block_sizes(16, 32):
        yield module


def _logits(device, dtype, seed=0, spread=3.0, rows=ROWS, vocab=VOCAB):
    gen = torch.Generator().manual_seed(seed)
    return (spread * torch.randn(rows, vocab, generator=gen)).to(device=device, dtype=dtype)


def _labels(device, seed=1, rows=ROWS, vocab=VOCAB):
    return torch.randint(0, vocab, (rows,), generator=torch.Generator().manual_seed(seed)).to(device)


def rel_err(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_hard_rows_equal_cross_entropy_and_its_gradient(launch, kernel_device, dtype):
    z = _logits(kernel_device, dtype)
    z[0, 40] = z[0, 70] = z[0].max() + 1.0  # a tie for the argmax across tiles: the first one wins
    z[1, 3] = z[1, 5] = z[1].max() + 1.0  # and within a tile
    labels = _labels(kernel_device)
    work = torch.float64 if dtype == torch.float64 else torch.float32
    nlq = torch.empty(ROWS, dtype=work, device=kernel_device)
    argmax = torch.empty(ROWS, dtype=torch.long, device=kernel_device)
    grad = z.clone()
    launch.hard_rows(grad, labels, nlq, argmax, write_grad=True)
    reference = z.to(work).requires_grad_(True)
    expected = F.cross_entropy(reference, labels, reduction="none")
    (expected_grad,) = torch.autograd.grad(expected.sum(), reference)
    tol = 1e-13 if dtype == torch.float64 else 1e-6
    assert rel_err(nlq, expected.detach()) <= tol
    assert torch.equal(argmax, z.to(work).argmax(dim=-1)) and int(argmax[0]) == 40 and int(argmax[1]) == 3
    assert grad.dtype == dtype  # in place, in the compute dtype
    assert rel_err(grad, expected_grad) <= (5e-3 if dtype == torch.bfloat16 else tol)


def test_hard_rows_without_gradient_leave_the_logits_alone(launch, kernel_device):
    z = _logits(kernel_device, torch.float32)
    before = z.clone()
    nlq = torch.empty(ROWS, device=kernel_device)
    argmax = torch.empty(ROWS, dtype=torch.long, device=kernel_device)
    launch.hard_rows(z, _labels(kernel_device), nlq, argmax, write_grad=False)
    assert torch.equal(z, before)


def _reference_stats(z, zp, temperature, labels):
    draft = z.detach().clone().requires_grad_(True)
    if labels is None:
        slots, nlq = soft_slot_stats(draft, temperature, target_logits=zp), None
    else:
        slots, nlq = soft_slot_stats(draft, temperature, target_logits=zp, labels=labels)
    return draft, slots, nlq


@pytest.mark.parametrize("temperature", [1.0, 0.7, 2.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_soft_stats_equal_the_pytorch_statistics(launch, kernel_device, temperature, dtype):
    z = _logits(kernel_device, dtype)
    zp = z + _logits(kernel_device, dtype, seed=5, spread=1.5)
    zp[2, 10] = zp[2, 60] = zp[2].max() + 2.0  # the target's argmax tie
    labels = _labels(kernel_device) if temperature == 1.0 else None
    stats, ids = launch.soft_stats(z, zp, temperature, labels=labels)
    _, slots, nlq = _reference_stats(z, zp, temperature, labels)
    tol = 1e-13 if dtype == torch.float64 else 2e-6
    assert rel_err(stats[launch.LOG_ALPHA], slots.log_alpha.detach()) <= tol
    assert rel_err(stats[launch.KL], slots.kl.detach()) <= tol
    assert torch.equal(ids[0], z.argmax(-1)) and torch.equal(ids[1], zp.argmax(-1)) and int(ids[1, 2]) == 10
    assert rel_err(stats[launch.L_ONE], torch.logsumexp(z, -1)) <= tol
    assert rel_err(stats[launch.L_Q], torch.logsumexp(z / temperature, -1)) <= tol
    assert rel_err(stats[launch.L_P], torch.logsumexp(zp / temperature, -1)) <= tol
    log_q, log_p = torch.log_softmax(z / temperature, -1), torch.log_softmax(zp / temperature, -1)
    ratio = torch.where(log_q <= log_p, log_q.exp(), 0).sum(-1) / slots.log_alpha.detach().exp()
    assert rel_err(stats[launch.RATIO], ratio) <= tol
    if labels is None:
        assert bool(torch.isnan(stats[launch.NLQ]).all())
    else:
        assert rel_err(stats[launch.NLQ], nlq.detach()) <= tol


def test_soft_stats_keep_tiny_alpha_exact(launch, kernel_device):
    """Drafter and target peaked on different tokens: alpha ~ e^-300, far below fp32's range; log alpha
    is formed online in log space, so it matches the fp64 truth."""
    z = _logits(kernel_device, torch.float32, spread=1.0)
    zp = _logits(kernel_device, torch.float32, seed=3, spread=1.0)
    z[:, 7] += 300.0
    zp[:, 90] += 300.0
    stats, _ = launch.soft_stats(z, zp, 1.0)
    truth = torch.logsumexp(torch.minimum(torch.log_softmax(z.double(), -1), torch.log_softmax(zp.double(), -1)), -1)
    assert float(stats[launch.LOG_ALPHA].max()) < -250.0
    assert rel_err(stats[launch.LOG_ALPHA], truth) <= 1e-6
    assert bool(torch.isfinite(stats[launch.RATIO]).all())


def test_soft_stats_and_directions_at_ties_q_equals_p(launch, kernel_device):
    """p = q exactly: alpha = 1, KL = 0, every element on the q side (u = 1), s / alpha = 1, and the
    log-alpha direction u q / alpha - r q is exactly zero, as the PyTorch path's gradient is."""
    z = _logits(kernel_device, torch.float32)
    stats, _ = launch.soft_stats(z, z, 1.0)
    assert float(stats[launch.LOG_ALPHA].abs().max()) <= 1e-6
    assert float(stats[launch.KL].abs().max()) <= 1e-6
    assert float((stats[launch.RATIO] - 1.0).abs().max()) <= 1e-6
    coef = torch.zeros(1, launch.BASIS, ROWS, device=kernel_device)
    coef[0, launch.W0] = 1.0
    coef[0, launch.Q0] = -stats[launch.RATIO]
    out = torch.empty_like(z)
    launch.soft_directions(
        z, z, [out], (1.0,), launch.direction_row_stats([stats]), coef, frozenset({launch.Q0, launch.W0})
    )
    draft, slots, _ = _reference_stats(z, z, 1.0, None)
    (expected,) = torch.autograd.grad(slots.log_alpha.sum(), draft)
    assert float(out.abs().max()) <= 1e-6 and float(expected.abs().max()) <= 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_directions_equal_autograd_of_the_statistics(launch, kernel_device, dtype):
    """Three outputs written in place over the draft and target logits and into a third buffer, two
    temperatures, cross-entropy at T = 1 beside them: each output is the autograd gradient (w.r.t. the
    draft logits) of its own random per-row combination of log alpha, KL and cross-entropy."""
    z = _logits(kernel_device, dtype)
    zp = z + _logits(kernel_device, dtype, seed=5, spread=1.5)
    labels = _labels(kernel_device)
    temperatures = (0.5, 2.0)
    stats = [launch.soft_stats(z, zp, t, labels=labels if i == 0 else None)[0] for i, t in enumerate(temperatures)]
    gen = torch.Generator().manual_seed(9)
    weights = torch.rand(3, 5, ROWS, generator=gen, dtype=dtype).to(kernel_device)  # la0, kl0, la1, kl1, nlq
    coef = torch.zeros(3, launch.BASIS, ROWS, dtype=stats[0].dtype, device=kernel_device)
    for slot, t in enumerate(temperatures):
        q, w, p = (launch.Q0, launch.W0, launch.P0) if slot == 0 else (launch.Q1, launch.W1, launch.P1)
        la, kl = weights[:, 2 * slot] / t, weights[:, 2 * slot + 1] / t
        coef[:, w] += la
        coef[:, q] += kl - la * stats[slot][launch.RATIO]
        coef[:, p] -= kl
    coef[:, launch.Q_ONE] += weights[:, 4]
    coef[:, launch.E_Y] -= weights[:, 4]
    basis = frozenset(range(launch.BASIS))
    a, b, third = z.clone(), zp.clone(), torch.empty_like(z)
    launch.soft_directions(
        a, b, [a, b, third], temperatures, launch.direction_row_stats(stats), coef, basis, labels=labels
    )
    draft = z.clone().requires_grad_(True)
    terms = []
    for t in temperatures:
        slots = soft_slot_stats(draft, t, target_logits=zp)
        terms += [slots.log_alpha, slots.kl]
    terms.append(F.cross_entropy(draft, labels, reduction="none"))
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    for index, out in enumerate((a, b, third)):
        total = sum((weights[index, j] * terms[j]).sum() for j in range(5))
        (expected,) = torch.autograd.grad(total, draft, retain_graph=True)
        assert rel_err(out, expected) <= tol, index


def test_block_sizes_must_be_powers_of_two(kernel_device):
    from specforge_dpace.fused.kernels import launcher

    with pytest.raises(ValueError, match="power of two, got 24"):
        with launcher().block_sizes(16, 24):
            pass


def test_launch_settings(kernel_device):
    """One row of 4096 columns a program on a GPU at large vocabularies; several rows when V is small."""
    from specforge_dpace.fused.kernels import launcher

    launch = launcher()
    if launch.INTERPRETED:
        assert launch._settings(151936)["BLOCK_R"] == launch.INTERPRETER_BLOCK[0]
        return
    assert launch._settings(151936) == {"BLOCK_R": 1, "BLOCK_V": 4096, "num_warps": 16}
    assert launch._settings(300) == {"BLOCK_R": 8, "BLOCK_V": 512, "num_warps": 16}


def test_kernels_compile_for_an_h100_without_a_gpu():
    """The compiled path (which the interpreter never exercises) accepts every kernel: Triton's compiler and
    the bundled ptxas build them for sm_90 at the GPU tile sizes, in bf16 and fp32, without spills."""
    pytest.importorskip("triton")
    import os
    import subprocess
    import sys

    if torch.cuda.is_available():
        pytest.skip("a GPU machine compiles the kernels for real in the other tests")

    script = os.path.join(os.path.dirname(__file__), "_compile_kernels.py")
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, script, "bf16", "fp32"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("REG:") == 8
