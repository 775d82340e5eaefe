"""Every behaviour SpecForge's own DFlash loss tests assert still holds with the plugin installed.

SpecForge's ``tests/test_utils/test_dflash_losses.py`` (read, not copied) checks the unified
``OnlineDFlashModel``'s objective against naive formulas. These are our own tests of the same
behaviours, run on the *patched* class with a real tiny ``DFlashDraftModel`` in float64, along
each path the plugin can take for a built-in name: SpecForge's own code (pass-through), the
plugin's chunked objective (``acceptance_metrics: true``) and the fused path (``fused: true``).
Anchors are fixed so the reference can be computed from the same draft output.
"""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("specforge")

import specforge.algorithms.common.dflash_family_model  # noqa: E402,F401
from _tiny_specforge import tiny_online_model  # noqa: E402

PATHS = {
    "specforge": None,
    "plugin": {"acceptance_metrics": True},
    "fused": {"fused": True},
}

ANCHORS = torch.tensor([[3, 9, 20], [4, 12, 17]])
KEEP = torch.tensor([[True, True, True], [True, True, False]])


def _model(path, *, loss_type="dflash", chunk=2, **kwargs):
    model, batch = tiny_online_model(
        loss_type=loss_type, loss_options=PATHS[path], objective_chunk_blocks=chunk, num_anchors=3, **kwargs
    )
    model = model.double()
    batch = {k: (v.double() if v.is_floating_point() else v) for k, v in batch.items()}

    def fixed(self, seq_len, loss_mask, device):
        return ANCHORS.to(device), KEEP.to(device)

    model._sample_anchor_positions = types.MethodType(fixed, model)
    return model, batch


def _reference(model, batch):
    """``(neg_log_q, mask, correct)`` recomputed from the model's own draft output."""
    with torch.no_grad():
        anchors, keep, hidden = model._forward_draft_blocks(**batch)
        B, N, K = anchors.shape[0], anchors.shape[1], model.block_size
        logits = model.lm_head(hidden).reshape(B, N, K, -1)
        input_ids, loss_mask = batch["input_ids"], batch["loss_mask"]
        positions = anchors.unsqueeze(-1) + torch.arange(K)
        safe = positions.clamp(max=input_ids.shape[1] - 1)
        targets = torch.gather(input_ids.unsqueeze(1).expand(-1, N, -1), 2, safe)
        mask = keep.unsqueeze(-1).double() * (positions < input_ids.shape[1]).double()
        mask = mask * (torch.arange(K) > 0).double() * torch.gather(loss_mask.unsqueeze(1).expand(-1, N, -1), 2, safe)
        nlq = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
        correct = (logits.argmax(-1) == targets) & (mask > 0.5)
    return nlq.view(B, N, K), mask, correct


def _naive_dpace_weight(q, mask, alpha, loss_type):
    smooth = torch.where(mask > 0, (1 - alpha) * q + alpha, torch.ones_like(q))
    prefix = torch.cumprod(smooth, dim=-1)
    if loss_type == "dpace-cumulative-confidence-only":
        return prefix
    suffix = torch.flip(torch.cumsum(torch.flip(prefix * mask, [-1]), -1), [-1])
    return suffix if loss_type == "dpace" else suffix / prefix


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("gamma", [None, 7.0])
def test_dflash_is_the_decayed_weighted_mean(path, gamma):
    model, batch = _model(path, loss_decay_gamma=gamma)
    loss, accuracy, metrics = model(**batch)
    nlq, mask, correct = _reference(model, batch)
    weight = mask.clone()
    if gamma is not None:
        weight = weight * torch.exp(-(torch.arange(mask.shape[-1]) - 1).clamp(min=0).double() / gamma)
    torch.testing.assert_close(loss, (nlq * weight).sum() / weight.sum(), rtol=0, atol=1e-10)
    num, den = metrics["loss_terms"]
    assert num.requires_grad
    torch.testing.assert_close(loss, num / den)
    acc_num, acc_den = metrics["ratio_metrics"]["acc"]
    torch.testing.assert_close(accuracy, acc_num / acc_den)
    assert acc_num.item() == correct.sum().item() and acc_den.item() == mask.sum().item()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("loss_type", ["dpace", "dpace-cumulative-confidence-only", "dpace-continuation-value-only"])
