#!/usr/bin/env python
"""Benchmark the DFlash objective path: objectives vs dflash, patched vs unpatched SpecForge, fused vs upstream.

Every comparison is measured side by side in one process: the cases of a table run in
alternating (rotated) order, after warm-up, and the table reports medians of many
repetitions.  Peak memory on CPU is the growth of the process's peak RSS (VmHWM, reset
through /proc/self/clear_refs) over its RSS before the call, with glibc's mmap threshold fixed at
1 MiB (so every tensor of 1 MiB or more a call allocates is counted; glibc's dynamic threshold would
otherwise serve buffers under 32 MiB from heap memory left resident by earlier calls); on a GPU it is
``torch.cuda.max_memory_allocated`` over the memory allocated before the call.

Sections (``--sections``, comma separated; default all):

* ``overhead`` (issue 2): added microseconds per call over upstream ``dflash`` for every
  objective and a three-term composite, with a tiny lm_head so only the objective's own ops
  show, next to SpecForge's own D-PACE overhead measured in the same run.
* ``real`` (issue 2): every objective vs ``dflash`` at real sizes (time ratio, peak memory).
* ``step`` (issue 3): a whole tiny training step (OnlineDFlashModel forward + backward),
  patched (``specforge_dpace.install()``) vs unpatched for ``dflash``, and each plugin
  objective vs ``dflash``.
* ``fused`` (issue 7): SpecForge's objective path exactly as its step runs it
  (``checkpointed_chunk_reduce`` over ``_dflash_objective_chunk_terms``, then backward) vs the
  fused path, at real sizes: time ratio, peak-memory ratio, numerical error.
* ``fused-step`` (issue 7): the tiny training step with ``loss_options={"fused": True}`` vs
  upstream, next to the share the objective path takes in the step.
* ``soft`` (issue 11): soft-label objectives (``--soft-objectives``) on the plain path (SpecForge's
  ``checkpointed_chunk_reduce`` over the hook's chunk function, which forms the target logits inside
  it) and on the fused path, side by side with upstream's hard ``dflash`` in the same run: time and
  peak-memory ratios vs upstream ``dflash``, the flop floor of each ratio, and fused-vs-plain errors.

Triton kernels (issue 22, ``--kernels``): on CUDA tensors the fused and plain paths run their
element-wise work in Triton kernels (``auto``, the default; ``off``: PyTorch everywhere; ``force``: also on
CPU, through Triton's interpreter, for validation only).  Stock anchors measured in the same run, skipped
with a printed reason where they do not apply (``--no-anchors`` skips them all): PyTorch's chunked
``F.linear_cross_entropy`` feeding the hard objectives that read only the per-slot cross-entropy (``fused``
section; CPU and GPU), and, on a GPU, Liger-Kernel's fused linear KL and vLLM speculators' fused kl / tv
kernels under SpecForge's checkpointed chunks (``soft`` section, table ``[soft-anchors]``).

Flop arithmetic (why 0.67x is the floor of ``fused``): per token, the upstream path runs the
lm_head product without grad (2*H*V flops), again when the checkpoint recomputes it in backward
(2*H*V) and the gradient product (2*H*V): 6*H*V.  The fused path runs the product once and the
gradient product once: 4*H*V, so 4/6 = 0.67x when the products dominate.  Soft-label objectives
also need the target's logits: the plain path forms them in the checkpointed forward and again in the
recomputation (10*H*V a token, floor 1.67x); the fused path forms them once and runs one gradient
product per gradient direction it keeps (4*H*V + 2*H*V per direction: 1.00x for one direction --
lk-alpha, kl, tv, every soft twin, lk-lambda(per_token=true), lk-lambda(lagged=true) -- 1.33x for
per-position lk-lambda's two, 1.67x for dpace + 0.5*lk-lambda's three).  Each path gets its own objective
object, since lk-lambda(lagged=true) carries its lambda from one call to the next.
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import statistics
import sys
import time
import types
from typing import Any, Callable, Optional

SECTIONS = ("overhead", "real", "step", "fused", "fused-step", "soft")
from specforge_dpace.losses import HARD_NAMES as OBJECTIVES  # noqa: E402  (every built-in objective)

COMPOSITE = "dflash(gamma=10) + 0.3*first-error-focal + 40*chain"
#: soft-label objectives of the ``soft`` section (issue 11), ';'-separated on the command line
SOFT_OBJECTIVES = (
    "lk-alpha",
    "lk-lambda",
    "lk-lambda(lagged=true)",
    "kl",
    "tv",
    "soft-dpace",
    "dpace + 0.5*lk-lambda",
)
SOFT_TARGETS = {"fused_time": 1.1, "fused_mem": 0.6, "plain_time": 1.8}
#: issue 22's targets on a GPU (H=4096, V=151936, 512 x 16 slot-tokens, bf16): one-direction fused objectives,
#: exact per-position lk-lambda (two directions), plain path time and memory; hard fused time and memory.
GPU_SOFT_TARGETS = {
    "fused_time": 1.15,
    "fused_mem": 0.6,
    "two_direction_time": 1.4,
    "plain_time": 2.0,
    "plain_mem": 1.2,
}
GPU_HARD_TARGETS = {"time": 0.70, "mem": 0.5}
_EXTRA_RESULTS: dict[str, list[dict]] = {}


def _csv_ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _sections(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    bad = [n for n in names if n not in SECTIONS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown section(s) {bad or text!r}; choose from {', '.join(SECTIONS)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example: OMP_NUM_THREADS=2 python scripts/bench_loss_path.py --sections overhead,fused --quick",
    )
    parser.add_argument(
        "--sections", type=_sections, default=list(SECTIONS), help=f"comma-separated: {', '.join(SECTIONS)}"
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer repetitions and only N=32 at real sizes (validation runs)"
    )
    parser.add_argument(
        "--reps", type=int, default=None, help="timed repetitions per case at real sizes (default 5, quick 3)"
    )
    parser.add_argument(
        "--small-reps",
        type=int,
        default=None,
        help="repetitions for the overhead and step sections (default 300, quick 60)",
    )
    parser.add_argument("--warmup", type=int, default=None, help="untimed warm-up runs per case (default 2, quick 1)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads at real sizes (default 2)")
    parser.add_argument(
        "--small-threads",
        type=int,
        default=1,
        help="torch threads for the tiny overhead/step sections (default 1: less jitter)",
    )
    parser.add_argument("--device", default="cpu", help="torch device for the real-size sections (cpu or cuda)")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="dtype of hidden states and lm_head")
    parser.add_argument("--hidden-size", type=int, default=1024, help="H at real sizes (default 1024)")
    parser.add_argument("--vocab", type=_csv_ints, default=[32000, 151936], help="V values at real sizes")
    parser.add_argument(
        "--blocks", type=_csv_ints, default=None, help="N values at real sizes (default 32,128; quick 32)"
    )
    parser.add_argument("--block-size", type=int, default=16, help="K, slots per block (default 16)")
    parser.add_argument("--batch", type=int, default=1, help="B, sequences per micro-batch at real sizes (default 1)")
    parser.add_argument("--chunk-blocks", type=int, default=128, help="SpecForge objective_chunk_blocks (default 128)")
    parser.add_argument(
        "--sub-chunk-tokens", type=int, default=None, help="fused sub-chunk size override (default: automatic)"
    )
    parser.add_argument(
        "--fused-objectives", default="dflash,dpace", help="objectives in the fused section (upstream names)"
    )
    parser.add_argument(
        "--soft-objectives",
        default=";".join(SOFT_OBJECTIVES),
        help="';'-separated specs of the soft section (default: %(default)s)",
    )
    parser.add_argument("--tiny-hidden", type=int, default=64, help="H of the tiny lm_head in the overhead section")
    parser.add_argument("--tiny-vocab", type=int, default=256, help="V of the tiny lm_head in the overhead section")
    parser.add_argument("--tiny-blocks", type=int, default=32, help="N in the overhead section")
    parser.add_argument("--step-hidden", type=int, default=128, help="hidden size of the tiny training-step model")
    parser.add_argument("--step-vocab", type=int, default=8192, help="vocabulary of the tiny training-step model")
    parser.add_argument("--step-seq", type=int, default=256, help="sequence length of the tiny training step")
    parser.add_argument("--step-anchors", type=int, default=32, help="num_anchors of the tiny training step")
    parser.add_argument(
        "--kernels",
        choices=("auto", "off", "force"),
        default="auto",
        help="Triton kernels of the loss paths: auto (on CUDA tensors), off (PyTorch everywhere), force (also on "
        "CPU through Triton's interpreter: slow, validation only); sets SPECFORGE_DPACE_KERNELS for the run",
    )
    parser.add_argument(
        "--no-anchors",
        action="store_true",
        help="skip the stock anchors (torch F.linear_cross_entropy; on a GPU Liger's and speculators' kernels)",
    )
    parser.add_argument("--json", default=None, help="also write all rows to this JSON file")
    parser.add_argument("--markdown", default=None, help="also write the tables as Markdown to this file")
    return parser


# --------------------------------------------------------------------------- measurement helpers


def alternate(
    cases: dict[str, Callable[[], Any]],
    reps: int,
    warmup: int,
    desc: str,
    before: Optional[Callable[[str], None]] = None,
) -> dict[str, list[float]]:
    """Seconds per call of every case, run in rotated order each repetition (load drifts hit all cases).

    ``before(name)`` runs ahead of each call, outside the clock (the step section switches the hook)."""
    from tqdm import tqdm

    prepare = before or (lambda name: None)

    names = list(cases)
    times: dict[str, list[float]] = {name: [] for name in names}
    # One bar over every call, warm-up included: at real sizes on a CPU a call takes seconds.
    with tqdm(total=(warmup + reps) * len(names), desc=desc, leave=False, file=sys.stderr, unit="call") as bar:
        for _ in range(warmup):
            for name in names:
                bar.set_postfix_str(f"warm-up {name}", refresh=False)
                prepare(name)
                cases[name]()
                bar.update()
        for rep in range(reps):
            shift = rep % len(names)
            for name in names[shift:] + names[:shift]:
                bar.set_postfix_str(f"rep {rep + 1}/{reps} {name}", refresh=False)
                prepare(name)
                start = time.perf_counter()
                cases[name]()
                times[name].append(time.perf_counter() - start)
                bar.update()
    return times


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def fix_mmap_threshold(threshold: int = 1 << 20) -> bool:
    """glibc: allocations of ``threshold`` bytes or more always use mmap (fixed, not dynamic), so freed
    buffers leave the process and peak-RSS growth counts each call's own allocations. False where
    there is no glibc ``mallopt``."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, threshold))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def peak_memory_bytes(fn: Callable[[], Any], device: str = "cpu") -> Optional[int]:
    """Peak memory a call adds: CUDA max_memory_allocated, or peak RSS growth on CPU (None if unreadable)."""
    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # reset VmHWM to the current RSS
        base = _status_kb("VmRSS")
        fn()
        return (_status_kb("VmHWM") - base) * 1024
    except OSError:
        return None


