"""Soft-label objectives on the fused path: q against p and d objective / d hidden in one pass.

A soft objective's numerator depends on a slot's hidden state only through that slot's per-slot
statistics -- hard cross-entropy ``nlq`` (T = 1), ``log alpha`` / ``alpha`` and ``KL(p || q)`` at
each temperature T -- so, with the head frozen, d num_t / d h = sum_stat c_t[stat] * (d stat / d z) W,
where ``c = stat_grads(...)`` are the objective's analytic coefficients and the d/dz rows are those
of DESIGN.md 3.1 (q = softmax(z / T), p = softmax(z_p / T), u = 1[q <= p], ties to the q side as in
:func:`specforge_dpace.losses.soft_slot_stats`):

* ``nlq``:        q1 - e_y (q1 = softmax(z))
* ``log alpha``:  (u q / alpha - q r) / T,  r = sum_x u_x q_x / alpha  (``alpha`` folds into it: c * alpha)
* ``KL``:         (q - p) / T

So there are at most three *directions* per temperature (nlq, la@T, kl@T).  When the objective has
a single numerator entry (every single-term objective: lk-alpha, kl, tv, every soft twin,
lk-lambda(per_token=true)), the coefficients are known in the forward pass and the directions are
summed per row before one gradient GEMM into one ``[tokens, H]`` buffer.  Objectives with several
numerator entries (composites; ``lk-lambda`` with per-position lambda, whose lambda is only formed
at reduce time) keep one ``[tokens, H]`` buffer per direction, with its ``[terms, B, N, K]``
coefficients, and back-propagate ``sum_d (grad_num . c_d) * buffer_d`` (:class:`DirectionGrads`).

Per sub-chunk of R tokens (whole blocks):

1. one draft logits GEMM into ``A [R, V]``;
2. per piece of R/2 tokens (whole blocks): one target logits GEMM into ``B [R/2, V]`` (forward
   only, no grad), both argmaxes, ``log_softmax`` in place on both (log q at T = 1 gives the hard
   cross-entropy and correctness; then log q_T, log p_T); the statistics (``alpha = sum min(p, q)``,
   ``s = sum u q``, KL where the objective reads it); the objective's coefficients for the piece's
   blocks; and the directions, formed in place in ``A`` (summed, or the first one), in ``B`` (a
   second one) or added tile by tile into their buffers (``addmm``, any further one);
3. one gradient GEMM ``A @ W`` into ``[R, H]`` (a second direction: one more per piece from ``B``).

So the flops per token are 2HV (draft) + 2HV (target) + 2HV per gradient buffer: 6HV for one
buffer, the same as SpecForge's checkpointed hard path; 8HV for two (per-position lk-lambda),
10HV for three (``dpace + 0.5*lk-lambda``: nlq, la, kl).

The sums of min(p, q) run in linear space without a shift; rows whose alpha falls below
:data:`TINY_ALPHA` (1e-30, where that loses precision and 1/alpha nears overflow) get their logits
again from a GEMM of those rows alone and every statistic and direction in log space, exact however
small alpha gets (the plain path's logsumexp form).  Ties q = p go to the q side (u = 1); where u is
compared in linear space (the one-temperature forms: ``q <= p`` of the exps), a p below q by one
rounding of exp (relative ~1e-7) also counts as a tie.

Buffers: ``A`` is one fp32 ``[R, V]`` buffer, ``B`` half of one, and column-tile scratch within
:data:`SCRATCH_SHARE` (1/6) of ``A``: none for lk-alpha, tv and every soft twin (1.5 buffers in
all), one or two tiles for the KL-reading objectives, three for ``dpace + 0.5*lk-lambda``, up to six
with two temperatures (never more than :data:`SOFT_BUFFERS` = 1.67 buffers), against 1 for hard
objectives (whose code path is unchanged).  :func:`~._subchunk.auto_sub_chunk_tokens` divides the
byte budget by :data:`SOFT_BUFFERS`.  Low-precision heads add their own ``[R, V]`` GEMM output
before the fp32 upcast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch

from ..losses import SoftSlots, stat_grads
from ..losses._statistics import TEACHER_NLQ, RowStats

Tensor = torch.Tensor
NLQ = "nlq"
Direction = Union[str, tuple[str, float]]

#: column-tile scratch, all tiles together, as a share of the ``[R, V]`` logits buffer
SCRATCH_SHARE = 1 / 6
#: fp32 ``[R, V]`` buffers the soft path holds at most per sub-chunk: logits, half-height target
#: logits and the scratch (see the module docstring).
SOFT_BUFFERS = 1.0 + 0.5 + SCRATCH_SHARE
#: rows whose acceptance rate alpha falls below this are recomputed exactly in log space
#: (:meth:`SoftPass._exact_rows`): the passes sum min(p, q) in linear space without a shift.
TINY_ALPHA = 1e-30


@dataclass(frozen=True)
class SoftPlan:
    """What the fused path computes for one soft objective (from a probe on a tiny batch)."""

    temperatures: tuple[float, ...]
    kl_temperatures: frozenset  # temperatures whose KL is read (value or gradient); elsewhere kl is NaN
    directions: tuple  # NLQ, ("la", T), ("kl", T) (+ extended ones); the first one lives in the logits buffer
    terms: int  # leading size of the probe's coefficients (numerator entries at K = 2)
    extras: tuple = ()  # ((T, statistic keys), ...): the objective's soft_extras (:mod:`..losses._statistics`)

    @property
    def extended(self) -> bool:
        """Reads a statistic beyond cross-entropy, log alpha and KL (Renyi-1/2, top-k KL, the target's
        argmax): the general row-tiled pass (:meth:`SoftPass._piece_extended`)."""
        return any(_kind(d) in EXTENDED_KINDS for d in self.directions)

    @property
    def combined(self) -> bool:
        """One numerator entry: directions are summed per row in the forward pass (one buffer)."""
        return self.terms == 1


#: direction kinds only the extended pass forms: Renyi-1/2's log BC, top-k KL, cross-entropy on argmax p
EXTENDED_KINDS = ("bc", "topk", TEACHER_NLQ)
#: per-row [rows, V] temporaries of the extended pass (its row tiles keep them within SCRATCH_SHARE of A)
EXTENDED_TEMPORARIES = 8


def _kind(direction: Direction) -> str:
    return direction if isinstance(direction, str) else direction[0]


def direction_of(key: Any) -> Optional[Direction]:
    """The gradient direction of a ``stat_grads`` key (None for a key the fused path does not know)."""
    if key in (NLQ, TEACHER_NLQ):
        return key
    if not isinstance(key, tuple) or len(key) not in (2, 3):
        return None
    kind = {"alpha": "la", "log_alpha": "la", "kl": "kl", "log_bc": "bc", "topk_kl": "topk"}.get(key[0])
    if kind is None or (len(key) == 3) != (kind == "topk"):
        return None
    return (kind, float(key[1]), *key[2:])


def key_of(direction: Direction) -> Any:
    """The statistic key whose d/dz (times T) is ``direction``'s unit row (alpha folded into log alpha)."""
    if isinstance(direction, str):
        return direction
    name = {"la": "log_alpha", "kl": "kl", "bc": "log_bc", "topk": "topk_kl"}[direction[0]]
    return (name, *direction[1:])


