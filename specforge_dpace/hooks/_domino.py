"""``OnlineDominoModel`` with the plugin objective (SpecForge's unified runtime).

SpecForge's Domino loss (``forward`` + ``_domino_objective_chunk_terms``) is
``(1 - lambda_base) * CE_final + lambda_base * CE_base``: the decayed, weighted-mean cross-entropy on
the GRU-corrected (final) logits and on the base logits ``lm_head(h)``, ``lambda_base`` scheduled by
``DominoTrainStrategy``.  With a plugin ``loss_type`` the patched ``forward`` keeps everything of
that but the final term:

* replaced: ``CE_final`` becomes the objective on the final logits, with the validity mask *before*
  decay (``eval_weight_mask``: block kept, label in the sequence and in the loss mask, slot 0 unless
  ``shift_label``) and ``correct`` = final argmax == label; ``dflash`` terms take ``gamma`` from
  ``loss_decay_gamma`` unless the spec sets it.  With ``shift_label`` slot 0 is supervised and the
  objective sees the masked anchor column of :mod:`._first_slot` (``dflash(gamma)`` then decays as
  Domino does, from the first supervised slot).
* SpecForge's: anchors, labels, the GRU head, ``CE_base`` with Domino's decayed weights and its
  ``1e-6``-guarded mean, ``lambda_base``, and the telemetry (``final_loss`` is the objective's value,
  ``base_loss``, ``base_accuracy``, ``accept_len``, ``base_accept_len``, ``lambda_base``).

Soft-label objectives read p from the target's last hidden state (``target_last_hidden_states``,
``[B, S, H]``, post final norm), slot k's p from ``h_last[a + label_start + k - 1]``, through the
frozen target head, against the final logits.

Normalization: Domino reports no loss terms (``DominoTrainStrategy`` returns only the loss), so
SpecForge's trainer back-propagates this micro-batch's loss divided by the accumulation steps and
FSDP averages gradients over ranks: each micro-batch and rank counts equally, with the objective
normalized inside its micro-batch (as upstream Domino does with its own loss).  Plugin acceptance
metrics (``sim_tau``, ``surrogate``, ``accept_pos_k``, soft metrics, ``loss[term]``) join Domino's
scalar metrics as per-micro-batch ratios.

``loss_type`` unset, or ``dflash`` (optionally ``dflash(gamma=...)``, Domino's own decay), runs
SpecForge's code itself.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F

from ._blocks import MISSING_TARGET_HIDDEN, align_target_hidden, assemble_outputs
from ._family import MARKER, make_init, objective_terms, plan_of, ratio_scalars, soft_stats
from ._patching import PatchSet

Tensor = torch.Tensor


def chunk_terms(
    model: Any,
    objective: Any,
    hidden: Tensor,
    prev_ids: Tensor,
    target_ids: Tensor,
    weight_mask: Tensor,
    eval_weight_mask: Tensor,
    target_hidden: Tensor = None,
) -> tuple[Tensor, ...]:
    """Additive terms of one block slice: ``base_num, base_den, base_correct_num, accept_num,
    base_accept_num, accept_den``, then the objective's terms (``_blocks.objective_chunk_terms`` order)."""
    from specforge.algorithms.common.dflash_family_model import compute_accept_len

    batch_size, num_blocks, block_size, hidden_size = hidden.shape
    base_logits = model.lm_head(hidden.reshape(batch_size, num_blocks * block_size, hidden_size)).reshape(
        batch_size, num_blocks, block_size, -1
    )
    final_logits = model._apply_domino_head(
        base_logits4d=base_logits, hidden4d=hidden, prev_ids=prev_ids, target_ids=target_ids
    )
    vocab = final_logits.shape[-1]
    final_ce = F.cross_entropy(final_logits.reshape(-1, vocab), target_ids.reshape(-1), reduction="none").reshape_as(
        target_ids
    )
    base_ce = F.cross_entropy(base_logits.reshape(-1, vocab), target_ids.reshape(-1), reduction="none").reshape_as(
        target_ids
    )
    base_num = (base_ce * weight_mask).sum()
    base_den = weight_mask.sum()
    soft = None
    if getattr(objective, "needs_target", False):
        with torch.no_grad():
            target_logits = model.lm_head(target_hidden.reshape(batch_size, num_blocks * block_size, -1)).reshape_as(
                final_logits
            )
        soft = soft_stats(objective, final_logits, target_logits)
    with torch.no_grad():
        predicted_ids = final_logits.argmax(dim=-1)
        correct = predicted_ids == target_ids
    terms = objective_terms(
        objective, final_ce, target_ids, eval_weight_mask, correct, soft, first_slot_supervised=bool(model.shift_label)
    )
    with torch.no_grad():  # SpecForge's Domino telemetry, computed as upstream does
        base_predicted_ids = base_logits.argmax(dim=-1)
        binary = eval_weight_mask > 0.5
        base_correct_num = ((base_predicted_ids == target_ids) & binary).sum().float()
        valid_mask = eval_weight_mask > 0
        accepted = compute_accept_len(predicted_ids, target_ids, valid_mask)
        base_accepted = compute_accept_len(base_predicted_ids, target_ids, valid_mask)
        valid_blocks = valid_mask.any(dim=-1).float()
        accept_num = ((accepted + 1.0) * valid_blocks).sum()
        base_accept_num = ((base_accepted + 1.0) * valid_blocks).sum()
        accept_den = valid_blocks.sum()
    return (base_num, base_den, base_correct_num, accept_num, base_accept_num, accept_den, *terms)


