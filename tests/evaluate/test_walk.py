"""The walk predictor's arithmetic (``specforge_dpace.evaluate._walk``): verify steps counted by hand, one
continuation per supervised run, the anchor grid SpecForge samples from, and the stride's fill rule."""

from __future__ import annotations

import pytest
import torch

from specforge_dpace.evaluate._walk import anchor_grid, block_sums, segments, walk_sums


def _grid(length: int, drafted: int, accept: float):
    anchors = torch.arange(0, length - 1).view(1, -1)
    keep = torch.ones_like(anchors, dtype=torch.bool)
    return anchors, keep, torch.full((1, length - 1, drafted), accept, dtype=torch.float64)


@pytest.mark.parametrize(
    "accept,tau",
    [
        (1.0, 3.0),  # two drafted tokens accepted + the bonus at every step: 6 tokens in 2 steps
        (0.0, 1.0),  # nothing accepted: one token per step
        (0.5, None),  # by hand below
    ],
)
def test_the_walk_counts_verify_steps_as_decoding_does(accept, tau):
    """A continuation of 7 tokens (the first is the prefill token), 2 drafted tokens per step, acceptance p
    per slot: S(a) = 1 + P(L=0) S(a+1) + P(L=1) S(a+2) + P(L=2) S(a+3), S(a) = 0 once a >= 6."""
    anchors, keep, probs = _grid(7, 2, accept)
    tokens, steps = walk_sums(anchors, keep, probs, torch.ones(1, 7))
    if tau is None:  # P(L=0)=0.5, P(L=1)=0.25, P(L=2)=0.25
        s = {a: 0.0 for a in range(6, 10)}
        for a in range(5, -1, -1):
            s[a] = 1 + 0.5 * s[a + 1] + 0.25 * s[a + 2] + 0.25 * s[a + 3]
        tau = 6.0 / s[0]
    assert tokens == 6.0 and tokens / steps == pytest.approx(tau, rel=1e-15)


def test_every_supervised_run_is_its_own_continuation():
    """Two runs in one row (a multi-turn sample) walk like two sequences: the unsupervised gap is never a step."""
    mask = torch.tensor([[0, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1]], dtype=torch.float32)
    assert segments(mask[0].tolist()) == [(1, 5), (7, 12)]
    anchors, keep = anchor_grid(mask)
    assert anchors[0][keep[0]].tolist() == [1, 2, 3, 7, 8, 9, 10]
    gen = torch.Generator().manual_seed(0)
    probs = torch.rand(1, anchors.shape[1], 3, generator=gen, dtype=torch.float64)
    together = walk_sums(anchors, keep, probs, mask)
    first = walk_sums(anchors[:, :3], keep[:, :3], probs[:, :3], mask * (torch.arange(12) < 6))
    second = walk_sums(anchors[:, 3:], keep[:, 3:], probs[:, 3:], mask * (torch.arange(12) >= 6))
    assert together[0] == first[0] + second[0] == 3 + 4
    assert together[1] == pytest.approx(first[1] + second[1], rel=1e-15)


def test_the_anchor_grid_is_the_set_specforge_samples_from():
    """SpecForge's sampler, asked for as many anchors as there are positions, returns every valid one."""
    pytest.importorskip("specforge")
    from specforge.algorithms.common.dflash_family_model import OnlineDFlashModel

    gen = torch.Generator().manual_seed(1)
    mask = (torch.rand(4, 30, generator=gen) > 0.3).float()
    mask[2] = 0.0
    mask[2, 5:7] = 1.0
    ours, keep = anchor_grid(mask)
    model = OnlineDFlashModel.__new__(OnlineDFlashModel)
    model.num_anchors = 30
    theirs, their_keep = OnlineDFlashModel._sample_anchor_positions(model, 30, mask, torch.device("cpu"))
    for b in range(4):
        assert ours[b][keep[b]].tolist() == theirs[b][their_keep[b]].tolist()


def test_a_stride_evaluates_every_kth_anchor_and_fills_the_rest_token_by_token():
    """Anchors 0, 3, 6 of 9 tokens evaluated, 3 drafted slots; an anchor in between takes, for each token t of
    its block, that token's acceptance in the block of the last evaluated anchor before t."""
    mask = torch.ones(1, 9)
    anchors, keep = anchor_grid(mask, stride=3)
    assert anchors[0][keep[0]].tolist() == [0, 3, 6]
    evaluated = torch.tensor([[[1.0, 1.0, 0.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0]]], dtype=torch.float64)
    filled = {  # position -> its block's slots (tokens t = a + 1 .. a + 3), by hand
        0: [1, 1, 0],
        1: [1, 0, 0],  # t=2: anchor 0 slot 2; t=3: anchor 0 slot 3; t=4: anchor 3 slot 1
        2: [0, 0, 1],
        3: [0, 1, 1],
        4: [1, 1, 1],  # t=5, 6: anchor 3 slots 2, 3; t=7: anchor 6 slot 1
        5: [1, 1, 1],
        6: [1, 1, 0],
        7: [1, 0, 0],  # t=8: anchor 6 slot 2; t=9 is past the end
    }
    # walk: 0 accepts 2 -> 3 accepts 0 -> 4 accepts 3 -> 8, the last token: 3 steps for 8 tokens
    assert walk_sums(anchors, keep, evaluated, mask, stride=3) == (8.0, 3.0)
    full, every = anchor_grid(mask)
    by_hand = torch.tensor([[filled[a] for a in range(8)]], dtype=torch.float64)
    assert walk_sums(full, every, by_hand, mask) == (8.0, 3.0)
    with pytest.raises(ValueError, match="stride 0 is invalid; accepted: an int >= 1"):
        anchor_grid(mask, stride=0)
    wide, wide_keep = anchor_grid(mask, stride=4)
    with pytest.raises(ValueError, match="anchor stride 4 is larger than the 3 tokens a block drafts"):
        walk_sums(wide, wide_keep, evaluated[:, :2], mask, stride=4)


def test_block_sums_average_one_plus_the_expected_accepted_length():
    keep = torch.tensor([[True, True, False]])
    valid = torch.tensor([[[True, True], [True, False], [True, True]]])
    probs = torch.tensor([[[0.5, 0.5], [1.0, 0.0], [1.0, 1.0]]], dtype=torch.float64)
    assert block_sums(keep, probs, valid) == (1.75 + 2.0, 2.0)
