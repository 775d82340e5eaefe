"""The objective paths with the Triton kernels equal the same paths in PyTorch (kernels forced on with
``kernel_mode("force")``; without a GPU they run in Triton's interpreter on CPU tensors, see conftest.py).

Every hard objective and a composite, every soft objective and soft twin, lk-lambda exact and lagged,
composites across temperatures and gradient directions: values and gradients of the fused path, and of the
plain (checkpointed) path whose soft statistics the kernels form.
"""

from __future__ import annotations

import logging

import pytest
import torch
from test_fused_path import make_batch, rel_err
from test_fused_soft import TWINS, check_totals, target_states

from specforge_dpace.fused import fused_objective_terms
from specforge_dpace.fused.kernels import ENV, current_mode, kernel_mode, launcher
from specforge_dpace.hooks._blocks import objective_chunk_terms
from specforge_dpace.hooks._fused_bridge import fused_totals
from specforge_dpace.losses import HARD_NAMES, SOFT_NAMES, build_loss

HARD_SPECS = HARD_NAMES + ("dflash(gamma=10) + 0.3*first-error-focal + 40*chain",)
SOFT_SPECS = (
    SOFT_NAMES
    + TWINS
    + (
        "lk-lambda(lagged=true)",
        "lk-lambda(per_token=true)",
        "dpace + 0.5*lk-lambda",  # three gradient buffers: the third in the kernels' scratch buffer
        "kl(temperature=0.5) + tv",  # two temperatures, two buffers
        "dpace + lk-alpha(temperature=2)",  # cross-entropy at T = 1 beside log alpha at T = 2
        "soft-dpace(alpha=0.3,temperature=0.7) + 0.3*soft-first-error-focal",
        "lk-alpha + soft-dpace",
    )
)


def _both(spec, device, dtype=torch.float32, sub_chunk_tokens=None, seed=0, **batch):
    """(PyTorch, kernels): totals, loss and gradients of loss and of every numerator entry."""
    results = []
    for mode in ("off", "force"):
        objective = build_loss(spec)
        head, hidden, target, mask = make_batch(dtype, seed=seed, **batch)
        head = head.to(device)
        hidden = hidden.detach().to(device).requires_grad_(True)
        target, mask = target.to(device), mask.to(device)
        soft = getattr(objective, "needs_target", False)
        states = target_states(hidden.cpu(), seed=seed + 3).to(device) if soft else None
        with kernel_mode(mode):
            totals = fused_totals(objective, head, hidden, target, mask, sub_chunk_tokens, states)
        value = objective.reduce(totals[0], totals[1], hidden.shape[0]).loss
        cot = (torch.rand(totals[0].shape[0], generator=torch.Generator().manual_seed(7)) + 0.5).to(totals[0])
        (grad_entries,) = torch.autograd.grad((totals[0] * cot).sum(), hidden, retain_graph=True)
        (grad,) = torch.autograd.grad(value, hidden)
        results.append((totals, value.detach(), grad, grad_entries))
    return results


@pytest.mark.parametrize("spec", HARD_SPECS)
def test_fused_hard_objectives(kernel_device, spec):
    (ref, ref_loss, ref_grad, ref_entries), (out, loss, grad, entries) = _both(spec, kernel_device)
    check_totals(ref, out, 1e-5)
    assert abs(float(loss - ref_loss)) <= 1e-5 * max(1.0, abs(float(ref_loss)))
    assert float(grad.abs().sum()) > 0
    assert rel_err(grad, ref_grad) <= 1e-5 and rel_err(entries, ref_entries) <= 1e-5


@pytest.mark.parametrize("spec", SOFT_SPECS)
def test_fused_soft_objectives(kernel_device, spec):
    (ref, ref_loss, ref_grad, ref_entries), (out, loss, grad, entries) = _both(spec, kernel_device)
    assert len(out) > 10  # the soft metric terms are there, and equal with every other total
    check_totals(ref, out, 1e-5)
    assert abs(float(loss - ref_loss)) <= 1e-5 * max(1.0, abs(float(ref_loss)))
    assert float(grad.abs().sum()) > 0
    assert rel_err(grad, ref_grad) <= 1e-5 and rel_err(entries, ref_entries) <= 1e-5


@pytest.mark.parametrize("spec", ["lk-lambda", "kl(temperature=0.5) + tv", "dpace + 0.5*lk-lambda", "dpace"])
def test_fused_float64_tightly_and_over_several_sub_chunks(kernel_device, spec):
    (ref, _, ref_grad, ref_entries), (out, _, grad, entries) = _both(spec, kernel_device, torch.float64, 32)
    check_totals(ref, out, 1e-12)
    assert rel_err(grad, ref_grad) <= 1e-12 and rel_err(entries, ref_entries) <= 1e-12


