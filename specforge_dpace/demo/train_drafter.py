"""Train one tiny DFlash-family drafter with one objective through the real SpecForge training
model of its method (``OnlineDFlashModel``, ``OnlineDominoModel`` or ``OnlineDSparkModel``, the
unified runtime), with the plugin installed so any registered objective or composite spec is
accepted as ``loss_type``.

The target's embeddings and LM head are shared and frozen (as in SpecForge); only the draft's
layers, ``fc``, ``hidden_norm`` and ``norm`` train.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional, Sequence

from ._util import progress


@dataclass
class DrafterConfig:
    block_size: int = 8
    num_hidden_layers: int = 1
    steps: int = 300
    batch_size: int = 8
    lr: float = 2e-3
    warmup: int = 20
    num_anchors: int = 32
    weight_decay: float = 0.0
    seed: int = 0
    method: str = "dflash"  # "domino" or "dspark": the same model family with the method's draft head
    # Domino only: the GRU-uncorrected prefix; 1 is the only value SGLang 0.5.23 serves (dflash_utils.py:779)
    pure_draft_prefix_len: int = 1

    def key_fields(self) -> dict:
        """The fields that identify a drafter (``method`` only when not DFlash, so DFlash keys stay as they were;
        ``pure_draft_prefix_len`` only for Domino)."""
        from dataclasses import asdict

        fields = asdict(self)
        if fields["method"] == "dflash":
            del fields["method"]
        if self.method != "domino":
            del fields["pure_draft_prefix_len"]
        return fields

    def head(self) -> Optional[dict]:
        """The draft head fields over ``tiny_draft``'s defaults (Domino's prefix; DSpark trains with its
        confidence head, which SGLang 0.5.23 loads in its ragged-verify modes)."""
        if self.method == "domino":
            return {"pure_draft_prefix_len": int(self.pure_draft_prefix_len), "shift_label": False}
        return None


def resolve_eval_sampling(convention: str, method: str, draft_sampling: Optional[str]) -> str:
    """The evaluator's proposal mode at T > 0 under ``convention`` for ``method`` (None = its default)."""
    from specforge_dpace.evaluate._speculative import decoding_for, resolve_draft_sampling

    return resolve_draft_sampling(decoding_for(convention, method), draft_sampling, convention, method)


def build_drafter(target, config: DrafterConfig, target_layer_ids: Sequence[int], mask_token_id: int):
    """A fresh SpecForge draft model of ``config.method`` whose shapes copy the target (same seed = same init)."""
    from specforge_dpace.evaluate import tiny_draft

    return tiny_draft(
        target,
        num_hidden_layers=config.num_hidden_layers,
        block_size=config.block_size,
        target_layer_ids=list(target_layer_ids),
        mask_token_id=mask_token_id,
        seed=config.seed,
        method=config.method,
        head=config.head(),
    )


def _training_model(draft, target, objective, config: "DrafterConfig", mask_token_id, loss_options):
    """The method's SpecForge training model around ``draft`` (target head and embeddings frozen)."""
    from specforge.algorithms.common import dflash_family_model as family

    common = dict(
        draft_model=draft,
        target_lm_head=target.get_output_embeddings(),
        target_embed_tokens=target.get_input_embeddings(),
        mask_token_id=mask_token_id,
        block_size=config.block_size,
        attention_backend="sdpa",
        num_anchors=config.num_anchors,
        loss_type=objective,
        loss_options=loss_options,
    )
    if config.method == "domino":
        return family.OnlineDominoModel(**common, shift_label=bool(getattr(draft, "shift_label", False)))
    if config.method == "dspark":
        return family.OnlineDSparkModel(**common)
    return family.OnlineDFlashModel(**common)


def _domino_lambda_base(step: int, steps: int) -> float:
    """SpecForge's own Domino schedule (``linear_lambda_base`` with its defaults: start 1, decay over half)."""
    from specforge.training.strategies.base import linear_lambda_base

    return float(linear_lambda_base(step, steps, 1.0, 0.5))


def _lr(step: int, config: DrafterConfig) -> float:
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    frac = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))