def peak_memory_and_result(fn: Callable[[], Any], device: str = "cpu") -> tuple[Optional[int], Any]:
    """``peak_memory_bytes`` of one call, and what the call returned."""
    box: dict[str, Any] = {}

    def call():
        box["out"] = fn()

    mem = peak_memory_bytes(call, device)
    return mem, box["out"]


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1e3


def rel_err(a, b) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


# --------------------------------------------------------------------------- objective paths


def upstream_host(lm_head, loss_type: str, block_size: int, gamma: Optional[float] = None, alpha: float = 0.5):
    """A minimal object to call SpecForge's ``_dflash_objective_chunk_terms`` unbound (no draft model needed)."""
    from specforge.algorithms.common.dflash_family_model import OnlineDFlashModel

    host = types.SimpleNamespace(
        lm_head=lm_head, loss_type=loss_type, block_size=block_size, loss_decay_gamma=gamma, dpace_alpha=alpha
    )
    host._dpace_weight = types.MethodType(OnlineDFlashModel._dpace_weight, host)
    return functools.partial(OnlineDFlashModel._dflash_objective_chunk_terms, host)


def upstream_loss(loss_type: str, chunk_fn, hidden, target, mask, chunk_blocks: int):
    """SpecForge's objective path as its forward runs it: checkpointed chunk reduction, then the loss."""
    from specforge.core.chunking import checkpointed_chunk_reduce

    num, den, _, _ = checkpointed_chunk_reduce(chunk_fn, hidden, target, mask, chunk_size=chunk_blocks, dim=1)
    return num / den if loss_type == "dflash" else num / hidden.shape[0]


