"""The plugin's objectives inside SpecForge stop a run at the first non-finite loss, naming the objective.

SpecForge's trainer has no such check: a NaN loss trains on, and the hooks' metrics (sim_tau, soft_tau)
report the NaN drafter as if trained.  Real SpecForge ``OnlineDFlashModel`` (plugin installed), tiny
real target and draft on CPU.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("specforge")

import specforge.algorithms.common.dflash_family_model  # noqa: E402,F401

from specforge_dpace._finite import ENV_VAR, NonFiniteTraining  # noqa: E402

VOCAB, HIDDEN, BLOCK = 64, 32, 4


def _model(loss_type):
    from specforge.algorithms.common.dflash_family_model import OnlineDFlashModel

    from specforge_dpace.evaluate import tiny_draft, tiny_target

    target = tiny_target(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=3, seed=0)
    draft = tiny_draft(target, block_size=BLOCK, target_layer_ids=[0, 1], seed=1).train()
    return OnlineDFlashModel(
        draft_model=draft,
        target_lm_head=target.lm_head,
        target_embed_tokens=target.model.embed_tokens,
        mask_token_id=VOCAB - 1,
        block_size=BLOCK,
        attention_backend="sdpa",
        num_anchors=4,
        loss_type=loss_type,
    )


def _batch(nan: bool):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB - 1, (2, 24), generator=gen)
    hidden = torch.randn(2, 24, 2 * HIDDEN, generator=gen)
    if nan:
        hidden[:, 5] = float("nan")  # a damaged feature file
    return ids, hidden, torch.ones(2, 24, dtype=torch.long)


@pytest.mark.parametrize("loss_type", ["chain", "dpace + 0.3*first-error-focal"])
def test_a_nan_loss_stops_the_step_naming_the_objective(specforge_installed, monkeypatch, loss_type):
    monkeypatch.delenv(ENV_VAR, raising=False)
    model = _model(loss_type)
    torch.manual_seed(0)
    loss, _, _ = model(*_batch(nan=False))
    assert torch.isfinite(loss)
    with pytest.raises(NonFiniteTraining, match=r"objective '.*': the loss is nan at training forward call \d+"):
        model(*_batch(nan=True))
    with torch.no_grad(), pytest.raises(NonFiniteTraining, match="at evaluation forward call"):
        model(*_batch(nan=True))


def test_the_environment_switch_lets_a_run_train_on(specforge_installed, monkeypatch):
    monkeypatch.setenv(ENV_VAR, "1")
    loss, _, metrics = _model("chain")(*_batch(nan=True))
    assert torch.isnan(loss)  # the user asked for it