def train_drafter(
    target,
    input_ids,
    loss_mask,
    features,
    objective: str,
    config: DrafterConfig,
    *,
    target_layer_ids: Sequence[int],
    mask_token_id: int,
    loss_options: Optional[dict] = None,
    show_progress: bool = True,
    target_last_hidden_states=None,
    allow_non_finite: bool = False,
):
    """Train a drafter on captured ``features``; returns ``(draft_model, log)``.

    Batches are drawn with a generator seeded by ``config.seed`` and the model's anchor
    sampling uses the global torch RNG, seeded here, so the same seed gives the same drafter
    (the objective changes only the loss). Soft-label objectives also read
    ``target_last_hidden_states [N, S, H]``, captured with the features.  A non-finite loss or
    gradient stops training (``_finite.NonFiniteTraining``, naming the objective and step) unless
    ``allow_non_finite``, which records the steps in ``log["non_finite_steps"]`` instead."""
    from .._finite import checked_by_caller

    with _plugin_installed(), checked_by_caller():  # the loop below checks every step (and names it)
        return _train(
            target,
            input_ids,
            loss_mask,
            features,
            objective,
            config,
            target_layer_ids=target_layer_ids,
            mask_token_id=mask_token_id,
            loss_options=loss_options,
            show_progress=show_progress,
            target_last_hidden_states=target_last_hidden_states,
            allow_non_finite=allow_non_finite,
        )


@contextmanager
def _plugin_installed():
    """The plugin's hooks for the duration; the process is left as found (tests of the hooks share it)."""
    import specforge_dpace

    was_installed = specforge_dpace.is_installed()
    specforge_dpace.install()
    try:
        yield
    finally:
        if not was_installed:
            specforge_dpace.uninstall()


def _train(target, input_ids, loss_mask, features, objective, config, **kwargs):
    """The training loop proper (the plugin is installed by the caller)."""
    target_layer_ids, mask_token_id = kwargs["target_layer_ids"], kwargs["mask_token_id"]
    loss_options, show_progress = kwargs["loss_options"], kwargs["show_progress"]
    target_last_hidden_states = kwargs["target_last_hidden_states"]
    import torch

    from .._finite import check_step

    draft = build_drafter(target, config, target_layer_ids, mask_token_id).float()
    for p in target.parameters():
        p.requires_grad_(False)
    model = _training_model(draft, target, objective, config, mask_token_id, loss_options)
    if config.method == "dspark" and target_last_hidden_states is None:
        raise ValueError("method 'dspark' trains against the target's distribution: pass target_last_hidden_states")
    params = [p for p in draft.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    draft.train()
    n = input_ids.shape[0]
    log = {"loss": [], "acc": []}
    non_finite: list[dict] = []
    t0 = time.perf_counter()
    bar = progress(range(config.steps), desc=f"train {objective}", enabled=show_progress, unit="step")
    for step in bar:
        idx = torch.randint(0, n, (min(config.batch_size, n),), generator=generator)
        for group in optimizer.param_groups:
            group["lr"] = _lr(step, config)
        extra = (
            {} if target_last_hidden_states is None else {"target_last_hidden_states": target_last_hidden_states[idx]}
        )
        if config.method == "domino":  # SpecForge's schedule of the base-logits weight (1 -> 0 over half the run)
            extra["lambda_base"] = _domino_lambda_base(step, config.steps)
        loss, acc, _ = model(input_ids[idx], features[idx], loss_mask[idx], **extra)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        problem = check_step(
            objective,
            f"step {step + 1} of {config.steps} (lr {_lr(step, config):.3g})",
            loss=loss,
            grad_norm=grad_norm,
            allow=kwargs["allow_non_finite"],
            hint="Lower --lr, or pass --allow-non-finite to train on anyway (the steps are recorded)",
        )
        if problem is not None:
            non_finite.append({"step": step + 1, "problem": problem})
        optimizer.step()
        log["loss"].append(float(loss.detach()))
        log["acc"].append(float(acc.detach()))
        if show_progress and step % 10 == 0:
            window = log["acc"][-20:]
            bar.set_postfix(acc=f"{sum(window) / len(window):.3f}")
    draft.eval()
    tail = max(1, min(20, len(log["acc"])))
    summary = {
        "objective": objective,
        "method": config.method,
        "canonical_loss_type": str(model.loss_type),
        "steps": config.steps,
        "train_s": time.perf_counter() - t0,
        "final_loss": sum(log["loss"][-tail:]) / tail,
        "final_train_acc": sum(log["acc"][-tail:]) / tail,
        "loss_curve": log["loss"][:: max(1, config.steps // 50)],
    }
    if non_finite:  # only with allow_non_finite: what the user chose to train through
        summary["non_finite_steps"] = non_finite
    return draft, summary
