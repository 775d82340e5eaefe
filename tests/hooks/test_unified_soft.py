"""Soft-label objectives inside the patched unified ``OnlineDFlashModel`` (plain chunked path).

The target's last hidden state comes in as ``target_last_hidden_states`` ``[B, S, H]``; slot k of
the block anchored at a reads p from ``lm_head(h_last[a + k - 1])``. A real tiny Qwen3 target
makes greedy data, so ``teacher_agreement`` must be exactly 1 when the alignment is right.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("specforge")

import specforge.algorithms.common.dflash_family_model  # noqa: E402,F401
from _tiny_specforge import tiny_online_model  # noqa: E402

from specforge_dpace.hooks._blocks import align_target_hidden  # noqa: E402


def _greedy_setup(loss_type="lk-lambda", chunk=2, seed=0):
    from specforge.algorithms.common.dflash_family_model import OnlineDFlashModel

    from specforge_dpace.evaluate import tiny_draft, tiny_target

    target = tiny_target(vocab_size=64, hidden_size=32, num_hidden_layers=3, seed=seed)
    draft = tiny_draft(target, block_size=4, target_layer_ids=[0, 1], seed=seed + 7).train()
    for module in (target.lm_head, target.model.embed_tokens):
        module.requires_grad_(False)
    model = OnlineDFlashModel(
        draft_model=draft,
        target_lm_head=target.lm_head,
        target_embed_tokens=target.model.embed_tokens,
        mask_token_id=63,
        block_size=4,
        attention_backend="sdpa",
        num_anchors=6,
        objective_chunk_blocks=chunk,
        loss_type=loss_type,
    )
    gen = torch.Generator().manual_seed(seed + 1)
    prompt = torch.randint(0, 63, (2, 4), generator=gen)
    with torch.no_grad():
        ids = target.generate(prompt, max_new_tokens=20, do_sample=False, pad_token_id=0)
        out = target(input_ids=ids, output_hidden_states=True)
    hidden = torch.cat([out.hidden_states[1], out.hidden_states[2]], dim=-1)
    loss_mask = torch.ones_like(ids, dtype=torch.float32)
    loss_mask[:, :4] = 0  # the prompt is not supervised
    batch = {
        "input_ids": ids,
        "hidden_states": hidden,
        "loss_mask": loss_mask,
        "target_last_hidden_states": out.hidden_states[-1],
    }
    return model, batch


def _train_step(spec, chunk):
    """``(loss, metrics, draft gradients)`` of one training micro-batch of the greedy setup."""
    model, batch = _greedy_setup(spec, chunk=chunk)
    torch.manual_seed(3)
    loss, _, metrics = model(**batch)
    loss.backward()
    return loss.detach(), metrics, [p.grad.clone() for p in model.draft_model.parameters() if p.grad is not None]


def test_alignment_gives_teacher_agreement_one_on_greedy_data(specforge_installed):
    model, batch = _greedy_setup()
    torch.manual_seed(0)
    loss, _, metrics = model(**batch)
    agree_num, agree_den = metrics["ratio_metrics"]["teacher_agreement"]
    assert agree_den.item() > 0
    assert agree_num.item() == agree_den.item()  # argmax p == label on every supervised slot
    assert torch.isfinite(loss)
    soft_tau = metrics["ratio_metrics"]["soft_tau"]
    assert 1.0 <= (soft_tau[0] / soft_tau[1]).item() <= 4.0
    assert "alpha_pos_1" in metrics["ratio_metrics"] and "sim_tau" in metrics["ratio_metrics"]


def test_shifting_the_alignment_breaks_agreement():
    """The check above can fail: aligning on h_last[a + k] instead of h_last[a + k - 1] disagrees."""
    _, batch = _greedy_setup()
    h_last = batch["target_last_hidden_states"]
    anchors = torch.tensor([[4, 8], [5, 9]])
    ids = batch["input_ids"]
    from specforge_dpace.evaluate import tiny_target

    head = tiny_target(vocab_size=64, hidden_size=32, num_hidden_layers=3, seed=0).lm_head
    for offset, expect_all in ((-1, True), (0, False)):
        aligned = align_target_hidden(h_last, anchors, 4, offset=offset)
        teacher = head(aligned).argmax(-1)
        labels = torch.gather(ids, 1, (anchors.unsqueeze(-1) + torch.arange(4)).reshape(2, -1)).reshape(2, 2, 4)
        agree = (teacher == labels)[..., 1:]
        assert bool(agree.all()) is expect_all


@pytest.mark.parametrize(
    "spec",
    [
        "lk-lambda",
        "soft-dpace",
        "dpace + 0.5*lk-lambda",
        "kl(temperature=0.5) + tv",
        "renyi-half",
        "topk-kl(k=5) + dflash(labels=target)",
    ],
)
def test_soft_objectives_train_and_are_chunk_invariant(specforge_installed, spec):
    (l0, m0, g0), (l1, m1, g1) = (_train_step(spec, chunk) for chunk in (0, 1))
    torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-6)
    assert g0 and all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(g0, g1))
    assert m0["loss_terms"][0].requires_grad
    torch.testing.assert_close(l0, m0["loss_terms"][0] / m0["loss_terms"][1])
    if "@" in " ".join(m0["ratio_metrics"]):  # two temperatures: one soft_tau per temperature
        assert {"soft_tau@T0.5", "soft_tau@T1"} <= set(m0["ratio_metrics"])


def test_a_soft_objective_without_the_target_hidden_state_names_the_key(specforge_installed):
    model, batch = tiny_online_model(loss_type="lk-lambda")
    with pytest.raises(ValueError, match="no 'target_last_hidden_states'.*capture_offline_features"):
        model(**batch)


def test_hard_objectives_ignore_the_target_hidden_state(specforge_installed):
    """Passing the key to a hard objective (or a built-in name) changes nothing."""
    for spec in ("dflash", "chain"):
        model, batch = _greedy_setup(spec)
        without = {k: v for k, v in batch.items() if k != "target_last_hidden_states"}
        torch.manual_seed(5)
        with_key = model(**batch)[0]
        torch.manual_seed(5)
        assert torch.equal(model(**without)[0], with_key)


@pytest.mark.parametrize(
    "spec",
    [
        "lk-lambda(lagged=true)",
        "dpace + 0.5*lk-lambda; normalize=true",
        "dpace + 0.5*lk-lambda(lagged=true); normalize=true",
    ],
)
def test_running_state_survives_checkpoint_recomputation(specforge_installed, spec):
    """SpecForge's checkpointed chunks recompute the objective in backward, after ``reduce`` has recorded
    this micro-batch's alpha (``lagged=true``) or term magnitudes (``normalize=true``): the recomputation
    must still use the lambda and magnitudes the forward used, so chunked and unchunked models agree on
    the second micro-batch."""
    _, second_batch = _greedy_setup(seed=1)
    results = []
    for chunk in (0, 1):  # 0: one unchecked evaluation; 1: one checkpointed chunk per block
        model, first_batch = _greedy_setup(spec, chunk=chunk)
        for batch in (first_batch, second_batch):
            model.zero_grad()
            torch.manual_seed(3)
            loss, _, metrics = model(**batch)
            loss.backward()
        grads = [p.grad.clone() for p in model.draft_model.parameters() if p.grad is not None]
        results.append((loss.detach(), grads, metrics))
    (l0, g0, m0), (l1, g1, _) = results
    torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-6)
    assert g0 and all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(g0, g1))
    assert model.loss_type == spec  # the canonical spec, recorded for resume checks
    if "normalize" in spec:
        magnitudes = {k for k in m0["ratio_metrics"] if k.startswith("loss_magnitude[")}
        assert magnitudes == {"loss_magnitude[dpace]", f"loss_magnitude[{spec.split('*')[1].split(';')[0]}]"}
    fresh, _ = _greedy_setup(spec, chunk=1)
    torch.manual_seed(3)
    assert abs(float(fresh(**second_batch)[0].detach()) - float(l1)) > 1e-5  # the state moved after the first


@pytest.mark.parametrize("name", ["dpace", "first-error-focal", "chain"])
def test_target_labels_equal_data_labels_on_greedy_data(specforge_installed, name):
    """On data the target regenerated greedily, argmax p is the data token at every supervised slot, so
    ``<name>(labels=target)`` (which needs the target's last hidden state) trains exactly as ``<name>``; the
    patched model asks for that state, like every soft-label objective."""
    (hard, _, hard_grads), (target, metrics, target_grads) = (
        _train_step(spec, 1) for spec in (name, f"{name}(labels=target)")
    )
    assert metrics["ratio_metrics"]["teacher_agreement"][0] == metrics["ratio_metrics"]["teacher_agreement"][1]
    torch.testing.assert_close(target, hard, rtol=1e-5, atol=1e-7)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(target_grads, hard_grads))
    model, batch = _greedy_setup(f"{name}(labels=target)")
    del batch["target_last_hidden_states"]
    with pytest.raises(ValueError, match="no 'target_last_hidden_states'"):
        model(**batch)
