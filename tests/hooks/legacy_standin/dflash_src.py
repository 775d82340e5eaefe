"""STAND-IN for ``specforge/core/dflash.py`` of a legacy SpecForge checkout (not SpecForge code).

CI cannot reach SpecForge's git history and the real legacy package imports sglang/triton, so
the legacy hook is tested against this small module.  It reproduces only the contract the hook
relies on, per generation (``write_tree`` rewrites the ``GENERATION`` line):

- ``pre-dpace``     before PR #578: constructor without ``loss_type``/``dpace_alpha``;
                    ``forward -> (loss, accuracy)``; DFlash loss with optional decay gamma.
- ``dpace``         PR #578 (8bd735c3): ``loss_type`` in ``_VALID_LOSS_TYPES`` (the four names) and
                    ``dpace_alpha``; ``forward -> (loss, accuracy)``.
- ``dpace-metrics`` later revisions: ``forward -> (loss, accuracy, {"accuracy_denom": ...})`` and a
                    checkout-only name the registry does not know (like ``vp_drafter``).

Shared contract: ``self._sample_anchor_positions(seq_len, loss_mask, device) -> (anchors, keep)``;
the draft model is called with ``position_ids, noise_embedding, target_hidden, attention_mask``;
logits come from ``self.lm_head``; one ``F.cross_entropy(..., reduction="none")`` over the
flattened ``[B*N*K]`` slots; weight mask = kept block * label inside the sequence * slot > 0 *
loss mask at the label; DFlash = ``sum(w*l) / (sum(w) + 1e-6)``; D-PACE = ``sum(m*W*l) / B``.
The real revisions are checked by the opt-in ``legacy_checkout`` tests (tests/README.md).
"""

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

GENERATION = "dpace-metrics"  # rewritten by write_tree
_HAS_LOSS_TYPE = GENERATION != "pre-dpace"
_RETURNS_METRICS = GENERATION == "dpace-metrics"

if _HAS_LOSS_TYPE:
    _VALID_LOSS_TYPES = {"dflash", "dpace", "dpace-cumulative-confidence-only", "dpace-continuation-value-only"}
    if _RETURNS_METRICS:
        _VALID_LOSS_TYPES.add("checkout-uniform-ce")  # a checkout-only objective


def standin_attention_mask(anchors: torch.Tensor, keep: torch.Tensor, seq_len: int, block_size: int):
    """Boolean ``[B, 1, N*K, S + N*K]``: context strictly before the anchor, own block, kept blocks."""
    num_blocks = anchors.shape[1]
    query_block = torch.arange(num_blocks * block_size, device=anchors.device) // block_size
    kv = torch.arange(seq_len + num_blocks * block_size, device=anchors.device)
    anchor_of_query = anchors.repeat_interleave(block_size, dim=1)  # [B, Q]
    context = (kv.view(1, 1, -1) < seq_len) & (kv.view(1, 1, -1) < anchor_of_query.unsqueeze(-1))
    own_block = (kv >= seq_len) & ((kv - seq_len).div(block_size, rounding_mode="floor") == query_block.view(-1, 1))
    kept = keep.repeat_interleave(block_size, dim=1).unsqueeze(-1)
    return ((context | own_block.unsqueeze(0)) & kept).unsqueeze(1)


