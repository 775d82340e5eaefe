"""Plugin objectives inside SpecForge's Domino and DSpark models (real classes, real tiny draft models, CPU).

Parity: with ``loss_type`` unset or upstream's default, the patched classes run SpecForge's own code
(torch.equal on loss, accuracy, metrics and every gradient, patched vs unpatched).  Formulas: the
plugin objective inside each method against naive loop references, with the parts SpecForge keeps
(Domino's base term and ``lambda_base``, DSpark's confidence loss) formed independently.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("specforge")

import specforge.algorithms.common.dflash_family_model  # noqa: E402,F401  (see test_unified_hook)
import specforge.algorithms.model_providers  # noqa: E402,F401
import specforge.config.schema  # noqa: E402,F401
from _tiny_methods import step, tiny_domino, tiny_dspark  # noqa: E402

import specforge_dpace  # noqa: E402
from specforge_dpace import hooks  # noqa: E402

COMPOSITE = "dflash(gamma=7) + 0.3*first-error-focal + 4*chain"


def _classes():
    from specforge.algorithms.common import dflash_family_model as module

    return module.OnlineDominoModel, module.OnlineDSparkModel


def _equal_metrics(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if key == "ratio_metrics":
            _equal_metrics(a[key], b[key])
        elif isinstance(a[key], tuple):
            assert all(torch.equal(x, y) for x, y in zip(a[key], b[key])), key
        else:
            assert torch.equal(torch.as_tensor(a[key]), torch.as_tensor(b[key])), key


def _assert_identical(ref, got):
    assert torch.equal(ref[0], got[0]) and torch.equal(ref[1], got[1])
    _equal_metrics(ref[2], got[2])
    assert ref[3].keys() == got[3].keys() and ref[3]
    assert all(torch.equal(ref[3][name], got[3][name]) for name in ref[3])


def _unpatched(build, **kwargs):
    hooks.uninstall()
    try:
        model, batch = build(**kwargs)
        cls = type(model)
        assert not hasattr(vars(cls)["forward"], "__specforge_dpace_patched__")
        return model, batch
    finally:
        specforge_dpace.install()


# -- parity: the methods' own objectives are SpecForge's code ------------------------------------------


@pytest.mark.parametrize("shift_label", [True, False])
@pytest.mark.parametrize("gamma", [None, 7.0])
@pytest.mark.parametrize("spelled", [None, "dflash"])
def test_domino_default_is_bit_identical_patched_vs_unpatched(shift_label, gamma, spelled):
    model, batch = _unpatched(tiny_domino, shift_label=shift_label, loss_decay_gamma=gamma)
    batch.pop("target_last_hidden_states")
    batch["lambda_base"] = 0.3
    ref = step(model, batch)
    kwargs = {} if spelled is None else {"loss_type": spelled}
    patched, batch2 = tiny_domino(shift_label=shift_label, loss_decay_gamma=gamma, **kwargs)
    assert patched.loss_type == "dflash"
    batch2.pop("target_last_hidden_states")
    batch2["lambda_base"] = 0.3
    _assert_identical(ref, step(patched, batch2))


def test_domino_gamma_in_the_spec_is_dominos_own_decay():
    model, batch = _unpatched(tiny_domino, loss_decay_gamma=7.0)
    batch.pop("target_last_hidden_states")
    ref = step(model, batch)
    patched, batch2 = tiny_domino(loss_type="dflash(gamma=7)")
    assert patched.loss_decay_gamma == 7.0 and patched.loss_type == "dflash"
    batch2.pop("target_last_hidden_states")
    _assert_identical(ref, step(patched, batch2))


@pytest.mark.parametrize("gamma", [None, 5.0])
@pytest.mark.parametrize("heads", [(8, True), (0, False)])
@pytest.mark.parametrize("spelled", [None, "dflash"])
def test_dspark_default_is_bit_identical_patched_vs_unpatched(gamma, heads, spelled):
    markov_rank, confidence = heads
    model, batch = _unpatched(tiny_dspark, loss_decay_gamma=gamma, markov_rank=markov_rank, confidence=confidence)
    ref = step(model, batch)
    kwargs = {} if spelled is None else {"loss_type": spelled}
    patched, batch2 = tiny_dspark(loss_decay_gamma=gamma, markov_rank=markov_rank, confidence=confidence, **kwargs)
    assert patched.loss_type == "dspark"
    _assert_identical(ref, step(patched, batch2))


def test_uninstall_restores_the_subclasses_and_install_is_idempotent():
    domino, dspark = _classes()
    hooks.uninstall()
    before = {cls: (vars(cls)["__init__"], vars(cls)["forward"]) for cls in (domino, dspark)}
    specforge_dpace.install()
    patched = {cls: (vars(cls)["__init__"], vars(cls)["forward"]) for cls in (domino, dspark)}
    assert all(patched[cls][i] is not before[cls][i] for cls in before for i in (0, 1))
    specforge_dpace.install()
    assert {cls: (vars(cls)["__init__"], vars(cls)["forward"]) for cls in (domino, dspark)} == patched
    hooks.uninstall()
    assert {cls: (vars(cls)["__init__"], vars(cls)["forward"]) for cls in (domino, dspark)} == before
    with pytest.raises(TypeError, match="loss_type"):
        tiny_domino(loss_type="dpace")  # SpecForge's own Domino has no objective argument
    specforge_dpace.install()


# -- naive references ----------------------------------------------------------------------------------


def _naive_dpace(nlq, mask, alpha, batch_size):
    """Loops over blocks and slots; invalid slots are no-ops in the prefix product and the suffix sum."""
    total = nlq.new_zeros(())
    q = torch.exp(-nlq.detach())
    for b in range(nlq.shape[0]):
        for n in range(nlq.shape[1]):
            slots = nlq.shape[2]
            prefix, running = [], 1.0
            for k in range(slots):
                if mask[b, n, k] > 0:
                    running = running * ((1 - alpha) * q[b, n, k].item() + alpha)
                prefix.append(running)
            for k in range(slots):
                if mask[b, n, k] > 0:
                    suffix = sum(prefix[j] for j in range(k, slots) if mask[b, n, j] > 0)
                    total = total + suffix * nlq[b, n, k]
    return total / batch_size


def _naive_chain(nlq, mask, supervisable):
    """``-mean over blocks with a valid slot of (1/supervisable) * sum_k exp(sum_{i<=k} -l_i)`` (valid slots)."""
    rewards, blocks = nlq.new_zeros(()), 0
    for b in range(nlq.shape[0]):
        for n in range(nlq.shape[1]):
            valid = [k for k in range(nlq.shape[2]) if mask[b, n, k] > 0]
            if not valid:
                continue
            blocks += 1
            running = nlq.new_zeros(())
            for k in valid:
                running = running - nlq[b, n, k]
                rewards = rewards + torch.exp(running) / supervisable
    return -rewards / max(blocks, 1)


def _domino_pieces(model, batch, seed=123):
    """SpecForge's Domino labels, masks and logits for the anchors ``step(seed)`` samples, formed here."""
    torch.manual_seed(seed)
    input_ids, loss_mask = batch["input_ids"], batch["loss_mask"]
    anchors, keep, output_hidden = model._forward_draft_blocks(
        input_ids=input_ids, hidden_states=batch["hidden_states"], loss_mask=loss_mask
    )
    bsz, seq_len = input_ids.shape
    start = 1 if model.shift_label else 0
    idx = anchors.unsqueeze(-1) + torch.arange(start, start + model.block_size).view(1, 1, -1)
    safe = idx.clamp(max=seq_len - 1)
    targets = torch.gather(input_ids.unsqueeze(1).expand(-1, anchors.shape[1], -1), 2, safe)
    valid = keep.unsqueeze(-1).float() * (idx < seq_len).float()
    if not model.shift_label:
        valid = valid * (torch.arange(model.block_size) > 0).float()
    valid = valid * torch.gather(loss_mask.unsqueeze(1).expand(-1, anchors.shape[1], -1), 2, safe)
    hidden4d, prev_ids = model._build_domino_head_inputs(input_ids, anchors, targets, output_hidden)
    base = model.lm_head(hidden4d)
    final = model._apply_domino_head(base, hidden4d, prev_ids, targets)
    return targets, valid, base, final