def test_dpace_family_matches_naive_reference_and_reduces_by_batch(path, loss_type):
    model, batch = _model(path, loss_type=loss_type, dpace_alpha=0.5)
    loss, _, metrics = model(**batch)
    nlq, mask, _ = _reference(model, batch)
    weight = _naive_dpace_weight(torch.exp(-nlq), mask, 0.5, loss_type)
    weighted = (nlq * weight * mask).sum()
    B = batch["input_ids"].shape[0]
    torch.testing.assert_close(loss, weighted / B, rtol=0, atol=1e-10)
    torch.testing.assert_close(metrics["loss_terms"][0], weighted, rtol=0, atol=1e-10)
    torch.testing.assert_close(metrics["loss_terms"][1], loss.new_tensor(float(B)))
    assert not torch.allclose(loss, weighted / (weight * mask).sum())  # per sequence, not per token


@pytest.mark.parametrize("path", PATHS)
def test_alpha_changes_dpace(path):
    low = _model(path, loss_type="dpace", dpace_alpha=0.1)
    high = _model(path, loss_type="dpace", dpace_alpha=0.9)
    assert abs(low[0](**low[1])[0].item() - high[0](**high[1])[0].item()) > 1e-8


@pytest.mark.parametrize("path", PATHS)
def test_partial_tail_has_one_finite_target(path):
    model, batch = _model(path)
    seq_len = batch["input_ids"].shape[1]
    model._sample_anchor_positions = types.MethodType(
        lambda self, s, m, d: (torch.tensor([[seq_len - 2]]), torch.tensor([[True]])), model
    )
    one = {k: v[:1] for k, v in batch.items()}
    one["loss_mask"] = torch.ones_like(one["loss_mask"])
    loss, _, metrics = model(**one)
    nlq, mask, _ = _reference(model, one)
    assert mask.sum().item() == 1.0
    torch.testing.assert_close(loss, nlq[mask > 0].sum())
    torch.testing.assert_close(metrics["loss_terms"][1], loss.new_tensor(1.0))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("loss_type", ["dflash", "dpace", "dpace-cumulative-confidence-only"])
def test_chunking_changes_neither_loss_nor_gradients(path, loss_type):
    results = []
    for chunk in (0, 1):
        model, batch = _model(path, loss_type=loss_type, loss_decay_gamma=3.0, chunk=chunk)
        loss, accuracy, metrics = model(**batch)
        loss.backward()
        grads = [p.grad.clone() for p in model.draft_model.parameters() if p.grad is not None]
        results.append((loss.detach(), accuracy, metrics["accuracy_denom"], grads))
    (loss0, acc0, den0, grads0), (loss1, acc1, den1, grads1) = results
    torch.testing.assert_close(loss1, loss0, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(acc1, acc0)
    torch.testing.assert_close(den1, den0)
    assert grads0 and len(grads0) == len(grads1)
    for g0, g1 in zip(grads0, grads1):
        torch.testing.assert_close(g1, g0, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("path", PATHS)
def test_invalid_loss_type_names_loss_type(path):
    with pytest.raises(ValueError, match="loss_type") as info:
        _model(path, loss_type="topk_mask")
    assert "dpace" in str(info.value)  # and lists what is accepted


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("alpha", [1.5, -0.1, float("nan")])
def test_invalid_dpace_alpha_names_dpace_alpha(path, alpha):
    with pytest.raises(ValueError, match="dpace_alpha"):
        _model(path, loss_type="dpace", dpace_alpha=alpha)


def test_sampler_still_refuses_a_batch_without_adjacent_targets():
    model, batch = tiny_online_model()
    loss_mask = torch.tensor([[1.0, 0.0, 1.0]])
    with pytest.raises(ValueError, match="two consecutive"):
        model._sample_anchor_positions(3, loss_mask, loss_mask.device)
