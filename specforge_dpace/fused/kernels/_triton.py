"""The Triton kernels of the objective paths (design and tests: docs/gpu-kernels.md).

Each program owns ``BLOCK_R`` rows of a ``[rows, V]`` logits buffer (the output of one cuBLAS product in the
compute dtype) and walks them in column tiles of ``BLOCK_V``, upcasting every tile to fp32 (fp64 for fp64
buffers) as it is loaded:

* :func:`hard_rows_kernel` -- hard objectives: online max / sum-exp, argmax and the label's logit in one walk,
  then ``softmax - onehot`` written in place (cross-entropy's gradient w.r.t. the logits).
* :func:`soft_stats_kernel` -- soft objectives, per temperature T: a first walk over draft and target tiles
  forms log-sum-exp of z (T = 1), of z / T and of z_p / T, both argmaxes and the label's logit; a second walk
  forms log alpha = logsumexp(min(log q, log p)) and s / alpha (u = 1[log q <= log p], ties on the q side)
  online in log space, exact however small alpha is, and KL(p || q) = sum p (log p - log q) where asked.
* :func:`soft_directions_kernel` -- once the objective's per-row coefficients are known: up to three gradient
  directions, each a per-row combination of the basis q_T, u q_T / alpha, p_T (one or two temperatures), q at
  T = 1 and e_label, written in the compute dtype (in place over the logits, or into fresh buffers).

Triton language features relied on, all present since Triton 2.1 (the GPU machines run 3.6, the CPU tests
3.8's interpreter): ``triton.jit`` (kernels and inlined helpers returning tuples), ``tl.constexpr`` parameters
and constexpr ``if``, ``tl.program_id``, ``tl.arange``, ``tl.full``, ``tl.zeros``, ``tl.load`` / ``tl.store``
with ``mask`` and ``other``, ``tl.max`` / ``tl.min`` / ``tl.sum`` along an axis, ``tl.maximum`` /
``tl.minimum``, ``tl.exp``, ``tl.log``, ``tl.where``, ``.to(dtype)``, pointer ``.dtype.element_ty``, and
``range`` loops with runtime bounds.  Not used: ``tl.dot`` (the products stay cuBLAS's), ``tl.argmax`` (its
tie-break argument is recent; first-occurrence argmax is a ``tl.min`` over equal columns), autotuning, block
pointers, tensor descriptors, inline assembly.
"""

from __future__ import annotations

import triton
import triton.language as tl

#: Rows of the statistics tensor ``[STATS, rows]`` that :func:`soft_stats_kernel` fills: log-sum-exp of z,
#: of z / T and of z_p / T, log alpha, s / alpha, KL(p || q) and the label's cross-entropy at T = 1.
L_ONE, L_Q, L_P, LOG_ALPHA, RATIO, KL, NLQ = range(7)
STATS = 7
#: Rows of the direction kernel's per-row statistics ``[ROW_STATS, rows]``: per temperature slot j (0, 1)
#: ``3 j + (0, 1, 2)`` = log-sum-exp of z / T_j and of z_p / T_j and log alpha; row 6: log-sum-exp of z.
SLOT_WIDTH = 3
ROW_L_ONE = 6
ROW_STATS = 7
#: Basis of the gradient directions (middle index of the coefficient tensor ``[outputs, BASIS, rows]``):
#: q, u q / alpha and p at temperature slot 0, the same at slot 1, q at T = 1, and e_label.
Q0, W0, P0, Q1, W1, P1, Q_ONE, E_Y = range(8)
BASIS = 8
# the same indices as constexpr globals (the only globals a Triton kernel may read)
_L_ONE, _L_Q, _L_P, _LOG_ALPHA, _RATIO, _KL, _NLQ = (tl.constexpr(i) for i in range(7))
_SLOT1, _ROW_L_ONE = tl.constexpr(SLOT_WIDTH), tl.constexpr(ROW_L_ONE)