def _ce(logits, targets):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none").view_as(targets)


def _reference_grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _close(got, ref, rtol=1e-5, atol=1e-7):
    torch.testing.assert_close(got[0], ref[0].detach(), rtol=rtol, atol=atol)
    assert got[3].keys() == ref[1].keys()
    for name in ref[1]:
        torch.testing.assert_close(got[3][name], ref[1][name], rtol=rtol * 10, atol=atol * 10)


# -- Domino --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shift_label", [True, False])
def test_dpace_inside_domino_replaces_the_final_term_only(specforge_installed, shift_label):
    model, batch = tiny_domino(shift_label=shift_label, loss_type="dpace", dpace_alpha=0.3, loss_decay_gamma=4.0)
    batch.pop("target_last_hidden_states")
    batch["lambda_base"] = 0.25
    got = step(model, batch)

    targets, valid, base, final = _domino_pieces(model, batch)
    decay = torch.exp(-(torch.arange(model.block_size) - (0 if shift_label else 1)).clamp(min=0).float() / 4.0)
    weights = valid * decay
    base_loss = (_ce(base, targets) * weights).sum() / (weights.sum() + 1e-6)
    final_loss = _naive_dpace(_ce(final, targets), valid, 0.3, batch["input_ids"].shape[0])
    reference = 0.75 * final_loss + 0.25 * base_loss
    _close(got, (reference, _reference_grads(model, reference)))
    torch.testing.assert_close(got[2]["final_loss"], final_loss.detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got[2]["base_loss"], base_loss.detach(), rtol=1e-5, atol=1e-7)