@pytest.mark.parametrize("spec", ["dpace", "lk-alpha", "dpace + 0.5*lk-lambda"])
def test_fused_bf16_within_bf16_tolerance(kernel_device, spec):
    """bf16 head: the kernels read bf16 logits and write bf16 gradients (the interpreter rounds bf16 stores
    toward zero, a GPU to nearest: either way within bf16's precision of the PyTorch path)."""
    (ref, ref_loss, ref_grad, _), (out, loss, grad, _) = _both(spec, kernel_device, torch.bfloat16)
    assert abs(float(loss) - float(ref_loss)) <= 1e-2 * max(1.0, abs(float(ref_loss)))
    assert grad.dtype == torch.bfloat16 and rel_err(grad, ref_grad) <= 3e-2


@pytest.mark.parametrize("spec", ["lk-alpha", "lk-lambda", "dpace + 0.5*lk-lambda", "kl(temperature=0.5) + tv"])
def test_fused_tiny_alpha(kernel_device, spec):
    """Drafter and target peaked on different tokens (log alpha far below -80, where alpha underflows
    fp32): the kernels stay in log space, values and gradients finite and equal to the PyTorch path's
    log-space recomputation."""
    results = []
    for mode in ("off", "force"):
        objective = build_loss(spec)
        head, hidden, target, mask = make_batch(bias=False)
        head, target, mask = head.to(kernel_device), target.to(kernel_device), mask.to(kernel_device)
        hidden = (60.0 * hidden.detach()).to(kernel_device).requires_grad_(True)
        with kernel_mode(mode):
            terms = fused_objective_terms(objective, hidden, head, target, mask, target_hidden=-hidden.detach())
        (grad,) = torch.autograd.grad(terms.num.sum(), hidden)
        results.append((terms, grad))
    (ref, ref_grad), (out, grad) = results
    assert float(out.soft[1.0].log_alpha.max()) < -80.0
    assert bool(torch.isfinite(out.num).all()) and bool(torch.isfinite(grad).all())
    assert rel_err(out.soft[1.0].log_alpha, ref.soft[1.0].log_alpha) <= 1e-6
    assert rel_err(out.num.detach(), ref.num.detach()) <= 1e-5 and rel_err(grad, ref_grad) <= 1e-5


def test_fused_lagged_lambda_over_successive_micro_batches(kernel_device):
    """The lagged lambda state moves the same way on both paths (each keeps its own objective)."""
    objectives = {"off": build_loss("lk-lambda(lagged=true)"), "force": build_loss("lk-lambda(lagged=true)")}
    for step in range(3):
        grads, losses = {}, {}
        for mode, objective in objectives.items():
            head, hidden, target, mask = make_batch(seed=step)
            head, target, mask = head.to(kernel_device), target.to(kernel_device), mask.to(kernel_device)
            hidden = hidden.detach().to(kernel_device).requires_grad_(True)
            states = target_states(hidden.cpu(), seed=step).to(kernel_device)
            with kernel_mode(mode):
                totals = fused_totals(objective, head, hidden, target, mask, None, states)
            value = objective.reduce(totals[0], totals[1], hidden.shape[0]).loss
            (grads[mode],) = torch.autograd.grad(value, hidden)
            losses[mode] = float(value.detach())
        assert abs(losses["force"] - losses["off"]) <= 1e-5 * max(1.0, abs(losses["off"]))
        assert rel_err(grads["force"], grads["off"]) <= 1e-5


def _wide_outputs(spec, device, mode):
    """Dtypes of every [rows, V] tensor any op produces in one bf16 call of the fused path (forward and
    backward), recorded below autograd by a dispatch mode."""
    from torch.utils._python_dispatch import TorchDispatchMode

    vocab = 300
    seen = set()

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for tensor in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(tensor, torch.Tensor) and tensor.dim() == 2 and tensor.shape[1] == vocab:
                    seen.add(tensor.dtype)
            return out

    objective = build_loss(spec)
    head, hidden, target, mask = make_batch(torch.bfloat16, vocab=vocab)
    head, target, mask = head.to(device), target.to(device), mask.to(device)
    hidden = hidden.detach().to(device).requires_grad_(True)
    states = target_states(hidden.cpu()).to(device) if objective.needs_target else None
    with kernel_mode(mode), Record():
        terms = fused_objective_terms(objective, hidden, head, target, mask, target_hidden=states)
        terms.num.sum().backward()
    return seen