def _direction_order(direction: Direction) -> tuple:
    """la first (formed in place where it can), then kl, the extended kinds, the cross-entropies last."""
    rank = ("la", "kl", "bc", "topk", TEACHER_NLQ, NLQ).index(_kind(direction))
    return (rank, *([] if isinstance(direction, str) else direction[1:]))


def _probe_slots(temperatures, kl_value: float = 0.25, nan_at: Optional[float] = None, extras=None) -> dict:
    shape = (1, 1, 2)
    return {
        t: SoftSlots(
            t,
            torch.full(shape, -0.5),
            torch.full(shape, math.nan if t == nan_at else kl_value),
            torch.zeros(shape, dtype=torch.long),
            torch.zeros(shape, dtype=torch.long),
            {key: torch.full(shape, 0.3) for key in (extras or {}).get(t, ())},
        )
        for t in temperatures
    }


def soft_plan(objective: Any) -> tuple[Optional[SoftPlan], str]:
    """The plan for a soft objective, or ``(None, reason)`` when it has no usable analytic gradient."""
    temperatures = tuple(float(t) for t in getattr(objective, "soft_temperatures", ()))
    if not temperatures:
        return None, "reads the target but names no soft temperature"
    nlq = torch.full((1, 1, 2), 0.5)
    mask = torch.tensor([[[0.0, 1.0]]])
    correct = torch.ones(1, 1, 2, dtype=torch.bool)
    extras = {float(t): tuple(keys) for t, keys in getattr(objective, "soft_extras", {}).items()}
    try:
        grads = stat_grads(objective, nlq, mask, correct, _probe_slots(temperatures, extras=extras))
    except NotImplementedError:
        return None, "slot_grad is not implemented"
    directions: list = []
    sizes = set()
    for key, value in grads.items():
        sizes.add(int(value.shape[0]))
        direction = direction_of(key)
        if direction is None or (not isinstance(direction, str) and direction[1] not in temperatures):
            return None, f"slot_grad returns a statistic the fused path does not know ({key!r})"
        if direction not in directions:
            directions.append(direction)
    if len(sizes) > 1:
        return None, f"slot_grad returns coefficients with different numbers of terms {sorted(sizes)}"
    kl_temperatures = {d[1] for d in directions if d != NLQ and d[0] == "kl"}
    with torch.no_grad():
        for t in temperatures:  # does the value read KL at t? (NaN there propagates into the numerator)
            if t not in kl_temperatures:
                probe = _probe_slots(temperatures, nan_at=t, extras=extras)
                num, _ = objective.chunk_terms(nlq, mask, correct, soft=probe)
                if bool(torch.isnan(num).any()):
                    kl_temperatures.add(t)
    # soft directions first (the first one is formed in place in the logits buffer), nlq last
    directions.sort(key=_direction_order)
    terms = sizes.pop() if sizes else 1
    return (
        SoftPlan(temperatures, frozenset(kl_temperatures), tuple(directions), terms, tuple(sorted(extras.items()))),
        "",
    )


@dataclass
class SoftResult:
    """Per-slot outputs of the soft fused pass, flat over ``B*N*K`` rows."""

    nlq: Tensor
    correct: Tensor
    soft: dict  # temperature -> SoftSlots (flat, detached)
    buffers: list  # [(coefficients [terms, rows], d stat / d hidden [rows, H])] per gradient buffer


class _Scratch:
    """Column-tile scratch buffers, allocated on first use, viewed contiguous per tile."""

    def __init__(self, rows: int, width: int, dtype: torch.dtype, device: torch.device) -> None:
        self.rows, self.width, self.dtype, self.device = rows, width, dtype, device
        self._store: dict[str, Tensor] = {}

    def get(self, name: str, rows: int, width: int) -> Tensor:
        store = self._store.get(name)
        if store is None:
            store = self._store[name] = torch.empty(self.rows * self.width, dtype=self.dtype, device=self.device)
        return store[: rows * width].view(rows, width)


