"""Every per-slot statistic an objective may read, written once: its value and its gradient.

A statistic of one slot is a function of the drafter's ``log q_T = log_softmax(z / T)`` (and of the
target's ``log p_T``), so its gradient with respect to the drafter's logits ``z`` is

    d stat / dz = (G - q_T * sum_x G_x) / T,    G = d stat / d log q_T   (the *upstream* row)

(the log-softmax backward).  :class:`RowStats` gives, for a tile of rows, the value and ``G`` of each
statistic key that ``stat_grads`` uses:

==============================  ==============================  =========================================
key                             value                           G = d value / d log q_T
==============================  ==============================  =========================================
``"nlq"`` (T = 1)               ``-log q_y`` (y: data label)    ``-e_y``
``("log_alpha", T)``            ``log sum_x min(p_x, q_x)``     ``u * q / alpha`` (u = 1[q <= p])
``("alpha", T)``                ``sum_x min(p_x, q_x)``         ``u * q``
``("kl", T)``                   ``sum_x p_x log(p_x / q_x)``    ``-p``
``("log_bc", T)``               ``log sum_x sqrt(p_x q_x)``     ``b / 2``, b = sqrt(p q) / BC
``("topk_kl", T, k)``           ``KL(p~ || q~)`` on S           ``(q~ - p~) * 1_S``
``"teacher_nlq"`` (T = 1)       ``-log q_t`` (t = argmax p)     ``-e_t``
==============================  ==============================  =========================================

``S`` is the set of the target's ``k`` most probable tokens (``torch.topk`` of the target's logits,
all of V when k >= V) and ``p~ = p / p(S)``, ``q~ = q / q(S)`` on S: both distributions restricted to S
and renormalized there.  The plain path of the new statistics (:mod:`._divergences`), the fused path's
general pass and the gradient-share metrics all read these rows, so one table holds for all three.
Work is in the logits' dtype (fp32 for low-precision logits); callers keep tiles small.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

Tensor = torch.Tensor

NLQ = "nlq"
TEACHER_NLQ = "teacher_nlq"


def log_bc_key(temperature: float) -> tuple[str, float]:
    return ("log_bc", float(temperature))


def topk_kl_key(temperature: float, k: int) -> tuple[str, float, int]:
    return ("topk_kl", float(temperature), int(k))


def key_temperature(key: Any) -> float:
    """The temperature a statistic key is formed at (1 for the cross-entropies)."""
    return 1.0 if isinstance(key, str) else float(key[1])


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def _work(values: Tensor) -> Tensor:
    return values if values.dtype == _work_dtype(values.dtype) else values.float()


class RowStats:
    """Statistics of a tile of rows ``[r, V]``: draft logits ``z`` against the target (logits, or
    log-probabilities already at the statistic's temperature), with data ``labels`` for ``"nlq"``.

    Values and upstream rows are formed on first use and cached per temperature."""

    def __init__(
        self, z: Tensor, target: Tensor, labels: Optional[Tensor] = None, target_is_log_probs: bool = False
    ) -> None:
        self.z, self.target = _work(z), _work(target)
        self.labels, self.target_is_log_probs = labels, target_is_log_probs
        self._cache: dict = {}

    def _memo(self, name: Any, make):
        if name not in self._cache:
            self._cache[name] = make()
        return self._cache[name]

    # --- distributions -------------------------------------------------------------------------
    def log_q(self, t: float) -> Tensor:
        return self._memo(("log_q", t), lambda: torch.log_softmax(self.z / t if t != 1.0 else self.z, -1))

    def q(self, t: float) -> Tensor:
        return self._memo(("q", t), lambda: torch.exp(self.log_q(t)))

    def log_p(self, t: float) -> Tensor:
        if self.target_is_log_probs:
            return self.target
        return self._memo(("log_p", t), lambda: torch.log_softmax(self.target / t if t != 1.0 else self.target, -1))

    def p(self, t: float) -> Tensor:
        return self._memo(("p", t), lambda: torch.exp(self.log_p(t)))

    def teacher_ids(self) -> Tensor:
        return self._memo("teacher", lambda: self.target.argmax(dim=-1))

    def top_set(self, k: int) -> Tensor:
        """``[r, min(k, V)]`` indices of the target's most probable tokens (the same at every temperature)."""
        return self._memo(("top", k), lambda: self.target.topk(min(int(k), self.target.shape[-1]), dim=-1).indices)

    def log_alpha(self, t: float) -> Tensor:
        return self._memo(("log_alpha", t), lambda: torch.logsumexp(torch.minimum(self.log_q(t), self.log_p(t)), -1))

    def log_bc(self, t: float) -> Tensor:
        return self._memo(("log_bc", t), lambda: torch.logsumexp(0.5 * (self.log_q(t) + self.log_p(t)), -1))

    def _topk_parts(self, t: float, k: int):
        """``(S, log p~, log q~)`` on the top-k set, each ``[r, k]``."""

        def make():
            top = self.top_set(k)
            log_p = self.log_p(t).gather(-1, top)
            log_q = self.log_q(t).gather(-1, top)
            return (
                top,
                log_p - torch.logsumexp(log_p, -1, keepdim=True),
                log_q - torch.logsumexp(log_q, -1, keepdim=True),
            )

        return self._memo(("topk", t, k), make)

    # --- values ------------------------------------------------------------------------------------
    def value(self, key: Any) -> Tensor:
        """``[r]`` value of the statistic ``key`` (see the module table)."""
        if key == NLQ:
            return -self.log_q(1.0).gather(-1, self.labels.reshape(-1, 1)).squeeze(-1)
        if key == TEACHER_NLQ:
            return -self.log_q(1.0).gather(-1, self.teacher_ids().unsqueeze(-1)).squeeze(-1)
        kind, t = key[0], float(key[1])
        if kind == "log_alpha":
            return self.log_alpha(t)
        if kind == "alpha":
            return torch.exp(self.log_alpha(t))
        if kind == "kl":
            log_p, log_q = self.log_p(t), self.log_q(t)
            return (torch.exp(log_p) * (log_p - log_q).clamp_min(torch.finfo(log_p.dtype).min)).sum(-1)
        if kind == "log_bc":
            return self.log_bc(t)
        if kind == "topk_kl":
            _, log_pt, log_qt = self._topk_parts(t, key[2])
            return (torch.exp(log_pt) * (log_pt - log_qt).clamp_min(torch.finfo(log_pt.dtype).min)).sum(-1)
        raise KeyError(f"unknown statistic {key!r}")

    # --- gradients ---------------------------------------------------------------------------------
    def upstream(self, key: Any) -> Tensor:
        """``[r, V]`` ``G = d value / d log q_T`` (see the module table); a new tensor."""
        if key in (NLQ, TEACHER_NLQ):
            ids = self.labels.reshape(-1) if key == NLQ else self.teacher_ids()
            out = torch.zeros_like(self.z)
            return out.scatter_(-1, ids.reshape(-1, 1), -1.0)
        kind, t = key[0], float(key[1])
        log_q, log_p = self.log_q(t), self.log_p(t)
        if kind in ("log_alpha", "alpha"):
            shift = self.log_alpha(t).unsqueeze(-1) if kind == "log_alpha" else 0.0
            # u q / alpha, formed as exp(log q - log alpha) <= 1 where u (no overflow however small alpha is)
            return torch.where(log_q <= log_p, torch.exp(log_q - shift), torch.zeros_like(log_q))
        if kind == "kl":
            return -self.p(t)
        if kind == "log_bc":
            return 0.5 * torch.exp(0.5 * (log_q + log_p) - self.log_bc(t).unsqueeze(-1))
        if kind == "topk_kl":
            top, log_pt, log_qt = self._topk_parts(t, key[2])
            return torch.zeros_like(log_q).scatter_(-1, top, torch.exp(log_qt) - torch.exp(log_pt))
        raise KeyError(f"unknown statistic {key!r}")

    def unit(self, key: Any) -> Tensor:
        """``[r, V]`` ``T * d value / d z = G - q_T sum_x G_x`` (the log-softmax backward of :meth:`upstream`)."""
        upstream = self.upstream(key)
        if not isinstance(key, str) and key[0] == "topk_kl":
            return upstream  # sum_x G_x = sum_S (q~ - p~) = 0: exactly 0 outside S
        return upstream.sub_(self.q(key_temperature(key)) * upstream.sum(-1, keepdim=True))

    def direction(self, key: Any) -> Tensor:
        """``[r, V]`` d value / d z."""
        t = key_temperature(key)
        out = self.unit(key)
        return out.div_(t) if t != 1.0 else out


def soft_extras_at(objective: Any, temperature: float) -> tuple:
    """The statistic keys beyond log alpha and KL that ``objective`` reads at ``temperature``."""
    return tuple(getattr(objective, "soft_extras", {}).get(float(temperature), ()))


def gram_rows(stats: RowStats, keys: list) -> Tensor:
    """``[r, D, D]`` inner products of the rows' ``d stat / dz`` for the statistic keys (over V)."""
    directions = torch.stack([stats.direction(key) for key in keys], dim=1)  # [r, D, V]
    return directions @ directions.transpose(1, 2)


class _ExtraStatistics(torch.autograd.Function):
    """Values of statistic keys of one temperature for draft logits ``[R, V]`` against the target, with the
    analytic gradient of the module table, tile by tile of rows (nothing of size ``[R, V]`` saved but
    the inputs the caller holds anyway)."""

    @staticmethod
    def forward(ctx, logits, target, keys, target_is_log_probs):  # type: ignore[override]
        ctx.set_materialize_grads(False)
        ctx.settings = (keys, bool(target_is_log_probs))
        ctx.save_for_backward(logits, target)
        outputs = [torch.empty(logits.shape[0], dtype=_work_dtype(logits.dtype), device=logits.device) for _ in keys]
        for start, end in _tiles(logits):
            stats = RowStats(logits[start:end], target[start:end], target_is_log_probs=target_is_log_probs)
            for out, key in zip(outputs, keys):
                out[start:end] = stats.value(key)
        return tuple(outputs)

    @staticmethod
    def backward(ctx, *grads):  # type: ignore[override]
        keys, target_is_log_probs = ctx.settings
        logits, target = ctx.saved_tensors
        used = [(key, grad) for key, grad in zip(keys, grads) if grad is not None]
        if not used:
            return None, None, None, None
        grad_logits = torch.empty(logits.shape, dtype=_work_dtype(logits.dtype), device=logits.device)
        for start, end in _tiles(logits):
            stats = RowStats(logits[start:end], target[start:end], target_is_log_probs=target_is_log_probs)
            total = None
            for key, grad in used:
                term = stats.direction(key) * grad[start:end].to(grad_logits.dtype).unsqueeze(-1)
                total = term if total is None else total.add_(term)
            grad_logits[start:end] = total
        return grad_logits.to(logits.dtype), None, None, None


def _tiles(rows: Tensor):
    """Row ranges of about a tile of elements each (the plain path's tile size, a few buffers in flight)."""
    from ._soft import _tile_elements

    step = max(1, _tile_elements(rows.device) // max(4 * rows.shape[-1], 1))
    for start in range(0, rows.shape[0], step):
        yield start, min(start + step, rows.shape[0])


def extra_statistics(
    draft_logits: Tensor, target: Tensor, temperature: float, keys: tuple, target_is_log_probs: bool = False
) -> dict:
    """``{key: [...]}`` values (with grad to ``draft_logits [..., V]``) of statistic keys at one temperature
    (``"teacher_nlq"`` only at temperature 1)."""
    for key in keys:
        if key_temperature(key) != float(temperature):
            raise ValueError(f"statistic {key!r} is not formed at temperature {temperature:g}")
    vocab = draft_logits.shape[-1]
    values = _ExtraStatistics.apply(
        draft_logits.reshape(-1, vocab), target.detach().reshape(-1, vocab), tuple(keys), target_is_log_probs
    )
    return {key: value.view(draft_logits.shape[:-1]) for key, value in zip(keys, values)}
