"""Soft-label statistics and objectives: the drafter's q against the target's p at every slot.

At temperature T > 0 a drafted token x is accepted with probability min(1, p(x)/q(x)), so a
slot's acceptance rate is ``alpha = sum_x min(p_x, q_x)`` (DESIGN.md section 3.1). Per slot,
with q = softmax(z / T) and p = softmax(z_p / T):

* ``log_alpha`` = log sum_x min(p_x, q_x), formed in log space as a logsumexp of
  ``min(log p, log q)`` -- finite however small alpha gets (no clamp needed, none applied), and
  with p = onehot(label) it is exactly ``log_softmax(z)[label]``, so every soft twin equals its
  hard objective bit for bit at T = 1;
* ``kl`` = KL(p || q) = sum_x p_x (log p_x - log q_x) (same gradient as the soft cross-entropy);
* TV = 1 - alpha.

The minimum sends ties q = p to the q side: d alpha / dz = q * (u - s) / T with u = 1[q <= p],
s = sum_x q_x u_x (the fused path uses the same convention).
"""

from __future__ import annotations

import weakref
from typing import Any, Mapping, Optional, Union

import torch

from ._base import BlockObjective, LossValue, Option, OptionError, Tensor, check_block_tensors, mask_as
from ._state import CommittedOnRead, in_backward
from ._weighted import decay_weights

#: Statistic keys of soft-label gradients (``slot_grad`` of soft objectives returns a mapping).
NLQ = "nlq"  # hard cross-entropy at T = 1 (what hard objectives differentiate)


def alpha_key(temperature: float) -> tuple[str, float]:
    return ("alpha", float(temperature))


def log_alpha_key(temperature: float) -> tuple[str, float]:
    return ("log_alpha", float(temperature))


def kl_key(temperature: float) -> tuple[str, float]:
    return ("kl", float(temperature))


class _Deferred:
    """A detached tensor formed when first read, then kept (the plain path's argmaxes: deferred past the
    objective, a checkpoint's recomputation, which stops at the last saved tensor, never forms them)."""

    __slots__ = ("_make", "_value")

    def __init__(self, value):
        self._make, self._value = (value, None) if callable(value) else (None, value)

    def get(self) -> Tensor:
        if self._value is None:
            self._value = self._make()
            self._make = None
        return self._value


class SoftSlots:
    """Per-slot statistics of q against p at one temperature, ``[B, N, K]`` each (fp32 or fp64).

    ``teacher_ids`` (argmax p) and ``draft_ids`` (argmax q, the same at every temperature) are long
    tensors, detached; either may be given as a zero-argument function, called when first read."""

    __slots__ = ("temperature", "log_alpha", "kl", "extras", "_teacher", "_draft")

    def __init__(
        self, temperature: float, log_alpha: Tensor, kl: Tensor, teacher_ids, draft_ids, extras: Optional[dict] = None
    ):
        self.temperature = temperature
        self.log_alpha = log_alpha  # log acceptance rate; carries grad
        self.kl = kl  # KL(p || q); carries grad
        #: statistics only some objectives read, by their ``stat_grads`` key (e.g. ``("log_bc", T)``,
        #: :mod:`._statistics`), formed when the objective declares them (``soft_extras``); carry grad
        self.extras = dict(extras or {})
        self._teacher = teacher_ids if isinstance(teacher_ids, _Deferred) else _Deferred(teacher_ids)
        self._draft = draft_ids if isinstance(draft_ids, _Deferred) else _Deferred(draft_ids)

    def extra(self, key) -> Tensor:
        """The statistic ``key`` (an error naming what was computed when it is missing)."""
        found = self.extras.get(key)
        if found is None:
            raise ValueError(
                f"soft statistics at temperature {self.temperature:g} have no {key!r} (computed: "
                f"{sorted(map(str, self.extras)) or 'none'}); the caller forms the statistics an objective "
                "declares in soft_extras"
            )
        return found

    @property
    def teacher_ids(self) -> Tensor:
        return self._teacher.get()

    @property
    def draft_ids(self) -> Tensor:
        return self._draft.get()

    @property
    def alpha(self) -> Tensor:
        return torch.exp(self.log_alpha)

    @property
    def teacher_correct(self) -> Tensor:
        """Detached bool: the drafter's argmax is the target's argmax (the soft twins' "correct")."""
        return self.draft_ids == self.teacher_ids

    def detached(self) -> "SoftSlots":
        """The same statistics without grad (the deferred argmaxes shared, formed at most once)."""
        extras = {key: value.detach() for key, value in self.extras.items()}
        return SoftSlots(
            self.temperature, self.log_alpha.detach(), self.kl.detach(), self._teacher, self._draft, extras
        )


