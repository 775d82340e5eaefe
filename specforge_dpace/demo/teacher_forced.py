"""Teacher-forced predictors of tau for the acceptance experiment, on the demo's held-out sequences.

The per-anchor pass and the walk live in :mod:`specforge_dpace.evaluate._teacher_forced` (the same pass
SpecForge's evaluation and ``specforge-dpace evaluate --teacher-forced`` run); this module names its
numbers as the experiment reports them:

- per-position averages (what the plugin logs during training): ``sim_tau`` (greedy), ``surrogate_tau``
  (1 + sum_k prod q of the label), ``soft_tau@T`` (alpha = sum min(p, q): sampled proposals) and
  ``greedy_draft_tau@T`` (p_T(argmax q): argmax proposals verified target-only, SGLang's DFlash at T > 0);
- the walks (``sim_tau_walk``, ``soft_tau_walk@T``, ``greedy_draft_tau_walk@T``): expected verify steps
  over each continuation, counted as decoding counts them (per-position averages overweight the easy
  stretches decoding jumps over).
"""

from __future__ import annotations

from typing import Sequence

from specforge_dpace.evaluate._teacher_forced import SERVING, pass_model, teacher_forced_pass

#: predictor name prefix per pass setting (block average; the walk adds ``_walk``)
_NAMES = {"T0": "sim_tau", "surrogate": "surrogate_tau", "sample": "soft_tau", "greedy_draft": "greedy_draft_tau"}


def predictor_name(setting: str, walk: bool) -> str:
    kind, _, temperature = setting.partition("@")
    name = _NAMES[kind] + ("_walk" if walk else "")
    return f"{name}@{temperature}" if temperature else name


def teacher_forced_metrics(
    target,
    draft,
    held: dict,
    temperatures: Sequence[float],
    *,
    mask_token_id: int,
    block_size: int,
    batch_size: int = 8,
    convention: str = SERVING,
) -> dict:
    """Predictors of tau for ``draft`` on ``held`` (``input_ids``, ``loss_mask``, ``features``,
    ``target_last_hidden_states``), at each temperature in ``temperatures`` (> 0) and greedy."""
    head, embed = target.get_output_embeddings(), target.get_input_embeddings()
    input_ids, loss_mask = held["input_ids"], held["loss_mask"]
    model = pass_model(draft, head, embed, mask_token_id=mask_token_id, block_size=block_size)
    was_training = draft.training
    draft.eval()
    sums = None
    try:
        for start in range(0, input_ids.shape[0], batch_size):
            part = slice(start, start + batch_size)
            sums = teacher_forced_pass(
                model,
                input_ids[part],
                held["features"][part].to(head.weight.dtype),
                loss_mask[part],
                held["target_last_hidden_states"][part],
                temperatures=sorted({float(t) for t in temperatures}),
                blocks_per_forward=input_ids.shape[1],
                convention=convention,
                surrogate=True,
                sums=sums,
            )
    finally:
        draft.train(was_training)
    out = {}
    for setting in sums.settings:
        out[predictor_name(setting, walk=False)] = sums.block(setting)
        if setting != "surrogate":
            out[predictor_name(setting, walk=True)] = sums.walk(setting)
    num, den = sums.agreement
    out["teacher_agreement"] = num / den if den else None
    out["blocks"] = sums.values["T0"][1]
    return out
