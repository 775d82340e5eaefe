"""`dflash` and the three `dpace*` names equal SpecForge 0.2.0's own objective bit for bit (fp32).

Runs the real upstream ``OnlineDFlashModel._dflash_objective_chunk_terms`` (the unpatched
function, even when the plugin hook is active) on the same hidden states and compares the
numerator, denominator and gradients with ``torch.equal``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("specforge")

from _tiny_specforge import tiny_online_model  # noqa: E402

from specforge_dpace.losses import build_loss  # noqa: E402

CASES = [
    ("dflash", {}, None),
    ("dflash", {}, 7.0),
    ("dpace", {"dpace_alpha": 0.5}, None),
    ("dpace", {"dpace_alpha": 0.0}, None),
    ("dpace-cumulative-confidence-only", {"dpace_alpha": 0.3}, None),
    ("dpace-continuation-value-only", {"dpace_alpha": 0.7}, None),
]


def upstream_chunk_terms():
    from specforge.algorithms.common.dflash_family_model import OnlineDFlashModel

    function = vars(OnlineDFlashModel)["_dflash_objective_chunk_terms"]
    return getattr(function, "__wrapped__", function)  # the original even if the hook is active


@pytest.mark.parametrize("loss_type,extra,gamma", CASES)
def test_bit_identical_to_specforge(loss_type, extra, gamma):
    model, _ = tiny_online_model(loss_type=loss_type, loss_decay_gamma=gamma, block_size=16, **extra)
    gen = torch.Generator().manual_seed(3)
    B, N, K, H = 2, 5, 16, model.lm_head.in_features
    hidden_up = torch.randn(B, N, K, H, generator=gen).requires_grad_(True)
    hidden_ours = hidden_up.detach().clone().requires_grad_(True)
    target = torch.randint(0, model.lm_head.out_features, (B, N, K), generator=gen)
    mask = (torch.rand(B, N, K, generator=gen) > 0.2).float()
    mask[..., 0] = 0
    mask[1, 3] = 0

    num_up, den_up, _, _ = upstream_chunk_terms()(model, hidden_up, target, mask)
    loss_up = num_up / (den_up if loss_type == "dflash" else num_up.new_tensor(float(B)))
    loss_up.backward()

    alpha = extra.get("dpace_alpha")
    objective = build_loss(loss_type, gamma=gamma) if loss_type == "dflash" else build_loss(loss_type, alpha=alpha)
    logits = model.lm_head(hidden_ours.reshape(B, N * K, H)).reshape(B, N, K, -1)
    nlq = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none").reshape_as(target)
    num, den = objective.chunk_terms(nlq, mask)
    value = objective.reduce(num, den, B)
    value.loss.backward()

    assert torch.equal(num[0], num_up)
    if loss_type == "dflash":
        assert torch.equal(den[0], den_up)
    assert torch.equal(value.loss, loss_up)
    assert torch.equal(hidden_ours.grad, hidden_up.grad)
