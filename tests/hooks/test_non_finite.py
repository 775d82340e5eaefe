"""The plugin's objectives inside SpecForge stop a run at the first non-finite loss, naming the objective.

SpecForge's trainer has no such check: a NaN loss trains on, and the hooks' metrics (sim_tau, soft_tau)
report the NaN drafter as if trained.  Real SpecForge training models of each method (``OnlineDFlashModel``,
``OnlineDominoModel``, ``OnlineDSparkModel``, plugin installed), built as the demo builds them, over a tiny
real target and draft on CPU.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("specforge")

import specforge.algorithms.common.dflash_family_model  # noqa: E402,F401

from specforge_dpace._finite import ENV_VAR, NonFiniteTraining  # noqa: E402

VOCAB, HIDDEN, LAYERS = 64, 32, [0, 1]


def _model_and_batch(method: str, loss_type: str):
    from specforge_dpace.demo.train_drafter import DrafterConfig, _training_model, build_drafter
    from specforge_dpace.evaluate import tiny_target

    target = tiny_target(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=3, seed=0)
    config = DrafterConfig(block_size=4, num_anchors=4, method=method)
    model = _training_model(
        build_drafter(target, config, LAYERS, VOCAB - 1), target, loss_type, config, VOCAB - 1, None
    )
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB - 1, (2, 24), generator=gen)
    with torch.no_grad():
        last = target(ids, output_hidden_states=True).hidden_states[-1]
    extra = {"target_last_hidden_states": last} if method == "dspark" else {}
    if method == "domino":
        extra["lambda_base"] = 0.5
    return model, (ids, torch.randn(2, 24, len(LAYERS) * HIDDEN, generator=gen), torch.ones(2, 24)), extra


def _with_nan(batch):
    ids, hidden, mask = batch
    hidden = hidden.clone()
    hidden[:, 5] = float("nan")  # a damaged feature file
    return ids, hidden, mask


@pytest.mark.parametrize("method", ["dflash", "domino", "dspark"])
def test_a_nan_loss_stops_the_step_naming_the_objective(specforge_installed, monkeypatch, method):
    monkeypatch.delenv(ENV_VAR, raising=False)
    model, batch, extra = _model_and_batch(method, "dpace + 0.3*first-error-focal")
    torch.manual_seed(0)
    loss, _, _ = model(*batch, **extra)
    assert torch.isfinite(loss)
    pattern = r"objective 'dpace \+ 0.3\*first-error-focal': the loss is nan at training forward call \d+ of this"
    with pytest.raises(NonFiniteTraining, match=pattern):
        model(*_with_nan(batch), **extra)
    with torch.no_grad(), pytest.raises(NonFiniteTraining, match="at evaluation forward call"):
        model(*_with_nan(batch), **extra)


def test_the_environment_switch_lets_a_run_train_on(specforge_installed, monkeypatch):
    monkeypatch.setenv(ENV_VAR, "1")
    model, batch, extra = _model_and_batch("dflash", "chain")
    loss, _, _ = model(*_with_nan(batch), **extra)
    assert torch.isnan(loss)  # the user asked for it