def objective_only_chunk(objective, lm_head, hidden, target, mask):
    """The plugin's chunk function without acceptance metrics (only the objective's own ops)."""
    import torch
    import torch.nn.functional as F

    batch, blocks, slots, width = hidden.shape
    logits = lm_head(hidden.reshape(batch, blocks * slots, width)).reshape(batch, blocks, slots, -1)
    nlq = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none").reshape_as(target)
    correct = None
    if objective.needs_correct:
        with torch.no_grad():
            correct = logits.argmax(dim=-1) == target
    num, den = objective.chunk_terms(nlq, mask, correct)
    with torch.no_grad():  # after the objective, like upstream: checkpoint recomputation stops early
        if correct is None:
            correct = logits.argmax(dim=-1) == target
        correct_num = (correct & (mask > 0.5)).sum().float()
    return num, den, correct_num, mask.sum()


def plugin_loss(objective, chunk_fn, hidden, target, mask, chunk_blocks: int):
    from specforge.core.chunking import checkpointed_chunk_reduce

    totals = checkpointed_chunk_reduce(chunk_fn, hidden, target, mask, chunk_size=chunk_blocks, dim=1)
    return objective.reduce(totals[0], totals[1], hidden.shape[0]).loss


def fused_loss(objective, lm_head, hidden, target, mask, sub_chunk_tokens):
    from specforge_dpace.fused import fused_objective_terms

    terms = fused_objective_terms(objective, hidden, lm_head, target, mask, sub_chunk_tokens=sub_chunk_tokens)
    return objective.reduce(terms.num, terms.den, hidden.shape[0]).loss


def random_chunk(batch, blocks, slots, width, vocab, dtype, device, seed=0):
    """Frozen head, hidden states (leaf with grad), labels (half at the argmax) and a realistic mask."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(width, vocab, bias=False).requires_grad_(False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(vocab, width, generator=gen) / width**0.5)
    head = head.to(device=device, dtype=dtype)
    hidden = torch.randn(batch, blocks, slots, width, generator=gen).to(device=device, dtype=dtype)
    hidden.requires_grad_(True)
    target = torch.randint(0, vocab, (batch, blocks, slots), generator=gen)
    with torch.no_grad():
        top = torch.cat([head(hidden[:, i : i + 8].detach()).argmax(-1).cpu() for i in range(0, blocks, 8)], dim=1)
    target = torch.where(torch.rand(batch, blocks, slots, generator=gen) < 0.5, top, target).to(device)
    mask = (torch.rand(batch, blocks, slots, generator=gen) > 0.1).float()
    mask[..., 0] = 0.0
    return head, hidden, target, mask.to(device)


def _backward_case(loss_fn: Callable[[], Any], hidden, device: str) -> Callable[[], Any]:
    import torch

    def run():
        loss = loss_fn()
        (grad,) = torch.autograd.grad(loss, hidden)
        _sync(device)
        return loss.detach(), grad

    return run


def plain_soft_loss(objective, lm_head, hidden, target, mask, states, chunk_blocks: int):
    """The plain path of a soft objective as the patched SpecForge model runs it: the hook's chunk
    function (draft logits, target logits without grad, soft statistics, metrics) under SpecForge's
    checkpointed chunk reduction."""
    from specforge.core.chunking import checkpointed_chunk_reduce

    from specforge_dpace.hooks._blocks import objective_chunk_terms

    chunk = functools.partial(objective_chunk_terms, objective, lm_head)
    totals = checkpointed_chunk_reduce(chunk, hidden, target, mask, states, chunk_size=chunk_blocks, dim=1)
    return objective.reduce(totals[0], totals[1], hidden.shape[0]).loss


def fused_soft_loss(objective, lm_head, hidden, target, mask, states, sub_chunk_tokens):
    """The fused path of a soft objective as the hook runs it (``loss_options: {fused: true}``)."""
    from specforge_dpace.hooks._fused_bridge import fused_totals

    totals = fused_totals(objective, lm_head, hidden, target, mask, sub_chunk_tokens, states)
    return objective.reduce(totals[0], totals[1], hidden.shape[0]).loss


def torch_lce_reason() -> Optional[str]:
    """Why PyTorch's chunked ``F.linear_cross_entropy`` cannot run here, or None."""
    import torch
    import torch.nn.functional as F

    if not hasattr(F, "linear_cross_entropy") or not hasattr(torch.nn, "LinearCrossEntropyOptions"):
        return f"torch {torch.__version__} has no chunked F.linear_cross_entropy (LinearCrossEntropyOptions)"
    return None


def torch_lce_loss(objective, lm_head, hidden, target, mask):
    """PyTorch's chunked ``F.linear_cross_entropy`` (per-slot cross-entropy, gradient formed in its forward)
    feeding the plugin's objective: exact for objectives that read only the per-slot cross-entropy."""
    import torch
    import torch.nn.functional as F

    batch, blocks, slots, width = hidden.shape
    nlq = F.linear_cross_entropy(
        hidden.reshape(-1, width),
        lm_head.weight,
        target.reshape(-1),
        linear_bias=lm_head.bias,
        reduction="none",
        options=torch.nn.LinearCrossEntropyOptions(),
    )
    num, den = objective.chunk_terms(nlq.float().view(batch, blocks, slots), mask, None)
    return objective.reduce(num, den, batch).loss


