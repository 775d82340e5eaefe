"""``OnlineDSparkModel`` with the plugin objective (SpecForge's unified runtime).

SpecForge's DSpark loss (``_compute_dspark_loss`` + ``_dspark_objective_chunk_terms``) is, with
``W = sum(loss_weights)`` all-reduced over ranks and ``loss_weights = eval_mask * exp(-k/gamma)``::

    world_size * (ce_alpha * sum(w * CE) + l1_alpha * sum(w * L1) + conf_alpha * sum(w * BCE(c, alpha))) / W

where CE is taken on the draft logits *after* the Markov head (``apply_logits_head``), p = softmax of
``lm_head(aligned target hidden)``, ``L1 = sum |q - p| = 2 TV`` and ``alpha = 1 - L1/2`` (detached)
is the confidence head's target.  Its default (0.1 CE + 0.9 L1) is a fixed-weight CE/TV mix; the
plugin's ``lk-lambda`` is the adaptive-weight alternative.

With a plugin ``loss_type`` the patched ``forward`` replaces the token-level part (the CE and L1
terms) by the objective and keeps the rest of SpecForge's DSpark:

* replaced: ``ce_alpha * CE + l1_alpha * L1``.  The objective sees the prefix-valid ``eval_mask``
  (before decay), ``neg_log_q`` = CE of the Markov-corrected logits, ``correct`` = their argmax ==
  label and, for soft-label objectives, soft statistics of those logits against p.  DSpark
  supervises slot 0 (labels ``a + k + 1``), so the objective gets the masked anchor column of
  :mod:`._first_slot`: ``dflash(gamma)`` decays ``exp(-k/gamma)`` from the first drafted token,
  exactly DSpark's decay.  ``dflash`` terms take ``gamma`` from ``loss_decay_gamma`` unless the
  spec sets it.
* reused, not recomputed: the target logits come from one no-grad pass of the frozen head over
  DSpark's own ``_aligned_target_hidden``; the soft statistics (log q, log p, alpha, KL) are formed
  once per temperature the objective reads, and alpha at T = 1 (``sum min(p, q) = 1 - L1/2``) is
  the confidence head's target and the ``tau_probabilistic`` telemetry (for hard objectives it is
  formed without grad, only where DSpark needs p).
* SpecForge's: anchors, labels, the prefix-valid mask, the Markov head, the confidence head and its
  loss ``conf_alpha * sum(loss_weights * BCE(confidence, stopgrad(alpha)))`` over DSpark's own
  ``W``, and DSpark's telemetry (``ce_loss`` and ``l1_loss`` stay as diagnostics of the CE and
  ``2 (1 - alpha)`` with DSpark's weights; the plugin's ``teacher_agreement``, argmax p == label,
  is logged as ``teacher_label_agreement`` since DSpark's own name means argmax q == argmax p).

Normalization: DSpark all-reduces its denominator inside the model and multiplies by the world
size (its strategy reports no loss terms; FSDP averages gradients).  The plugin does the same with
the objective's reported pair: ``world_size * numerator / all_reduce(denominator)``, both
denominators in one collective.  Exact across ranks for a single-term objective (``dflash``, the
soft objectives: weighted sums; the ``dpace*`` names: the global batch size); a composite reports
``(L * D_1, D_1)`` (see :mod:`specforge_dpace.losses._composite`), so across ranks its other terms
are weighted by each rank's share of the first term's denominator; ``lk-lambda``'s lambda is
rank- and micro-batch local.  Each micro-batch of an accumulation window is normalized by itself,
as DSpark's own loss is.

``loss_type`` unset, or ``dflash`` (optionally ``dflash(gamma=...)``, DSpark's own decay), runs
SpecForge's DSpark code itself.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import torch
import torch.nn.functional as F

from ._blocks import TARGET_HIDDEN_KEY, assemble_outputs
from ._family import MARKER, make_init, objective_terms, plan_of, soft_stats
from ._patching import PatchSet

Tensor = torch.Tensor


def _top1_probability(logits: Tensor) -> Tensor:
    """``max softmax(logits)`` without materialising the distribution again."""
    work = logits.float()
    return torch.exp(work.amax(dim=-1) - torch.logsumexp(work, dim=-1))


def chunk_terms(
    model: Any,
    objective: Any,
    hidden: Tensor,
    prev_token_ids: Tensor,
    target_ids: Tensor,
    loss_weights: Tensor,
    eval_mask: Tensor,
    aligned_target_hidden: Optional[Tensor] = None,
) -> tuple[Tensor, ...]:
    """Additive terms of one block slice: ``confidence_num, confidence_error_num, ce_num, l1_num,
    ce_position_num[K], correct_position_num[K], position_den[K], teacher_agreement_num,
    teacher_top1_num, draft_top1_num, tau_num, tau_den``, then the objective's terms."""
    from ..losses import soft_slot_stats

    batch_size, num_blocks, block_size, hidden_size = hidden.shape
    base_logits = model.lm_head(hidden.reshape(batch_size, num_blocks * block_size, hidden_size)).reshape(
        batch_size, num_blocks, block_size, -1
    )
    draft_logits = model.draft_model.apply_logits_head(base_logits, prev_token_ids=prev_token_ids, hidden_states=hidden)
    vocab = draft_logits.shape[-1]
    cross_entropy = F.cross_entropy(
        draft_logits.reshape(-1, vocab), target_ids.reshape(-1), reduction="none"
    ).reshape_as(target_ids)

    soft, at_one, target_logits = None, None, None
    if aligned_target_hidden is not None:
        with torch.no_grad():
            target_logits = model.lm_head(
                aligned_target_hidden.reshape(batch_size, num_blocks * block_size, hidden_size)
            ).reshape_as(draft_logits)
        soft = soft_stats(objective, draft_logits, target_logits)
        at_one = None if soft is None else soft.get(1.0)
        if at_one is None:  # the objective does not read T = 1 (or is hard): DSpark's alpha, without grad
            with torch.no_grad():
                at_one = soft_slot_stats(draft_logits.detach(), 1.0, target_logits=target_logits)
    accept_probability = None if at_one is None else at_one.alpha.detach().clamp(0.0, 1.0)

    with torch.no_grad():
        predicted_ids = draft_logits.argmax(dim=-1)
        correct = predicted_ids == target_ids
    valid = eval_mask.to(torch.float32)
    terms = objective_terms(objective, cross_entropy, target_ids, valid, correct, soft, first_slot_supervised=True)

    zero = cross_entropy.new_zeros((), dtype=torch.float32)
    confidence_num = confidence_error_num = zero
    confidence_pred = model.draft_model.predict_confidence(hidden, prev_token_ids=prev_token_ids)
    if confidence_pred is not None and model.dspark_confidence_head_alpha > 0:
        if accept_probability is None:
            raise ValueError("DSpark confidence loss requires target_last_hidden_states")
        confidence_per_token = F.binary_cross_entropy_with_logits(
            confidence_pred.float(), accept_probability, reduction="none"
        )
        confidence_num = (confidence_per_token * loss_weights).sum()
        confidence_error_num = ((confidence_pred.float().sigmoid() - accept_probability).abs() * loss_weights).sum()

    with torch.no_grad():  # DSpark's telemetry, as SpecForge forms it
        ce_num = (cross_entropy.detach() * loss_weights).sum()
        correct_f = (correct & eval_mask).float()
        ce_position_num = (cross_entropy.detach() * eval_mask).sum(dim=(0, 1))
        correct_position_num = correct_f.sum(dim=(0, 1))
        position_den = eval_mask.float().sum(dim=(0, 1))
        l1_num = teacher_agreement_num = teacher_top1_num = draft_top1_num = tau_num = tau_den = zero
        if accept_probability is not None:
            l1_num = (2.0 * (1.0 - accept_probability) * loss_weights).sum()
            teacher_agreement_num = ((predicted_ids == at_one.teacher_ids).float() * eval_mask).sum()
            teacher_top1_num = (_top1_probability(target_logits) * eval_mask).sum()
            draft_top1_num = (_top1_probability(draft_logits) * eval_mask).sum()
            valid_blocks = eval_mask.any(dim=-1).float()
            expected = (accept_probability * eval_mask).cumprod(dim=-1).sum(dim=-1) + 1.0
            tau_num = (expected * valid_blocks).sum()
            tau_den = valid_blocks.sum()
    return (
        confidence_num,
        confidence_error_num,
        ce_num,
        l1_num,
        ce_position_num,
        correct_position_num,
        position_den,
        teacher_agreement_num,
        teacher_top1_num,
        draft_top1_num,
        tau_num,
        tau_den,
        *terms,
    )