def _make_forward(original: Any, module: Any) -> Any:
    @functools.wraps(original)
    def forward(self, input_ids, hidden_states, loss_mask, lambda_base: float = 0.0, target_last_hidden_states=None):
        """SpecForge's Domino forward; with a plugin objective its final-logits term is that objective
        (soft-label objectives also take ``target_last_hidden_states`` ``[B, S, H]``)."""
        plan = plan_of(self)
        if plan is None:
            return original(self, input_ids, hidden_states, loss_mask, lambda_base)
        if self.attention_backend == "flex_attention" and not module.FLEX_ATTENTION_AVAILABLE:
            raise ValueError("flex_attention is not available on this device; use sdpa/eager.")
        objective = plan.objective
        bsz, seq_len = input_ids.shape
        device = input_ids.device
        anchor_positions, block_keep_mask, output_hidden = self._forward_draft_blocks(
            input_ids=input_ids, hidden_states=hidden_states, loss_mask=loss_mask
        )
        # Labels and masks exactly as SpecForge's OnlineDominoModel.forward forms them.
        label_start = 1 if self.shift_label else 0
        label_offsets = torch.arange(label_start, label_start + self.block_size, device=device).view(1, 1, -1)
        label_indices = anchor_positions.unsqueeze(-1) + label_offsets
        valid_label_mask = label_indices < seq_len
        safe_target_indices = label_indices.clamp(max=seq_len - 1)
        target_ids = torch.gather(
            input_ids.unsqueeze(1).expand(-1, anchor_positions.size(1), -1), 2, safe_target_indices
        )
        hidden4d, prev_ids = self._build_domino_head_inputs(
            input_ids=input_ids, anchor_positions=anchor_positions, target_ids=target_ids, output_hidden=output_hidden
        )
        weight_mask = block_keep_mask.unsqueeze(-1).expand(-1, -1, self.block_size).float()
        weight_mask = weight_mask * valid_label_mask.float()
        if not self.shift_label:
            pos_in_block = torch.arange(self.block_size, device=device).view(1, 1, -1)
            weight_mask = weight_mask * (pos_in_block > 0).float()
        gathered = torch.gather(loss_mask.unsqueeze(1).expand(-1, anchor_positions.size(1), -1), 2, safe_target_indices)
        weight_mask = weight_mask * gathered
        eval_weight_mask = weight_mask.clone()  # the validity mask, before decay: the objective's mask
        if self.loss_decay_gamma is not None and self.loss_decay_gamma > 0:
            k = torch.arange(self.block_size, device=device).view(1, 1, -1)
            offset = 0 if self.shift_label else 1
            weight_mask = weight_mask * torch.exp(-(k - offset).clamp(min=0).float() / self.loss_decay_gamma)

        sliced = [hidden4d, prev_ids, target_ids, weight_mask, eval_weight_mask]
        if getattr(objective, "needs_target", False):
            if target_last_hidden_states is None:
                raise ValueError(MISSING_TARGET_HIDDEN.format(spec=objective.spec()))
            sliced.append(
                align_target_hidden(
                    target_last_hidden_states.to(hidden4d.dtype), anchor_positions, self.block_size, label_start - 1
                )
            )
        totals = module.checkpointed_chunk_reduce(
            functools.partial(chunk_terms, self, objective), *sliced, chunk_size=self.objective_chunk_blocks, dim=1
        )
        base_num, base_den, base_correct_num, accept_num, base_accept_num, accept_den = totals[:6]
        final_loss, _, ours = assemble_outputs(objective, totals[6:], bsz, acceptance_metrics=plan.acceptance_metrics)
        correct_num, accuracy_denom = totals[8], totals[9]

        base_loss = base_num / (base_den + 1e-6)
        loss = (1.0 - lambda_base) * final_loss + lambda_base * base_loss
        accuracy = correct_num / (accuracy_denom + 1e-6)
        metrics = {
            "final_loss": final_loss.detach(),
            "base_loss": base_loss.detach(),
            "base_accuracy": (base_correct_num / (accuracy_denom + 1e-6)).detach(),
            "accept_len": (accept_num / (accept_den + 1e-6)).detach(),
            "base_accept_len": (base_accept_num / (accept_den + 1e-6)).detach(),
            "lambda_base": torch.tensor(lambda_base, device=loss.device),
            "accuracy_denom": accuracy_denom.detach(),
        }
        metrics.update(ratio_scalars(ours["ratio_metrics"]))
        return loss, accuracy, metrics

    setattr(forward, MARKER, True)
    return forward


def apply(module: Any) -> PatchSet:
    """Patch ``module.OnlineDominoModel``; returns the record that reverts it."""
    cls = module.OnlineDominoModel
    patches = PatchSet(f"{module.__name__}.OnlineDominoModel")
    if getattr(vars(cls).get("__init__"), MARKER, False):
        return patches
    patches.set(cls, "__init__", make_init(vars(cls)["__init__"], "domino"))
    patches.set(cls, "forward", _make_forward(vars(cls)["forward"], module))
    return patches