def soft_anchor_cases(args, head, hidden, target, mask, states) -> tuple[dict, list[str]]:
    """Stock fused soft-label kernels on the same chunk, as loss functions (decayless mean over supervised
    slots, like ``kl`` and ``tv``), and why any is skipped: ``{name: (our spec, fn)}``, reasons."""
    import torch

    anchors: dict[str, tuple[str, Callable[[], Any]]] = {}
    reasons = []
    if not args.device.startswith("cuda"):
        return anchors, ["Liger's and speculators' kernels need a CUDA GPU"]
    width = hidden.shape[-1]
    try:
        from speculators.losses.fused import fused_kl_div_loss, fused_tv_loss
    except Exception as exc:  # not installed, or its own imports fail
        reasons.append(f"speculators' fused kl/tv kernels not importable ({type(exc).__name__}: {exc})")
    else:
        from specforge.core.chunking import checkpointed_chunk_reduce

        def speculators_loss(kernel):
            def chunk(h, m, th):
                logits = head(h.reshape(1, -1, width))
                with torch.no_grad():
                    target_logits = head(th.reshape(1, -1, width))
                per_slot = kernel(logits, target_logits).view(m.shape).float()
                return (per_slot * m).sum(), m.sum()

            num, den = checkpointed_chunk_reduce(chunk, hidden, mask, states, chunk_size=args.chunk_blocks, dim=1)
            return num / den

        anchors["speculators fused kl"] = ("kl", functools.partial(speculators_loss, fused_kl_div_loss))
        anchors["speculators fused tv"] = ("tv", functools.partial(speculators_loss, fused_tv_loss))
    try:
        import liger_kernel.transformers as liger
    except Exception as exc:
        reasons.append(f"Liger-Kernel not importable ({type(exc).__name__}: {exc})")
    else:
        labels = torch.where(mask > 0, target, torch.full_like(target, -100)).reshape(-1)
        flat, flat_states = hidden.reshape(-1, width), states.reshape(-1, width)
        if hasattr(liger, "LigerFusedLinearKLDivLoss"):  # Liger-Kernel PR #1423
            name, module = "liger fused-linear KL", liger.LigerFusedLinearKLDivLoss()
        else:  # generalized JSD at beta = 0 is KL(p || q)
            name, module = "liger fused-linear JSD(beta=0) = KL", liger.LigerFusedLinearJSD(jsd_beta=0.0)
        anchors[name] = ("kl", lambda: module(flat, head.weight, flat_states, head.weight, labels))
    return anchors, reasons