@pytest.mark.parametrize("spec", ["dpace", "lk-alpha", "dpace + 0.5*lk-lambda"])
def test_logits_buffers_stay_in_the_compute_dtype(kernel_device, spec):
    """No fp32 [rows, V] tensor at all with a bf16 head (the PyTorch path upcasts its logits: the control)."""
    assert _wide_outputs(spec, kernel_device, "force") == {torch.bfloat16}
    assert torch.float32 in _wide_outputs(spec, kernel_device, "off")


def _plain(spec, device, mode, dtype=torch.float32):
    """The plain path as the hook runs it: the chunk function under activation checkpointing (SpecForge's
    checkpointed_chunk_reduce is ``torch.utils.checkpoint`` per chunk of blocks, here 3 blocks a chunk)."""
    from torch.utils.checkpoint import checkpoint

    objective = build_loss(spec)
    head, hidden, target, mask = make_batch(dtype)
    head, target, mask = head.to(device), target.to(device), mask.to(device)
    hidden = hidden.detach().to(device).requires_grad_(True)
    states = target_states(hidden.cpu()).to(device)
    pieces = []
    with kernel_mode(mode):
        for start in range(0, hidden.shape[1], 3):
            part = slice(start, start + 3)
            args = (objective, head, hidden[:, part], target[:, part], mask[:, part], states[:, part])
            pieces.append(checkpoint(objective_chunk_terms, *args, use_reentrant=False))
        totals = [sum(p[i] for p in pieces) for i in range(len(pieces[0]))]
        value = objective.reduce(totals[0], totals[1], hidden.shape[0]).loss
        (grad,) = torch.autograd.grad(value, hidden)
    return totals, value.detach(), grad


@pytest.mark.parametrize(
    "spec", ["lk-alpha", "lk-lambda", "kl(temperature=0.5) + tv", "dpace + 0.5*lk-lambda", "soft-chain"]
)
def test_plain_path_statistics_kernel(kernel_device, spec):
    ref, ref_loss, ref_grad = _plain(spec, kernel_device, "off")
    out, loss, grad = _plain(spec, kernel_device, "force")
    check_totals(ref, out, 1e-5)
    assert abs(float(loss - ref_loss)) <= 1e-5 * max(1.0, abs(float(ref_loss)))
    assert float(grad.abs().sum()) > 0 and rel_err(grad, ref_grad) <= 1e-5