def test_chain_inside_domino_with_shift_label_scales_by_the_supervisable_slots(specforge_installed):
    model, batch = tiny_domino(shift_label=True, loss_type="chain")
    batch.pop("target_last_hidden_states")
    got = step(model, batch)
    targets, valid, _, final = _domino_pieces(model, batch)
    reference = _naive_chain(_ce(final, targets), valid, supervisable=model.block_size)
    _close(got, (reference, _reference_grads(model, reference)))


@pytest.mark.parametrize("shift_label", [True, False])
def test_plugin_dflash_inside_domino_matches_dominos_own_loss(specforge_installed, shift_label):
    """The plugin's ``dflash(gamma)`` on Domino's validity mask equals Domino's own decayed CE (up to its 1e-6):
    the decay starts at the first supervised slot with and without ``shift_label``."""
    own, batch = tiny_domino(shift_label=shift_label, loss_decay_gamma=3.0)
    batch.pop("target_last_hidden_states")
    batch["lambda_base"] = 0.4
    ours, _ = tiny_domino(shift_label=shift_label, loss_decay_gamma=3.0, loss_options={"acceptance_metrics": True})
    assert ours.loss_type == "dflash(gamma=3)" and "sim_tau" in step(ours, batch)[2]
    a, b = step(own, batch), step(ours, batch)
    torch.testing.assert_close(b[0], a[0], rtol=1e-6, atol=1e-7)
    for name in a[3]:
        torch.testing.assert_close(b[3][name], a[3][name], rtol=1e-5, atol=1e-7)
    for key in ("base_loss", "base_accuracy", "accept_len", "base_accept_len", "accuracy_denom"):
        assert torch.equal(a[2][key], b[2][key]), key
    assert torch.equal(a[1], b[1])


def test_domino_plugin_metrics_are_scalars_its_strategy_logs(specforge_installed):
    model, batch = tiny_domino(loss_type=COMPOSITE)
    batch.pop("target_last_hidden_states")
    _, _, metrics, _ = step(model, batch)
    expected = {"sim_tau", "surrogate", "loss[dflash(gamma=7)]", "loss[first-error-focal]", "loss[chain]"}
    expected |= {f"accept_pos_{k}" for k in range(1, model.block_size + 1)}  # shift_label: K drafted tokens
    assert expected <= set(metrics)
    assert all(metrics[name].numel() == 1 and not metrics[name].requires_grad for name in expected)
    assert 1.0 <= metrics["sim_tau"].item() <= model.block_size + 1
    parts = metrics["loss[dflash(gamma=7)]"] + 0.3 * metrics["loss[first-error-focal]"] + 4 * metrics["loss[chain]"]
    torch.testing.assert_close(metrics["final_loss"], parts, rtol=1e-5, atol=1e-6)
    assert "loss_terms" not in metrics  # Domino reports no loss terms (see the module docstring)