def target_states(hidden, seed: int = 1):
    """The target's last hidden states of the slots (frozen): correlated with the drafter's, so alpha is
    neither 0 nor 1."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(hidden.shape, generator=gen).to(device=hidden.device, dtype=hidden.dtype)
    return (0.8 * hidden.detach() + 0.6 * noise).requires_grad_(False)


def fused_gemm_floor(objective) -> tuple[int, float]:
    """Gradient buffers the fused path keeps for ``objective`` and its flop floor vs upstream (6HV)."""
    from specforge_dpace.fused._soft import soft_plan

    plan, _ = soft_plan(objective)
    buffers = 1 if plan.combined else len(plan.directions)
    return buffers, (4 + 2 * buffers) / 6


# --------------------------------------------------------------------------- sections


def section_overhead(args) -> list[dict]:
    """Issue 2: microseconds each objective adds per call over upstream dflash (tiny lm_head)."""
    from specforge_dpace.hooks._blocks import objective_chunk_terms
    from specforge_dpace.losses import build_loss

    head, hidden, target, mask = random_chunk(
        1, args.tiny_blocks, args.block_size, args.tiny_hidden, args.tiny_vocab, _dtype(args), "cpu"
    )
    cases: dict[str, Callable[[], Any]] = {}
    for loss_type in ("dflash", "dpace"):
        fn = upstream_host(head, loss_type, args.block_size)
        cases[f"upstream {loss_type}"] = _backward_case(
            functools.partial(upstream_loss, loss_type, fn, hidden, target, mask, args.chunk_blocks), hidden, "cpu"
        )
    for spec in (*OBJECTIVES, COMPOSITE):
        objective = build_loss(spec)
        for label, chunk in (
            ("objective", functools.partial(objective_only_chunk, objective, head)),
            ("+metrics", functools.partial(objective_chunk_terms, objective, head)),
        ):
            cases[f"{label} {spec}"] = _backward_case(
                functools.partial(plugin_loss, objective, chunk, hidden, target, mask, args.chunk_blocks), hidden, "cpu"
            )
    times = alternate(cases, args.small_reps, args.warmup_small, "overhead")
    base = median_ms(times["upstream dflash"]) * 1e3
    upstream_added = median_ms(times["upstream dpace"]) * 1e3 - base
    rows = [
        {"path": "upstream dflash", "objective": "dflash", "median_us": base, "added_us": 0.0},
        {
            "path": "upstream dpace",
            "objective": "dpace",
            "median_us": base + upstream_added,
            "added_us": upstream_added,
        },
    ]
    plugin_base = median_ms(times["objective dflash"]) * 1e3
    for spec in (*OBJECTIVES, COMPOSITE):
        limit = (4.0 if spec == COMPOSITE else 2.0) * max(upstream_added, 1.0)
        row = {"path": "plugin", "objective": spec, "median_us": median_ms(times[f"objective {spec}"]) * 1e3}
        for label in ("objective", "+metrics"):
            added = median_ms(times[f"{label} {spec}"]) * 1e3 - base
            row[f"{label}_added_us"] = added
        row["vs_plugin_dflash_us"] = row["median_us"] - plugin_base
        row["x_upstream_dpace_added"] = row["objective_added_us"] / upstream_added if upstream_added > 0 else None
        row["target_us"] = limit
        row["meets"] = "yes" if row["objective_added_us"] <= limit else "NO"
        rows.append(row)
    title = (
        f"[overhead] objective path fwd+bwd, tiny head H={args.tiny_hidden} V={args.tiny_vocab}, N={args.tiny_blocks}, "
        f"K={args.block_size}; medians of {args.small_reps}; added = median - upstream dflash median "
        f"(target: <= 2x upstream dpace's added, composite <= 4x; 'objective' = CE + objective only, "
        f"'+metrics' = as the hook runs it, with acceptance metrics; vs_plugin_dflash = over the plugin's own dflash)"
    )
    _emit(args, title, rows)
    return rows


def _sizes(args) -> list[tuple[int, int]]:
    blocks = args.blocks or ([32] if args.quick else [32, 128])
    return [(v, n) for v in args.vocab for n in blocks]


def section_real(args) -> list[dict]:
    """Issue 2: every objective vs dflash at real sizes, same checkpointed path (time ratio, peak memory)."""
    from specforge_dpace.losses import build_loss

    rows = []
    for vocab, blocks in _sizes(args):
        head, hidden, target, mask = random_chunk(
            args.batch, blocks, args.block_size, args.hidden_size, vocab, _dtype(args), args.device
        )
        cases = {
            "upstream dflash": _backward_case(
                functools.partial(
                    upstream_loss,
                    "dflash",
                    upstream_host(head, "dflash", args.block_size),
                    hidden,
                    target,
                    mask,
                    args.chunk_blocks,
                ),
                hidden,
                args.device,
            )
        }
        for spec in (*OBJECTIVES, COMPOSITE):
            objective = build_loss(spec)
            chunk = functools.partial(objective_only_chunk, objective, head)
            cases[spec] = _backward_case(
                functools.partial(plugin_loss, objective, chunk, hidden, target, mask, args.chunk_blocks),
                hidden,
                args.device,
            )
        times = alternate(cases, args.reps, args.warmup, f"real V={vocab} N={blocks}")
        base = median_ms(times["upstream dflash"])
        base_mem = peak_memory_bytes(cases["upstream dflash"], args.device)
        for name, values in times.items():
            mem = base_mem if name == "upstream dflash" else peak_memory_bytes(cases[name], args.device)
            rows.append(
                {
                    "V": vocab,
                    "N": blocks,
                    "objective": name,
                    "median_ms": median_ms(values),
                    "ratio_vs_dflash": median_ms(values) / base,
                    "peak_MiB": None if mem is None else mem / 2**20,
                    "mem_ratio": None if mem is None or not base_mem else mem / base_mem,
                }
            )
            _progress(rows[-1])
        del head, hidden, target, mask, cases
        gc.collect()
    title = (
        f"[real] objective path fwd+bwd (checkpointed chunks of {args.chunk_blocks} blocks), H={args.hidden_size}, "
        f"K={args.block_size}, B={args.batch}, {args.dtype}, {args.device}; medians of {args.reps}; "
        "ratio vs upstream dflash (target: within noise of 1.00x)"
    )
    _emit(args, title, rows)
    return rows


def section_fused(args) -> list[dict]:
    """Issue 7: upstream checkpointed objective path vs the fused path at real sizes."""
    import torch

    from specforge_dpace.fused import auto_sub_chunk_tokens
    from specforge_dpace.losses import build_loss

    names = [n.strip() for n in args.fused_objectives.split(",") if n.strip()]
    lce_reason = "--no-anchors" if args.no_anchors else torch_lce_reason()
    if lce_reason:
        print(f"[fused] PyTorch's F.linear_cross_entropy anchor skipped: {lce_reason}", flush=True)
    rows = []
    for vocab, blocks in _sizes(args):
        head, hidden, target, mask = random_chunk(
            args.batch, blocks, args.block_size, args.hidden_size, vocab, _dtype(args), args.device
        )
        cases = {}
        for name in names:
            objective = build_loss(name)
            if lce_reason is None and not objective.needs_correct:  # it reads only the per-slot cross-entropy
                cases[f"torch-lce {name}"] = _backward_case(
                    functools.partial(torch_lce_loss, objective, head, hidden, target, mask), hidden, args.device
                )
            chunk = upstream_host(head, name, args.block_size)
            cases[f"upstream {name}"] = _backward_case(
                functools.partial(upstream_loss, name, chunk, hidden, target, mask, args.chunk_blocks),
                hidden,
                args.device,
            )
            cases[f"fused {name}"] = _backward_case(
                functools.partial(fused_loss, objective, head, hidden, target, mask, args.sub_chunk_tokens),
                hidden,
                args.device,
            )
        times = alternate(cases, args.reps, args.warmup, f"fused V={vocab} N={blocks}")
        sub_chunk = args.sub_chunk_tokens or auto_sub_chunk_tokens(vocab, args.block_size, args.device.split(":")[0])
        for name in names:
            up, fu = cases[f"upstream {name}"], cases[f"fused {name}"]
            (up_loss, up_grad), (fu_loss, fu_grad) = up(), fu()
            up_mem, fu_mem = peak_memory_bytes(up, args.device), peak_memory_bytes(fu, args.device)
            up_ms, fu_ms = median_ms(times[f"upstream {name}"]), median_ms(times[f"fused {name}"])
            rows.append(
                {
                    "V": vocab,
                    "N": blocks,
                    "objective": name,
                    "upstream_ms": up_ms,
                    "fused_ms": fu_ms,
                    "time_ratio": fu_ms / up_ms,
                    "upstream_MiB": None if up_mem is None else up_mem / 2**20,
                    "fused_MiB": None if fu_mem is None else fu_mem / 2**20,
                    "mem_ratio": None if not up_mem or fu_mem is None else fu_mem / up_mem,
                    "loss_rel_err": abs(float(fu_loss) - float(up_loss)) / max(abs(float(up_loss)), 1e-30),
                    "grad_rel_err": rel_err(fu_grad, up_grad),
                    "sub_chunk": sub_chunk,
                    "kernels": _kernels_used(hidden),
                }
            )
            lce = cases.get(f"torch-lce {name}")
            if lce is not None:
                lce_mem, (lce_loss, lce_grad) = peak_memory_and_result(lce, args.device)
                rows[-1]["torch_lce_x"] = median_ms(times[f"torch-lce {name}"]) / up_ms
                rows[-1]["torch_lce_mem_x"] = None if not up_mem or lce_mem is None else lce_mem / up_mem
                rows[-1]["torch_lce_grad_rel_err"] = rel_err(lce_grad, up_grad)
                del lce_grad
            _progress(rows[-1])
            del up_grad, fu_grad
        del head, hidden, target, mask, cases
        gc.collect()
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    targets = (
        f"issue 22's targets: time <= {GPU_HARD_TARGETS['time']}x, memory <= {GPU_HARD_TARGETS['mem']}x"
        if args.device.startswith("cuda")
        else "targets at V=151936: time <= 0.75x, memory <= 0.5x"
    )
    title = (
        f"[fused] objective path fwd+bwd, upstream (checkpointed_chunk_reduce, {args.chunk_blocks} blocks) vs fused, "
        f"H={args.hidden_size}, K={args.block_size}, B={args.batch}, {args.dtype}, {args.device}; medians of "
        f"{args.reps}; {targets} (floor 4HV/6HV = 0.67x); torch_lce = PyTorch's chunked F.linear_cross_entropy "
        "feeding the objective, same ratios"
    )
    _emit(args, title, rows)
    return rows


def section_soft(args) -> list[dict]:
    """Issue 11: soft objectives, plain and fused, vs upstream's hard dflash, at real sizes."""
    import torch

    from specforge_dpace.fused import auto_sub_chunk_tokens
    from specforge_dpace.fused._soft import SOFT_BUFFERS
    from specforge_dpace.losses import build_loss

    specs = [spec.strip() for spec in args.soft_objectives.split(";") if spec.strip()]
    rows: list[dict] = []
    anchor_rows: list[dict] = []
    for vocab, blocks in _sizes(args):
        head, hidden, target, mask = random_chunk(
            args.batch, blocks, args.block_size, args.hidden_size, vocab, _dtype(args), args.device
        )
        states = target_states(hidden)
        cases = {
            "upstream dflash": _backward_case(
                functools.partial(
                    upstream_loss,
                    "dflash",
                    upstream_host(head, "dflash", args.block_size),
                    hidden,
                    target,
                    mask,
                    args.chunk_blocks,
                ),
                hidden,
                args.device,
            )
        }
        anchors, reasons = (
            ({}, ["--no-anchors"]) if args.no_anchors else soft_anchor_cases(args, head, hidden, target, mask, states)
        )
        for name, (_, loss_fn) in list(anchors.items()):
            case = _backward_case(loss_fn, hidden, args.device)
            try:
                case()  # a first call outside the clock: an anchor whose API differs is dropped, with its error
            except Exception as exc:
                reasons.append(f"{name} failed ({type(exc).__name__}: {exc})")
                del anchors[name]
            else:
                cases[f"anchor {name}"] = case
        for reason in dict.fromkeys(reasons):
            print(f"[soft-anchors] skipped: {reason}", flush=True)
        # one object per path: lk-lambda(lagged=true) keeps its lambda from call to call
        objectives = {spec: (build_loss(spec), build_loss(spec)) for spec in specs}
        for spec, (plain_objective, fused_objective) in objectives.items():
            cases[f"plain {spec}"] = _backward_case(
                functools.partial(
                    plain_soft_loss, plain_objective, head, hidden, target, mask, states, args.chunk_blocks
                ),
                hidden,
                args.device,
            )
            cases[f"fused {spec}"] = _backward_case(
                functools.partial(
                    fused_soft_loss, fused_objective, head, hidden, target, mask, states, args.sub_chunk_tokens
                ),
                hidden,
                args.device,
            )
        times = alternate(cases, args.reps, args.warmup, f"soft V={vocab} N={blocks}")
        base_ms = median_ms(times["upstream dflash"])
        base_mem, _ = peak_memory_and_result(cases["upstream dflash"], args.device)
        sub_chunk = args.sub_chunk_tokens or auto_sub_chunk_tokens(
            vocab, args.block_size, args.device.split(":")[0], SOFT_BUFFERS, soft=True
        )
        for spec, (_, objective) in objectives.items():
            plain_mem, (plain_loss, plain_grad) = peak_memory_and_result(cases[f"plain {spec}"], args.device)
            fused_mem, (fused_loss, fused_grad) = peak_memory_and_result(cases[f"fused {spec}"], args.device)
            plain_ms, fused_ms = median_ms(times[f"plain {spec}"]), median_ms(times[f"fused {spec}"])
            buffers, floor = fused_gemm_floor(objective)
            row = {
                "V": vocab,
                "N": blocks,
                "objective": spec,
                "upstream_ms": base_ms,
                "plain_ms": plain_ms,
                "fused_ms": fused_ms,
                "plain_x": plain_ms / base_ms,
                "fused_x": fused_ms / base_ms,
                "fused_floor_x": floor,
                "grad_buffers": buffers,
                "upstream_MiB": None if base_mem is None else base_mem / 2**20,
                "plain_MiB": None if plain_mem is None else plain_mem / 2**20,
                "fused_MiB": None if fused_mem is None else fused_mem / 2**20,
                "plain_mem_x": None if not base_mem or plain_mem is None else plain_mem / base_mem,
                "fused_mem_x": None if not base_mem or fused_mem is None else fused_mem / base_mem,
                "loss_rel_err": abs(float(fused_loss) - float(plain_loss)) / max(abs(float(plain_loss)), 1e-30),
                "grad_rel_err": rel_err(fused_grad, plain_grad),
                "sub_chunk": sub_chunk,
                "kernels": _kernels_used(hidden),
            }
            row["meets"] = _soft_verdict(row, args.device)
            rows.append(row)
            _progress(row)
            del plain_grad, fused_grad
        for name, (ours, _) in anchors.items():
            anchor_mem, (anchor_loss, _) = peak_memory_and_result(cases[f"anchor {name}"], args.device)
            mine = next((row for row in rows[-len(objectives) :] if row["objective"] == ours), None)
            anchor_rows.append(
                {
                    "V": vocab,
                    "N": blocks,
                    "anchor": name,
                    "anchor_x": median_ms(times[f"anchor {name}"]) / base_ms,
                    "anchor_mem_x": None if not base_mem or anchor_mem is None else anchor_mem / base_mem,
                    "ours": ours,
                    "ours_fused_x": None if mine is None else mine["fused_x"],
                    "ours_fused_mem_x": None if mine is None else mine["fused_mem_x"],
                    "anchor_loss": float(anchor_loss),
                }
            )
            _progress(anchor_rows[-1])
        del head, hidden, target, mask, states, cases
        gc.collect()
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    if args.device.startswith("cuda"):
        gpu = GPU_SOFT_TARGETS
        targets = (
            f"issue 22's targets: fused one-direction <= {gpu['fused_time']}x time (two directions "
            f"<= {gpu['two_direction_time']}x) and <= {gpu['fused_mem']}x peak memory, plain <= {gpu['plain_time']}x "
            f"time and <= {gpu['plain_mem']}x memory"
        )
    else:
        targets = (
            f"issue 11's targets: fused <= {SOFT_TARGETS['fused_time']}x time and <= {SOFT_TARGETS['fused_mem']}x "
            f"peak memory, plain <= {SOFT_TARGETS['plain_time']}x time"
        )
    title = (
        f"[soft] soft-label objective path fwd+bwd vs upstream hard dflash (checkpointed_chunk_reduce, "
        f"{args.chunk_blocks} blocks), H={args.hidden_size}, K={args.block_size}, B={args.batch}, {args.dtype}, "
        f"{args.device}; medians of {args.reps}; {targets}; floors: fused (4+2*grad_buffers)/6, plain 10/6"
    )
    _emit(args, title, rows)
    if anchor_rows:
        _EXTRA_RESULTS["soft-anchors"] = anchor_rows
        _emit(
            args,
            f"[soft-anchors] stock fused soft-label kernels on the same chunks, time and peak memory vs upstream hard "
            f"dflash in the same run, {args.dtype}, {args.device}, beside our fused path for the same objective",
            anchor_rows,
        )
    return rows