def test_plain_path_recomputation_takes_the_forwards_statistics(kernel_device, monkeypatch):
    """Under checkpointing the chunk runs twice; the statistics kernel runs only in the first (the
    recomputation takes the stored per-row statistics and argmaxes), the directions kernel once per chunk."""
    launch = launcher()
    calls = {"soft_stats": 0, "soft_directions": 0}
    for name in calls:
        real = getattr(launch, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(launch, name, counted)
    _plain("lk-alpha", kernel_device, "force")
    chunks = 2  # 6 blocks, 3 a chunk; lk-alpha reads T = 1 only
    assert calls == {"soft_stats": chunks, "soft_directions": chunks}


def test_plain_path_float64_tightly(kernel_device):
    ref, _, ref_grad = _plain("lk-lambda", kernel_device, "off", torch.float64)
    out, _, grad = _plain("lk-lambda", kernel_device, "force", torch.float64)
    check_totals(ref, out, 1e-12)
    assert rel_err(grad, ref_grad) <= 1e-12


def test_cpu_tensors_use_pytorch_unless_forced(kernel_device, monkeypatch):
    """The default (``auto``) never runs the kernels on CPU tensors; ``off`` never anywhere."""
    if kernel_device != "cpu":
        pytest.skip("checks the CPU default")
    launch = launcher()
    ran = []
    for name in ("hard_rows", "soft_stats", "soft_directions"):
        monkeypatch.setattr(launch, name, lambda *a, _n=name, **k: ran.append(_n))
    monkeypatch.delenv(ENV, raising=False)
    assert current_mode() == "auto"
    for spec in ("dpace", "lk-alpha"):
        objective = build_loss(spec)
        head, hidden, target, mask = make_batch()
        states = target_states(hidden) if objective.needs_target else None
        fused_objective_terms(objective, hidden, head, target, mask, target_hidden=states)
        objective_chunk_terms(objective, head, hidden, target, mask, *([states] if states is not None else []))
    monkeypatch.setenv(ENV, "off")
    with kernel_mode("off"):
        fused_objective_terms(build_loss("dpace"), hidden, head, target, mask)
    assert ran == []


def test_bad_mode_is_refused(monkeypatch):
    with pytest.raises(ValueError, match="one of auto, off, force, got 'gpu'"):
        with kernel_mode("gpu"):
            pass
    monkeypatch.setenv(ENV, "sometimes")
    with pytest.raises(ValueError, match=f"{ENV}: kernel mode must be one of auto, off, force, got 'sometimes'"):
        current_mode()


def test_labels_outside_the_vocabulary_are_refused(kernel_device):
    head, hidden, target, mask = make_batch()
    target = target.clone()
    target[0, 0, 1] = 97
    with kernel_mode("force"), pytest.raises(ValueError, match=r"labels must lie in \[0, 97\).*97"):
        fused_objective_terms(build_loss("dpace"), hidden.to(kernel_device), head.to(kernel_device),
                              target.to(kernel_device), mask.to(kernel_device))  # fmt: skip


def test_plan_outside_the_kernels_falls_back_with_one_log_line(kernel_device, caplog):
    """Three temperatures: more than the kernels take; the fused path runs its PyTorch pass for that
    objective (same values), logging once per objective spec."""
    spec = "kl(temperature=0.5) + tv + lk-alpha(temperature=2)"
    with caplog.at_level(logging.WARNING, logger="specforge_dpace"):
        (ref, _, ref_grad, _), (out, _, grad, _) = _both(spec, kernel_device)
        _both(spec, kernel_device)
    lines = [r.getMessage() for r in caplog.records if "runs its PyTorch pass" in r.getMessage()]
    assert len(lines) == 1 and "3 temperatures" in lines[0]
    check_totals(ref, out, 1e-5)
    assert rel_err(grad, ref_grad) <= 1e-5


def test_kernel_plan_reasons():
    from specforge_dpace.fused._kernel_soft import kernel_plan_reason
    from specforge_dpace.fused._soft import soft_plan

    assert kernel_plan_reason(soft_plan(build_loss("dpace + 0.5*lk-lambda"))[0]) is None
    plan = soft_plan(build_loss("lk-lambda + kl(temperature=2) + 0.1*dpace"))[0]  # four unit directions
    assert plan.temperatures == (1.0, 2.0)
    assert "keeps 4 gradient directions" in kernel_plan_reason(plan)


@pytest.mark.parametrize("spec", ["renyi-half", "topk-kl(k=5)", "dpace(labels=target)", "lk-alpha + 0.5*renyi-half"])
def test_objectives_beyond_the_kernels_statistics_take_the_pytorch_pass(kernel_device, spec, monkeypatch):
    """The divergences added after the kernels (Renyi-1/2, top-k KL) read statistics the kernels do not form:
    with the kernels forced, the fused path runs its PyTorch pass for them and the plain path's statistics
    go to ``soft_slot_stats`` (same values and gradients as with the kernels off); ``labels=target`` reads
    only statistics the kernels form."""
    (ref, _, ref_grad, _), (out, _, grad, _) = _both(spec, kernel_device)
    check_totals(ref, out, 1e-5)
    assert rel_err(grad, ref_grad) <= 1e-5
    ref_totals, ref_value, ref_plain_grad = _plain(spec, kernel_device, "off")
    totals, value, plain_grad = _plain(spec, kernel_device, "force")
    check_totals(ref_totals, totals, 1e-5)
    assert abs(float(value - ref_value)) <= 1e-5 * max(1.0, abs(float(ref_value)))
    assert rel_err(plain_grad, ref_plain_grad) <= 1e-5


def test_plain_statistics_without_extras_run_the_kernel(kernel_device, monkeypatch):
    """``extras=()`` (what the hook passes for every objective without further statistics) is no reason to
    leave the kernels; a non-empty ``extras`` is."""
    from specforge_dpace.fused.kernels import slot_stats
    from specforge_dpace.losses._statistics import log_bc_key

    launch = launcher()
    ran = []
    real = launch.soft_stats
    monkeypatch.setattr(launch, "soft_stats", lambda *a, **k: ran.append(1) or real(*a, **k))
    logits = torch.randn(4, 3, 97, device=kernel_device, requires_grad=True)
    target = torch.randn(4, 3, 97, device=kernel_device)
    with kernel_mode("force"):
        slot_stats(logits, 1.0, target_logits=target, extras=())
        assert ran == [1]
        slot_stats(logits, 1.0, target_logits=target, extras=(log_bc_key(1.0),))
        assert ran == [1]
