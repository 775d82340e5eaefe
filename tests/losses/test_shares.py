"""Each composite term's share of the loss and of the gradient norm at the drafter's logits.

``grad_share`` is formed from ``Q`` (the Gram matrix of the terms' per-slot gradient directions, over
the sampled blocks) and the reduce step's ``d c_i / d num``; here it is checked against autograd: the
gradient of each term's contribution with respect to the full logits tensor, its norm taken directly.
"""

from __future__ import annotations

import logging

import pytest
import torch

from specforge_dpace.hooks._blocks import objective_chunk_terms, share_metrics
from specforge_dpace.losses import build_loss
from specforge_dpace.losses._shares import (
    DOMINANT_SHARE,
    ShareMonitor,
    balanced_spec,
    gradient_norms,
    loss_shares,
    sample_blocks,
)

B, N, K, H, V = 2, 4, 6, 12, 11


def setup(seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(H, V, bias=False).to(dtype).requires_grad_(False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(V, H, generator=gen, dtype=dtype))
    hidden = torch.randn(B, N, K, H, generator=gen, dtype=dtype)
    states = hidden + 0.8 * torch.randn(B, N, K, H, generator=gen, dtype=dtype)
    target = torch.randint(0, V, (B, N, K), generator=gen)
    with torch.no_grad():
        target = torch.where(torch.rand(B, N, K, generator=gen) < 0.5, head(hidden).argmax(-1), target)
    mask = torch.ones(B, N, K, dtype=dtype)
    mask[..., 0] = 0
    mask[1, 3] = 0
    mask[0, 2, 4] = 0
    return head, hidden, states, target, mask


def autograd_norms(objective, head, hidden, states, target, mask):
    """||d c_i / d logits|| per term, by autograd through the plain chunk terms with the logits as a leaf."""
    logits = head(hidden).detach().requires_grad_(True)

    class Head(torch.nn.Module):  # hands the leaf logits to the chunk terms, and target logits from states
        def forward(self, x):
            return (
                logits.reshape(x.shape[:-1] + (V,))
                if x.shape[-1] == H and x.data_ptr() == hidden.data_ptr()
                else head(x)
            )

    totals = objective_chunk_terms(objective, Head(), hidden, target, mask, states)
    value = objective.reduce(totals[0], totals[1], B)
    norms = []
    for term in value.weighted.unbind():
        (grad,) = torch.autograd.grad(term, logits, retain_graph=True)
        norms.append(grad.norm())
    return torch.stack(norms), value


SPECS = [
    "dflash(gamma=10) + 0.3*first-error-focal + 40*chain",
    "dpace + 0.5*lk-lambda",  # per-position lambda: 2K numerator entries
    "dpace + 0.5*lk-lambda; normalize=true",
    "kl(temperature=0.5) + tv + soft-dpace",  # two temperatures
    "renyi-half + topk-kl(k=3) + dpace(labels=target)",
    "auf + 0*chain",  # a switched-off term: share 0
]


@pytest.mark.parametrize("spec", SPECS)
def test_gradient_norms_from_the_gram_matrix_equal_autograds(spec):
    objective = build_loss(spec)
    head, hidden, states, target, mask = setup()
    expected, _ = autograd_norms(objective, head, hidden, states, target, mask)
    everything = torch.ones(B, N, dtype=torch.bool)
    totals = objective_chunk_terms(objective, head, hidden.requires_grad_(True), target, mask, states, everything)
    value = objective.reduce(totals[0], totals[1], B)  # normalize: the same batch again, the same magnitudes
    norms = gradient_norms(value.weighted, totals[0], totals[-1])
    torch.testing.assert_close(norms, expected, rtol=1e-9, atol=1e-12)
    if spec.startswith("auf"):
        assert float(norms[1]) == 0.0 and float(norms[0]) > 0
    shares = share_metrics(objective, value, totals[0], totals[-1])
    assert sum(float(n / d) for k, (n, d) in shares.items() if k.startswith("grad_share")) == pytest.approx(1.0)
    assert sum(float(n / d) for k, (n, d) in shares.items() if k.startswith("loss_share")) == pytest.approx(1.0)


def test_the_gram_matrix_is_additive_over_chunks_and_sampled_blocks_scale_up():
    objective = build_loss("dpace + 0.5*lk-lambda")
    head, hidden, states, target, mask = setup(1)
    everything = torch.ones(B, N, dtype=torch.bool)
    whole = objective_chunk_terms(objective, head, hidden, target, mask, states, everything)[-1]
    parts = [
        objective_chunk_terms(
            objective,
            head,
            hidden[:, i : i + 1],
            target[:, i : i + 1],
            mask[:, i : i + 1],
            states[:, i : i + 1],
            everything[:, i : i + 1],
        )[-1]
        for i in range(N)
    ]
    torch.testing.assert_close(sum(parts), whole, rtol=1e-12, atol=1e-12)
    chosen = sample_blocks(B, N, 3)
    assert chosen.tolist() == [[True, False, False, True], [False, False, True, False]]  # every third block
    sampled = objective_chunk_terms(objective, head, hidden, target, mask, states, chosen)[-1]
    by_hand = sum(parts[n] * 0 for n in range(N))  # the chosen blocks' own Q, one block at a time
    for b, n in chosen.nonzero().tolist():
        single = torch.zeros(B, N, dtype=torch.bool)
        single[b, n] = True
        by_hand = by_hand + objective_chunk_terms(objective, head, hidden, target, mask, states, single)[-1] / (B * N)
    torch.testing.assert_close(sampled, by_hand * (B * N) / 3 * 1.0, rtol=1e-12, atol=1e-12)
    assert sample_blocks(B, N, 0) is None and bool(sample_blocks(B, N, 100).all())


def test_loss_shares_and_evaluation_calls():
    weighted = torch.tensor([3.0, -1.0, 0.0])
    sizes, total = loss_shares(weighted)
    assert sizes.tolist() == [3.0, 1.0, 0.0] and float(total) == 4.0
    assert gradient_norms(weighted, torch.zeros(3), torch.eye(3)) is None  # no grad: no gradient shares


def test_the_monitor_warns_once_naming_the_terms_and_balancing_weights(caplog):
    monitor = ShareMonitor(["dpace", "lk-lambda"], [1.0, 0.5], "dpace + 0.5*lk-lambda", steps=20, check_every=5)
    dominated = torch.tensor([0.995, 0.005])
    with caplog.at_level(logging.WARNING, logger="specforge_dpace"):
        for _ in range(19):
            monitor.update(dominated, torch.tensor([0.996, 0.004]))
        assert not caplog.records  # not yet a sustained stretch
        monitor.update(torch.tensor([0.5, 0.5]), torch.tensor([0.5, 0.5]))  # the stretch breaks ...
        for _ in range(15):
            monitor.update(dominated, torch.tensor([0.996, 0.004]))
        assert not caplog.records  # ... and restarts: the window of 20 still holds the balanced step
        for _ in range(100):
            monitor.update(dominated, torch.tensor([0.996, 0.004]))
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert "one term carries more than 99 % of the gradient" in message
    assert "dpace 99.60 %, lk-lambda 0.40 %" in message
    assert "dpace + 124*lk-lambda" in message  # 0.5 * 0.996 / 0.004
    assert "'dpace + 0.5*lk-lambda; normalize=true'" in message
    assert monitor.warned


def test_the_monitor_stays_quiet_when_the_dominant_term_changes_or_shares_are_balanced(caplog):
    with caplog.at_level(logging.WARNING, logger="specforge_dpace"):
        flip = ShareMonitor(["a", "b"], [1.0, 1.0], "a + b", steps=10, check_every=1)
        for step in range(40):
            flip.update(torch.tensor([0.995, 0.005]) if step % 2 else torch.tensor([0.005, 0.995]), None)
        balanced = ShareMonitor(["a", "b"], [1.0, 1.0], "a + b", steps=10, check_every=1)
        for _ in range(40):
            balanced.update(torch.tensor([DOMINANT_SHARE - 0.01, 0.02]), None)
    assert not caplog.records


def test_balanced_spec():
    shares = torch.tensor([0.9, 0.09, 0.01])
    assert balanced_spec(["dflash(gamma=10)", "first-error-focal", "chain"], [1.0, 0.3, 40.0], shares, 0) == (
        "dflash(gamma=10) + 3*first-error-focal + 3.6e+03*chain"
    )


def test_a_real_dominated_composite_warns_during_training(caplog, monkeypatch):
    """On the tiny model D-PACE's per-sequence sum dwarfs a 0.001-weighted KL term: the monitor fires once
    within SUSTAINED_STEPS training micro-batches (forward passes with grad; 10 here); normalized at equal
    weights it does not."""
    pytest.importorskip("specforge")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from _tiny_specforge import tiny_online_model

    from specforge_dpace.losses import _shares

    monkeypatch.setattr(_shares, "SUSTAINED_STEPS", 10)
    for spec, expect in (("dpace + 0.001*kl", 1), ("dpace + kl; normalize=true", 0)):
        caplog.clear()
        model, batch = tiny_online_model(loss_type=spec)
        batch["target_last_hidden_states"] = torch.randn(
            *batch["input_ids"].shape, 32, generator=torch.Generator().manual_seed(0)
        )
        with caplog.at_level(logging.WARNING, logger="specforge_dpace"):
            for _ in range(20):
                loss, _, metrics = model(**batch)
        warnings = [r for r in caplog.records if "carries more than" in r.getMessage()]
        assert len(warnings) == expect, spec
        assert {f"grad_share[{t}]" for t in ("dpace", "kl")} <= set(metrics["ratio_metrics"])


def test_a_term_without_an_analytic_gradient_logs_loss_shares_only(caplog):
    """A third-party term with values only: the composite still trains and logs loss_share; grad_share is
    left out (said once), not guessed."""
    from specforge_dpace.losses import BlockObjective, CompositeObjective

    class ValuesOnly(BlockObjective):
        name = "values-only"

        def _terms(self, nlq, mask, correct):
            return (nlq.square() * mask).sum(), mask.sum()

    objective = CompositeObjective([(1.0, build_loss("dflash")), (1.0, ValuesOnly())])
    head, hidden, states, target, mask = setup(2)
    with caplog.at_level(logging.WARNING, logger="specforge_dpace"):
        for _ in range(2):
            totals = objective_chunk_terms(
                objective, head, hidden.requires_grad_(True), target, mask, None, torch.ones(B, N, dtype=torch.bool)
            )
            value = objective.reduce(totals[0], totals[1], B)
            shares = share_metrics(objective, value, totals[0], totals[-1])
    assert set(shares) == {"loss_share[dflash]", "loss_share[values-only]"}
    assert len([r for r in caplog.records if "without an analytic slot gradient" in r.getMessage()]) == 1
