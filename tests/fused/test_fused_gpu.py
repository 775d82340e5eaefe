"""The objective paths on a CUDA GPU (opt-in: ``python -m pytest -m gpu``; CI has no GPU).

The same checks the CPU suite makes, on the device: the fused path equals the plain path for hard and
soft objectives, CUDA equals CPU in float64, and a real SpecForge ``OnlineDFlashModel`` trains on the GPU
with plugin objectives (the lagged lk-lambda's state follows the device).
"""

from __future__ import annotations

import pytest
import torch
from test_fused_path import make_batch, rel_err
from test_fused_soft import target_states

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


@pytest.mark.parametrize("spec", ["dpace", "lk-lambda", "lk-lambda(lagged=true)", "soft-chain"])
def test_cuda_equals_cpu_in_float64(spec):
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