class SoftPass:
    """The soft objective's fused pass over a chunk of blocks (see the module docstring).

    Three forms of the per-piece work, by plan:

    * ``"la"`` -- one temperature, one numerator entry, no KL read (lk-alpha, tv, every soft twin):
      no scratch at all.  A = exp(log_softmax(z)) (q, after the cross-entropy is read), B =
      exp(log_softmax(z_p)) (p), both in place; ``B = min(A, B)``, ``alpha = sum B``;
      ``B = (B >= A) * A`` (u q), ``s = sum B``; then ``A = c0 A + (c_la / alpha) B``.
    * ``"fast"`` -- one temperature, one numerator entry, KL read: statistics over column tiles with
      one or two scratch tiles, directions summed in place.
    * ``"general"`` -- several numerator entries or temperatures: unit directions per column tile,
      the first in A, the second in B (one temperature), any further one ``addmm``-ed tile by tile.

    Column tiles are ``[R/2, V/T]`` with T = 3 x the scratch tiles in use, so scratch stays within
    :data:`SCRATCH_SHARE` of A; the fewer (and larger) the element-wise operations, the less each one
    pays in thread synchronization.
    """

    def __init__(
        self,
        objective: Any,
        plan: SoftPlan,
        weight: Tensor,
        bias: Optional[Tensor],
        step: int,
        slots: int,
        want_grad: bool,
    ) -> None:
        self.objective, self.plan = objective, plan
        self.weight, self.bias = weight, bias
        self.work = torch.float64 if weight.dtype == torch.float64 else torch.float32
        self.buffer_dtype = self.work  # of the [rows, V] logits buffers (subclasses may keep the compute dtype)
        self.vocab = weight.shape[0]
        self.slots = slots
        self.step = step  # blocks per sub-chunk
        self.piece = max(1, step // 2)  # blocks per target piece (of a full sub-chunk; see run)
        self.want_grad = want_grad and bool(plan.directions)
        single = len(plan.temperatures) == 1
        t = self.temperature = plan.temperatures[0]
        # B holds log p_T in place when one temperature is read; A holds log q_T in place when that
        # temperature is 1 or when no nlq direction needs q at T = 1.
        self.b_inplace = single and not plan.extended
        self.a_inplace = single and (t == 1.0 or NLQ not in plan.directions) and not plan.extended
        fast = self.a_inplace and self.b_inplace and plan.combined
        has_la = any(_kind(d) == "la" for d in plan.directions)
        has_kl = any(_kind(d) == "kl" for d in plan.directions)
        if plan.extended:
            self.mode = "extended"
        elif fast and not plan.kl_temperatures:
            self.mode = "la"
        elif self.a_inplace and self.b_inplace:
            self.mode = "single"
        else:
            self.mode = "general"
        # What B holds after the statistics pass (one temperature): p where KL is read (its sum needs
        # p, and so does the KL direction), else u where an alpha direction needs it, else log p.
        self.p_in_b = single and self.mode == "general" and t in plan.kl_temperatures
        self.store_u = single and has_la and not has_kl and self.want_grad and not self.p_in_b and not plan.extended
        self.in_b = None
        if (
            self.mode not in ("la", "extended")
            and not plan.combined
            and single
            and not self.store_u
            and len(plan.directions) > 1
        ):
            second = plan.directions[1]
            # the single form writes only a KL direction (q - p) into b; the general form any
            self.in_b = second if (self.mode == "general" or (second != NLQ and second[0] == "kl")) else None
        names = set()
        if self.mode == "single":
            names.add("q")  # one tile, shared by the statistics and the direction pass
        elif self.mode == "general":
            names.add("q")
            if has_la and self.want_grad and not self.store_u:
                names.add("u")
        if self.mode == "general" and self.want_grad:
            if plan.combined:
                names |= {"s1", "s2"}
            elif len(plan.directions) > (2 if self.in_b is not None else 1):
                names.add("s2")
            if any(not (self.a_inplace or t == 1.0) for t in plan.temperatures):
                names.add("lq")
            if not self.b_inplace:
                names.add("lp")
        self.scratch_names = frozenset(names)
        self.tiles = max(1, round(len(names) / (2 * SCRATCH_SHARE)))
        self.tile = -(-self.vocab // self.tiles)

    # ------------------------------------------------------------------ GEMMs
    def _logits(self, rows: Tensor, out: Tensor) -> None:
        """``out = rows @ W^T (+ bias)`` in the work dtype."""
        weight = self.weight
        rows = rows if rows.dtype == weight.dtype else rows.to(weight.dtype)
        if weight.dtype == out.dtype:
            if self.bias is None:
                torch.mm(rows, weight.t(), out=out)
            else:
                torch.addmm(self.bias, rows, weight.t(), out=out)
            return
        logits = torch.mm(rows, weight.t()) if self.bias is None else torch.addmm(self.bias, rows, weight.t())
        out.copy_(logits)

    def _gradient(self, direction: Tensor, out: Tensor) -> None:
        """``out = direction @ W`` (``direction`` [rows, V] in the work or the compute dtype)."""
        weight = self.weight
        if weight.dtype == direction.dtype == out.dtype:
            torch.mm(direction, weight, out=out)
        else:
            out.copy_(torch.mm(direction.to(weight.dtype), weight))

    def _accumulate(self, out: Tensor, tile: Tensor, start: int, sign: float = 1.0) -> None:
        """``out += sign * tile @ W[start : start + width]`` (a direction that is not in the logits buffer)."""
        part = self.weight[start : start + tile.shape[1]]
        if part.dtype == tile.dtype:
            out.addmm_(tile, part, alpha=sign)
        else:
            out.add_(torch.mm(tile.to(part.dtype), part), alpha=sign)

    # ------------------------------------------------------------------ driver
    @torch.no_grad()
    def run(self, hidden: Tensor, target_hidden: Tensor, target_ids: Tensor, weight_mask: Tensor) -> SoftResult:
        batch, blocks, slots, width = hidden.shape
        total, plan, device = batch * blocks, self.plan, hidden.device
        rows_total = total * slots
        self.flat_hidden = hidden.detach().reshape(rows_total, width)
        self.flat_target = target_hidden.detach().reshape(rows_total, width)
        self.ids = target_ids.reshape(rows_total)
        self.mask = weight_mask.reshape(total, slots)

        def new() -> Tensor:
            return torch.empty(rows_total, dtype=self.work, device=device)

        self.nlq, self.correct = new(), torch.empty(rows_total, dtype=torch.bool, device=device)
        self.draft = torch.empty(rows_total, dtype=torch.long, device=device)
        self.teacher = torch.empty(rows_total, dtype=torch.long, device=device)
        self.log_alpha = {t: new() for t in plan.temperatures}
        self.kl = {t: (new() if t in plan.kl_temperatures else None) for t in plan.temperatures}
        self.extras = {t: {key: new() for key in keys} for t, keys in plan.extras}
        self.buffers: list = []
        if self.want_grad:
            count = 1 if plan.combined else len(plan.directions)
            self.dl = [torch.zeros(rows_total, width, dtype=self.work, device=device) for _ in range(count)]
            # one summed direction with unit coefficients, or per direction [terms, rows] (allocated
            # at the first piece: the number of terms can depend on K, e.g. lk-lambda's 2K)
            self.coef = [torch.ones(1, rows_total, dtype=self.work, device=device)] if plan.combined else None
        # half of the sub-chunk actually processed: a chunk smaller than one sub-chunk still holds its
        # target logits in two halves (1.5 [rows, V] buffers, not 2)
        self.piece = max(1, min(self.step, total) // 2)
        step_rows = min(self.step, total) * slots
        piece_rows = self.piece * slots
        logits = torch.empty(step_rows, self.vocab, dtype=self.buffer_dtype, device=device)
        target = torch.empty(piece_rows, self.vocab, dtype=self.buffer_dtype, device=device)
        self.scratch = _Scratch(piece_rows, self.tile, self.work, device)
        for start in range(0, total, self.step):
            stop = min(start + self.step, total)
            r0, r1 = start * slots, stop * slots
            a_rows = logits[: r1 - r0]
            self._logits(self.flat_hidden[r0:r1], a_rows)
            for p_start in range(start, stop, self.piece):
                p_stop = min(p_start + self.piece, stop)
                p0, p1 = p_start * slots, p_stop * slots
                b_rows = target[: p1 - p0]
                self._logits(self.flat_target[p0:p1], b_rows)
                self._piece(a_rows[p0 - r0 : p1 - r0], b_rows, p0, p1, p_start, p_stop)
            if self.want_grad:
                self._gradient(a_rows, self.dl[0][r0:r1])
        soft = {}
        for t in plan.temperatures:
            kl = self.kl[t] if self.kl[t] is not None else torch.full_like(self.log_alpha[t], math.nan)
            soft[t] = SoftSlots(t, self.log_alpha[t], kl, self.teacher, self.draft, self.extras.get(t))
        if self.want_grad:
            self.buffers = list(zip(self.coef, self.dl))
        return SoftResult(self.nlq, self.correct, soft, self.buffers)

    # ------------------------------------------------------------------ one piece
    def _piece(self, a: Tensor, b: Tensor, p0: int, p1: int, block0: int, block1: int) -> None:
        plan, ids = self.plan, self.ids[p0:p1]
        torch.argmax(a, dim=-1, out=self.draft[p0:p1])
        torch.argmax(b, dim=-1, out=self.teacher[p0:p1])
        torch.log_softmax(a, -1, out=a)  # log q at T = 1 (the same kernel as F.cross_entropy)
        self.nlq[p0:p1] = a.gather(1, ids.unsqueeze(1)).squeeze(1).neg_()
        self.correct[p0:p1] = self.draft[p0:p1] == ids
        if self.mode == "extended":
            self._piece_extended(a, b, p0, p1, block0, block1)
            return
        t_one = self.temperature
        if self.a_inplace and t_one != 1.0:
            a.div_(t_one)
            torch.log_softmax(a, -1, out=a)
        if self.b_inplace:
            if t_one != 1.0:
                b.div_(t_one)
            torch.log_softmax(b, -1, out=b)  # (p as exp of this, never softmax: see _stats_la)
        # per-row normalizers for temperatures computed on the fly (log q_T / log p_T tiles)
        self.lq, self.lp = {}, {}
        for t in plan.temperatures:
            if not (self.a_inplace or t == 1.0):
                self.lq[t] = self._lse(a, t, a.gather(1, self.draft[p0:p1].unsqueeze(1)))
            if not self.b_inplace:
                self.lp[t] = self._lse(b, t, b.gather(1, self.teacher[p0:p1].unsqueeze(1)))
        if self.mode == "la":
            stats = {t_one: self._stats_la(a, b, self.want_grad and ("la", t_one) in plan.directions)}
        elif self.mode == "single":
            need_su = self.want_grad and ("la", t_one) in plan.directions
            stats = {t_one: self._stats_single(a, b, t_one in plan.kl_temperatures, need_su)}
        else:
            stats = {}
            for t in plan.temperatures:
                need_su = self.want_grad and ("la", t) in plan.directions
                stats[t] = self._stats(a, b, t, t in plan.kl_temperatures, need_su, self.store_u)
        bad = torch.zeros(p1 - p0, dtype=torch.bool, device=a.device)
        for log_alpha, _, _ in stats.values():
            bad |= ~(log_alpha >= math.log(TINY_ALPHA))  # also catches NaN
        bad = bad.nonzero().squeeze(1)
        exact = self._exact_rows(p0 + bad) if bad.numel() else None
        for t, (log_alpha, ratio, kl) in stats.items():
            if exact is not None:
                log_alpha[bad] = exact[t]["log_alpha"]
                if ratio is not None:
                    ratio[bad] = exact[t]["ratio"]
                if kl is not None:
                    kl[bad] = exact[t]["kl"]
            self.log_alpha[t][p0:p1] = log_alpha
            if self.kl[t] is not None:
                self.kl[t][p0:p1] = kl
        if not self.want_grad:
            return
        coef = self._coefficients(p0, p1, block0, block1)
        if self.mode == "la":
            self._directions_la(a, b, stats[t_one], coef, ids)
        elif self.mode == "single" and plan.combined:
            self._directions_single(a, b, stats[t_one], coef, ids)
        elif self.mode == "single":
            self._directions_split(a, b, stats[t_one], ids, p0, p1)
        else:
            self._directions_general(a, b, stats, coef, ids, p0, p1)
        if exact is not None:
            self._fix_directions(a, bad, exact, coef, ids, p0)

    def _piece_extended(self, a: Tensor, b: Tensor, p0: int, p1: int, block0: int, block1: int) -> None:
        """The extended form (a plan reading Renyi-1/2, top-k KL or the cross-entropy on argmax p): every
        statistic and unit direction (``T * d stat / dz``) from :class:`~..losses._statistics.RowStats`
        over row tiles of the piece, in log space (exact however small alpha is).  ``a`` holds log q at
        T = 1 and ``b`` the target's logits; the statistics are read first (the coefficients of a block
        need all its slots), then the directions: the first (or their sum, one numerator entry) written
        into ``a``, the others through one gradient product per tile into their buffers."""
        plan, rows = self.plan, p1 - p0
        tile = max(1, int(self.step * self.slots * SCRATCH_SHARE / EXTENDED_TEMPORARIES))
        ids = self.ids[p0:p1]
        for r0 in range(0, rows, tile):
            r1 = min(r0 + tile, rows)
            stats = RowStats(a[r0:r1], b[r0:r1], ids[r0:r1])
            for t in plan.temperatures:
                self.log_alpha[t][p0 + r0 : p0 + r1] = stats.log_alpha(t)
                if self.kl[t] is not None:
                    self.kl[t][p0 + r0 : p0 + r1] = stats.value(("kl", t))
                for key, out in self.extras.get(t, {}).items():
                    out[p0 + r0 : p0 + r1] = stats.value(key)
        if not self.want_grad:
            return
        coef = self._coefficients(p0, p1, block0, block1)
        for r0 in range(0, rows, tile):
            r1 = min(r0 + tile, rows)
            stats = RowStats(a[r0:r1], b[r0:r1], ids[r0:r1])
            units = {d: stats.unit(key_of(d)) for d in plan.directions if not plan.combined or d in coef}
            if plan.combined:
                total = torch.zeros_like(a[r0:r1])
                for direction, unit in units.items():
                    total.addcmul_(unit, coef[direction][0][r0:r1].unsqueeze(1))
                a[r0:r1] = total
                continue
            a[r0:r1] = units[plan.directions[0]]
            for index, direction in enumerate(plan.directions[1:], start=1):
                self._gradient(units[direction], self.dl[index][p0 + r0 : p0 + r1])

    def _tiles(self):
        for start in range(0, self.vocab, self.tile):
            yield start, min(self.tile, self.vocab - start)

    def _lse(self, x: Tensor, t: float, row_max: Tensor) -> Tensor:
        """Per-row ``logsumexp(x / t)`` over column tiles (``row_max`` = max of x per row, [rows, 1])."""
        shift = row_max / t
        total = torch.zeros(x.shape[0], dtype=self.work, device=x.device)
        for start, width in self._tiles():
            s = self.scratch.get("q", x.shape[0], width)
            torch.add(-shift, x[:, start : start + width], alpha=1.0 / t, out=s)
            total += s.exp_().sum(-1)
        return (shift.squeeze(1) + total.log()).unsqueeze(1)

    def _log_q(self, a: Tensor, t: float, start: int, width: int) -> Tensor:
        tile = a[:, start : start + width]
        if self.a_inplace or t == 1.0:
            return tile
        out = self.scratch.get("lq", a.shape[0], width)
        return torch.add(-self.lq[t], tile, alpha=1.0 / t, out=out)

    def _log_p(self, b: Tensor, t: float, start: int, width: int) -> Tensor:
        tile = b[:, start : start + width]
        if self.b_inplace:
            return tile
        out = self.scratch.get("lp", b.shape[0], width)
        return torch.add(-self.lp[t], tile, alpha=1.0 / t, out=out)

    # ------------------------------------------------------------------ statistics
    def _stats_la(self, a: Tensor, b: Tensor, need_su: bool):
        """``"la"`` form, full width, no scratch: a (log q) becomes q, b (log p) becomes u q (or min(p, q)).

        p is exp(log p), as the plain path forms it: exp is monotone, so q <= p exactly where
        log q <= log p (exact ties, which occur at large V, stay on the q side as there; a softmax of
        the logits would round differently and move some).  Sums are torch sums over tensors formed in
        place (accurate over any V; a batched dot is not)."""
        a.exp_()  # q
        b.exp_()  # p
        torch.minimum(a, b, out=b)  # min(p, q)
        total = b.sum(-1)  # alpha
        ratio = None
        if need_su:
            torch.ge(b, a, out=b).mul_(a)  # u q: min(p, q) is q itself exactly where q <= p
            ratio = b.sum(-1) / total  # s / alpha
        return total.log(), ratio, None

    def _stats_single(self, a: Tensor, b: Tensor, want_kl: bool, need_su: bool):
        """``"single"`` form: one scratch tile; a becomes q and b becomes p, tile by tile, and u is
        compared as ``q <= p`` afterwards (ties up to one rounding of exp to the q side)."""
        rows = a.shape[0]
        total = torch.zeros(rows, dtype=self.work, device=a.device)
        q_side = torch.zeros(rows, dtype=self.work, device=a.device) if need_su else None
        kl = torch.zeros(rows, dtype=self.work, device=a.device) if want_kl else None
        for start, width in self._tiles():
            q, p = a[:, start : start + width], b[:, start : start + width]
            s1 = self.scratch.get("q", rows, width)
            if want_kl:
                torch.sub(p, q, out=s1)  # log p - log q
            p.exp_()
            if want_kl:
                kl += s1.mul_(p).sum(-1)  # sum p (log p - log q)
            q.exp_()
            total += torch.minimum(q, p, out=s1).sum(-1)  # alpha
            if need_su:
                q_side += torch.le(q, p, out=s1).mul_(q).sum(-1)  # s = sum u q
        return total.log(), (q_side / total if need_su else None), kl

    def _stats(self, a: Tensor, b: Tensor, t: float, want_kl: bool, need_su: bool, store_u: bool):
        """``(log alpha, r = s / alpha or None, kl or None)`` per row: one pass over column tiles.

        ``store_u`` (one temperature, B holds log p and nothing later needs it): B's tiles become
        u = 1[log q <= log p] once read."""
        rows = a.shape[0]
        total = torch.zeros(rows, dtype=self.work, device=a.device)
        q_side = torch.zeros(rows, dtype=self.work, device=a.device) if need_su else None
        kl = torch.zeros(rows, dtype=self.work, device=a.device) if want_kl else None
        for start, width in self._tiles():
            log_q, log_p = self._log_q(a, t, start, width), self._log_p(b, t, start, width)
            s1 = self.scratch.get("q", rows, width)  # the direction pass reuses the scratch tiles
            torch.minimum(log_q, log_p, out=s1).exp_()  # min(p, q)
            total += s1.sum(-1)
            if need_su:
                u = torch.le(log_q, log_p, out=log_p if store_u else self.scratch.get("u", rows, width))
                q_side += s1.mul_(u).sum(-1)
            if want_kl:  # sum p (log p - log q): no cancellation between two large sums
                torch.sub(log_p, log_q, out=s1)
                kl += s1.mul_(log_p.exp_()).sum(-1)  # log_p is B's tile (kept as p) or a scratch tile
        return total.log(), (q_side / total if need_su else None), kl

    def _exact_rows(self, rows: Tensor) -> dict:
        """Rows (flat indices) whose alpha is tiny: their logits again (a GEMM of those rows) and every
        statistic in log space, exact however small alpha gets; the directions use the same."""
        plan = self.plan
        z = torch.empty(rows.numel(), self.vocab, dtype=self.work, device=rows.device)
        z_p = torch.empty_like(z)
        self._logits(self.flat_hidden[rows], z)
        self._logits(self.flat_target[rows], z_p)
        log_q1 = torch.log_softmax(z, -1)
        out: dict = {"q1": torch.exp(log_q1)}
        for t in plan.temperatures:
            log_q = log_q1 if t == 1.0 else torch.log_softmax(z / t, -1)
            log_p = torch.log_softmax(z_p / t, -1)
            u = log_q <= log_p
            log_alpha = torch.logsumexp(torch.minimum(log_q, log_p), -1)
            log_s = torch.logsumexp(log_q.masked_fill(~u, -math.inf), -1)
            p = torch.exp(log_p)
            kl = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(-1)
            out[t] = {
                "log_alpha": log_alpha,
                "ratio": torch.exp(log_s - log_alpha),
                "kl": kl,
                "log_q": log_q,
                "p": p,
                "u": u,
            }
        return out

    def _fix_directions(self, a: Tensor, bad: Tensor, exact: dict, coef: dict, ids: Tensor, p0: int) -> None:
        """Overwrite the tiny-alpha rows' directions with their exact log-space values."""
        plan = self.plan
        units = {}
        for direction in plan.directions:
            if direction == NLQ:
                unit = exact["q1"].clone()
                unit[torch.arange(bad.numel(), device=a.device), ids[bad]] -= 1.0
            else:
                kind, t = direction
                e = exact[t]
                q = torch.exp(e["log_q"])
                if kind == "la":  # u q / alpha - q r, with q / alpha = exp(log q - log alpha) <= 1 where u
                    share = torch.exp((e["log_q"] - e["log_alpha"].unsqueeze(1)).clamp_max(0.0))
                    unit = torch.where(e["u"], share, torch.zeros_like(share)) - q * e["ratio"].unsqueeze(1)
                else:
                    unit = q - e["p"]
            units[direction] = unit
        if plan.combined:
            total = torch.zeros_like(exact["q1"])
            for direction, unit in units.items():
                if direction in coef:
                    total += coef[direction][0][bad].unsqueeze(1) * unit
            a[bad] = total
            return
        a[bad] = units[plan.directions[0]]
        for index, direction in enumerate(plan.directions[1:], start=1):
            out = torch.empty(bad.numel(), self.flat_hidden.shape[1], dtype=self.work, device=a.device)
            self._gradient(units[direction], out)
            self.dl[index][p0 + bad] = out

    def _coefficients(self, p0: int, p1: int, block0: int, block1: int) -> dict:
        """Per-direction coefficients of the piece's rows: ``[terms, rows]`` (with 1/T and alpha folded in)."""
        plan, k = self.plan, self.slots
        blocks = block1 - block0
        shape = (1, blocks, k)
        soft = {}
        for t in plan.temperatures:
            kl = self.kl[t][p0:p1] if self.kl[t] is not None else torch.full_like(self.nlq[p0:p1], math.nan)
            soft[t] = SoftSlots(
                t,
                self.log_alpha[t][p0:p1].view(shape),
                kl.view(shape),
                self.teacher[p0:p1].view(shape),
                self.draft[p0:p1].view(shape),
                {key: value[p0:p1].view(shape) for key, value in self.extras.get(t, {}).items()},
            )
        grads = stat_grads(
            self.objective,
            self.nlq[p0:p1].view(shape),
            self.mask[block0:block1].unsqueeze(0),
            self.correct[p0:p1].view(shape),
            soft,
        )
        coef: dict = {}
        for key, value in grads.items():
            value = value.reshape(value.shape[0], p1 - p0).to(self.work)
            direction = direction_of(key)
            if not isinstance(key, str):
                kind, t = key[0], float(key[1])
                if kind == "alpha":
                    value = value * torch.exp(self.log_alpha[t][p0:p1])
                value = value / t
            coef[direction] = value if direction not in coef else coef[direction] + value
        if not plan.combined:
            if self.coef is None:
                terms, rows_total = next(iter(coef.values())).shape[0], self.nlq.shape[0]
                self.coef = [torch.zeros(terms, rows_total, dtype=self.work, device=self.nlq.device) for _ in self.dl]
            for index, direction in enumerate(plan.directions):
                if direction in coef:
                    self.coef[index][:, p0:p1] = coef[direction]
        return coef

    # ------------------------------------------------------------------ directions
    @staticmethod
    def _summed_parts(stats, coef: dict, t: float, rows: int, like: Tensor):
        """``(c0, c_la / alpha, -c_kl)`` per row ([rows, 1] or None) of the summed direction
        ``q (c0 + c_la u / alpha) - c_kl p - c_nlq e_y``, c0 = c_kl + c_nlq - c_la r."""
        log_alpha, ratio, _ = stats
        la, kl, cn = (coef.get(d) for d in (("la", t), ("kl", t), NLQ))
        base = torch.zeros(rows, dtype=like.dtype, device=like.device)
        for part in (kl, cn):
            if part is not None:
                base += part[0]
        over_alpha = None
        if la is not None:
            base -= la[0] * ratio
            over_alpha = (la[0] * torch.exp(-log_alpha)).unsqueeze(1)
        minus_kl = None if kl is None else (-kl[0]).unsqueeze(1)
        return base.unsqueeze(1), over_alpha, minus_kl, cn

    def _label_fix(self, a: Tensor, ids: Tensor, cn: Optional[Tensor]) -> None:
        if cn is not None:
            a.index_put_((torch.arange(a.shape[0], device=a.device), ids), -cn[0], accumulate=True)

    def _directions_la(self, a: Tensor, b: Tensor, stats, coef: dict, ids: Tensor) -> None:
        """``"la"`` form: a holds q, b holds u q; ``a = c0 q + (c_la / alpha) u q`` in place, full width."""
        base, over_alpha, _, cn = self._summed_parts(stats, coef, self.temperature, a.shape[0], a)
        a.mul_(base)
        if over_alpha is not None:
            a.addcmul_(b, over_alpha)
        self._label_fix(a, ids, cn)

    def _directions_single(self, a: Tensor, b: Tensor, stats, coef: dict, ids: Tensor) -> None:
        """``"single"`` form, one numerator entry: a holds q, b holds p; ``a`` becomes the summed direction
        ``q (c0 + c_la u / alpha) - c_kl p - c_nlq e_y`` in place (full width where no u is needed)."""
        rows = a.shape[0]
        base, over_alpha, minus_kl, cn = self._summed_parts(stats, coef, self.temperature, rows, a)
        if over_alpha is None:
            a.mul_(base)
            if minus_kl is not None:
                a.addcmul_(b, minus_kl)
        else:
            for start, width in self._tiles():
                q, p = a[:, start : start + width], b[:, start : start + width]
                u = torch.le(q, p, out=self.scratch.get("q", rows, width))
                q.mul_(torch.addcmul(base, u, over_alpha, out=u))  # q * (c0 + c_la u / alpha)
                if minus_kl is not None:
                    q.addcmul_(p, minus_kl)
        self._label_fix(a, ids, cn)

    def _directions_split(self, a: Tensor, b: Tensor, stats, ids: Tensor, p0: int, p1: int) -> None:
        """``"single"`` form, several numerator entries: unit directions, the first in ``a`` (GEMM per
        sub-chunk), the second in ``b`` (one GEMM per piece), any further one as ``addmm``s of the
        q and p tiles themselves (q - p = q W - p W; q - e_y = q W - W[y]), so no tile is copied."""
        plan, rows, t = self.plan, a.shape[0], self.temperature
        primary, in_b = plan.directions[0], self.in_b
        log_alpha, ratio, _ = stats
        la = ("la", t) in plan.directions
        if la:
            minus_r, inv_alpha = (-ratio).unsqueeze(1), torch.exp(-log_alpha).unsqueeze(1)
        for start, width in self._tiles():
            q, p = a[:, start : start + width], b[:, start : start + width]
            u = torch.le(q, p, out=self.scratch.get("q", rows, width)) if la else None
            for direction in plan.directions[1:]:  # the first one last: it overwrites q
                index = plan.directions.index(direction)
                if direction == NLQ:  # q at T = 1; e_y after the loop
                    self._accumulate(self.dl[index][p0:p1], q, start)
                else:  # one temperature: a second soft direction is kl (la sorts first), kept in b
                    torch.sub(q, p, out=p)
            if primary == NLQ:
                continue
            if primary[0] == "la":  # q (u / alpha - r)
                q.mul_(torch.addcmul(minus_r, u, inv_alpha, out=u))
            else:  # q - p
                q.sub_(p)
        if primary == NLQ:
            a.index_put_(
                (torch.arange(rows, device=a.device), ids), torch.full_like(ids, -1, dtype=a.dtype), accumulate=True
            )
        if NLQ in plan.directions[1:]:
            self._label_rows(self.dl[plan.directions.index(NLQ)][p0:p1], ids)
        if in_b is not None:
            self._gradient(b, self.dl[plan.directions.index(in_b)][p0:p1])

    def _label_rows(self, out: Tensor, ids: Tensor) -> None:
        """``out -= e_y W`` (the rows of W at the labels; the head's bias has no gradient)."""
        rows = self.weight.index_select(0, ids)
        out.sub_(rows if rows.dtype == out.dtype else rows.to(out.dtype))

    def _directions_general(self, a: Tensor, b: Tensor, stats: dict, coef: dict, ids: Tensor, p0: int, p1: int) -> None:
        """Any plan: unit directions per column tile, summed with their coefficients (one numerator
        entry) or one per buffer (several).  The first direction is written into ``a`` (its GEMM runs
        per sub-chunk); with one temperature the second goes into ``b`` in place (one GEMM per piece),
        any further one tile by tile (``addmm``)."""
        plan, rows = self.plan, a.shape[0]
        combined, primary, in_b = plan.combined, plan.directions[0], self.in_b
        inv_alpha = {t: torch.exp(-stats[t][0]).unsqueeze(1) for t in plan.temperatures}
        order = [d for d in plan.directions if d != primary] + [primary]
        for start, width in self._tiles():
            tile_a = a[:, start : start + width]
            cache: dict = {}

            def get(name: str, width: int = width) -> Tensor:
                return self.scratch.get(name, rows, width)

            if in_b is not None:  # b's tile is overwritten by a direction: read what it holds first
                self._ingredients(cache, a, b, self.temperature, start, width)
            label_rows = None
            if NLQ in plan.directions:
                label_rows = ((ids >= start) & (ids < start + width)).nonzero().squeeze(1)
            acc = get("s1") if combined else None
            wrote = False
            for direction in order:
                column = coef.get(direction)
                if combined and column is None:
                    continue
                if combined:
                    out = get("s2")
                elif direction == primary:
                    out = tile_a
                elif direction == in_b:
                    out = b[:, start : start + width]
                else:
                    out = get("s2")
                if direction == NLQ:
                    torch.exp(tile_a, out=out)  # q at T = 1 (a holds log q1 whenever nlq is a direction)
                    if label_rows.numel():
                        minus_one = torch.full((label_rows.numel(),), -1.0, dtype=self.work, device=a.device)
                        out.index_put_((label_rows, ids[label_rows] - start), minus_one, accumulate=True)
                else:
                    kind, t = direction
                    _, q, u = self._ingredients(cache, a, b, t, start, width)
                    if kind == "la":  # q (u / alpha - r)
                        torch.addcmul(-stats[t][1].unsqueeze(1), u, inv_alpha[t], out=out).mul_(q)
                    elif self.p_in_b:  # q - p, p kept in b by the statistics pass
                        torch.sub(q, b[:, start : start + width], out=out)
                    else:  # q - p
                        torch.exp(self._log_p(b, t, start, width), out=out)
                        torch.sub(q, out, out=out)
                if combined:
                    if wrote:
                        acc.addcmul_(out, column[0].unsqueeze(1))
                    else:
                        torch.mul(out, column[0].unsqueeze(1), out=acc)
                        wrote = True
                elif direction not in (primary, in_b):
                    self._accumulate(self.dl[plan.directions.index(direction)][p0:p1], out, start)
            if combined:
                if wrote:
                    tile_a.copy_(acc)
                else:
                    tile_a.zero_()
        if in_b is not None:
            self._gradient(b, self.dl[plan.directions.index(in_b)][p0:p1])

    def _ingredients(
        self, cache: dict, a: Tensor, b: Tensor, t: float, start: int, width: int
    ) -> tuple[Tensor, Tensor, Optional[Tensor]]:
        """``(log q, q, u)`` of one column tile at temperature ``t``, cached for one t at a time
        (``u`` = 1[log q <= log p] only where an alpha direction needs it)."""
        if cache.get("t") != t:
            cache.clear()
            cache["t"] = t
            rows = a.shape[0]
            log_q = cache["log_q"] = self._log_q(a, t, start, width)
            cache["q"] = torch.exp(log_q, out=self.scratch.get("q", rows, width))
            if ("la", t) in self.plan.directions:
                if self.store_u:
                    cache["u"] = b[:, start : start + width]
                elif self.p_in_b:  # b holds p: compare the exps (monotone, same kernel as p's)
                    cache["u"] = torch.le(
                        cache["q"], b[:, start : start + width], out=self.scratch.get("u", rows, width)
                    )
                else:
                    log_p = self._log_p(b, t, start, width)
                    cache["u"] = torch.le(log_q, log_p, out=self.scratch.get("u", rows, width))
        return cache["log_q"], cache["q"], cache.get("u")