SoftInput = Union[SoftSlots, Mapping[float, SoftSlots], None]


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


#: Rows of one tile of the plain path's statistics on a CPU: about 2M elements (8 MB in fp32), so the three
#: tile buffers stay in cache and are allocated once per call, whatever the chunk's size.
TILE_ELEMENTS = 1 << 21
#: The same on an accelerator, where a tile's cost is its kernel launches, not cache misses: 32M elements
#: (128 MB in fp32, so the three buffers add 384 MB). With the CPU's tiles (13 rows of V = 151936) an H200
#: ran the plain path launch-bound at 3.4x upstream dflash (``scripts/gpu_checks.sh``).
ACCELERATOR_TILE_ELEMENTS = 1 << 25


def _tile_elements(device: torch.device) -> int:
    return TILE_ELEMENTS if device.type == "cpu" else ACCELERATOR_TILE_ELEMENTS


def _log_probs_into(values: Tensor, temperature: float, out: Tensor, already_log_probs: bool = False) -> Tensor:
    """``log_softmax(values / T)`` written into ``out`` (values already log-probabilities: copied as they are)."""
    if already_log_probs:
        return out.copy_(values)
    if values.dtype != out.dtype or temperature != 1.0:
        out.copy_(values)
        if temperature != 1.0:
            out.div_(temperature)
        return torch.log_softmax(out, -1, out=out)
    return torch.log_softmax(values, -1, out=out)


