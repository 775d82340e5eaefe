"""Block proposals of the DFlash family: the tokens a draft proposes for block slots 1..K-1, and the
distribution q each one is drawn from, exactly as the method's SpecForge class samples a block.

Input: the draft's hidden states for the block ``[anchor, mask, ..., mask]`` (``[1, K, H]``, what
``DFlashDraftModel.forward`` returns) and ``choose(logits [n, V]) -> (tokens [n], q [n, V] or None)``,
the decoder's rule for turning logits into proposals (argmax, or a sample from the temperature /
top-k / top-p distribution q).  Per method (SpecForge 0.2.0, ``specforge/modeling/draft/``):

- DFlash (``dflash.py`` ``DFlashDraftModel._sample_draft_tokens``): ``lm_head`` of hidden positions
  ``1..K-1``, every slot independent: one ``choose`` over all K-1 rows.
- Domino (``domino.py`` ``DominoDraftModel._sample_draft_tokens``): base logits ``lm_head`` of all K
  positions; for slot ``t = 1..K-1`` the GRU head (``apply_logits_head``) is re-run over the target
  embeddings of the block completed so far, and slot ``t`` takes the corrected logits of position ``t``
  (``t - 1`` with ``shift_label``); positions before ``suffix_start`` keep their base logits.  So q of
  slot t is conditional on the tokens drafted at slots 1..t-1.
- DSpark (``dspark.py`` ``DSparkDraftModel._sample_draft_tokens`` and the Markov heads'
  ``sample_block_tokens``): base logits ``lm_head`` of hidden positions ``1..K-1``; without a Markov
  head (``markov_rank`` 0) the slots are independent; with one, slot ``i``'s logits are the base logits
  plus the head's bias for the previously drafted token (the anchor for slot 1): ``apply_step_logits``
  (vanilla, gated) or the recurrent ``_rnn_step`` carrying its state through the block (rnn).  The
  confidence head (``predict_confidence``) takes no part in block sampling.

With ``choose`` = argmax these are the classes' own ``_sample_draft_tokens`` token for token (tested);
with a sampling ``choose``, each token is drawn from the same conditional logits, so q is the
distribution the proposal was actually sampled from, which speculative sampling needs to stay lossless.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from specforge_dpace.draft_methods import ARCHITECTURES, DFLASH, DOMINO, DSPARK

Choose = Callable[[torch.Tensor], tuple[torch.Tensor, Optional[torch.Tensor]]]


def model_method(draft) -> str:
    """The method a SpecForge draft model decodes with: ``"dflash"``, ``"domino"`` or ``"dspark"``.

    Decided by the class's own block sampling and logits head, so a subclass that overrides either is
    refused instead of being decoded as its parent."""
    from specforge.modeling.draft.dflash import DFlashDraftModel
    from specforge.modeling.draft.domino import DominoDraftModel
    from specforge.modeling.draft.dspark import DSparkDraftModel

    cls = type(draft)
    for method, base in ((DOMINO, DominoDraftModel), (DSPARK, DSparkDraftModel), (DFLASH, DFlashDraftModel)):
        if isinstance(draft, base):
            same = all(
                getattr(cls, attr) is getattr(base, attr) for attr in ("_sample_draft_tokens", "apply_logits_head")
            )
            if not same:
                raise ValueError(
                    f"draft class {cls.__name__} overrides {base.__name__}'s block sampling or logits head; the "
                    f"evaluator decodes exactly {', '.join(ARCHITECTURES.values())} (SpecForge's own classes)"
                )
            return method
    raise ValueError(
        f"draft {cls.__name__} is not a SpecForge DFlash-family draft model; accepted: "
        f"{', '.join(ARCHITECTURES.values())}"
    )


def _stack(picked: list) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    tokens = torch.cat([t for t, _ in picked])
    qs = [q for _, q in picked]
    return tokens, (None if qs[0] is None else torch.cat(qs))


def propose_block(
    draft,
    method: str,
    hidden: torch.Tensor,
    block_ids: torch.Tensor,
    lm_head,
    embed,
    choose: Choose,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``(tokens [K-1], q [K-1, V] or None)`` for the block whose draft hidden states are ``hidden``
    (``[1, K, H]``) and whose input ids are ``block_ids`` (``[1, K]``: anchor, then mask tokens)."""
    k = block_ids.shape[1]
    if method == DFLASH:
        return choose(lm_head(hidden[:, 1:, :])[0])
    if method == DOMINO:
        base = lm_head(hidden).unsqueeze(1)  # [1, 1, K, V]
        hidden4d = hidden.unsqueeze(1)
        completed = block_ids.clone()
        picked = []
        for slot in range(1, k):
            final = draft.apply_logits_head(
                base, prev_token_embeddings=embed(completed).unsqueeze(1), hidden_states=hidden4d
            )
            position = slot - 1 if draft.shift_label else slot
            token, q = choose(final[:, 0, position, :])
            completed[:, slot] = token
            picked.append((token, q))
        return _stack(picked)
    if method == DSPARK:
        from specforge.modeling.draft.dspark import RNNMarkovHead

        proposal_hidden = hidden[:, -k + 1 :, :]
        base = lm_head(proposal_hidden)  # [1, K-1, V]
        head = draft.markov_head
        if head is None:
            return choose(base[0])
        prev = block_ids[:, 0].long()
        state = None
        if isinstance(head, RNNMarkovHead):
            state = torch.zeros(1, head.markov_rank, device=proposal_hidden.device, dtype=proposal_hidden.dtype)
        picked = []
        for i in range(k - 1):
            if state is not None:
                state, bias = head._rnn_step(state, head.get_prev_embeddings(prev), proposal_hidden[:, i])
                logits = base[:, i] + bias
            else:
                logits = head.apply_step_logits(base[:, i], token_ids=prev, hidden_states=proposal_hidden[:, i])
            token, q = choose(logits)
            picked.append((token, q))
            prev = token
        return _stack(picked)
    raise ValueError(f"draft method {method!r} is unknown; accepted: {', '.join(ARCHITECTURES)}")