def _global(values: Tensor) -> tuple[Tensor, int]:
    """``values`` summed over ranks (one collective) and the world size, as DSpark does for its denominator."""
    import torch.distributed as dist

    world_size = 1
    if dist.is_available() and dist.is_initialized():
        world_size = dist.get_world_size()
        if world_size > 1:
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values, world_size


def plugin_loss(
    model: Any,
    plan: Any,
    *,
    chunk_reduce: Any,
    output_hidden: Tensor,
    target_ids: Tensor,
    eval_mask: Tensor,
    prev_token_ids: Tensor,
    safe_label_indices: Tensor,
    target_last_hidden_states: Optional[Tensor],
) -> tuple[Tensor, dict]:
    """DSpark's ``_compute_dspark_loss`` with the objective in place of its CE + L1 terms."""
    objective = plan.objective
    batch_size, num_blocks, block_size = target_ids.shape
    hidden_4d = output_hidden.reshape(batch_size, num_blocks, block_size, -1)
    loss_weights = model._dspark_loss_weight_mask(eval_mask)
    local_loss_den = loss_weights.sum()
    confidence_active = (
        model.dspark_confidence_head_alpha > 0 and getattr(model.draft_model, "confidence_head", None) is not None
    )
    aligned = None
    if getattr(objective, "needs_target", False) or confidence_active:
        if target_last_hidden_states is None:
            needs = "its soft-label objective" if getattr(objective, "needs_target", False) else "its confidence loss"
            raise ValueError(
                f"DSpark with loss_type={objective.spec()!r}: {needs} needs {TARGET_HIDDEN_KEY} "
                "(the target's last hidden state, [batch, seq, hidden]); DSpark's data path carries it"
            )
        aligned = model._aligned_target_hidden(target_last_hidden_states, safe_label_indices)
    totals = chunk_reduce(
        functools.partial(chunk_terms, model, objective),
        hidden_4d,
        prev_token_ids,
        target_ids,
        loss_weights,
        eval_mask,
        aligned,
        chunk_size=model.objective_chunk_blocks,
        dim=1,
    )
    (
        confidence_num,
        confidence_error_num,
        ce_num,
        l1_num,
        ce_position_num,
        correct_position_num,
        position_den,
        teacher_agreement_num,
        teacher_top1_num,
        draft_top1_num,
        tau_num,
        tau_den,
    ) = totals[:12]
    ours = totals[12:]
    value_loss, _, plugin = assemble_outputs(objective, ours, batch_size, acceptance_metrics=plan.acceptance_metrics)
    del value_loss
    numerator, denominator = plugin["loss_terms"]
    correct_num, eval_den = ours[2], ours[3]

    dens = torch.stack([denominator.detach().reshape(()).float(), local_loss_den.detach().float()])
    dens, world_size = _global(dens)
    if float(dens[1]) <= 0:
        raise ValueError("DSpark objective has no supervised target tokens")
    loss = world_size * numerator / dens[0] + world_size * model.dspark_confidence_head_alpha * confidence_num / dens[1]

    ratio_metrics = {
        "acc": (correct_num, eval_den),
        "ce_loss": (ce_num, local_loss_den),
        "l1_loss": (l1_num, local_loss_den),
        "confidence_loss": (confidence_num, local_loss_den),
        "confidence_abs_error": (confidence_error_num, local_loss_den),
        "ce_position": (ce_position_num, position_den),
        "accuracy_position": (correct_position_num, position_den),
    }
    if aligned is not None:
        ratio_metrics.update(
            {
                "teacher_agreement": (teacher_agreement_num, eval_den),
                "teacher_top1_prob": (teacher_top1_num, eval_den),
                "draft_top1_prob": (draft_top1_num, eval_den),
                "tau_probabilistic": (tau_num, tau_den),
            }
        )
    for name, pair in plugin["ratio_metrics"].items():
        if name == "acc":
            continue
        ratio_metrics["teacher_label_agreement" if name == "teacher_agreement" else name] = pair
    metrics = {
        "ratio_metrics": {name: (num.detach(), den.detach()) for name, (num, den) in ratio_metrics.items()},
        "accuracy_denom": eval_den.detach(),
    }
    accuracy = correct_num / eval_den.clamp_min(1.0)
    return loss, {"accuracy": accuracy.detach(), **metrics}


