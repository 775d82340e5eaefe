"""The walk predictor of tau: expected verify steps over held-out continuations, as decoding walks them.

Input per supervised continuation (a maximal run ``[s, e)`` of the loss mask: one generation whose first
token, at ``s``, comes from the prefill) is, for each anchor ``a`` in ``s .. e-2``, the probability that the
verify step anchored there accepts drafted slot ``j`` (``j = 1 .. D``, D = drafted tokens per step), slots
independent: ``P(L(a) >= j)`` is their product up to j.  Decoding emits ``L + 1`` tokens per step and
anchors the next block at ``a + L + 1``, so the expected number of steps still needed from ``a`` is

    S(a) = 1 + sum_l P(L(a) = l) S(a + l + 1),    S(a) = 0 once a >= e - 1 (the last token is out)

and tau = (tokens after the first) / S(s), summed over continuations (token-weighted, as the evaluator's
``tau``).  At T = 0 the acceptance is 0 or 1 and the walk is the greedy decoding's own step count.

Per-position averages (``1 + sum_j P(L(a) >= j)`` over every anchor) weight each position alike; decoding
never anchors inside an accepted run, so they overweight easy stretches (an inspection paradox).

With an anchor stride > 1 only every ``stride``-th anchor of a continuation (from ``s``) was evaluated.  An anchor
a in between gets, for each token t = a + j of its block, the per-slot acceptance of that token in the block of
the nearest evaluated anchor below it (slot t - x, x the last evaluated anchor before t): acceptance is mostly
a property of the token, and that block drafted it from the closest context.  An approximation (exact at
stride 1); docs/eval-metrics.md measures its error.  Borrowing whole blocks from a neighbouring anchor instead
underestimates tau by 3 to 16 % on the demo's drafters (the block anchored right after a rejection inherits
the rejected token), which is why the fill works token by token.

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


def fill_strided(anchors: Tensor, keep: Tensor, accept: Tensor, loss_mask: Tensor, stride: int) -> tuple:
    """``(positions [R, L], probs [R, L, D])``: per continuation row, the per-slot acceptance of the block at every
    position of the continuation (own block where evaluated, else token by token from the blocks below)."""
    accept = accept.detach().to("cpu", torch.float64)
    drafted = accept.shape[-1]
    if stride > drafted and stride > 1:
        raise ValueError(
            f"anchor stride {stride} is larger than the {drafted} tokens a block drafts: some tokens would be drafted "
            f"by no evaluated block; accepted: a stride in 1 .. {drafted}"
        )
    rows, probs = [], []
    for b, row in enumerate(loss_mask.detach().cpu().tolist()):
        index = {int(a): n for n, a in enumerate(anchors[b].tolist()) if bool(keep[b, n])}
        for s, e in segments(row):
            if e - s < 2:
                continue
            own = torch.zeros(e - 1 - s, drafted, dtype=torch.float64)
            for a in range(s, e - 1):
                if a in index:
                    own[a - s] = accept[b, index[a]]
                    continue
                for j in range(1, drafted + 1):
                    t = a + j
                    if t >= e:
                        break
                    source = s + ((t - 1 - s) // stride) * stride  # the last evaluated anchor before t
                    if source not in index:
                        raise ValueError(f"no evaluated anchor at {source} of sequence {b} (stride {stride})")
                    own[a - s, j - 1] = accept[b, index[source], t - source - 1]
            rows.append((b, s, e))
            probs.append(own)
    return rows, probs


def walk_sums(anchors: Tensor, keep: Tensor, accept: Tensor, loss_mask: Tensor, stride: int = 1) -> tuple[float, float]:
    """``(tokens, expected verify steps)`` summed over every continuation of the batch.

    ``accept [B, N, D]``: the probability that drafted slot j of the block anchored at ``anchors[b, n]`` is
    accepted (0 where the slot is past its continuation); rows with ``keep`` False are ignored.  Continuations
    are decoded in parallel (one torch step per position, from the end back)."""
    rows, probs = fill_strided(anchors.detach().cpu(), keep.detach().cpu(), accept, loss_mask, stride)
    if not rows:
        return 0.0, 0.0
    drafted = accept.shape[-1]
    length = loss_mask.shape[1]
    exact = torch.zeros(len(rows), length, drafted + 1, dtype=torch.float64)  # P(L(a) = l), l = 0 .. D
    for r, ((_, s, e), own) in enumerate(zip(rows, probs)):
        at_least = torch.cat(  # P(L >= 0) = 1, P(L >= j), P(L >= D + 1) = 0
            [torch.ones(own.shape[0], 1, dtype=torch.float64), own.cumprod(dim=-1), torch.zeros(own.shape[0], 1)],
            dim=-1,
        )
        exact[r, s : e - 1] = at_least[:, :-1] - at_least[:, 1:]
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


def block_sums(keep: Tensor, accept: Tensor, valid: Tensor) -> tuple[float, float]:
    """``(sum over blocks with a supervised slot of 1 + sum_j P(L >= j), number of such blocks)``: the
    per-position average the training metrics use (``sim_tau``, ``soft_tau``)."""
    blocks = keep & valid.any(dim=-1)
    per_block = 1.0 + accept.to(torch.float64).cumprod(dim=-1).sum(dim=-1)
    return float(per_block[blocks].sum()), float(blocks.sum())


__all__ = ["anchor_grid", "block_sums", "fill_strided", "segments", "walk_sums"]