def _soft_verdict(row: dict, device: str = "cpu") -> str:
    """Which targets a row meets. CPU (issue 11): T = fused time, M = fused memory, P = plain time. GPU
    (issue 22): the same letters at its targets (T by gradient directions; none for three or more) and
    PM = plain memory."""
    mem = row["fused_mem_x"]
    if not device.startswith("cuda"):
        checks = [
            ("T", row["fused_x"] <= SOFT_TARGETS["fused_time"]),
            ("M", None if mem is None else mem <= SOFT_TARGETS["fused_mem"]),  # None: peak memory not measurable
            ("P", row["plain_x"] <= SOFT_TARGETS["plain_time"]),
        ]
    else:
        gpu, buffers = GPU_SOFT_TARGETS, row["grad_buffers"]
        limit = {1: gpu["fused_time"], 2: gpu["two_direction_time"]}.get(buffers)
        plain_mem = row["plain_mem_x"]
        checks = [
            ("T", None if limit is None else row["fused_x"] <= limit),
            ("M", None if mem is None else mem <= gpu["fused_mem"]),
            ("P", row["plain_x"] <= gpu["plain_time"]),
            ("PM", None if plain_mem is None else plain_mem <= gpu["plain_mem"]),
        ]
    return " ".join(name if ok else (f"{name}?" if ok is None else f"no-{name}") for name, ok in checks)