class OnlineDFlashModel(nn.Module):
    """Stand-in legacy training wrapper (see the module docstring for what it reproduces)."""

    if _HAS_LOSS_TYPE:

        def __init__(
            self,
            draft_model,
            target_lm_head,
            target_embed_tokens,
            mask_token_id: int,
            block_size: int = 16,
            attention_backend: str = "flex_attention",
            num_anchors: int = 512,
            loss_decay_gamma: Optional[float] = None,
            loss_type: str = "dflash",
            dpace_alpha: float = 0.5,
        ):
            super().__init__()
            if loss_type not in _VALID_LOSS_TYPES:
                raise ValueError(f"loss_type={loss_type!r}; must be one of {sorted(_VALID_LOSS_TYPES)}")
            if not 0.0 <= dpace_alpha <= 1.0:
                raise ValueError(f"dpace_alpha must be in [0, 1], got {dpace_alpha}")
            self._setup(
                draft_model,
                target_lm_head,
                target_embed_tokens,
                mask_token_id,
                block_size,
                attention_backend,
                num_anchors,
                loss_decay_gamma,
            )
            self.loss_type = loss_type
            self.dpace_alpha = dpace_alpha

    else:

        def __init__(
            self,
            draft_model,
            target_lm_head,
            target_embed_tokens,
            mask_token_id: int,
            block_size: int = 16,
            attention_backend: str = "flex_attention",
            num_anchors: int = 512,
            loss_decay_gamma: Optional[float] = None,
        ):
            super().__init__()
            self._setup(
                draft_model,
                target_lm_head,
                target_embed_tokens,
                mask_token_id,
                block_size,
                attention_backend,
                num_anchors,
                loss_decay_gamma,
            )

    def _setup(self, draft, head, embed, mask_token_id, block_size, backend, num_anchors, gamma):
        self.draft_model = draft
        self.lm_head = head
        self.embed_tokens = embed
        self.mask_token_id = mask_token_id
        self.block_size = block_size
        self.attention_backend = backend
        self.num_anchors = num_anchors
        self.loss_decay_gamma = gamma

    def _sample_anchor_positions(self, seq_len: int, loss_mask: torch.Tensor, device):
        """Random sorted anchors among supervised positions that leave room for a block."""
        last = max(seq_len - self.block_size, 0)
        candidates = loss_mask[:, : last + 1] > 0.5
        counts = candidates.sum(dim=1)
        num = min(self.num_anchors, int(counts.max().item()) - 1)
        if num <= 0:
            raise ValueError("sequences too short for one block")
        scores = torch.where(
            candidates, torch.rand(candidates.shape, device=device), torch.full_like(candidates, 2.0, dtype=torch.float)
        )
        order = scores.argsort(dim=1)[:, :num]
        anchors = order.sort(dim=1).values
        keep = torch.arange(num, device=device).unsqueeze(0) < counts.clamp(max=num).unsqueeze(1)
        return torch.where(keep, anchors, torch.zeros_like(anchors)), keep

    def _standin_dpace_weights(self, q: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        factor = torch.where(mask > 0, (1.0 - self.dpace_alpha) * q + self.dpace_alpha, torch.ones_like(q))
        prefix = torch.cumprod(factor, dim=-1)
        if self.loss_type == "dpace-cumulative-confidence-only":
            return prefix
        suffix = (prefix * mask).flip(-1).cumsum(-1).flip(-1)
        if self.loss_type == "dpace":
            return suffix
        return suffix / prefix.clamp_min(torch.finfo(prefix.dtype).tiny)

    def forward(self, input_ids: torch.Tensor, hidden_states: torch.Tensor, loss_mask: torch.Tensor):
        bsz, seq_len = input_ids.shape
        device = input_ids.device
        k = self.block_size
        anchors, keep = self._sample_anchor_positions(seq_len, loss_mask, device)
        num_blocks = anchors.shape[1]

        noise = torch.full((bsz, num_blocks * k), self.mask_token_id, dtype=torch.long, device=device)
        first = torch.gather(input_ids, 1, anchors.clamp(0, seq_len - 1))
        noise[:, ::k] = torch.where(keep, first, torch.full_like(first, self.mask_token_id))
        slot = torch.arange(k, device=device)
        positions = torch.cat(
            [torch.arange(seq_len, device=device).expand(bsz, -1), (anchors.unsqueeze(-1) + slot).reshape(bsz, -1)],
            dim=1,
        )
        hidden = self.draft_model(
            position_ids=positions,
            noise_embedding=self.embed_tokens(noise),
            target_hidden=hidden_states,
            attention_mask=standin_attention_mask(anchors, keep, seq_len, k),
        )
        logits = self.lm_head(hidden)

        label_pos = anchors.unsqueeze(-1) + slot.view(1, 1, -1)
        safe = label_pos.clamp(max=seq_len - 1)
        targets = torch.gather(input_ids.unsqueeze(1).expand(-1, num_blocks, -1), 2, safe)
        mask = keep.unsqueeze(-1).expand(-1, -1, k).float() * (label_pos < seq_len).float()
        mask = mask * (slot.view(1, 1, -1) > 0).float()
        mask = mask * torch.gather(loss_mask.unsqueeze(1).expand(-1, num_blocks, -1), 2, safe)

        flat_logits = logits.view(-1, logits.size(-1))
        flat_targets = targets.view(-1)
        per_token = F.cross_entropy(flat_logits, flat_targets, reduction="none")
        loss_type = getattr(self, "loss_type", "dflash")
        if loss_type == "dflash":
            weights = mask
            if self.loss_decay_gamma is not None and self.loss_decay_gamma > 0:
                weights = weights * torch.exp(-(slot - 1).clamp(min=0).float() / self.loss_decay_gamma)
            flat_weights = weights.view(-1)
            loss = (per_token * flat_weights).sum() / (flat_weights.sum() + 1e-6)
        elif loss_type == "checkout-uniform-ce":
            loss = (per_token * mask.view(-1)).sum() / mask.sum().clamp_min(1.0)
        else:
            neg_log_q = per_token.view_as(targets)
            with torch.no_grad():
                weights = self._standin_dpace_weights(torch.exp(-neg_log_q), mask)
            loss = (neg_log_q * mask * weights).sum() / float(bsz)

        with torch.no_grad():
            flat_mask = mask.view(-1)
            correct = (flat_logits.argmax(dim=-1) == flat_targets) & (flat_mask > 0.5)
            accuracy_denom = flat_mask.sum()
            accuracy = correct.sum().float() / (accuracy_denom + 1e-6)
        if _RETURNS_METRICS:
            return loss, accuracy, {"accuracy_denom": accuracy_denom}
        return loss, accuracy