def test_soft_objective_inside_domino_reads_p_of_the_right_position(specforge_installed):
    """On the target's own greedy continuation argmax p is the label at every supervised slot."""
    for shift_label in (True, False):
        model, batch = tiny_domino(shift_label=shift_label, loss_type="lk-lambda", greedy=True)
        _, _, metrics, _ = step(model, batch)
        assert metrics["teacher_agreement"].item() == 1.0, shift_label


def test_soft_objective_inside_domino_names_the_missing_key(specforge_installed):
    model, batch = tiny_domino(loss_type="soft-dpace")
    batch.pop("target_last_hidden_states")
    with pytest.raises(ValueError, match="target_last_hidden_states"):
        model(**batch)


# -- DSpark --------------------------------------------------------------------------------------------


def _dspark_pieces(model, batch, seed=123):
    """SpecForge's DSpark labels, masks, Markov-corrected logits, target logits and confidence logits."""
    torch.manual_seed(seed)
    input_ids, loss_mask = batch["input_ids"], batch["loss_mask"]
    anchors, keep, output_hidden = model._forward_draft_blocks(
        input_ids=input_ids, hidden_states=batch["hidden_states"], loss_mask=loss_mask
    )
    bsz, seq_len = input_ids.shape
    idx = anchors.unsqueeze(-1) + torch.arange(1, model.block_size + 1).view(1, 1, -1)
    safe = torch.where(keep.unsqueeze(-1), idx.clamp(max=seq_len - 1), torch.zeros_like(idx))
    targets = torch.gather(input_ids.unsqueeze(1).expand(-1, anchors.shape[1], -1), 2, safe)
    in_mask = torch.gather(loss_mask.unsqueeze(1).expand(-1, anchors.shape[1], -1), 2, safe) > 0.5
    eval_mask = ((idx < seq_len) & in_mask & keep.unsqueeze(-1)).int().cumprod(dim=-1).bool()
    prev = torch.cat([torch.gather(input_ids, 1, anchors).unsqueeze(-1), targets[:, :, :-1]], dim=-1)
    hidden = output_hidden.reshape(bsz, anchors.shape[1], model.block_size, -1)
    draft = model.draft_model.apply_logits_head(model.lm_head(hidden), prev_token_ids=prev, hidden_states=hidden)
    last = batch["target_last_hidden_states"]
    aligned = torch.gather(last, 1, (safe - 1).clamp(min=0).reshape(bsz, -1, 1).expand(-1, -1, last.shape[-1]))
    with torch.no_grad():
        target_logits = model.lm_head(aligned).reshape_as(draft)
    confidence = model.draft_model.predict_confidence(hidden, prev_token_ids=prev)
    return targets, eval_mask, draft, target_logits, confidence


def _naive_lk_lambda(draft, target_logits, mask, eta=3.0):
    q, p = torch.softmax(draft.double(), -1), torch.softmax(target_logits.double(), -1)
    alpha = torch.minimum(p, q).sum(-1)
    kl = (p * (torch.log(p) - torch.log(q))).sum(-1)
    tv = 0.5 * (p - q).abs().sum(-1)
    m = mask.double()
    total = draft.new_zeros((), dtype=torch.float64)
    for k in range(mask.shape[-1]):
        count = m[..., k].sum()
        lam = math.exp(-eta * ((alpha[..., k].detach() * m[..., k]).sum() / max(count.item(), 1.0)).item())
        total = total + (m[..., k] * (lam * kl[..., k] + (1 - lam) * tv[..., k])).sum()
    return total / m.sum(), alpha.detach()