def _kernels_used(tensor) -> str:
    """``triton`` where the loss paths ran the Triton kernels on this tensor's device, else ``pytorch``."""
    from specforge_dpace.fused.kernels import kernels_for

    return "triton" if kernels_for(tensor) else "pytorch"


# --------------------------------------------------------------------------- whole training steps


class TinyStep:
    """A real SpecForge OnlineDFlashModel over a real tiny DFlashDraftModel (sdpa), and one fixed batch."""

    def __init__(self, args, loss_type: str, loss_options: Optional[dict] = None, seed: int = 0) -> None:
        import torch
        from specforge.algorithms.common.dflash_family_model import OnlineDFlashModel
        from specforge.modeling.draft.dflash import DFlashDraftModel
        from transformers import Qwen3Config

        hidden, vocab = args.step_hidden, args.step_vocab
        torch.manual_seed(seed)
        config = Qwen3Config(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=hidden // 4,
            max_position_embeddings=4 * args.step_seq,
        )
        config.block_size = args.block_size
        config.num_target_layers = 2
        config.dflash_config = {"target_layer_ids": [0, 1], "mask_token_id": vocab - 1}
        config._attn_implementation = "sdpa"
        draft = DFlashDraftModel(config)
        lm_head = torch.nn.Linear(hidden, vocab, bias=False).requires_grad_(False)
        embed = torch.nn.Embedding(vocab, hidden).requires_grad_(False)
        kwargs: dict[str, Any] = dict(
            draft_model=draft,
            target_lm_head=lm_head,
            target_embed_tokens=embed,
            mask_token_id=vocab - 1,
            block_size=args.block_size,
            attention_backend="sdpa",
            num_anchors=args.step_anchors,
            objective_chunk_blocks=args.chunk_blocks,
            loss_type=loss_type,
        )
        if loss_options is not None:
            kwargs["loss_options"] = loss_options
        self.model = OnlineDFlashModel(**kwargs)
        gen = torch.Generator().manual_seed(seed + 1)
        batch, seq = 2, args.step_seq
        self.batch = {
            "input_ids": torch.randint(0, vocab - 1, (batch, seq), generator=gen),
            "hidden_states": torch.randn(batch, seq, 2 * hidden, generator=gen),
            "loss_mask": torch.ones(batch, seq),
        }
        self.batch["loss_mask"][:, : seq // 8] = 0

    def __call__(self):
        import torch

        torch.manual_seed(1234)  # same anchors every call and in every variant
        loss, _, _ = self.model(**self.batch)
        loss.backward()
        for param in self.model.parameters():
            param.grad = None
        return loss.detach()


def _timed_alternate(cases: dict[str, tuple[bool, Callable[[], Any]]], reps: int, warmup: int, desc: str):
    """``alternate`` over ``(patched, fn)`` cases, switching the hook state before the clock starts."""
    import specforge_dpace

    def set_state(name: str) -> None:
        state = cases[name][0]
        if state != specforge_dpace.is_installed("unified-model"):
            (specforge_dpace.install if state else specforge_dpace.uninstall)()

    return alternate({name: fn for name, (_, fn) in cases.items()}, reps, warmup, desc, before=set_state)


def _build(args, patched: bool, loss_type: str, loss_options: Optional[dict] = None) -> TinyStep:
    import specforge_dpace

    if patched:
        specforge_dpace.install()
    elif specforge_dpace.is_installed("unified-model"):
        specforge_dpace.uninstall()
    return TinyStep(args, loss_type, loss_options)


def _step_title(args, what: str) -> str:
    return (
        f"[{what}] tiny OnlineDFlashModel step fwd+bwd (DFlashDraftModel 2 layers, H={args.step_hidden}, "
        f"V={args.step_vocab}, B=2, S={args.step_seq}, anchors={args.step_anchors}, K={args.block_size}, sdpa); "
        f"medians of {args.small_reps}"
    )


def section_step(args) -> list[dict]:
    """Issue 3: patched vs unpatched dflash, and every plugin objective vs dflash, as whole steps."""
    cases: dict[str, tuple[bool, Callable[[], Any]]] = {
        "unpatched dflash": (False, _build(args, False, "dflash")),
        "patched dflash": (True, _build(args, True, "dflash")),
    }
    for spec in (*OBJECTIVES[1:], COMPOSITE):
        cases[f"patched {spec}"] = (True, _build(args, True, spec))
    times = _timed_alternate(cases, args.small_reps, args.warmup_small, "step")
    base = median_ms(times["unpatched dflash"])
    rows = []
    for name, values in times.items():
        target = "<= 1.01x" if name == "patched dflash" else ("" if name == "unpatched dflash" else "within noise")
        rows.append(
            {
                "case": name,
                "median_ms": median_ms(values),
                "ratio_vs_unpatched_dflash": median_ms(values) / base,
                "target": target,
            }
        )
    _emit(args, _step_title(args, "step"), rows)
    return rows


def section_fused_step(args) -> list[dict]:
    """Issue 7: the tiny step with the fused path vs upstream, and the objective path's share of the step."""
    import torch

    from specforge_dpace.losses import build_loss

    names = [n.strip() for n in args.fused_objectives.split(",") if n.strip()]
    options = {"fused": True}
    if args.sub_chunk_tokens:
        options["fused_sub_chunk"] = args.sub_chunk_tokens
    cases: dict[str, tuple[bool, Callable[[], Any]]] = {}
    objective_cases: dict[str, Callable[[], Any]] = {}
    for name in names:
        upstream = _build(args, False, name)
        cases[f"upstream {name}"] = (False, upstream)
        cases[f"fused {name}"] = (True, _build(args, True, name, options))
        # the objective path alone, on hidden states shaped like the step's (B=2, N=anchors, K)
        head = upstream.model.lm_head
        gen = torch.Generator().manual_seed(5)
        shape = (2, args.step_anchors, args.block_size)
        hidden = torch.randn(*shape, args.step_hidden, generator=gen).requires_grad_(True)
        target = torch.randint(0, args.step_vocab, shape, generator=gen)
        mask = (torch.rand(shape, generator=gen) > 0.1).float()
        mask[..., 0] = 0.0

        objective_cases[f"upstream {name}"] = _backward_case(
            functools.partial(
                upstream_loss, name, upstream_host(head, name, args.block_size), hidden, target, mask, args.chunk_blocks
            ),
            hidden,
            "cpu",
        )
        objective_cases[f"fused {name}"] = _backward_case(
            functools.partial(fused_loss, build_loss(name), head, hidden, target, mask, args.sub_chunk_tokens),
            hidden,
            "cpu",
        )
    step_times = _timed_alternate(cases, args.small_reps, args.warmup_small, "fused-step")
    path_times = alternate(objective_cases, args.small_reps, args.warmup_small, "fused-step objective")
    rows = []
    for name in names:
        up_step, fu_step = median_ms(step_times[f"upstream {name}"]), median_ms(step_times[f"fused {name}"])
        up_path, fu_path = median_ms(path_times[f"upstream {name}"]), median_ms(path_times[f"fused {name}"])
        rows.append(
            {
                "objective": name,
                "upstream_step_ms": up_step,
                "fused_step_ms": fu_step,
                "step_ratio": fu_step / up_step,
                "objective_share": up_path / up_step,
                "upstream_path_ms": up_path,
                "fused_path_ms": fu_path,
                "expected_step_ratio": (up_step - up_path + fu_path) / up_step,
            }
        )
    _emit(args, _step_title(args, "fused-step") + "; expected = (step - upstream path + fused path) / step", rows)
    return rows


# --------------------------------------------------------------------------- output


_TABLES: list[tuple[str, list[dict]]] = []


def _progress(row: dict) -> None:
    """One line per finished row on stderr, so long real-size runs show results as they come."""
    print(
        "  " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
        file=sys.stderr,
        flush=True,
    )


def _emit(args, title: str, rows: list[dict]) -> None:
    from specforge_dpace.report import format_table

    _TABLES.append((title, rows))
    print(format_table(rows, floatfmt=".4g", title=title), flush=True)
    print(flush=True)


def _kernel_note(device: str) -> str:
    """Which code the loss paths' element-wise work runs on ``device``, for the header line."""
    import torch

    from specforge_dpace.fused.kernels import kernels_for, triton_error

    try:
        used = kernels_for(torch.empty(0, device=device))
    except RuntimeError as exc:  # force without the interpreter
        raise SystemExit(f"--kernels force: {exc}") from exc
    if used:
        import triton

        return f"Triton {triton.__version__}"
    return "PyTorch" + (f"; Triton unavailable: {triton_error()}" if triton_error() else "")


def _dtype(args):
    import torch

    return torch.bfloat16 if args.dtype == "bf16" else torch.float32


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ["SPECFORGE_DPACE_KERNELS"] = args.kernels
    _EXTRA_RESULTS.clear()
    import torch

    torch.set_num_threads(args.threads)
    fixed = fix_mmap_threshold() if not args.device.startswith("cuda") else False
    args.reps = args.reps or (3 if args.quick else 5)
    args.small_reps = args.small_reps or (60 if args.quick else 300)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    args.warmup_small = max(args.warmup, 5)
    for name in ("reps", "small_reps"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    runners = {
        "overhead": section_overhead,
        "real": section_real,
        "step": section_step,
        "fused": section_fused,
        "fused-step": section_fused_step,
        "soft": section_soft,
    }
    print(
        f"bench_loss_path: torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}, "
        f"kernels {args.kernels} ({_kernel_note(args.device)}), "
        f"load average {os.getloadavg()[0]:.2f} at start" + (", glibc mmap threshold fixed at 1 MiB" if fixed else ""),
        flush=True,
    )
    results = {}
    for section in args.sections:
        torch.set_num_threads(args.small_threads if section in ("overhead", "step", "fused-step") else args.threads)
        results[section] = runners[section](args)
    results.update(_EXTRA_RESULTS)
    if args.json:
        from specforge_dpace.report import write_json

        write_json(args.json, results)
    if args.markdown:
        from specforge_dpace.report import markdown_table, write_text

        write_text(args.markdown, "\n\n".join(f"**{t}**\n\n{markdown_table(r)}" for t, r in _TABLES) + "\n")
    print(f"load average {os.getloadavg()[0]:.2f} at end", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