@triton.jit
def _acc(x, FP64: tl.constexpr):
    """``x`` in the accumulation dtype: fp64 for fp64 buffers, else fp32."""
    if FP64:
        out = x.to(tl.float64)
    else:
        out = x.to(tl.float32)
    return out


@triton.jit
def _scale(x, inv_t, SCALED: tl.constexpr):
    """``x / T`` as ``x * (1 / T)`` (skipped at T = 1)."""
    if SCALED:
        out = x * inv_t
    else:
        out = x
    return out


@triton.jit
def _rows(n_rows, BLOCK_R: tl.constexpr):
    """This program's rows: indices clamped into range (so every lane computes on real data, nothing
    overflows or turns NaN) and the mask of those that exist (every store uses it)."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    valid = rows < n_rows
    return tl.minimum(rows, n_rows - 1).to(tl.int64), valid


@triton.jit
def _online_max(x, cols, n_cols, m, s, idx, SCALE_SUM: tl.constexpr):
    """One tile into a running max ``m``, sum ``s`` of exp(x - m) and first-occurrence argmax ``idx``
    (masked columns hold -inf). ``SCALE_SUM`` False keeps only the max and argmax."""
    tile = tl.max(x, 1)
    first = tl.min(tl.where(x == tile[:, None], cols[None, :], n_cols), 1)
    idx = tl.where(tile > m, first.to(tl.int64), idx)
    new = tl.maximum(m, tile)
    if SCALE_SUM:
        s = s * tl.exp(m - new) + tl.sum(tl.exp(x - new[:, None]), 1)
    return new, s, idx


@triton.jit
def hard_rows_kernel(
    Z,
    stride_z,
    labels,
    nlq,
    argmax,
    n_rows,
    n_cols,
    BLOCK_R: tl.constexpr,
    BLOCK_V: tl.constexpr,
    WRITE_GRAD: tl.constexpr,
    FP64: tl.constexpr,
):
    """Per row: ``nlq = logsumexp(z) - z[label]``, ``argmax = argmax z`` (first on ties); with
    ``WRITE_GRAD`` the row becomes ``softmax(z) - onehot(label)`` in place, in Z's dtype."""
    rows, valid = _rows(n_rows, BLOCK_R)
    base = Z + rows[:, None] * stride_z
    m = _acc(tl.full([BLOCK_R], float("-inf"), tl.float32), FP64)
    s = _acc(tl.zeros([BLOCK_R], tl.float32), FP64)
    idx = tl.zeros([BLOCK_R], tl.int64)
    for start in range(0, n_cols, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        x = _acc(tl.load(base + cols[None, :], mask=cols[None, :] < n_cols, other=float("-inf")), FP64)
        m, s, idx = _online_max(x, cols, n_cols, m, s, idx, True)
    lse = m + tl.log(s)
    y = tl.load(labels + rows)
    z_y = _acc(tl.load(Z + rows * stride_z + y), FP64)
    tl.store(nlq + rows, lse - z_y, mask=valid)
    tl.store(argmax + rows, idx, mask=valid)
    if WRITE_GRAD:
        for start in range(0, n_cols, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V)
            inside = valid[:, None] & (cols[None, :] < n_cols)
            x = _acc(tl.load(base + cols[None, :], mask=inside, other=0.0), FP64)
            grad = tl.exp(x - lse[:, None]) - tl.where(cols[None, :] == y[:, None], 1.0, 0.0)
            tl.store(base + cols[None, :], grad.to(Z.dtype.element_ty), mask=inside)


@triton.jit
def soft_stats_kernel(
    A,
    B,
    stride_a,
    stride_b,
    labels,
    inv_t_ptr,
    stats,
    stride_s,
    ids,
    stride_i,
    n_rows,
    n_cols,
    BLOCK_R: tl.constexpr,
    BLOCK_V: tl.constexpr,
    SCALED: tl.constexpr,
    WANT_KL: tl.constexpr,
    EXTRAS: tl.constexpr,
    LABELS: tl.constexpr,
    FP64: tl.constexpr,
):
    """Per row of draft logits A against target logits B at temperature T (``1 / T`` at ``inv_t_ptr``):
    ``stats[L_ONE..NLQ]`` and, with ``EXTRAS``, ``ids[0] = argmax A``, ``ids[1] = argmax B``."""
    rows, valid = _rows(n_rows, BLOCK_R)
    base_a = A + rows[:, None] * stride_a
    base_b = B + rows[:, None] * stride_b
    inv_t = _acc(tl.load(inv_t_ptr), FP64)
    minus_inf = _acc(tl.full([BLOCK_R], float("-inf"), tl.float32), FP64)
    zero = _acc(tl.zeros([BLOCK_R], tl.float32), FP64)
    m_q, s_one, s_q, m_p, s_p = minus_inf, zero, zero, minus_inf, zero
    idx_q = tl.zeros([BLOCK_R], tl.int64)
    idx_p = tl.zeros([BLOCK_R], tl.int64)
    # walk 1: maxima, sums of exp and argmaxes of z and z_p (z / T shares z's max: x -> x / T is monotone)
    for start in range(0, n_cols, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        inside = cols[None, :] < n_cols
        x = _acc(tl.load(base_a + cols[None, :], mask=inside, other=float("-inf")), FP64)
        xp = _acc(tl.load(base_b + cols[None, :], mask=inside, other=float("-inf")), FP64)
        new_q, s_one, idx_q = _online_max(x, cols, n_cols, m_q, s_one, idx_q, True)
        if SCALED:
            s_q = s_q * tl.exp(m_q * inv_t - new_q * inv_t) + tl.sum(tl.exp(x * inv_t - (new_q * inv_t)[:, None]), 1)
        m_q = new_q
        new_p, s_unused, idx_p = _online_max(xp, cols, n_cols, m_p, s_p, idx_p, False)
        s_p = s_p * tl.exp(_scale(m_p, inv_t, SCALED) - _scale(new_p, inv_t, SCALED)) + tl.sum(
            tl.exp(_scale(xp, inv_t, SCALED) - _scale(new_p, inv_t, SCALED)[:, None]), 1
        )
        m_p = new_p
    l_one = m_q + tl.log(s_one)
    if SCALED:
        l_q = m_q * inv_t + tl.log(s_q)
    else:
        l_q = l_one
    l_p = _scale(m_p, inv_t, SCALED) + tl.log(s_p)
    # walk 2: log alpha and s / alpha online in log space (shared running max of min(log q, log p)); KL
    top = minus_inf
    s_all, s_u, kl = zero, zero, zero
    for start in range(0, n_cols, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        inside = cols[None, :] < n_cols
        x = _acc(tl.load(base_a + cols[None, :], mask=inside, other=float("-inf")), FP64)
        xp = _acc(tl.load(base_b + cols[None, :], mask=inside, other=float("-inf")), FP64)
        log_q = _scale(x, inv_t, SCALED) - l_q[:, None]
        log_p = _scale(xp, inv_t, SCALED) - l_p[:, None]
        low = tl.minimum(log_q, log_p)
        new = tl.maximum(top, tl.max(low, 1))
        shrink = tl.exp(top - new)
        terms = tl.exp(low - new[:, None])
        s_all = s_all * shrink + tl.sum(terms, 1)
        s_u = s_u * shrink + tl.sum(tl.where(log_q <= log_p, terms, 0.0), 1)
        top = new
        if WANT_KL:
            kl += tl.sum(tl.where(inside, tl.exp(log_p) * (log_p - log_q), 0.0), 1)
    out = stats + rows
    tl.store(out + _L_ONE * stride_s, l_one, mask=valid)
    tl.store(out + _L_Q * stride_s, l_q, mask=valid)
    tl.store(out + _L_P * stride_s, l_p, mask=valid)
    tl.store(out + _LOG_ALPHA * stride_s, top + tl.log(s_all), mask=valid)
    tl.store(out + _RATIO * stride_s, s_u / s_all, mask=valid)
    if WANT_KL:
        tl.store(out + _KL * stride_s, kl, mask=valid)
    if LABELS:
        y = tl.load(labels + rows)
        z_y = _acc(tl.load(A + rows * stride_a + y), FP64)
        tl.store(out + _NLQ * stride_s, l_one - z_y, mask=valid)
    if EXTRAS:
        tl.store(ids + rows, idx_q, mask=valid)
        tl.store(ids + stride_i + rows, idx_p, mask=valid)


@triton.jit
def _coefficient(coef, k, j, stride_k, stride_j, rows):
    return tl.load(coef + k * stride_k + j * stride_j + rows)[:, None]


@triton.jit
def _mix(
    coef,
    k,
    stride_k,
    stride_j,
    rows,
    zero,
    q0,
    w0,
    p0,
    q1,
    w1,
    p1,
    q_one,
    e_y,
    HAS_Q0: tl.constexpr,
    HAS_W0: tl.constexpr,
    HAS_P0: tl.constexpr,
    HAS_Q1: tl.constexpr,
    HAS_W1: tl.constexpr,
    HAS_P1: tl.constexpr,
    HAS_Q_ONE: tl.constexpr,
    HAS_E_Y: tl.constexpr,
):
    """Output ``k``: ``sum_j coef[k, j, row] * basis_j`` over the basis vectors the plan uses."""
    out = zero
    if HAS_Q0:
        out += _coefficient(coef, k, 0, stride_k, stride_j, rows) * q0
    if HAS_W0:
        out += _coefficient(coef, k, 1, stride_k, stride_j, rows) * w0
    if HAS_P0:
        out += _coefficient(coef, k, 2, stride_k, stride_j, rows) * p0
    if HAS_Q1:
        out += _coefficient(coef, k, 3, stride_k, stride_j, rows) * q1
    if HAS_W1:
        out += _coefficient(coef, k, 4, stride_k, stride_j, rows) * w1
    if HAS_P1:
        out += _coefficient(coef, k, 5, stride_k, stride_j, rows) * p1
    if HAS_Q_ONE:
        out += _coefficient(coef, k, 6, stride_k, stride_j, rows) * q_one
    if HAS_E_Y:
        out += _coefficient(coef, k, 7, stride_k, stride_j, rows) * e_y
    return out


@triton.jit
def _slot_basis(x, xp, inv_t, l_q, l_p, log_alpha, SCALED: tl.constexpr, NEED_P: tl.constexpr):
    """``(q, u q / alpha, p)`` of one temperature slot (``p`` and ``u q / alpha`` only with ``NEED_P``;
    otherwise q stands in for them)."""
    log_q = _scale(x, inv_t, SCALED) - l_q[:, None]
    q = tl.exp(log_q)
    w = q
    p = q
    if NEED_P:
        log_p = _scale(xp, inv_t, SCALED) - l_p[:, None]
        p = tl.exp(log_p)
        w = tl.where(log_q <= log_p, tl.exp(log_q - log_alpha[:, None]), 0.0)
    return q, w, p


@triton.jit
def soft_directions_kernel(
    A,
    B,
    stride_a,
    stride_b,
    O0,
    O1,
    O2,
    stride_o0,
    stride_o1,
    stride_o2,
    labels,
    inv_t_ptr,
    row_stats,
    stride_r,
    coef,
    stride_k,
    stride_j,
    n_rows,
    n_cols,
    BLOCK_R: tl.constexpr,
    BLOCK_V: tl.constexpr,
    OUTPUTS: tl.constexpr,
    TWO: tl.constexpr,
    SCALED0: tl.constexpr,
    SCALED1: tl.constexpr,
    NEED_P0: tl.constexpr,
    NEED_P1: tl.constexpr,
    HAS_Q0: tl.constexpr,
    HAS_W0: tl.constexpr,
    HAS_P0: tl.constexpr,
    HAS_Q1: tl.constexpr,
    HAS_W1: tl.constexpr,
    HAS_P1: tl.constexpr,
    HAS_Q_ONE: tl.constexpr,
    HAS_E_Y: tl.constexpr,
    FP64: tl.constexpr,
):
    """``OUTPUTS`` (1-3) gradient directions per row into O0, O1, O2 (which may be A and B themselves:
    each element is read before it is written, by the program that owns its row)."""
    rows, valid = _rows(n_rows, BLOCK_R)
    base_a = A + rows[:, None] * stride_a
    base_b = B + rows[:, None] * stride_b
    inv0 = _acc(tl.load(inv_t_ptr), FP64)
    inv1 = _acc(tl.load(inv_t_ptr + 1), FP64)
    stats = row_stats + rows
    l_q0 = _acc(tl.load(stats), FP64)
    l_p0 = _acc(tl.load(stats + stride_r), FP64)
    la0 = _acc(tl.load(stats + 2 * stride_r), FP64)
    l_q1 = _acc(tl.load(stats + _SLOT1 * stride_r), FP64)
    l_p1 = _acc(tl.load(stats + (_SLOT1 + 1) * stride_r), FP64)
    la1 = _acc(tl.load(stats + (_SLOT1 + 2) * stride_r), FP64)
    l_one = _acc(tl.load(stats + _ROW_L_ONE * stride_r), FP64)
    y = rows
    if HAS_E_Y:
        y = tl.load(labels + rows)
    zero = _acc(tl.zeros([BLOCK_R, BLOCK_V], tl.float32), FP64)
    for start in range(0, n_cols, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        inside = valid[:, None] & (cols[None, :] < n_cols)
        x = _acc(tl.load(base_a + cols[None, :], mask=inside, other=0.0), FP64)
        xp = x
        if NEED_P0 or NEED_P1:
            xp = _acc(tl.load(base_b + cols[None, :], mask=inside, other=0.0), FP64)
        q0, w0, p0 = _slot_basis(x, xp, inv0, l_q0, l_p0, la0, SCALED0, NEED_P0)
        q1, w1, p1 = q0, w0, p0
        if TWO:
            q1, w1, p1 = _slot_basis(x, xp, inv1, l_q1, l_p1, la1, SCALED1, NEED_P1)
        q_one = q0
        if HAS_Q_ONE:
            q_one = tl.exp(x - l_one[:, None])
        e_y = q0
        if HAS_E_Y:
            e_y = tl.where(cols[None, :] == y[:, None], 1.0, 0.0)
        out = _mix(coef, 0, stride_k, stride_j, rows, zero, q0, w0, p0, q1, w1, p1, q_one, e_y,
                   HAS_Q0, HAS_W0, HAS_P0, HAS_Q1, HAS_W1, HAS_P1, HAS_Q_ONE, HAS_E_Y)  # fmt: skip
        tl.store(O0 + rows[:, None] * stride_o0 + cols[None, :], out.to(O0.dtype.element_ty), mask=inside)
        if OUTPUTS > 1:
            out = _mix(coef, 1, stride_k, stride_j, rows, zero, q0, w0, p0, q1, w1, p1, q_one, e_y,
                       HAS_Q0, HAS_W0, HAS_P0, HAS_Q1, HAS_W1, HAS_P1, HAS_Q_ONE, HAS_E_Y)  # fmt: skip
            tl.store(O1 + rows[:, None] * stride_o1 + cols[None, :], out.to(O1.dtype.element_ty), mask=inside)
        if OUTPUTS > 2:
            out = _mix(coef, 2, stride_k, stride_j, rows, zero, q0, w0, p0, q1, w1, p1, q_one, e_y,
                       HAS_Q0, HAS_W0, HAS_P0, HAS_Q1, HAS_W1, HAS_P1, HAS_Q_ONE, HAS_E_Y)  # fmt: skip
            tl.store(O2 + rows[:, None] * stride_o2 + cols[None, :], out.to(O2.dtype.element_ty), mask=inside)
