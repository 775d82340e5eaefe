"""How much of a composite's loss and of its gradient each term carries, and a warning when one term is all.

For a composite ``L = sum_i c_i`` (``c_i = w_i * L_i``, divided by the running magnitude with
``normalize=true``; :attr:`LossValue.weighted`):

* ``loss_share[term_i] = |c_i| / sum_j |c_j|``, exact, from the reduced values;
* ``grad_share[term_i] = ||g_i|| / sum_j ||g_j||`` with ``g_i = d c_i / d z`` over the drafter's
  logits ``z`` of every supervised slot of the micro-batch.  A term reaches ``z`` only through per-slot
  statistics ``s`` (cross-entropy, log alpha, KL, ...), so ``g_i`` at a slot is
  ``sum_t v_it sum_s C_ts * (d s / dz)`` with ``v_i = d c_i / d num`` (the reduce step, from autograd
  on the numerator entries) and ``C_ts = d num_t / d s`` (the objective's analytic ``slot_grad``), and

      ||g_i||^2 = v_i^T Q v_i,    Q_tt' = sum_slots sum_{s,s'} C_ts C_t's' <d s / dz, d s' / dz>.

  ``Q`` is additive over chunks of blocks; :func:`gram_terms` forms it from the slots' logits with the
  d/dz rows of :mod:`._statistics`.  Forming ``<d s / dz, d s' / dz>`` costs a few passes over the
  vocabulary per slot, so it runs on a sample of whole blocks (:func:`sample_blocks`: every
  ``stride``-th block of the micro-batch, at most ``share_blocks``), scaled by the sampled fraction;
  with at most ``share_blocks`` blocks in the micro-batch it is exact.

:class:`ShareMonitor` warns once when one term carries more than :data:`DOMINANT_SHARE` of the loss or of
the gradient for :data:`SUSTAINED_STEPS` training micro-batches in a row, naming the terms and the
weights that would give each term an equal share.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from typing import Any, Optional

import torch

from ._statistics import RowStats, gram_rows

Tensor = torch.Tensor
logger = logging.getLogger("specforge_dpace")

#: a term carrying more than this share ...
DOMINANT_SHARE = 0.99
#: ... for this many training micro-batches in a row is reported (once per objective)
SUSTAINED_STEPS = 50
#: blocks per micro-batch whose slots form the gradient-share Gram matrix (the ``share_blocks`` default)
SHARE_BLOCKS = 32
#: set on a composite whose gradient shares cannot be formed (a term has no ``slot_grad``)
NO_GRADIENT_SHARES = "no_gradient_shares"


def sample_blocks(batch: int, blocks: int, budget: int, device: Any = None) -> Optional[Tensor]:
    """``[batch, blocks]`` bool: every ``ceil(batch * blocks / budget)``-th block (None when ``budget`` is 0)."""
    if budget <= 0:
        return None
    total = batch * blocks
    stride = max(1, math.ceil(total / budget))
    return (torch.arange(total, device=device) % stride == 0).view(batch, blocks)


def _flat_blocks(tensor: Tensor, chosen: Tensor) -> Tensor:
    """The chosen blocks of a ``[B, N, K, ...]`` tensor as ``[1, b, K, ...]``."""
    return tensor.reshape(-1, *tensor.shape[2:])[chosen.reshape(-1)].unsqueeze(0)


def _soft_blocks(soft: Optional[dict], chosen: Tensor) -> Optional[dict]:
    if not soft:
        return None
    from ._soft import SoftSlots

    out = {}
    for t, slots in soft.items():
        extras = {key: _flat_blocks(value, chosen) for key, value in slots.extras.items()}
        out[t] = SoftSlots(
            t,
            _flat_blocks(slots.log_alpha, chosen),
            _flat_blocks(slots.kl, chosen),
            _flat_blocks(slots.teacher_ids, chosen),
            _flat_blocks(slots.draft_ids, chosen),
            extras,
        )
    return out


@torch.no_grad()
def gram_terms(
    objective: Any,
    chosen: Tensor,
    logits: Tensor,
    target_logits: Optional[Tensor],
    target_ids: Tensor,
    neg_log_q: Tensor,
    weight_mask: Tensor,
    correct: Optional[Tensor],
    soft: Optional[dict],
    entries: int,
) -> Tensor:
    """``Q [entries, entries]`` (fp32 or fp64) of the chosen blocks of one chunk, scaled by ``1 / sampled
    fraction`` of the chunk's blocks (see the module docstring).  ``logits`` / ``target_logits`` are the
    chosen blocks' own, ``[b, K, V]``; every other tensor covers the chunk's ``[B, N, K]``."""
    from ._soft import stat_grads

    work = torch.float64 if logits.dtype == torch.float64 else torch.float32
    gram = torch.zeros(entries, entries, dtype=work, device=logits.device)
    count = int(chosen.sum())
    if count == 0:
        return gram
    try:
        grads = stat_grads(
            objective,
            _flat_blocks(neg_log_q.detach(), chosen),
            _flat_blocks(weight_mask, chosen),
            None if correct is None else _flat_blocks(correct, chosen),
            _soft_blocks(soft, chosen),
        )
    except NotImplementedError:  # a term without an analytic slot gradient (e.g. a third-party objective)
        if not getattr(objective, NO_GRADIENT_SHARES, False):
            setattr(objective, NO_GRADIENT_SHARES, True)
            logger.warning(
                "specforge-dpace: composite %r has a term without an analytic slot gradient (slot_grad); "
                "grad_share[term] is not logged (loss_share[term] is)",
                objective.spec(),
            )
        return gram
    keys = list(grads)
    vocab = logits.shape[-1]
    coefficients = torch.stack([grads[key].reshape(entries, -1).to(work) for key in keys])  # [D, T, rows]
    z = logits.reshape(-1, vocab)
    z_p = None if target_logits is None else target_logits.reshape(-1, vocab)
    labels = _flat_blocks(target_ids, chosen).reshape(-1)
    step = max(1, (1 << 22) // max(len(keys) * vocab, 1))
    for start in range(0, z.shape[0], step):
        end = min(start + step, z.shape[0])
        draft = z[start:end].to(work)
        # a hard objective reads only the cross-entropy: no target is needed (the draft stands in, unread)
        rows = RowStats(draft, draft if z_p is None else z_p[start:end].to(work), labels[start:end])
        products = gram_rows(rows, keys)  # [r, D, D]
        part = coefficients[:, :, start:end]
        gram += torch.einsum("atr,bsr,rab->ts", part, part, products)
    return gram * (chosen.numel() / count)


def loss_shares(weighted: Tensor) -> tuple[Tensor, Tensor]:
    """``(|c_i| [terms], sum_j |c_j|)``, detached: the additive form of ``loss_share``."""
    sizes = weighted.detach().abs()
    return sizes, sizes.sum()


def gradient_norms(weighted: Tensor, num: Tensor, gram: Tensor) -> Optional[Tensor]:
    """``||g_i|| [terms]`` from the terms' contributions (with grad to ``num``) and the summed ``Q``; None
    when ``num`` carries no grad (an evaluation call)."""
    if not num.requires_grad:
        return None
    norms = []
    for term in weighted.unbind():
        if not term.requires_grad:
            norms.append(torch.zeros((), dtype=gram.dtype, device=gram.device))
            continue
        (v,) = torch.autograd.grad(term, num, retain_graph=True, allow_unused=True)
        v = torch.zeros_like(num) if v is None else v.detach()
        v = v.reshape(-1).to(gram.dtype)
        norms.append((v @ gram @ v).clamp_min(0.0).sqrt())
    return torch.stack(norms)


class ShareMonitor:
    """Warns once when one term of a composite carries more than :data:`DOMINANT_SHARE` of the loss or of
    the gradient for :data:`SUSTAINED_STEPS` training micro-batches in a row (shares checked on the
    host every ``check_every`` micro-batches, so most steps add no device synchronization)."""

    def __init__(
        self, labels: list[str], weights: list[float], spec: str, steps: Optional[int] = None, check_every: int = 10
    ) -> None:
        self.labels, self.weights, self.spec = labels, weights, spec
        self.steps = SUSTAINED_STEPS if steps is None else steps
        self.check_every = min(check_every, self.steps)
        self._window: deque = deque(maxlen=steps)
        self._seen = 0
        self.warned = False

    def update(self, loss_share: Tensor, grad_share: Optional[Tensor]) -> None:
        if self.warned:
            return
        both = torch.stack([loss_share, grad_share if grad_share is not None else torch.full_like(loss_share, -1.0)])
        self._window.append(both.detach())
        self._seen += 1
        if len(self._window) == self.steps and self._seen % self.check_every == 0:
            self._check(torch.stack(list(self._window)).cpu())

    def _check(self, window: Tensor) -> None:
        for kind, index in (("gradient", 1), ("loss", 0)):
            shares = window[:, index]  # [steps, terms]
            if bool((shares < 0).any()):
                continue  # not measured on every micro-batch of the stretch
            top = shares.argmax(dim=1)
            dominant = int(top[0])
            if bool((top == dominant).all()) and bool((shares[:, dominant] > DOMINANT_SHARE).all()):
                self._warn(kind, dominant, shares.mean(dim=0))
                return

    def _warn(self, kind: str, dominant: int, mean: Tensor) -> None:
        self.warned = True
        shown = ", ".join(f"{label} {100 * float(share):.2f} %" for label, share in zip(self.labels, mean))
        logger.warning(
            "specforge-dpace: in composite %r one term carries more than %.0f %% of the %s for %d training "
            "micro-batches in a row (mean shares: %s); the other terms barely train. Weights that would give "
            "every term an equal share of the %s: %s; or make the weights relative with '%s; normalize=true'",
            self.spec,
            100 * DOMINANT_SHARE,
            kind,
            self.steps,
            shown,
            kind,
            balanced_spec(self.labels, self.weights, mean, dominant),
            self.spec.split(";")[0].strip(),
        )


def balanced_spec(labels: list[str], weights: list[float], shares: Tensor, keep: int) -> str:
    """The composite with weights ``w_i * share_keep / share_i`` (the term ``keep`` keeps its weight): each
    term's share would be equal if the shares scale with the weights."""
    parts = []
    anchor = float(shares[keep])
    for label, weight, share in zip(labels, weights, shares.tolist()):
        name = label.split("#")[0]
        if share <= 0:
            parts.append(f"({name}: no measurable share)")
            continue
        new = weight * anchor / share
        parts.append(name if abs(new - 1.0) < 5e-4 else f"{new:.3g}*{name}")
    return " + ".join(parts)
