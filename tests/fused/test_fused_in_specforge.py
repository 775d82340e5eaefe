"""The fused path inside a real patched SpecForge ``OnlineDFlashModel`` equals the plain path."""

from __future__ import annotations

import pytest
import torch
from _tiny_specforge import tiny_online_model


def _step(loss_type, fused):
    options = {"fused": True, "fused_sub_chunk": 8} if fused else None
    model, batch = tiny_online_model(loss_type=loss_type, loss_options=options, block_size=4, num_anchors=6)
    torch.manual_seed(123)  # same anchors in both runs
    loss, accuracy, metrics = model(**batch)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), accuracy.detach(), metrics, grads


@pytest.mark.parametrize(
    "loss_type", ["dpace", "dflash(gamma=7)", "dflash(gamma=10) + 0.3*first-error-focal + 40*chain"]
)
def test_fused_option_matches_plain_model(specforge_installed, loss_type):
    plain = _step(loss_type, fused=False)
    fused = _step(loss_type, fused=True)
    assert torch.allclose(fused[0], plain[0], rtol=1e-5, atol=1e-7)
    assert torch.equal(fused[1], plain[1])
    assert fused[3].keys() == plain[3].keys() and plain[3]
    for name, grad in plain[3].items():
        err = float((fused[3][name] - grad).norm() / grad.norm().clamp_min(1e-30))
        assert err <= 1e-4, (name, err)
    num_f, den_f = fused[2]["loss_terms"]
    num_p, den_p = plain[2]["loss_terms"]
    assert torch.allclose(num_f.detach(), num_p.detach(), rtol=1e-5)
    assert torch.allclose(den_f, den_p, rtol=1e-6)  # summation order differs (one sum vs per-chunk sums)
    shares_f = {k: v for k, v in fused[2]["ratio_metrics"].items() if "_share[" in k}
    shares_p = {k: v for k, v in plain[2]["ratio_metrics"].items() if "_share[" in k}
    assert shares_f.keys() == shares_p.keys() and bool(shares_p) == ("+" in loss_type)  # composites only
    for key, (num_p, den_p) in shares_p.items():
        assert torch.allclose(shares_f[key][0] / shares_f[key][1], num_p / den_p, rtol=1e-5, atol=1e-7), key


def _soft_step(loss_type, fused):
    options = {"fused": True, "fused_sub_chunk": 8} if fused else None
    model, batch = tiny_online_model(loss_type=loss_type, loss_options=options, block_size=4, num_anchors=6)
    gen = torch.Generator().manual_seed(11)
    batch["target_last_hidden_states"] = torch.randn(*batch["input_ids"].shape, 32, generator=gen)
    torch.manual_seed(123)  # same anchors in both runs
    loss, accuracy, metrics = model(**batch)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), accuracy.detach(), metrics, grads


@pytest.mark.parametrize(
    "loss_type",
    [
        "lk-lambda",
        "soft-dpace",
        "dpace + 0.5*lk-lambda",
        "kl(temperature=0.5) + tv",
        "renyi-half",
        "topk-kl(k=5)",
        "dpace(labels=target) + 0.5*renyi-half; normalize=true",
    ],
)
def test_fused_soft_objectives_match_plain_model(specforge_installed, loss_type):
    """``loss_options: {fused: true}`` with ``target_last_hidden_states``: same loss, gradients and metrics."""
    plain = _soft_step(loss_type, fused=False)
    fused = _soft_step(loss_type, fused=True)
    assert torch.allclose(fused[0], plain[0], rtol=1e-5, atol=1e-7)
    assert torch.equal(fused[1], plain[1])
    assert fused[3].keys() == plain[3].keys() and plain[3]
    for name, grad in plain[3].items():
        err = float((fused[3][name] - grad).norm() / grad.norm().clamp_min(1e-30))
        assert err <= 1e-4, (name, err)
    ratios_f, ratios_p = fused[2]["ratio_metrics"], plain[2]["ratio_metrics"]
    assert ratios_f.keys() == ratios_p.keys()
    assert any(key.startswith("soft_tau") for key in ratios_p) and "teacher_agreement" in ratios_p
    for key, (num_p, den_p) in ratios_p.items():
        num_f, den_f = ratios_f[key]
        assert torch.allclose(num_f.detach(), num_p.detach(), rtol=1e-5, atol=1e-6), key
        # a grad_share denominator is a sum of norms from fp32 Gram matrices: 1e-5
        assert torch.allclose(den_f.detach(), den_p.detach(), rtol=1e-5 if "_share[" in key else 1e-6), key
    num_f, den_f = fused[2]["loss_terms"]
    num_p, den_p = plain[2]["loss_terms"]
    assert torch.allclose(num_f.detach(), num_p.detach(), rtol=1e-5)
    assert torch.allclose(den_f, den_p, rtol=1e-6)