def _row_tiles(logits: Tensor, target: Tensor, temperature: float, target_is_log_probs: bool):
    """``(start, end, log_q, log_p, scratch)`` per tile of rows of ``[R, V]`` views, log q and log p
    written into three tile buffers allocated once (the tile size: :data:`TILE_ELEMENTS` on a CPU,
    :data:`ACCELERATOR_TILE_ELEMENTS` elsewhere)."""
    vocab = logits.shape[-1]
    rows = logits.shape[0]
    step = max(1, _tile_elements(logits.device) // max(vocab, 1))
    buffers = [torch.empty((min(step, rows), vocab), dtype=_work_dtype(logits.dtype), device=logits.device)]
    buffers += [torch.empty_like(buffers[0]) for _ in range(2)]
    for start in range(0, rows, step):
        end = min(start + step, rows)
        log_q, log_p, scratch = (buffer[: end - start] for buffer in buffers)
        _log_probs_into(logits[start:end], temperature, log_q)
        _log_probs_into(target[start:end], temperature, log_p, target_is_log_probs)
        yield start, end, log_q, log_p, scratch


class _SoftStatistics(torch.autograd.Function):
    """``(log_alpha, kl[, neg_log_q])`` of draft logits against the target's, with the gradient of
    DESIGN.md 3.1 written out, formed tile by tile of rows: no ``[.., V]`` tensor is allocated but the
    gradient, and none is saved but the two logits tensors the caller holds anyway (log q and log p are
    recomputed per tile in backward, in cache).  On a CPU every fresh full-size buffer costs page faults
    and every full-width pass a sweep of memory, which at real sizes cost more than the products.
    Given ``labels`` it also returns the hard cross-entropy ``-log q[label]`` from the same log q (what a
    hook would otherwise form with a second log-softmax of the logits).

    Backward combines every statistic into one upstream gradient over ``log q`` per tile,
    ``G = g_la * u min(p, q) / alpha - g_kl * p - g_ce * onehot(label)`` (u = 1[q <= p]: ties on the q
    side), and runs the very kernel autograd uses for ``log_softmax`` on it, so with p = onehot(label)
    the gradient is bit for bit cross-entropy's.
    """

    @staticmethod
    def forward(ctx, logits, target, temperature, labels, target_is_log_probs, stored=None):  # type: ignore[override]
        ctx.set_materialize_grads(False)  # an unused statistic's gradient stays None: no pass for it
        ctx.settings = (temperature, bool(target_is_log_probs))
        shape = logits.shape[:-1]
        if stored is not None:  # a checkpoint's recomputation: the forward's values, no pass over [.., V]
            ctx.save_for_backward(logits, target, stored[0].reshape(-1), labels)
            return tuple(value.clone() for value in stored)
        vocab = logits.shape[-1]
        z, t = logits.reshape(-1, vocab), target.reshape(-1, vocab)
        flat_labels = None if labels is None else labels.reshape(-1, 1)
        work = _work_dtype(logits.dtype)
        log_alpha = torch.empty(z.shape[0], dtype=work, device=z.device)
        kl = torch.empty_like(log_alpha)
        neg_log_q = None if labels is None else torch.empty_like(log_alpha)
        floor = torch.finfo(work).min
        for start, end, log_q, log_p, scratch in _row_tiles(z, t, temperature, target_is_log_probs):
            # log alpha = logsumexp(min(log p, log q)), in place (finite: log p is never -inf everywhere)
            torch.minimum(log_q, log_p, out=scratch)
            top = scratch.amax(dim=-1, keepdim=True)
            log_alpha[start:end] = scratch.sub_(top).exp_().sum(dim=-1).log_().add_(top.squeeze(-1))
            # KL = sum p (log p - log q); where p = 0 the clamped difference is finite, so 0, not NaN
            torch.sub(log_p, log_q, out=scratch).clamp_min_(floor)
            kl[start:end] = scratch.mul_(log_p.exp_()).sum(dim=-1)
            if neg_log_q is not None:
                neg_log_q[start:end] = -log_q.gather(-1, flat_labels[start:end]).squeeze(-1)
        ctx.save_for_backward(logits, target, log_alpha, labels)
        outputs = (log_alpha.view(shape), kl.view(shape))
        return outputs if neg_log_q is None else (*outputs, neg_log_q.view(shape))

    @staticmethod
    def backward(ctx, grad_log_alpha, grad_kl, grad_neg_log_q=None):  # type: ignore[override]
        logits, target, log_alpha, labels = ctx.saved_tensors
        temperature, target_is_log_probs = ctx.settings
        if grad_neg_log_q is None or labels is None:
            grad_neg_log_q = None
        if grad_log_alpha is None and grad_kl is None and grad_neg_log_q is None:
            return None, None, None, None, None, None
        vocab = logits.shape[-1]
        z, t = logits.reshape(-1, vocab), target.reshape(-1, vocab)
        work = _work_dtype(logits.dtype)
        g_la = None if grad_log_alpha is None else grad_log_alpha.reshape(-1, 1).to(work)
        g_kl = None if grad_kl is None else grad_kl.reshape(-1, 1).to(work)
        g_ce = None if grad_neg_log_q is None else grad_neg_log_q.reshape(-1, 1).to(work).neg()
        flat_labels = None if labels is None else labels.reshape(-1, 1)
        grad = torch.empty(z.shape, dtype=work, device=z.device)
        for start, end, log_q, log_p, upstream in _row_tiles(z, t, temperature, target_is_log_probs):
            if g_la is not None:
                # min(p, q) / alpha (<= 1: never overflows) times u; where u = 1 that is q / alpha
                torch.minimum(log_q, log_p, out=upstream).sub_(log_alpha[start:end, None]).exp_()
                upstream.mul_(log_q <= log_p).mul_(g_la[start:end])
            else:
                upstream.zero_()
            if g_kl is not None:
                upstream.addcmul_(log_p.exp_(), g_kl[start:end], value=-1.0)
            if g_ce is not None:
                upstream.scatter_add_(-1, flat_labels[start:end], g_ce[start:end])
            torch.ops.aten._log_softmax_backward_data.out(upstream, log_q, -1, work, out=grad[start:end])
        if temperature != 1.0:
            grad.div_(temperature)
        return grad.view(logits.shape).to(logits.dtype), None, None, None, None, None


class _RecomputeStore:
    """The statistics a forward pass formed for a chunk, kept for its recomputation in backward.

    Activation checkpointing (SpecForge's ``checkpointed_chunk_reduce``) runs a chunk's function again
    in backward, with the very argument objects of the forward.  The statistics are the costliest
    element-wise work of the plain path and the recomputation needs only their values (its backward
    forms log q and log p again anyway), so a forward stores them under an argument of the chunk (the
    ``reuse`` tensor) and a call made during a backward pass takes them.  Entries are small (three
    numbers a row) and die with their key tensor (a weak reference), so nothing outlives the graph.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[int, float, bool], tuple[Any, tuple]] = {}

    def put(self, key: Tensor, temperature: float, with_labels: bool, values: tuple) -> None:
        slot = (id(key), temperature, with_labels)
        if slot not in self._entries:
            weakref.finalize(key, self._entries.pop, slot, None)
        self._entries[slot] = (weakref.ref(key), values)

    def take(self, key: Tensor, temperature: float, with_labels: bool) -> Optional[tuple]:
        entry = self._entries.get((id(key), temperature, with_labels))
        if entry is None or entry[0]() is not key:
            return None
        return entry[1]

    def __len__(self) -> int:
        return len(self._entries)


RECOMPUTE_STORE = _RecomputeStore()


def _argmax(values: Tensor) -> Tensor:
    with torch.no_grad():
        return values.argmax(dim=-1)


def soft_slot_stats(
    draft_logits: Tensor,
    temperature: float = 1.0,
    *,
    target_logits: Optional[Tensor] = None,
    target_log_probs: Optional[Tensor] = None,
    labels: Optional[Tensor] = None,
    reuse: Optional[Tensor] = None,
    extras: tuple = (),
) -> Union[SoftSlots, tuple[SoftSlots, Tensor]]:
    """Soft statistics of one chunk: ``draft_logits [..., V]`` (carries grad) against the target.

    The target comes as logits (``p = softmax(target_logits / T)``) or as log-probabilities that
    already are at this temperature (e.g. ``log(onehot)`` in tests); it never carries grad.
    Low-precision logits are upcast to fp32 first.  With ``labels`` (temperature 1 only) it returns
    ``(slots, neg_log_q)``, the hard cross-entropy formed from the same log-softmax (with grad).
    ``reuse``: a tensor that identifies the chunk (an argument of a checkpointed chunk function, e.g. its
    target hidden states): the values are stored under it, and a call for the same chunk during a
    backward pass (the checkpoint's recomputation) takes them instead of forming them again
    (:class:`_RecomputeStore`).  ``extras``: further statistic keys at this temperature (``soft_extras`` of
    the objective, :mod:`._statistics`), formed tile by tile with their analytic gradient (not stored).
    """
    if (target_logits is None) == (target_log_probs is None):
        raise ValueError("soft_slot_stats: pass exactly one of target_logits and target_log_probs")
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"soft_slot_stats: temperature must be > 0, got {temperature!r}")
    if labels is not None and float(temperature) != 1.0:
        raise ValueError(f"soft_slot_stats: labels give the cross-entropy at temperature 1, not {temperature:g}")
    target = target_logits if target_logits is not None else target_log_probs
    if target.shape != draft_logits.shape:
        raise ValueError(
            f"soft_slot_stats: target shape {tuple(target.shape)} does not match draft logits "
            f"{tuple(draft_logits.shape)} ([..., V] both)"
        )
    temperature = float(temperature)
    stored = None
    if reuse is not None and in_backward():
        stored = RECOMPUTE_STORE.take(reuse, temperature, labels is not None)
    outputs = _SoftStatistics.apply(
        draft_logits, target.detach(), temperature, labels, target_log_probs is not None, stored
    )
    if reuse is not None and stored is None and not in_backward():
        RECOMPUTE_STORE.put(reuse, temperature, labels is not None, tuple(o.detach() for o in outputs))
    draft = draft_logits.detach()
    # argmaxes formed when first read: after the objective (the metrics), so never in a recomputation
    formed = {}
    if extras:
        from ._statistics import extra_statistics

        formed = extra_statistics(draft_logits, target, temperature, tuple(extras), target_log_probs is not None)
    slots = SoftSlots(temperature, outputs[0], outputs[1], lambda: _argmax(target), lambda: _argmax(draft), formed)
    return slots if labels is None else (slots, outputs[2])


def pick_soft(soft: SoftInput, temperature: float, name: str) -> SoftSlots:
    """The statistics at ``temperature`` from what the caller passed, or an error that says what is missing."""
    if soft is None:
        raise ValueError(
            f"{name}: this soft-label objective needs the target's distribution p at every slot (soft "
            f"statistics at temperature {temperature:g}), but none were passed; in SpecForge this means the "
            "batch has no target_last_hidden_states"
        )
    if isinstance(soft, SoftSlots):
        if soft.temperature != temperature:
            raise ValueError(
                f"{name}: needs soft statistics at temperature {temperature:g}, got them at {soft.temperature:g}"
            )
        return soft
    found = soft.get(float(temperature))
    if found is None:
        raise ValueError(
            f"{name}: needs soft statistics at temperature {temperature:g}; the caller computed them at {sorted(soft)}"
        )
    return found


# --- soft-label objectives -----------------------------------------------------------------

TEMPERATURE = Option(
    1.0, (float,), minimum=0.0, exclusive_minimum=True, help="temperature of p and q: softmax(logits / T)"
)
GAMMA = Option(None, (float,), nullable=True, help="DFlash slot decay exp(-max(k-1,0)/gamma); None or <= 0: uniform")


class SoftObjective(BlockObjective):
    """Base of objectives over the soft statistics: ``_soft_terms`` and ``_soft_grad`` instead of
    ``_terms`` / ``_slot_grad``. ``neg_log_q`` is still passed (and checked) but not used."""

    needs_target = True
    options: Mapping[str, Option] = {"gamma": GAMMA, "temperature": TEMPERATURE}

    def chunk_terms(self, neg_log_q, weight_mask, correct=None, soft=None):
        check_block_tensors(self.name, neg_log_q, weight_mask, correct, False)
        slots = pick_soft(soft, self.temperature, self.name)
        num, den = self._soft_terms(slots, weight_mask)
        if den.dtype != num.dtype:
            den = den.to(num.dtype)
        return num.reshape(-1), den.detach().reshape(-1)

    def slot_grad(self, neg_log_q, weight_mask, correct=None, soft=None) -> dict:
        check_block_tensors(self.name, neg_log_q, weight_mask, correct, False)
        slots = pick_soft(soft, self.temperature, self.name).detached()
        with torch.no_grad():
            grads = self._soft_grad(slots, weight_mask)
        return {key: value if value.dim() == 4 else value.unsqueeze(0) for key, value in grads.items()}

    # --- helpers for subclasses --------------------------------------------------------
    def _weights(self, like: Tensor, mask: Tensor) -> Tensor:
        """``m * exp(-max(k-1,0)/gamma)`` (or ``m``), cached per shape like ``dflash``'s."""
        weights = mask_as(mask, like)
        gamma = getattr(self, "gamma", None)
        if gamma is None or gamma <= 0:
            return weights
        key = (like.shape[-1], like.device, like.dtype)
        cache = self.__dict__.setdefault("_decay_cache", {})
        decay = cache.get(key)
        if decay is None:
            decay = cache[key] = decay_weights(like.shape[-1], gamma, like.device, like.dtype)
        return weights * decay

    def _soft_terms(self, slots: SoftSlots, mask: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _soft_grad(self, slots: SoftSlots, mask: Tensor) -> dict:
        raise NotImplementedError


def _valid(stat: Tensor, weights: Tensor) -> Tensor:
    """``stat`` where weighted, 0 elsewhere (masked slots never turn a sum into NaN)."""
    return torch.where(weights > 0, stat, torch.zeros_like(stat))


class KLLoss(SoftObjective):
    """Soft distillation: KL(p || q) per slot, DFlash decay, weighted mean (the LK paper's baseline)."""

    name = "kl"
    description = "soft distillation KL(p||q) per slot (same gradient as soft CE); decayed mean over slots"

    def _soft_terms(self, slots, mask):
        weights = self._weights(slots.kl, mask)
        return (_valid(slots.kl, weights) * weights).sum(), weights.sum()

    def _soft_grad(self, slots, mask):
        return {kl_key(self.temperature): self._weights(slots.kl, mask).expand_as(slots.kl).clone()}


class TVLoss(SoftObjective):
    """Total variation 1 - alpha per slot (trains poorly from scratch: a negative control)."""

    name = "tv"
    description = "total variation 1 - alpha per slot; decayed mean (weak gradient at init: a negative control)"

    def _soft_terms(self, slots, mask):
        weights = self._weights(slots.log_alpha, mask)
        return (_valid(1.0 - slots.alpha, weights) * weights).sum(), weights.sum()

    def _soft_grad(self, slots, mask):
        return {alpha_key(self.temperature): -self._weights(slots.log_alpha, mask).expand_as(slots.log_alpha)}


class LaggedAlpha:
    """The previous training micro-batch's mean acceptance rate per slot position
    (``lk-lambda(lagged=true)``), kept on the objective between calls.

    ``reduce`` records a micro-batch's sums as *pending*; the first read outside a backward pass
    commits them (:mod:`._state`: per rank, not saved in checkpoints).  So every chunk of a
    micro-batch, and its recomputation by activation checkpointing in backward (after ``reduce``
    ran), sees the same lambda.  Before any training micro-batch, and at positions never supervised
    so far, the mean is 0 (lambda = 1: KL only, the LK schedule's start).
    """

    __slots__ = ("_state",)

    def __init__(self) -> None:
        self._state = CommittedOnRead(_merge_position_means)

    def mean(self, positions: int, like: Tensor) -> Tensor:
        """``[positions]`` mean alpha in ``like``'s dtype and device (0 where none is known)."""
        mean = self._state.read()
        if mean is None or mean.shape[0] != positions:
            return torch.zeros(positions, dtype=like.dtype, device=like.device)
        return mean.to(dtype=like.dtype, device=like.device)

    def record(self, alpha_sum: Tensor, count: Tensor) -> None:
        self._state.record((alpha_sum.detach().clone(), count.detach().clone()))


def _merge_position_means(previous: Optional[Tensor], pending: tuple[Tensor, Tensor]) -> Tensor:
    alpha_sum, count = pending
    fresh = alpha_sum / count.clamp_min(1.0)
    if previous is not None and previous.shape == fresh.shape:
        fresh = torch.where(count > 0, fresh, previous.to(fresh))  # unsupervised positions keep theirs
    return fresh


class LKLambdaLoss(SoftObjective):
    """LK-lambda: ``lambda KL + (1 - lambda) TV`` with ``lambda = exp(-eta * stopgrad(mean alpha))``.

    By default lambda is per slot position, from the micro-batch's mean alpha at that position,
    formed at reduce time from additive per-position sums (so chunking changes nothing): the
    numerator holds ``K_k = sum m w KL`` and ``T_k = sum m w TV`` per position, the denominator
    ``A_k = sum m alpha``, ``C_k = sum m`` and ``W = sum m w``. ``per_token=true`` uses each
    token's own alpha instead (vLLM speculators' form). ``lagged=true`` takes the per-position mean
    from the previous training micro-batch (:class:`LaggedAlpha`; lambda = 1 before the first), so
    lambda is known before the micro-batch's first chunk: one numerator entry, and one gradient
    product on the fused path instead of two. Across ranks and accumulation steps lambda is
    micro-batch local, as in SpecForge's EAGLE3 LK loss.
    """

    name = "lk-lambda"
    description = "LK-lambda: lambda*KL + (1-lambda)*TV, lambda = exp(-eta*mean alpha) per slot position"
    options = {
        "eta": Option(3.0, (float,), minimum=0.0, help="lambda = exp(-eta * stopgrad(mean alpha))"),
        "per_token": Option(False, (bool,), help="lambda from each token's alpha instead of the position mean"),
        "lagged": Option(
            False,
            (bool,),
            help="position means from the previous training micro-batch (lambda = 1 before the first): "
            "one gradient product on the fused path",
        ),
        "gamma": GAMMA,
        "temperature": TEMPERATURE,
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        if self.per_token and self.lagged:
            raise OptionError(
                f"{self.name}: options per_token=true and lagged=true are alternatives (lambda from each "
                "token's own alpha, or from the previous micro-batch's position means); set one"
            )
        self._lagged = LaggedAlpha() if self.lagged else None

    def _lagged_lambdas(self, like: Tensor) -> Tensor:
        """``[K]`` lambda of the current micro-batch from the previous one's position means."""
        return torch.exp(-self.eta * self._lagged.mean(like.shape[-1], like))

    def _position_sums(self, alpha: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        valid = mask_as(mask, alpha)
        return (valid * _valid(alpha.detach(), valid)).sum(dim=(0, 1)), valid.sum(dim=(0, 1))

    def _soft_terms(self, slots, mask):
        weights = self._weights(slots.kl, mask)
        kl = _valid(slots.kl, weights)
        alpha = slots.alpha
        tv = _valid(1.0 - alpha, weights)
        if self.per_token:
            lam = torch.exp(-self.eta * alpha.detach())
            return (weights * (lam * kl + (1.0 - lam) * tv)).sum(), weights.sum()
        alpha_sum, count = self._position_sums(alpha, mask)
        den = torch.cat([alpha_sum, count, weights.sum().reshape(1)])
        if self.lagged:
            lam = self._lagged_lambdas(slots.kl)
            return (weights * (lam * kl + (1.0 - lam) * tv)).sum(), den
        per_kl = (weights * kl).sum(dim=(0, 1))
        per_tv = (weights * tv).sum(dim=(0, 1))
        return torch.cat([per_kl, per_tv]), den

    def lambdas(self, den: Tensor) -> Tensor:
        """Per-position lambda from summed denominators ``[A_k, C_k, W]`` (1 where nothing is supervised)."""
        k = (den.shape[0] - 1) // 2
        alpha_sum, count = den[:k], den[k : 2 * k]
        mean = alpha_sum / count.clamp_min(1.0)
        return torch.exp(-self.eta * mean)

    def reduce(self, num, den, batch_size):
        if self.per_token:
            return super().reduce(num, den, batch_size)
        den = den.detach()
        k = (den.shape[0] - 1) // 2
        expected = 1 if self.lagged else 2 * k
        if den.shape[0] != 2 * k + 1 or num.shape[0] != expected:
            raise ValueError(
                f"{self.spec()}: expected {expected} summed numerator entries and {2 * k + 1} denominators for "
                f"{k} positions, got {tuple(num.shape)} and {tuple(den.shape)}"
            )
        final = den[2 * k].clamp_min(torch.finfo(den.dtype).tiny)
        if self.lagged:
            if num.requires_grad:  # a training micro-batch: its means serve the next one
                self._lagged.record(den[:k], den[k : 2 * k])
            numerator = num.reshape(())
        else:
            lam = self.lambdas(den)
            numerator = (lam * num[:k] + (1.0 - lam) * num[k:]).sum()
        return LossValue(numerator / final, numerator, final)

    def _soft_grad(self, slots, mask):
        weights = self._weights(slots.kl, mask).expand_as(slots.kl)
        if self.per_token or self.lagged:
            lam = torch.exp(-self.eta * slots.alpha) if self.per_token else self._lagged_lambdas(slots.kl)
            return {kl_key(self.temperature): weights * lam, alpha_key(self.temperature): -weights * (1.0 - lam)}
        k = weights.shape[-1]
        eye = torch.eye(k, dtype=weights.dtype, device=weights.device).view(k, 1, 1, k)
        per_position = weights.unsqueeze(0) * eye  # [K, B, N, K]: term j sees slot j only
        zeros = torch.zeros_like(per_position)
        return {
            kl_key(self.temperature): torch.cat([per_position, zeros]),
            alpha_key(self.temperature): torch.cat([zeros, -per_position]),
        }


# --- helpers shared by the fused path and the hooks ---------------------------------------


def stat_grads(objective: Any, neg_log_q: Tensor, weight_mask: Tensor, correct=None, soft: SoftInput = None) -> dict:
    """``slot_grad`` of any objective as a mapping statistic -> ``[T, B, N, K]`` coefficients."""
    if getattr(objective, "needs_target", False):
        grads = objective.slot_grad(neg_log_q, weight_mask, correct, soft=soft)
    else:
        grads = objective.slot_grad(neg_log_q, weight_mask, correct)
    return grads if isinstance(grads, dict) else {NLQ: grads}


@torch.no_grad()
def soft_acceptance_terms(slots: SoftSlots, weight_mask: Tensor, target_ids: Tensor) -> dict:
    """Additive metric terms of one chunk from the soft statistics (detached):

    * ``soft_tau``: ``1 + sum_k prod_{i<=k} alpha_i`` over supervised slots (the expected accepted
      length under independent per-slot acceptance at this temperature), averaged over blocks with
      a supervised slot;
    * ``alpha_pos``: per slot position, the mean acceptance rate (vector of length K);
    * ``teacher_agreement``: share of supervised slots where argmax p is the label (1 on
      greedy-regenerated data: the check that p is aligned with the right position).
    """
    valid = weight_mask > 0
    validf = valid.to(slots.log_alpha.dtype)
    log_prefix = torch.cumsum(slots.log_alpha.detach() * validf, dim=-1)
    prefix = torch.exp(log_prefix) * validf
    blocks = valid.any(dim=-1)
    block_count = blocks.sum().to(validf.dtype)
    tau_num = (prefix.sum(dim=-1) + 1.0)[blocks].sum()
    alpha = torch.where(valid, torch.exp(slots.log_alpha.detach()), torch.zeros_like(validf))
    return {
        "soft_tau": (tau_num, block_count),
        "alpha_pos": (alpha.sum(dim=(0, 1)), validf.sum(dim=(0, 1))),
        "teacher_agreement": (((slots.teacher_ids == target_ids) & valid).sum().to(validf.dtype), validf.sum()),
    }
