"""The objective paths on a CUDA GPU (opt-in: ``python -m pytest -m gpu``; CI has no GPU).

The same checks the CPU suite makes, on the device: the fused path equals the plain path for hard and
soft objectives, CUDA equals CPU in float64, and a real SpecForge ``OnlineDFlashModel`` trains on the GPU
with plugin objectives (the lagged lk-lambda's state follows the device).  On CUDA tensors both paths run
the Triton kernels by default (docs/gpu-kernels.md), so these comparisons are kernels against kernels and
against the CPU's PyTorch path; the ``kernels`` tests below compare them with the PyTorch code on the same
GPU (``kernel_mode("off")``), check that they run by default, and that the hard path's bf16 buffers stay bf16.
tests/fused/test_kernels*.py run the compiled kernels on CUDA too when a GPU is present.
"""

from __future__ import annotations

import pytest
import torch
from test_fused_path import make_batch, rel_err
from test_fused_soft import target_states

from specforge_dpace.fused import fused_objective_terms
from specforge_dpace.fused.kernels import kernel_mode, launcher
from specforge_dpace.hooks._blocks import objective_chunk_terms
from specforge_dpace.hooks._fused_bridge import fused_totals
from specforge_dpace.losses import build_loss

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

SPECS = (
    "dflash(gamma=7)",
    "dpace",
    "dflash(gamma=10) + 0.3*first-error-focal + 40*chain",
    "lk-alpha",
    "lk-lambda",
    "lk-lambda(lagged=true)",
    "kl(temperature=0.5) + tv",
    "soft-dpace",
    "dpace + 0.5*lk-lambda",
)


def _on(device, dtype, seed=0, vocab=3000):
    head, hidden, target, mask = make_batch(dtype, seed=seed, blocks=6, slots=16, width=64, vocab=vocab)
    head = head.to(device)
    hidden = hidden.detach().to(device).requires_grad_(True)
    states = target_states(hidden.cpu(), seed=seed).to(device)
    return head, hidden, target.to(device), mask.to(device), states


def _both(spec, device, dtype, sub_chunk_tokens=32, seed=0):
    head, hidden, target, mask, states = _on(device, dtype, seed)
    plain_objective, fused_objective = build_loss(spec), build_loss(spec)
    soft = getattr(plain_objective, "needs_target", False)
    extra = (states,) if soft else ()
    plain = objective_chunk_terms(plain_objective, head, hidden, target, mask, *extra)
    fused = fused_totals(fused_objective, head, hidden, target, mask, sub_chunk_tokens, states if soft else None)
    values = []
    for objective, totals in ((plain_objective, plain), (fused_objective, fused)):
        value = objective.reduce(totals[0], totals[1], hidden.shape[0]).loss
        (grad,) = torch.autograd.grad(value, hidden)
        values.append((value.detach().double().cpu(), grad.double().cpu()))
    return values


@pytest.mark.parametrize("spec", SPECS)
def test_fused_equals_plain_on_cuda_fp32(spec):
    (plain_loss, plain_grad), (fused_loss, fused_grad) = _both(spec, "cuda", torch.float32)
    assert torch.isfinite(fused_loss) and float(fused_grad.abs().sum()) > 0
    assert abs(float(fused_loss - plain_loss)) <= 1e-5 * max(1.0, abs(float(plain_loss)))
    assert rel_err(fused_grad, plain_grad) <= 1e-4


@pytest.mark.parametrize("spec", ["lk-alpha", "lk-lambda", "dpace + 0.5*lk-lambda", "dpace"])
def test_fused_bf16_head_on_cuda_within_two_percent(spec):
    (plain_loss, plain_grad), (fused_loss, fused_grad) = _both(spec, "cuda", torch.bfloat16)
    assert abs(float(fused_loss - plain_loss)) <= 2e-2 * max(1.0, abs(float(plain_loss)))
    assert rel_err(fused_grad, plain_grad) <= 5e-2


@pytest.mark.parametrize(
    "spec",
    ["dpace", "lk-lambda", "lk-lambda(lagged=true)", "soft-chain", "kl(temperature=0.5) + tv", "dpace + 0.5*lk-lambda"],
)
def test_cuda_equals_cpu_in_float64(spec):
    """CUDA runs the kernels in fp64 (fused and plain), the CPU the PyTorch code."""
    cpu = _both(spec, "cpu", torch.float64)
    cuda = _both(spec, "cuda", torch.float64)
    for (cpu_loss, cpu_grad), (cuda_loss, cuda_grad) in zip(cpu, cuda):
        assert float(abs(cuda_loss - cpu_loss)) <= 1e-10 * max(1.0, abs(float(cpu_loss)))
        assert rel_err(cuda_grad, cpu_grad) <= 1e-9


@pytest.mark.parametrize(
    "loss_type, options",
    [
        ("dpace", None),
        ("dpace", {"fused": True}),
        ("lk-lambda(lagged=true)", {"fused": True}),
        ("dpace + 0.5*lk-lambda", None),
    ],
)
def test_real_specforge_model_trains_on_cuda(specforge_installed, loss_type, options):
    """Twelve AdamW steps on one batch lower the loss at fixed anchors (evaluated without grad; for the
    lagged lk-lambda with a fresh lambda state, lambda = 1, both times, so the two values compare)."""
    from _tiny_specforge import tiny_online_model

    from specforge_dpace.hooks._unified import PLAN_ATTR
    from specforge_dpace.losses._soft import LaggedAlpha

    model, batch = tiny_online_model(loss_type=loss_type, loss_options=options, objective_chunk_blocks=1)
    if "lk-" in loss_type:  # soft objectives read the target's last hidden state too
        gen = torch.Generator().manual_seed(4)
        batch["target_last_hidden_states"] = torch.randn(*batch["input_ids"].shape, 32, generator=gen)
    model = model.cuda()
    batch = {key: value.cuda() for key, value in batch.items()}
    plan = getattr(model, PLAN_ATTR)
    lagged = getattr(plan.objective, "_lagged", None) if plan is not None else None

    def fixed_anchor_loss() -> float:
        training_state = plan.objective._lagged if lagged is not None else None
        if lagged is not None:
            plan.objective._lagged = LaggedAlpha()
        torch.manual_seed(1000)
        with torch.no_grad():
            value = float(model(**batch)[0])
        if lagged is not None:
            plan.objective._lagged = training_state
        return value

    before = fixed_anchor_loss()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for step in range(12):
        torch.manual_seed(step)
        optimizer.zero_grad()
        loss, _, _ = model(**batch)
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss) and loss.device.type == "cuda"
    if lagged is not None:
        assert plan.objective._lagged.mean(4, loss).device.type == "cuda"
    after = fixed_anchor_loss()
    assert after < before, (before, after)


