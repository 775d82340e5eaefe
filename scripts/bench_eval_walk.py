#!/usr/bin/env python
"""What the walk predictors add to SpecForge's evaluation: seconds per eval batch, side by side.

Per batch of eval sequences, SpecForge's evaluator runs the training model's forward in eval mode
(``num_anchors`` random anchors per sequence, the objective in ``objective_chunk_blocks`` chunks).  With the
plugin, ``TrainerController.evaluate`` also runs the teacher-forced per-anchor pass
(``specforge_dpace.evaluate._teacher_forced``): every anchor (or every ``stride``-th), blocks drafted
``num_anchors`` at a time, logits ``objective_chunk_blocks`` blocks at a time, the walk in float64 on the CPU.
The table times both on the same model and batch (real SpecForge ``OnlineDFlashModel`` / ``OnlineDSparkModel``
around a randomly initialised draft of the given sizes), cases rotated, medians of ``--repeats``, and reports
the pass's time as a multiple of SpecForge's own eval forward.

  python scripts/bench_eval_walk.py                      # CPU defaults (a minute on two cores)
  python scripts/bench_eval_walk.py --device cuda --hidden 4096 --vocab 151936 --seq-len 2048 --block 16

The ratio grows with the anchors per sequence over ``num_anchors`` (SpecForge samples ``num_anchors``; the
pass drafts at every one of the ``seq_len - 1`` anchors) and with the temperature walks (two extra
vocabulary-wide passes per slot: the target's logits and the soft statistics).
"""

from __future__ import annotations

import argparse
import statistics
import time


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(args, method: str):
    import torch

    from specforge_dpace.evaluate import tiny_draft, tiny_target

    target = tiny_target(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_hidden_layers=3,
        num_attention_heads=args.heads,
        num_key_value_heads=max(1, args.heads // 4),
        head_dim=args.hidden // args.heads,
        max_position_embeddings=max(4096, 2 * args.seq_len),
        dtype=getattr(torch, args.dtype),
    )
    draft = tiny_draft(target, block_size=args.block, target_layer_ids=[0, 1], method=method)
    from specforge.algorithms.common import dflash_family_model as family

    common = dict(
        draft_model=draft,
        target_lm_head=target.get_output_embeddings(),
        target_embed_tokens=target.get_input_embeddings(),
        mask_token_id=args.vocab - 1,
        block_size=args.block,
        attention_backend="sdpa",
        num_anchors=args.num_anchors,
        objective_chunk_blocks=args.chunk,
    )
    model = family.OnlineDSparkModel(**common) if method == "dspark" else family.OnlineDFlashModel(**common)
    device = __import__("torch").device(args.device)
    model = model.to(device).eval()
    gen = __import__("torch").Generator().manual_seed(0)
    dtype = getattr(torch, args.dtype)
    batch = {
        "input_ids": torch.randint(0, args.vocab - 1, (args.batch, args.seq_len), generator=gen).to(device),
        "hidden_states": torch.randn(args.batch, args.seq_len, 2 * args.hidden, generator=gen).to(device, dtype),
        "loss_mask": torch.ones(args.batch, args.seq_len, device=device),
        "target_last_hidden_states": torch.randn(args.batch, args.seq_len, args.hidden, generator=gen).to(
            device, dtype
        ),
    }
    return model, batch


def cases(args, method: str, model, batch):
    import torch

    from specforge_dpace.evaluate._teacher_forced import teacher_forced_pass

    upstream_args = {k: batch[k] for k in ("input_ids", "hidden_states", "loss_mask")}
    if method == "dspark":
        upstream_args["target_last_hidden_states"] = batch["target_last_hidden_states"]

    def upstream():
        with torch.no_grad():
            model(**upstream_args)

    def walk(stride: int, temperatures):
        def run():
            teacher_forced_pass(
                model,
                batch["input_ids"],
                batch["hidden_states"],
                batch["loss_mask"],
                batch["target_last_hidden_states"] if temperatures else None,
                temperatures=temperatures,
                anchor_stride=stride,
            )

        return run

    out = {"SpecForge eval forward": upstream}
    for stride in args.strides:
        out[f"walk T0, stride {stride}"] = walk(stride, ())
        out[f"walk T0 + T1, stride {stride}"] = walk(stride, (1.0,))
    return out


def measure(args, runs: dict, device) -> dict:
    names = list(runs)
    for fn in runs.values():  # warm-up
        fn()
    times = {name: [] for name in names}
    for rep in range(args.repeats):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:  # rotated order
            _sync(device)
            start = time.perf_counter()
            runs[name]()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="dflash,dspark", help="comma-separated: dflash, dspark")
    parser.add_argument("--hidden", type=int, default=256, help="hidden size of target and draft (default 256)")
    parser.add_argument("--heads", type=int, default=4, help="attention heads (default 4)")
    parser.add_argument("--vocab", type=int, default=32000, help="vocabulary size (default 32000)")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per eval sequence, all supervised (512)")
    parser.add_argument("--batch", type=int, default=1, help="sequences per eval batch (default 1)")
    parser.add_argument("--block", type=int, default=16, help="block size K (default 16)")
    parser.add_argument("--num-anchors", type=int, default=512, help="training.num_anchors (default 512)")
    parser.add_argument("--chunk", type=int, default=128, help="training.objective_chunk_blocks (default 128)")
    parser.add_argument("--strides", type=int, nargs="+", default=[1, 4], help="anchor strides (default 1 4)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions per case (default 5)")
    parser.add_argument("--dtype", default="float32", help="model dtype (default float32; bfloat16 on a GPU)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    import torch

    from specforge_dpace.report import format_table

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    for method in args.methods.split(","):
        model, batch = build(args, method)
        medians = measure(args, cases(args, method, model, batch), device)
        base = medians["SpecForge eval forward"]
        for name, seconds in medians.items():
            rows.append({"method": method, "case": name, "seconds": seconds, "x SpecForge eval": seconds / base})
    title = (
        f"eval cost per batch ({args.device}, {args.dtype}): batch {args.batch} x {args.seq_len} tokens, hidden "
        f"{args.hidden}, V {args.vocab}, K {args.block}, num_anchors {args.num_anchors}, chunk {args.chunk}; "
        f"medians of {args.repeats}"
    )
    print(format_table(rows, title=title, floatfmt=".3f"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
