#!/usr/bin/env python
"""What the grad_share metrics cost: one plain-path micro-batch of a composite with and without them.

Times the plugin's chunk terms (the objective, its metrics and, with ``share_blocks`` > 0, the Gram
matrix of the sampled blocks) plus reduce and backward, on random ``[B, N, K, H]`` hidden states through
a random ``[V, H]`` head, side by side per composite: ``share_blocks=0`` (loss_share only) against the
sampled ``grad_share``.  CPU time of this process (``time.process_time``), so other load on the machine
moves the figures little; the best of ``--reps`` repetitions.

    python scripts/bench_share_metrics.py                       # V=32000, H=512, B=2, N=64, K=16
    python scripts/bench_share_metrics.py --share-blocks 16 32 --vocab 151936
"""

from __future__ import annotations

import argparse
import time

DEFAULT_SPECS = ("dflash(gamma=10) + 0.3*first-error-focal + 40*chain", "dpace + 0.5*lk-lambda")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--specs", nargs="+", default=list(DEFAULT_SPECS), metavar="SPEC", help="composites to time")
    p.add_argument("--share-blocks", type=int, nargs="+", default=[16, 32], help="sampled blocks to compare with 0")
    p.add_argument("--vocab", type=int, default=32000, help="V (default 32000)")
    p.add_argument("--hidden", type=int, default=512, help="H (default 512)")
    p.add_argument("--batch", type=int, default=2, help="B, sequences per micro-batch (default 2)")
    p.add_argument("--blocks", type=int, default=64, help="N, blocks per sequence (default 64)")
    p.add_argument("--block-size", type=int, default=16, help="K (default 16)")
    p.add_argument("--reps", type=int, default=3, help="repetitions per cell; the best is shown (default 3)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = p.parse_args(argv)
    for name in ("vocab", "hidden", "batch", "blocks", "block_size", "reps", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if any(b < 1 for b in args.share_blocks):
        p.error(f"--share-blocks must be >= 1 each, got {args.share_blocks}")
    return args


def main(argv=None) -> int:
    import torch

    from specforge_dpace.hooks._blocks import objective_chunk_terms
    from specforge_dpace.losses import build_loss
    from specforge_dpace.losses._shares import sample_blocks
    from specforge_dpace.report import format_table

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    B, N, K, H, V = args.batch, args.blocks, args.block_size, args.hidden, args.vocab
    head = torch.nn.Linear(H, V, bias=False).requires_grad_(False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(V, H, generator=gen) / H**0.5)
    hidden = torch.randn(B, N, K, H, generator=gen).requires_grad_(True)
    states = hidden.detach() + 0.5 * torch.randn(B, N, K, H, generator=gen)
    target = torch.randint(0, V, (B, N, K), generator=gen)
    mask = torch.ones(B, N, K)
    mask[..., 0] = 0.0

    def cpu_seconds(objective, budget: int) -> float:
        chosen = sample_blocks(B, N, budget)
        best = float("inf")
        for _ in range(args.reps):
            start = time.process_time()
            totals = objective_chunk_terms(objective, head, hidden, target, mask, states, chosen)
            objective.reduce(totals[0], totals[1], B).loss.backward()
            hidden.grad = None
            best = min(best, time.process_time() - start)
        return best

    rows = []
    for spec in args.specs:
        objective = build_loss(spec)
        base = cpu_seconds(objective, 0)
        for budget in args.share_blocks:
            seconds = cpu_seconds(objective, budget)
            rows.append(
                {
                    "composite": spec,
                    "share_blocks": f"{min(budget, B * N)} of {B * N}",
                    "loss_share only, s": f"{base:.3f}",
                    "with grad_share, s": f"{seconds:.3f}",
                    "ratio": f"{seconds / base:.3f}x",
                }
            )
    title = f"plain-path micro-batch, CPU time, V={V}, H={H}, B={B}, N={N}, K={K}, {args.threads} thread(s)"
    print(format_table(rows, title=title))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
