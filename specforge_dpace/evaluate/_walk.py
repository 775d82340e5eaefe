"""The walk predictor of tau: expected verify steps over held-out continuations, as decoding walks them.

Input per supervised continuation (a maximal run ``[s, e)`` of the loss mask: one generation whose first
token, at ``s``, comes from the prefill) is, for each anchor ``a`` in ``s .. e-2``, the probability that the
verify step anchored there accepts at least ``j`` drafted tokens, ``P(L(a) >= j)`` for ``j = 1 .. D`` (D =
drafted tokens per step).  Decoding emits ``L + 1`` tokens per step and anchors the next block at
``a + L + 1``, so the expected number of steps still needed from ``a`` is

    S(a) = 1 + sum_l P(L(a) = l) S(a + l + 1),    S(a) = 0 once a >= e - 1 (the last token is out)

and tau = (tokens after the first) / S(s), summed over continuations (token-weighted, as the evaluator's
``tau``).  At T = 0 the acceptance is 0 or 1 and the walk is the greedy decoding's own step count.

Per-position averages (``1 + sum_j P(L(a) >= j)`` over every anchor) weight each position alike; decoding
never anchors inside an accepted run, so they overweight easy stretches (an inspection paradox).

With an anchor stride > 1 only every ``stride``-th anchor of a continuation (from ``s``) was evaluated; an
anchor in between takes the acceptance of the evaluated anchor at or before it (an approximation: the
stride trades exactness for cost; docs/eval-metrics.md measures the error).

Everything here is float64 and additive over continuations, so sums from several processes reduce exactly.
"""

from __future__ import annotations

from typing import Sequence

import torch

Tensor = torch.Tensor


def segments(loss_mask_row: Sequence[float]) -> list[tuple[int, int]]:
    """Maximal runs ``(s, e)`` of supervised positions (``loss_mask > 0.5``) of one sequence."""
    runs, start = [], None
    values = [float(v) > 0.5 for v in loss_mask_row]
    for position, supervised in enumerate(values):
        if supervised and start is None:
            start = position
        elif not supervised and start is not None:
            runs.append((start, position))
            start = None
    if start is not None:
        runs.append((start, len(values)))
    return runs


def anchor_grid(loss_mask: Tensor, stride: int = 1) -> tuple[Tensor, Tensor]:
    """``(anchors [B, N] long, keep [B, N] bool)``: every anchor SpecForge could sample (``loss_mask[a]`` and
    ``loss_mask[a + 1]`` supervised), or every ``stride``-th one of each continuation, sorted; padded
    entries are 0 with ``keep`` False (SpecForge's own padding)."""
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"anchor stride {stride!r} is invalid; accepted: an int >= 1 (1 = every anchor)")
    rows = []
    for row in loss_mask.detach().cpu().tolist():
        rows.append([a for s, e in segments(row) for a in range(s, e - 1, stride)])
    width = max([len(r) for r in rows] + [1])
    anchors = torch.zeros(len(rows), width, dtype=torch.long)
    keep = torch.zeros(len(rows), width, dtype=torch.bool)
    for b, row in enumerate(rows):
        anchors[b, : len(row)] = torch.tensor(row, dtype=torch.long)
        keep[b, : len(row)] = True
    return anchors.to(loss_mask.device), keep.to(loss_mask.device)


def walk_sums(
    anchors: Tensor, keep: Tensor, at_least: Tensor, loss_mask: Tensor, stride: int = 1
) -> tuple[float, float]:
    """``(tokens, expected verify steps)`` summed over every continuation of the batch.

    ``at_least [B, N, D]``: ``P(L(a) >= j)`` of the block anchored at ``anchors[b, n]`` (rows with ``keep``
    False are ignored).  Rows are decoded in parallel (one torch step per position, from the end back)."""
    at_least = at_least.detach().to("cpu", torch.float64)
    anchors, keep = anchors.detach().cpu(), keep.detach().cpu()
    drafted = at_least.shape[-1]
    rows = []  # (b, s, e) per continuation with at least one token after the first
    for b, row in enumerate(loss_mask.detach().cpu().tolist()):
        rows.extend((b, s, e) for s, e in segments(row) if e - s >= 2)
    if not rows:
        return 0.0, 0.0
    length = loss_mask.shape[1]
    # P(L(a) = l), l = 0 .. D, per continuation row and anchor position (zero outside the continuation)
    exact = torch.zeros(len(rows), length, drafted + 1, dtype=torch.float64)
    padded = torch.cat(  # P(L >= 0) = 1, then P(L >= j), then P(L >= D + 1) = 0
        [torch.ones(*at_least.shape[:2], 1, dtype=torch.float64), at_least, torch.zeros(*at_least.shape[:2], 1)],
        dim=-1,
    )
    for r, (b, s, e) in enumerate(rows):
        evaluated = {int(a): n for n, a in enumerate(anchors[b].tolist()) if bool(keep[b, n]) and s <= a < e - 1}
        sources = [a if a in evaluated else s + ((a - s) // stride) * stride for a in range(s, e - 1)]
        missing = [a for a, source in zip(range(s, e - 1), sources) if source not in evaluated]
        if missing:
            raise ValueError(f"no evaluated anchor for position(s) {missing[:5]} of sequence {b} (stride {stride})")
        probs = padded[b, [evaluated[source] for source in sources]]
        exact[r, s : e - 1] = probs[:, :-1] - probs[:, 1:]
    ends = torch.tensor([e for _, _, e in rows])
    steps = torch.zeros(len(rows), length + drafted + 2, dtype=torch.float64)
    offsets = torch.arange(1, drafted + 2)
    for a in range(length - 2, -1, -1):
        following = steps[:, a + offsets] * ((a + offsets).unsqueeze(0) < (ends - 1).unsqueeze(1))
        inside = exact[:, a].sum(dim=-1) > 0  # positions of a continuation (its P(L = l) sum to 1)
        steps[:, a] = torch.where(inside, 1.0 + (exact[:, a] * following).sum(dim=-1), torch.zeros(()))
    tokens = float(sum(e - 1 - s for _, s, e in rows))
    total = float(sum(steps[r, s] for r, (_, s, _) in enumerate(rows)))
    return tokens, total


def block_sums(keep: Tensor, at_least: Tensor, valid: Tensor) -> tuple[float, float]:
    """``(sum over blocks with a supervised slot of 1 + sum_j P(L >= j), number of such blocks)``: the
    per-position average the training metrics use (``sim_tau``, ``soft_tau``)."""
    blocks = keep & valid.any(dim=-1)
    per_block = 1.0 + at_least.to(torch.float64).sum(dim=-1)
    return float(per_block[blocks].sum()), float(blocks.sum())


__all__ = ["anchor_grid", "block_sums", "segments", "walk_sums"]
