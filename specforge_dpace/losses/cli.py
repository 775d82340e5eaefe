"""``specforge-dpace losses``: list registered objectives (and optionally try them on a random batch)."""

from __future__ import annotations

import argparse

from .. import _numbers as num

HELP = "list registered objectives, their options and where they come from"
DESCRIPTION = """List every registered objective (built-in or from a distribution's
`specforge_dpace.losses` entry point) with its options and defaults.

Soft-label objectives (lk-alpha, lk-lambda, tv, kl, renyi-half, topk-kl, the soft twin soft-<name>
of every hard objective, soft-<name>(divergence=renyi-half) on Renyi-1/2's per-slot statistic, and
<name>(labels=target), a hard objective trained on the target's argmax) read the target's
distribution p at every slot: in SpecForge they need the target's last hidden state in the
training data (column "needs target hidden").

Objective specs combine them: 'dflash(gamma=10) + 0.3*first-error-focal + 40*chain',
'dpace + 0.5*lk-lambda'; options after ';' belong to the composite: 'dpace + 0.5*lk-lambda;
normalize=true' divides each term by its running magnitude, so the weights are relative.
With --try, evaluate each objective (or the given specs) on a random DFlash block batch
and print value, gradient norm and time:

  specforge-dpace losses --try
  specforge-dpace losses --try 'dpace(alpha=0.3)' 'dpace + 0.3*first-error-focal'"""


#: Logits per tensor of the random batch (B*N*K*V): 256 MiB in fp32; --try holds several such tensors.
TRY_ELEMENTS = 1 << 26


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--try",
        dest="try_specs",
        nargs="*",
        default=None,
        metavar="SPEC",
        help="evaluate objectives on a random [B, N, K] batch and print a table: the given specs, or every "
        "registered objective and a three-term composite when none is given",
    )
    parser.add_argument(
        "--spec",
        action="append",
        default=None,
        metavar="SPEC",
        help="one more spec to try (repeatable; implies --try)",
    )
    parser.add_argument("--batch-size", type=num.BATCH_SIZE, default=4, help="B of the random batch (default 4)")
    parser.add_argument("--blocks", type=num.NUM_ANCHORS, default=64, help="N, blocks per sequence (default 64)")
    parser.add_argument("--block-size", type=num.BLOCK_SIZE, default=16, help="K, slots per block (default 16)")
    parser.add_argument(
        "--vocab",
        type=num.VOCAB,
        default=32,
        help=f"V of the random draft and target logits (default 32; B*N*K*V at most {TRY_ELEMENTS})",
    )
    parser.add_argument("--seed", type=num.SEED, default=0, help="random seed (default 0)")
    parser.add_argument("--json", action="store_true", help="print the listing as JSON")


def _listing_rows():
    from . import available_losses, loss_info

    rows = []
    for name in available_losses():
        info = loss_info(name)
        options = ", ".join(f"{k}={o.default!r}" for k, o in info.options.items()) or "-"
        rows.append(
            {
                "objective": name,
                "options (defaults)": options,
                "needs argmax": info.needs_correct,
                "needs target hidden": info.needs_target,
                "soft twin": "-" if info.needs_target else f"soft-{name}",
                "source": info.source,
                "description": info.description,
            }
        )
    return rows


def try_objectives(specs, batch_size: int, blocks: int, block_size: int, seed: int, vocab: int = 32) -> list[dict]:
    """Value, gradient norm and wall time of each spec on one random batch of draft and target logits."""
    import time

    import torch
    import torch.nn.functional as F

    from . import build_loss, soft_slot_stats
    from ._statistics import soft_extras_at

    gen = torch.Generator().manual_seed(seed)
    shape = (batch_size, blocks, block_size)
    draft = torch.randn(*shape, vocab, generator=gen) * 2.0
    target = draft + torch.randn(*shape, vocab, generator=gen)  # a target the drafter half agrees with
    labels = torch.distributions.Categorical(logits=target).sample()
    mask = (torch.rand(*shape, generator=gen) > 0.1).float()
    mask[..., 0] = 0.0
    rows = []
    for spec in specs:
        objective = build_loss(spec)
        logits = draft.clone().requires_grad_(True)
        start = time.perf_counter()
        neg_log_q = F.cross_entropy(logits.reshape(-1, vocab), labels.reshape(-1), reduction="none").view(shape)
        correct = logits.detach().argmax(dim=-1) == labels
        soft = {
            t: soft_slot_stats(logits, t, target_logits=target, extras=soft_extras_at(objective, t))
            for t in objective.soft_temperatures
        }
        if soft:
            num, den = objective.chunk_terms(neg_log_q, mask, correct, soft=soft)
        else:
            num, den = objective.chunk_terms(neg_log_q, mask, correct)
        value = objective.reduce(num, den, batch_size)
        value.loss.backward()
        elapsed = time.perf_counter() - start
        rows.append(
            {
                "objective": objective.spec(),
                "loss": float(value.loss.detach()),
                "grad norm": float(logits.grad.norm()),
                "reported num": float(value.numerator.detach()),
                "reported den": float(value.denominator.detach()),
                "ms": elapsed * 1e3,
            }
        )
    return rows


def run(args: argparse.Namespace) -> int:
    from ..report import format_table
    from . import available_losses

    asked = num.check_unique([*(args.try_specs or ()), *(args.spec or ())], "objective spec", num.objective_key)
    elements = args.batch_size * args.blocks * args.block_size * args.vocab
    if elements > TRY_ELEMENTS:
        raise ValueError(
            f"--batch-size {args.batch_size} x --blocks {args.blocks} x --block-size {args.block_size} x --vocab "
            f"{args.vocab} = {elements} logits per tensor; accepted: at most {TRY_ELEMENTS} (the random batch holds "
            "several such fp32 tensors)"
        )
    if not asked:  # the listing, unless the user asked about particular specs
        rows = _listing_rows()
        if args.json:
            import json

            print(json.dumps(rows, indent=2))
        else:
            print(format_table(rows, title=f"{len(rows)} registered objectives"))
            print(
                "every hard objective has a soft twin 'soft-<name>': the objective run on -log alpha "
                "(alpha = sum_x min(p, q)) instead of the cross-entropy, or with divergence=renyi-half on "
                "-2 log sum_x sqrt(p q); options: its own plus temperature and divergence. labels=target "
                "trains a hard objective on the target's argmax (needs the target's last hidden state). "
                "Composites take options after ';': normalize=true, normalize_decay (default 0.99)"
            )
    if args.try_specs is not None or asked:
        specs = asked or available_losses() + [
            "soft-dpace",
            "dflash(gamma=10) + 0.3*first-error-focal + 40*chain",
            "dpace + 0.5*lk-lambda",
            "dpace + 0.5*lk-lambda; normalize=true",
            "soft-dpace(divergence=renyi-half)",
            "dflash(labels=target)",
        ]
        shape = f"B={args.batch_size}, N={args.blocks}, K={args.block_size}, V={args.vocab}"
        table = try_objectives(specs, args.batch_size, args.blocks, args.block_size, args.seed, args.vocab)
        if not asked:
            print()
        print(format_table(table, title=f"objectives on a random batch ({shape}, seed {args.seed})"))
    return 0