def _make_forward(original: Any, module: Any) -> Any:
    @functools.wraps(original)
    def forward(self, input_ids, hidden_states, loss_mask, target_last_hidden_states=None):
        plan = plan_of(self)
        if plan is None:
            return original(self, input_ids, hidden_states, loss_mask, target_last_hidden_states)
        if self.attention_backend == "flex_attention" and not module.FLEX_ATTENTION_AVAILABLE:
            raise ValueError("flex_attention is not available on this device; use sdpa/eager.")
        anchor_positions, block_keep_mask, output_hidden = self._forward_draft_blocks(
            input_ids=input_ids, hidden_states=hidden_states, loss_mask=loss_mask
        )
        target_ids, eval_mask, safe_label_indices = self._build_dspark_labels_and_mask(
            input_ids=input_ids, loss_mask=loss_mask, anchor_positions=anchor_positions, block_keep_mask=block_keep_mask
        )
        anchor_token_ids = torch.gather(input_ids, 1, anchor_positions)
        prev_token_ids = torch.cat([anchor_token_ids.unsqueeze(-1), target_ids[:, :, :-1]], dim=-1)
        loss, metrics = plugin_loss(
            self,
            plan,
            chunk_reduce=module.checkpointed_chunk_reduce,
            output_hidden=output_hidden,
            target_ids=target_ids,
            eval_mask=eval_mask,
            prev_token_ids=prev_token_ids,
            safe_label_indices=safe_label_indices,
            target_last_hidden_states=target_last_hidden_states,
        )
        accuracy = metrics.pop("accuracy")
        return loss, accuracy, metrics

    setattr(forward, MARKER, True)
    return forward


def apply(module: Any) -> PatchSet:
    """Patch ``module.OnlineDSparkModel``; returns the record that reverts it."""
    cls = module.OnlineDSparkModel
    patches = PatchSet(f"{module.__name__}.OnlineDSparkModel")
    if getattr(vars(cls).get("__init__"), MARKER, False):
        return patches
    patches.set(cls, "__init__", make_init(vars(cls)["__init__"], "dspark"))
    patches.set(cls, "forward", _make_forward(vars(cls)["forward"], module))
    return patches
