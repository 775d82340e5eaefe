"""Teacher-forced per-anchor pass: the predictors of tau from a DFlash-family drafter and eval features.

One pass over held-out sequences (``input_ids``, ``loss_mask``, the target's context features
``hidden_states`` and, optionally, its last hidden state ``target_last_hidden_states``, post final norm)
drafts a block at *every* anchor SpecForge could sample (or every ``anchor_stride``-th), through the
training model's own ``_forward_draft_blocks`` (the same attention mask, positions and noise block as
training), and reads, per drafted slot, the probability that the verifier accepts it:

=====================  ==========================================================  ==================
setting                acceptance of drafted slot j (label x = input_ids[a + j])   needs the target
=====================  ==========================================================  ==================
``T0``                 1[argmax q_j = x]  (greedy verification)                    no
``surrogate``          q_j(x) at T = 1  (the training metric ``surrogate``)        no
``sample@T``           alpha_j = sum_v min(p_j, q_j) at T (sampled proposals)      yes
``greedy_draft@T``     p_j(argmax q_j) at T (argmax proposals, target-only)        yes
=====================  ==========================================================  ==================

p_j is the target's distribution from ``h_last[a + j - 1]`` (it predicts token a + j).  From those
(independent per slot), ``_walk`` forms the walk predictor and the per-position average.  At T = 0 on the
target's own greedy continuations, the walk is the greedy decoding's tau exactly.

Which draft row and head inputs give slot j is the method's *serving convention* (``SLOT_CONVENTIONS``,
the one table to change if a server changes):

- DFlash: row j, ``lm_head`` only; K - 1 drafted tokens.
- Domino: row j (row j - 1 with ``shift_label``), base logits plus the GRU correction over the tokens
  a .. a + j - 1 (SGLang 0.5.23's rollout with ``pure_draft_prefix_len`` 1, ``domino_utils.py``
  ``domino_greedy_rollout``, which is also SpecForge's training head); K - 1 drafted tokens.
- DSpark, ``serving``: the anchor row predicts the first draft (row j - 1), the Markov head fed token
  a + j - 1; K drafted tokens (gamma = the trained block), as ``OnlineDSparkModel`` trains and SGLang
  0.5.23 / vLLM 0.33 decode.  ``specforge-class``: row j, K - 1 tokens, as SpecForge's
  ``DSparkDraftModel._sample_draft_tokens`` drafts.

The previous tokens of a block are the data's (teacher forcing); at T = 0 they are what decoding drafted
whenever the prefix was accepted, so only the T > 0 walks of Domino and DSpark approximate there.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch

from ._walk import anchor_grid, block_sums, walk_sums

Tensor = torch.Tensor

SERVING = "serving"
SPECFORGE_CLASS = "specforge-class"
CONVENTIONS = (SERVING, SPECFORGE_CLASS)


@dataclass(frozen=True)
class SlotAlignment:
    """Drafted slot j (1 .. drafted) of the block anchored at a predicts ``input_ids[a + j]`` from draft row
    ``j - row_shift``."""

    row_shift: int
    drafted: int


def slot_convention(rules_name: str) -> str:
    """The teacher-forced slot alignment of a serving rule set (``--convention``): DSpark drafted from the anchor
    row (every server) or from hidden position k (SpecForge's classes)."""
    from .. import serving
    from ..serving._table import DSPARK_CLASS

    dspark = serving.rules_for(rules_name).methods.get(serving.DSPARK)
    decoding = dspark.decoding if dspark is not None else None
    return SPECFORGE_CLASS if decoding is not None and decoding.proposals == DSPARK_CLASS else SERVING


def slot_alignment(method: str, block_size: int, *, shift_label: bool = False, convention: str = SERVING):
    """The serving convention of each method (see the module docstring)."""
    if convention not in CONVENTIONS:
        raise ValueError(f"convention {convention!r} is invalid; accepted: {', '.join(CONVENTIONS)}")
    k = int(block_size)
    if method == "dflash":
        return SlotAlignment(0, k - 1)
    if method == "domino":
        return SlotAlignment(1 if shift_label else 0, k - 1)
    if method == "dspark":
        return SlotAlignment(1, k) if convention == SERVING else SlotAlignment(0, k - 1)
    raise ValueError(f"method {method!r} is invalid; accepted: dflash, domino, dspark")


def settings_names(temperatures: Sequence[float], surrogate: bool = False) -> list[str]:
    """The acceptance settings of a pass, in a fixed order (the layout of a cross-rank reduction)."""
    names = ["T0"] + (["surrogate"] if surrogate else [])
    for t in temperatures:
        names += [f"sample@T{t:g}", f"greedy_draft@T{t:g}"]
    return names


def check_temperatures(temperatures: Any, where: str = "temperatures") -> tuple[float, ...]:
    import math

    values = list(temperatures) if isinstance(temperatures, (list, tuple)) else None
    ok = values is not None and all(
        not isinstance(t, bool) and isinstance(t, (int, float)) and math.isfinite(t) and t > 0 for t in values
    )
    if not ok or len(set(float(t) for t in values)) != len(values):
        raise ValueError(f"{where}={temperatures!r} is invalid; accepted: a list of distinct finite numbers > 0")
    return tuple(float(t) for t in values)


def check_stride(stride: Any, drafted: int, where: str = "anchor stride") -> int:
    """A stride every token of a continuation is drafted under: 1 .. the tokens a block drafts."""
    if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= max(drafted, 1):
        raise ValueError(
            f"{where} {stride!r} is invalid; accepted: an int in 1 .. {drafted} (the tokens a block drafts, so that "
            "every token is drafted by an evaluated block; 1 = every anchor)"
        )
    return stride


@dataclass
class PassSums:
    """Additive sums of one pass (float64): per setting ``[block_num, block_den, walk_tokens, walk_steps]``,
    plus the target's agreement with the labels, anchors and sequences seen, and the seconds spent."""

    settings: list[str]
    values: dict[str, list[float]] = field(default_factory=dict)
    agreement: list[float] = field(default_factory=lambda: [0.0, 0.0])
    anchors: float = 0.0
    sequences: float = 0.0
    seconds: float = 0.0

    def __post_init__(self) -> None:
        for name in self.settings:
            self.values.setdefault(name, [0.0, 0.0, 0.0, 0.0])

    def vector(self) -> list[float]:
        """Every sum in a fixed order (for ``all_reduce``); ``seconds`` is not a sum and stays out."""
        return [v for name in self.settings for v in self.values[name]] + [
            *self.agreement,
            self.anchors,
            self.sequences,
        ]

    def load_vector(self, vector: Sequence[float]) -> None:
        vector = [float(v) for v in vector]
        for i, name in enumerate(self.settings):
            self.values[name] = vector[4 * i : 4 * i + 4]
        rest = vector[4 * len(self.settings) :]
        self.agreement, self.anchors, self.sequences = rest[:2], rest[2], rest[3]

    def block(self, name: str) -> Optional[float]:
        num, den = self.values[name][:2]
        return num / den if den > 0 else None

    def walk(self, name: str) -> Optional[float]:
        tokens, steps = self.values[name][2:]
        return tokens / steps if steps > 0 else None


def pass_model(draft, lm_head, embed_tokens, *, mask_token_id: int, block_size: int, num_anchors: int = 512):
    """A SpecForge ``OnlineDFlashModel`` around ``draft`` (any DFlash-family draft: the pass uses only its
    shared block forward), sdpa attention, for running the pass outside a SpecForge run."""
    from specforge.algorithms.common.dflash_family_model import OnlineDFlashModel

    return OnlineDFlashModel(
        draft,
        lm_head,
        embed_tokens,
        int(mask_token_id),
        block_size=int(block_size),
        attention_backend="sdpa",
        num_anchors=int(num_anchors),
    )


def method_of(draft) -> str:
    """``"dflash"``, ``"domino"`` or ``"dspark"``: how SpecForge's class of ``draft`` drafts a block."""
    from ._proposals import model_method

    return model_method(draft)


def _blocks_with_anchors(model, input_ids, hidden_states, loss_mask, anchors, keep) -> Tensor:
    """Draft hidden states ``[B, N, K, H]`` of the blocks anchored at ``anchors`` (SpecForge's own
    ``_forward_draft_blocks``, its anchor sampler answered with these anchors)."""

    def chosen(seq_len, mask, device):
        return anchors, keep

    model._sample_anchor_positions = chosen  # shadows the method on this instance only
    try:
        _, _, hidden = model._forward_draft_blocks(
            input_ids=input_ids, hidden_states=hidden_states, loss_mask=loss_mask
        )
    finally:
        del model._sample_anchor_positions
    return hidden.reshape(input_ids.shape[0], anchors.shape[1], model.block_size, -1)


def _gather_tokens(input_ids: Tensor, positions: Tensor) -> Tensor:
    seq_len = input_ids.shape[1]
    flat = positions.clamp(0, seq_len - 1).reshape(input_ids.shape[0], -1)
    return torch.gather(input_ids, 1, flat).reshape(positions.shape)


def slot_labels(input_ids: Tensor, loss_mask: Tensor, anchors: Tensor, keep: Tensor, drafted: int):
    """``(labels [B, N, D], valid [B, N, D] bool)``: slot j's label ``input_ids[a + j]``; valid while every
    label up to j is supervised and inside the sequence (a continuation ends at its first unsupervised token)."""
    positions = anchors.unsqueeze(-1) + torch.arange(1, drafted + 1, device=anchors.device).view(1, 1, -1)
    inside = positions < input_ids.shape[1]
    supervised = (_gather_tokens(loss_mask.to(torch.float32), positions) > 0.5) & inside
    valid = supervised.int().cumprod(dim=-1).bool() & keep.unsqueeze(-1)
    return _gather_tokens(input_ids, positions), valid


def draft_slot_logits(model, method: str, alignment: SlotAlignment, hidden4d: Tensor, input_ids: Tensor, anchors):
    """Logits ``[B, N, D, V]`` of the drafted slots, through the method's head as it serves (module docstring)."""
    draft, lm_head = model.draft_model, model.lm_head
    rows = torch.arange(1, alignment.drafted + 1, device=hidden4d.device) - alignment.row_shift
    if method == "domino":  # the GRU runs over the whole block: base + correction on every row, then pick
        block = anchors.unsqueeze(-1) + torch.arange(hidden4d.shape[2], device=anchors.device).view(1, 1, -1)
        embeddings = model.embed_tokens(_gather_tokens(input_ids, block))
        final = draft.apply_logits_head(lm_head(hidden4d), prev_token_embeddings=embeddings, hidden_states=hidden4d)
        return final[:, :, rows]
    hidden = hidden4d[:, :, rows]
    logits = lm_head(hidden)
    if method == "dspark":
        previous = anchors.unsqueeze(-1) + torch.arange(alignment.drafted, device=anchors.device).view(1, 1, -1)
        logits = draft.apply_logits_head(
            logits, prev_token_ids=_gather_tokens(input_ids, previous), hidden_states=hidden
        )
    return logits


def target_slot_logits(lm_head, target_last_hidden: Tensor, anchors: Tensor, drafted: int) -> Tensor:
    """The target's logits for slot j of each block, from ``h_last[a + j - 1]`` ``[B, N, D, V]``."""
    batch, seq_len, width = target_last_hidden.shape
    positions = anchors.unsqueeze(-1) + torch.arange(drafted, device=anchors.device).view(1, 1, -1)
    index = positions.clamp(0, seq_len - 1).reshape(batch, -1, 1).expand(-1, -1, width)
    aligned = torch.gather(target_last_hidden, 1, index).reshape(*positions.shape, width)
    return lm_head(aligned)


def slot_acceptance(
    draft_logits: Tensor, labels: Tensor, target_logits: Optional[Tensor], temperatures, surrogate: bool
) -> dict[str, Tensor]:
    """Per drafted slot, the probability the verifier accepts it, per setting (module table)."""
    from specforge_dpace.losses import soft_slot_stats

    draft_ids = draft_logits.argmax(dim=-1)
    out = {"T0": (draft_ids == labels).to(torch.float64)}
    if surrogate:
        log_q = torch.log_softmax(draft_logits.float(), dim=-1)
        out["surrogate"] = log_q.gather(-1, labels.unsqueeze(-1)).squeeze(-1).exp().double()
    if target_logits is not None:
        for t in temperatures:
            soft = soft_slot_stats(draft_logits, t, target_logits=target_logits)
            out[f"sample@T{t:g}"] = soft.log_alpha.detach().double().exp()
            log_p = torch.log_softmax(target_logits.float() / t, dim=-1)
            out[f"greedy_draft@T{t:g}"] = log_p.gather(-1, draft_ids.unsqueeze(-1)).squeeze(-1).exp().double()
    return out


def _chunks(width: int, size: Optional[int]) -> list[slice]:
    size = width if not size or size <= 0 else int(size)
    return [slice(i, min(i + size, width)) for i in range(0, max(width, 1), size)]


@torch.no_grad()
def teacher_forced_pass(
    model,
    input_ids: Tensor,
    hidden_states: Tensor,
    loss_mask: Tensor,
    target_last_hidden: Optional[Tensor] = None,
    *,
    temperatures: Sequence[float] = (),
    anchor_stride: int = 1,
    blocks_per_forward: Optional[int] = None,
    convention: str = SERVING,
    surrogate: bool = False,
    sums: Optional[PassSums] = None,
    forward_groups: Optional[Callable[[int], int]] = None,
) -> PassSums:
    """Add one batch of held-out sequences to ``sums`` (a new :class:`PassSums` when ``None``).

    ``model`` is a SpecForge DFlash-family training model (``OnlineDFlashModel`` or a subclass: only its
    ``_forward_draft_blocks``, ``draft_model``, ``lm_head``, ``embed_tokens`` and ``block_size`` are used);
    the method is read from its draft class.  ``blocks_per_forward`` bounds the blocks drafted per forward
    (default: the model's ``num_anchors``, the training width); the logits are formed
    ``objective_chunk_blocks`` blocks at a time, as SpecForge's objective does.  Temperature settings are
    computed when ``target_last_hidden`` is given.  ``forward_groups(n) -> n'`` lets a caller make every
    rank run the same number of draft forwards (sharded FSDP); extra forwards draft nothing.
    """
    temperatures = check_temperatures(temperatures)
    sums = sums if sums is not None else PassSums(settings_names(temperatures, surrogate))
    started = time.perf_counter()
    method = method_of(model.draft_model)
    alignment = slot_alignment(
        method,
        model.block_size,
        shift_label=bool(getattr(model.draft_model, "shift_label", False)),
        convention=convention,
    )
    check_stride(anchor_stride, alignment.drafted)
    anchors, keep = anchor_grid(loss_mask, anchor_stride)
    width = anchors.shape[1]
    groups = _chunks(width, blocks_per_forward or getattr(model, "num_anchors", None))
    count = forward_groups(len(groups)) if forward_groups is not None else len(groups)
    last = None if target_last_hidden is None else target_last_hidden.to(model.lm_head.weight.dtype)
    per_setting: dict[str, Tensor] = {}
    valid_all = torch.zeros(*anchors.shape, alignment.drafted, dtype=torch.bool)
    for index in range(count):
        if index >= len(groups):  # keep a collective forward schedule: draft one dropped block
            _blocks_with_anchors(model, input_ids, hidden_states, loss_mask, anchors[:, :1] * 0, keep[:, :1] & False)
            continue
        group = groups[index]
        g_anchors, g_keep = anchors[:, group], keep[:, group]
        hidden4d = _blocks_with_anchors(model, input_ids, hidden_states, loss_mask, g_anchors, g_keep)
        for chunk in _chunks(hidden4d.shape[1], getattr(model, "objective_chunk_blocks", 0)):
            c_anchors, c_keep = g_anchors[:, chunk], g_keep[:, chunk]
            labels, valid = slot_labels(input_ids, loss_mask, c_anchors, c_keep, alignment.drafted)
            logits = draft_slot_logits(model, method, alignment, hidden4d[:, chunk], input_ids, c_anchors)
            target = None if last is None else target_slot_logits(model.lm_head, last, c_anchors, alignment.drafted)
            accept = slot_acceptance(logits, labels, target, temperatures, surrogate)
            columns = slice(group.start + chunk.start, group.start + chunk.stop)
            valid_all[:, columns] = valid.cpu()
            for name, probs in accept.items():
                buffer = per_setting.setdefault(
                    name, torch.zeros(*anchors.shape, alignment.drafted, dtype=torch.float64)
                )
                buffer[:, columns] = torch.where(valid, probs, torch.zeros_like(probs)).cpu()
            if target is not None:
                agree = (target.argmax(dim=-1) == labels) & valid
                sums.agreement[0] += float(agree.sum())
                sums.agreement[1] += float(valid.sum())
    keep_cpu, anchors_cpu, mask_cpu = keep.cpu(), anchors.cpu(), loss_mask.cpu()
    for name, probs in per_setting.items():
        entry = sums.values[name]
        num, den = block_sums(keep_cpu, probs, valid_all)
        tokens, steps = walk_sums(anchors_cpu, keep_cpu, probs, mask_cpu, anchor_stride)
        entry[0] += num
        entry[1] += den
        entry[2] += tokens
        entry[3] += steps
    sums.anchors += float(keep.sum())
    sums.sequences += float(input_ids.shape[0])
    sums.seconds += time.perf_counter() - started
    return sums


__all__ = [
    "CONVENTIONS",
    "SERVING",
    "SPECFORGE_CLASS",
    "PassSums",
    "SlotAlignment",
    "check_stride",
    "check_temperatures",
    "draft_slot_logits",
    "method_of",
    "pass_model",
    "settings_names",
    "slot_acceptance",
    "slot_alignment",
    "slot_labels",
    "target_slot_logits",
    "teacher_forced_pass",
]