@pytest.mark.parametrize("gamma", [None, 3.0])
def test_lk_lambda_inside_dspark_replaces_ce_and_l1_and_keeps_the_confidence_loss(specforge_installed, gamma):
    model, batch = tiny_dspark(loss_type="lk-lambda", loss_decay_gamma=gamma)
    got = step(model, batch)
    targets, eval_mask, draft, target_logits, confidence = _dspark_pieces(model, batch)
    token_loss, alpha = _naive_lk_lambda(draft, target_logits, eval_mask)
    weights = eval_mask.float()
    if gamma is not None:  # DSpark's own decay of its confidence loss
        weights = weights * torch.exp(-torch.arange(model.block_size).float() / gamma)
    bce = F.binary_cross_entropy_with_logits(confidence.double(), alpha.clamp(0, 1), reduction="none")
    reference = token_loss + (bce * weights).sum() / weights.sum()
    grads = _reference_grads(model, reference.float())
    torch.testing.assert_close(got[0], reference.float().detach(), rtol=1e-5, atol=1e-6)
    for name in grads:
        torch.testing.assert_close(got[3][name], grads[name], rtol=1e-4, atol=1e-6)
    ratio = got[2]["ratio_metrics"]
    conf_num, conf_den = ratio["confidence_loss"]
    torch.testing.assert_close(conf_num / conf_den, ((bce * weights).sum() / weights.sum()).float(), rtol=1e-5, atol=0)


@pytest.mark.parametrize("gamma", [None, 5.0])
def test_dsparks_default_mix_is_a_fixed_ce_tv_composite(specforge_installed, gamma):
    """L1 = 2 TV: '0.1*dflash + 1.8*tv' inside DSpark reproduces DSpark's own 0.1 CE + 0.9 L1 (+ confidence),
    decay from the first drafted token included (dflash terms take loss_decay_gamma, tv needs its own)."""
    own, batch = tiny_dspark(loss_decay_gamma=gamma)
    spec = "0.1*dflash + 1.8*tv" if gamma is None else f"0.1*dflash + 1.8*tv(gamma={gamma:g})"
    ours, _ = tiny_dspark(loss_decay_gamma=gamma, loss_type=spec)
    a, b = step(own, batch), step(ours, batch)
    torch.testing.assert_close(b[0], a[0], rtol=1e-5, atol=1e-6)
    for name in a[3]:
        torch.testing.assert_close(b[3][name], a[3][name], rtol=1e-4, atol=1e-6)
    ra, rb = a[2]["ratio_metrics"], b[2]["ratio_metrics"]
    for key in (
        "acc",
        "ce_loss",
        "l1_loss",
        "confidence_loss",
        "ce_position",
        "accuracy_position",
        "teacher_agreement",
        "teacher_top1_prob",
        "draft_top1_prob",
        "tau_probabilistic",
    ):
        for x, y in zip(ra[key], rb[key]):
            torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-6)


def test_dpace_inside_dspark_decays_from_the_first_drafted_token(specforge_installed):
    """DSpark supervises slot 0: D-PACE's prefix products start there (the masked anchor column)."""
    model, batch = tiny_dspark(loss_type="dpace", dpace_alpha=0.2, confidence=False)
    got = step(model, batch)
    targets, eval_mask, draft, _, _ = _dspark_pieces(model, batch)
    reference = _naive_dpace(_ce(draft, targets), eval_mask.float(), 0.2, batch["input_ids"].shape[0])
    _close(got, (reference, _reference_grads(model, reference)))
    ratio = got[2]["ratio_metrics"]
    assert {f"accept_pos_{k}" for k in range(1, model.block_size + 1)} <= set(ratio)
    assert "accept_pos_0" not in ratio


def test_dspark_plugin_metrics_keep_dsparks_names(specforge_installed):
    model, batch = tiny_dspark(loss_type="lk-lambda", greedy=True)
    _, _, metrics, _ = step(model, batch)
    ratio = metrics["ratio_metrics"]
    assert {"teacher_agreement", "tau_probabilistic", "confidence_loss", "soft_tau", "teacher_label_agreement"} <= set(
        ratio
    )
    num, den = ratio["teacher_label_agreement"]  # argmax p == label on the target's greedy continuation
    assert num.item() == den.item() > 0
    soft_num, soft_den = ratio["soft_tau"]
    tau_num, tau_den = ratio["tau_probabilistic"]
    assert torch.isfinite(soft_num / soft_den) and torch.isfinite(tau_num / tau_den)


