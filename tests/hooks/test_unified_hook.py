"""The unified-runtime hook on the real SpecForge 0.2.0 classes (CPU, sdpa, tiny real models)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("specforge")

# Import every patched SpecForge module up front: with the start-up autoload armed, a first
# import inside a test would apply the patch right after an uninstall().
import specforge.algorithms.common.dflash_family_model  # noqa: E402,F401
import specforge.algorithms.model_providers  # noqa: E402,F401
import specforge.config.schema  # noqa: E402,F401
import specforge.training.controller  # noqa: E402,F401
import specforge.training.trainer  # noqa: E402,F401
from _tiny_specforge import tiny_online_model  # noqa: E402

import specforge_dpace  # noqa: E402
from specforge_dpace import hooks  # noqa: E402

BUILTIN_UPSTREAM = ["dflash", "dpace", "dpace-cumulative-confidence-only", "dpace-continuation-value-only"]
PLUGIN = ["first-error-focal", "chain", "auf", "dflash(gamma=10) + 0.3*first-error-focal + 40*chain"]


def _model_module():
    from specforge.algorithms.common import dflash_family_model

    return dflash_family_model


def _originals():
    cls = _model_module().OnlineDFlashModel
    return {name: vars(cls)[name] for name in ("__init__", "forward", "_dflash_objective_chunk_terms")}


def _step(model, batch, seed=123):
    torch.manual_seed(seed)  # anchors are sampled
    model.zero_grad(set_to_none=True)
    loss, accuracy, metrics = model(**batch)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), accuracy, metrics, grads


def test_install_is_idempotent_and_uninstall_restores_identity():
    hooks.uninstall()
    before = _originals()
    from specforge.config import schema

    field_before = schema.TrainingConfig.model_fields["loss_type"]
    applied = specforge_dpace.install()
    assert applied == [
        "unified-model",
        "unified-schema",
        "unified-providers",
        "unified-composition",
        "unified-domino-providers",
        "unified-dspark-providers",
        "unified-dflash-providers",
        "unified-evaluation",
        "unified-trainer",
        "unified-checkpoint",
    ]
    patched = _originals()
    assert all(patched[name] is not before[name] for name in before)
    assert specforge_dpace.install() == applied  # second install: no-op
    assert _originals() == patched
    assert specforge_dpace.is_installed()
    hooks.uninstall()
    after = _originals()
    assert all(after[name] is before[name] for name in before)
    assert schema.TrainingConfig.model_fields["loss_type"] is field_before
    assert "loss_options" not in schema.TrainingConfig.model_fields
    assert not specforge_dpace.is_installed()
    with pytest.raises(ValueError, match="loss_type='chain'; must be one of"):
        tiny_online_model(loss_type="chain")  # SpecForge's own validation again
    specforge_dpace.install()


@pytest.mark.parametrize("loss_type", BUILTIN_UPSTREAM)
@pytest.mark.parametrize("gamma", [None, 7.0])
def test_builtin_names_are_bit_identical_patched_vs_unpatched(loss_type, gamma):
    hooks.uninstall()
    reference_model, batch = tiny_online_model(loss_type=loss_type, loss_decay_gamma=gamma, dpace_alpha=0.3)
    ref = _step(reference_model, batch)
    specforge_dpace.install()
    patched_model, batch2 = tiny_online_model(loss_type=loss_type, loss_decay_gamma=gamma, dpace_alpha=0.3)
    got = _step(patched_model, batch2)
    assert torch.equal(ref[0], got[0]) and torch.equal(ref[1], got[1])
    assert ref[2].keys() == got[2].keys()
    for (a_num, a_den), (b_num, b_den) in zip(ref[2]["ratio_metrics"].values(), got[2]["ratio_metrics"].values()):
        assert torch.equal(a_num, b_num) and torch.equal(a_den, b_den)
    assert all(torch.equal(a, b) for a, b in zip(ref[2]["loss_terms"], got[2]["loss_terms"]))
    assert ref[3].keys() == got[3].keys()
    assert all(torch.equal(ref[3][name], got[3][name]) for name in ref[3])


@pytest.mark.parametrize("loss_type", BUILTIN_UPSTREAM)
def test_plugin_path_reproduces_builtin_numbers(specforge_installed, loss_type):
    """Forcing the plugin path (acceptance metrics on) gives the same loss and gradients in fp32."""
    plain, batch = tiny_online_model(loss_type=loss_type, loss_decay_gamma=5.0)
    ours, _ = tiny_online_model(loss_type=loss_type, loss_decay_gamma=5.0, loss_options={"acceptance_metrics": True})
    a, b = _step(plain, batch), _step(ours, batch)
    assert torch.equal(a[0], b[0])
    torch.testing.assert_close(a[2]["loss_terms"][1], b[2]["loss_terms"][1])
    assert all(torch.equal(a[3][k], b[3][k]) for k in a[3])
    assert "sim_tau" in b[2]["ratio_metrics"] and "sim_tau" not in a[2]["ratio_metrics"]


@pytest.mark.parametrize("loss_type", BUILTIN_UPSTREAM + PLUGIN)
def test_thirty_steps_on_a_fixed_batch_go_down(specforge_installed, loss_type):
    model, batch = tiny_online_model(loss_type=loss_type, seed=1)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses, taus = [], []
    for step in range(30):
        torch.manual_seed(step)
        optimizer.zero_grad()
        loss, _, metrics = model(**batch)
        numerator, denominator = metrics["loss_terms"]
        torch.testing.assert_close(numerator.detach() / denominator, loss.detach())
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)
        losses.append(loss.item())
        if "sim_tau" in metrics["ratio_metrics"]:
            num, den = metrics["ratio_metrics"]["sim_tau"]
            taus.append((num / den).item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first, (loss_type, losses)
    if taus:
        assert sum(taus[-5:]) / 5 > sum(taus[:5]) / 5, (loss_type, taus)


def test_metrics_in_specforge_trainer_form(specforge_installed):
    model, batch = tiny_online_model(loss_type="dpace + 0.5*chain", block_size=4)
    loss, accuracy, metrics = model(**batch)
    ratio = metrics["ratio_metrics"]
    expected = {
        "acc",
        "sim_tau",
        "surrogate",
        "accept_pos_1",
        "accept_pos_2",
        "accept_pos_3",
        "loss[dpace]",
        "loss[chain]",
        "loss_share[dpace]",
        "loss_share[chain]",
        "grad_share[dpace]",
        "grad_share[chain]",
    }
    assert expected == set(ratio)
    for kind in ("loss_share", "grad_share"):  # shares of one total
        assert ratio[f"{kind}[dpace]"][1] == ratio[f"{kind}[chain]"][1]
        assert float(sum(ratio[f"{kind}[{t}]"][0] for t in ("dpace", "chain")) / ratio[f"{kind}[dpace]"][1]) == (
            pytest.approx(1.0)
        )
    for numerator, denominator in ratio.values():
        assert numerator.numel() == 1 and denominator.numel() == 1 and not numerator.requires_grad
    tau = ratio["sim_tau"][0] / ratio["sim_tau"][1]
    assert 1.0 <= tau.item() <= 4.0
    assert metrics["loss_terms"][0].requires_grad and not metrics["loss_terms"][1].requires_grad


def test_chunk_size_does_not_change_plugin_loss_or_gradients(specforge_installed):
    spec = "dflash(gamma=10) + 0.3*first-error-focal + 40*chain"
    results = []
    for chunk in (0, 1, 4):
        model, batch = tiny_online_model(loss_type=spec, objective_chunk_blocks=chunk)
        results.append(_step(model, batch))
    for other in results[1:]:
        torch.testing.assert_close(other[0], results[0][0], rtol=1e-5, atol=1e-6)
        for name in results[0][3]:
            torch.testing.assert_close(other[3][name], results[0][3][name], rtol=1e-4, atol=1e-7)


def test_model_records_the_full_objective_for_the_resume_contract(specforge_installed):
    from specforge.algorithms.dflash.providers import resume_contract

    model, _ = tiny_online_model(loss_type="dpace + 0.3*first-error-focal", dpace_alpha=0.3)
    contract = resume_contract(None, model.draft_model, model)
    assert contract["dflash_loss_type"] == "dpace(alpha=0.3) + 0.3*first-error-focal"
    builtin, _ = tiny_online_model(loss_type="dpace", dpace_alpha=0.3)
    assert resume_contract(None, builtin.draft_model, builtin)["dflash_loss_type"] == "dpace"


@pytest.mark.parametrize(
    "kwargs,error",
    [
        ({"loss_type": "dpaec"}, "unknown objective 'dpaec'; registered objectives: auf, chain"),
        ({"loss_type": "dpace(alpha=2)"}, r"alpha=2.0 is out of range"),
        ({"loss_type": "dpace", "loss_options": {"beta": 1}}, r"unknown option\(s\) \['beta'\]"),
        ({"loss_type": "dpace + chain", "loss_options": {"alpha": 0.2}}, "apply only to a single-term loss_type"),
        ({"loss_type": "dpace(alpha=0.2)", "dpace_alpha": 0.7}, "conflicts with dpace_alpha=0.7"),
        ({"loss_type": "chain", "loss_options": {"fused": "yes"}}, "fused='yes' has type str"),
    ],
)
def test_constructor_errors_name_the_bad_value(specforge_installed, kwargs, error):
    with pytest.raises((ValueError, TypeError), match=error):
        tiny_online_model(**kwargs)


def test_loss_options_map_onto_specforge_arguments(specforge_installed):
    model, _ = tiny_online_model(loss_type="dpace", loss_options={"alpha": 0.2})
    assert model.loss_type == "dpace" and model.dpace_alpha == 0.2
    model, _ = tiny_online_model(loss_type="dflash", loss_options={"gamma": 7})
    assert model.loss_type == "dflash" and model.loss_decay_gamma == 7


def test_subclasses_keep_their_own_behaviour(specforge_installed):
    from specforge.algorithms.common.dflash_family_model import OnlineDominoModel

    model, _ = tiny_online_model()
    domino = OnlineDominoModel(
        draft_model=model.draft_model,
        target_lm_head=model.lm_head,
        target_embed_tokens=model.embed_tokens,
        mask_token_id=model.mask_token_id,
        block_size=model.block_size,
        attention_backend="sdpa",
    )
    assert domino.loss_type == "dflash"


def test_detect_layout_and_unknown_layout_argument():
    assert hooks.detect_layout() == "unified"
    with pytest.raises(ValueError, match="unknown layout 'newest'"):
        specforge_dpace.install(layout="newest")