KERNEL_SPECS = SPECS + ("kl", "tv", "soft-chain", "lk-alpha(temperature=2)", "lk-lambda(per_token=true)")


def _fused_and_plain(spec, mode, dtype=torch.float32, sub_chunk_tokens=None):
    with kernel_mode(mode):
        return _both(spec, "cuda", dtype, sub_chunk_tokens=sub_chunk_tokens)


@pytest.mark.parametrize("spec", KERNEL_SPECS)
def test_kernels_equal_pytorch_on_cuda_fp32(spec):
    """Fused and plain paths with the kernels against the same paths' PyTorch code on the GPU."""
    for (ref_loss, ref_grad), (loss, grad) in zip(_fused_and_plain(spec, "off"), _fused_and_plain(spec, "auto")):
        assert abs(float(loss - ref_loss)) <= 1e-5 * max(1.0, abs(float(ref_loss)))
        assert float(grad.abs().sum()) > 0 and rel_err(grad, ref_grad) <= 1e-4


@pytest.mark.parametrize("spec", ["dpace", "lk-alpha", "kl", "tv", "lk-lambda", "dpace + 0.5*lk-lambda"])
def test_kernels_bf16_within_bf16_tolerance_on_cuda(spec):
    for (ref_loss, ref_grad), (loss, grad) in zip(
        _fused_and_plain(spec, "off", torch.bfloat16), _fused_and_plain(spec, "auto", torch.bfloat16)
    ):
        assert abs(float(loss - ref_loss)) <= 2e-2 * max(1.0, abs(float(ref_loss)))
        assert rel_err(grad, ref_grad) <= 5e-2


def test_kernels_run_by_default_on_cuda(monkeypatch):
    launch = launcher()
    ran = []
    for name in ("hard_rows", "soft_stats", "soft_directions"):
        real = getattr(launch, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            ran.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(launch, name, counted)
    _both("dpace", "cuda", torch.float32)
    _both("lk-alpha", "cuda", torch.float32)
    assert {"hard_rows", "soft_stats", "soft_directions"} <= set(ran)


@pytest.mark.parametrize("spec", ["lk-alpha", "dpace + 0.5*lk-lambda"])
def test_kernels_tiny_alpha_on_cuda(spec):
    results = []
    for mode in ("off", "auto"):
        head, hidden, target, mask = make_batch(bias=False)
        head, target, mask = head.cuda(), target.cuda(), mask.cuda()
        hidden = (60.0 * hidden.detach()).cuda().requires_grad_(True)
        with kernel_mode(mode):
            terms = fused_objective_terms(build_loss(spec), hidden, head, target, mask, target_hidden=-hidden.detach())
        (grad,) = torch.autograd.grad(terms.num.sum(), hidden)
        results.append((terms, grad))
    (ref, ref_grad), (out, grad) = results
    assert float(out.soft[1.0].log_alpha.max()) < -80.0 and bool(torch.isfinite(grad).all())
    assert rel_err(out.num.detach(), ref.num.detach()) <= 1e-5 and rel_err(grad, ref_grad) <= 1e-4


def _peak_bytes(fn) -> int:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


@pytest.mark.parametrize("spec", ["dpace", "lk-alpha"])
def test_kernel_paths_keep_bf16_buffers_on_cuda(spec):
    """bf16 head, 1024 tokens in sub-chunks of 512, V = 32000: with the kernels the fused path's peak is about
    its bf16 logits buffers (one for hard objectives, 1.5 for soft ones) plus small per-row and [tokens, H]
    tensors; the PyTorch pass adds fp32 copies on top."""
    vocab, tokens, width, sub_chunk = 32000, 1024, 256, 512
    head, hidden, target, mask = make_batch(torch.bfloat16, batch=1, blocks=tokens // 16, slots=16, width=width,
                                            vocab=vocab, bias=False)  # fmt: skip
    head, target, mask = head.cuda(), target.cuda(), mask.cuda()
    hidden = hidden.detach().cuda().requires_grad_(True)
    objective = build_loss(spec)
    states = target_states(hidden.cpu()).cuda() if objective.needs_target else None

    def run():
        terms = fused_objective_terms(objective, hidden, head, target, mask, sub_chunk_tokens=sub_chunk,
                                      target_hidden=states)  # fmt: skip
        torch.autograd.grad(terms.num.sum(), hidden)

    with kernel_mode("off"):
        run()
        pytorch = _peak_bytes(run)
    run()
    kernels = _peak_bytes(run)
    buffers = (1.0 if not objective.needs_target else 1.5) * sub_chunk * vocab * 2
    assert kernels <= buffers + 4 * tokens * width * 4 + 64 * 2**20, (kernels, buffers)
    assert kernels <= 0.6 * pytorch, (kernels, pytorch)