@pytest.mark.parametrize(
    "build,spec",
    [(tiny_domino, "dpace + 0.3*first-error-focal"), (tiny_dspark, "lk-lambda + 0.1*dflash"), (tiny_dspark, "dpace")],
)
def test_chunk_size_does_not_change_the_plugin_loss_or_gradients(specforge_installed, build, spec):
    results = []
    for chunk in (0, 1, 4):
        model, batch = build(loss_type=spec, objective_chunk_blocks=chunk)
        if build is tiny_domino:
            batch.pop("target_last_hidden_states")
        results.append(step(model, batch))
    for other in results[1:]:
        torch.testing.assert_close(other[0], results[0][0], rtol=1e-5, atol=1e-6)
        for name in results[0][3]:
            torch.testing.assert_close(other[3][name], results[0][3][name], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize(
    "build,spec",
    [
        (tiny_domino, "dpace"),
        (tiny_domino, "lk-lambda"),
        (tiny_domino, "lk-lambda(lagged=true)"),
        (tiny_dspark, "lk-lambda"),
        (tiny_dspark, "lk-lambda(lagged=true)"),
        (tiny_dspark, COMPOSITE),
    ],
)
def test_twenty_steps_on_a_fixed_batch_go_down(specforge_installed, build, spec):
    model, batch = build(loss_type=spec, seed=1)
    if build is tiny_domino and spec == "dpace":
        batch.pop("target_last_hidden_states")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for index in range(20):
        torch.manual_seed(index)
        optimizer.zero_grad()
        loss, _, _ = model(**batch)
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)
        losses.append(loss.item())
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4, losses


# -- refusals ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("build,head", [(tiny_domino, "GRU correction head"), (tiny_dspark, "Markov head")])
def test_fused_is_refused_naming_the_reason(specforge_installed, build, head):
    with pytest.raises(ValueError, match=f"fused=true is refused.*{head}.*Accepted: fused false"):
        build(loss_type="dpace", loss_options={"fused": True})
    with pytest.raises(ValueError, match="fused=true is refused"):
        build(loss_options={"fused": True})  # the method's own objective cannot be fused either


def test_dspark_weights_of_replaced_terms_are_refused_beside_a_plugin_objective(specforge_installed):
    with pytest.raises(ValueError, match=r"training.dspark_l1_loss_alpha=0.5: .*replaces"):
        tiny_dspark(loss_type="lk-lambda", dspark_l1_loss_alpha=0.5)
    model, _ = tiny_dspark(loss_type="lk-lambda", dspark_confidence_head_alpha=0.5)  # the confidence loss stays
    assert model.dspark_confidence_head_alpha == 0.5
    tiny_dspark(dspark_l1_loss_alpha=0.5)  # DSpark's own mix: its weights are honoured


def test_acceptance_metrics_with_dsparks_own_objective_is_refused(specforge_installed):
    with pytest.raises(ValueError, match="acceptance_metrics does not apply"):
        tiny_dspark(loss_options={"acceptance_metrics": True})


def test_unknown_objective_names_the_registry(specforge_installed):
    with pytest.raises(ValueError, match="unknown objective 'dpaec'; registered objectives: auf, chain"):
        tiny_domino(loss_type="dpaec")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['beta'\]"):
        tiny_dspark(loss_type="dpace", loss_options={"beta": 1})


def test_the_model_records_the_full_spec(specforge_installed):
    model, _ = tiny_dspark(loss_type="dpace + 0.3*first-error-focal", dpace_alpha=0.3)
    assert model.loss_type == "dpace(alpha=0.3) + 0.3*first-error-focal"
    model, _ = tiny_domino(loss_type="dpace", loss_options={"alpha": 0.2})
    assert model.loss_type == "dpace(alpha=0.2)"  # the spec carries the option (no dpace_alpha in the contract)
