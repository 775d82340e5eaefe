"""Block proposals of the DFlash family: the tokens a draft proposes for one verify step, and the distribution
q each one is drawn from, under a serving convention (``serving.Decoding.proposals``).

Input: the draft's hidden states for the query block (``[1, Q, H]``, what ``DFlashDraftModel.forward``
returns for ``[anchor, mask, ..., mask]``) and ``choose(logits [n, V]) -> (tokens [n], q [n, V] or None)``,
the decoder's rule for turning logits into proposals (argmax, or a sample from the temperature / top-k /
top-p distribution q).  Conventions:

- ``block`` (DFlash, every server; SpecForge ``dflash.py`` ``_sample_draft_tokens``): ``lm_head`` of hidden
  positions ``1..K-1``, every slot independent (Q = K, K - 1 proposals).
- ``domino-class`` (SpecForge ``domino.py`` ``DominoDraftModel._sample_draft_tokens``): base logits of all K
  positions; for slot ``t`` the GRU head (``apply_logits_head``) is re-run over the target embeddings of the
  block completed so far, slot ``t`` taking position ``t`` (``t - 1`` with ``shift_label``); positions before
  ``suffix_start`` keep their base logits.
- ``domino-rollout`` (SGLang 0.5.23 ``srt/speculative/domino_utils.py`` ``domino_greedy_rollout``): hidden
  rows ``z = h[s : s + K - 1]`` (``s`` = 0 with ``shift_label``, else 1); slot 1 = argmax of the base logits of
  ``z[0]``; the GRU is run over the target embeddings of ``[anchor, slot 1]``; slot ``j + 1`` = argmax of
  ``base(z[j]) + embed_proj(cat(z[j], gru state))`` restricted to a block-shared candidate pool (the
  ``pool`` tokens with the largest base logit over ``z[1:]``; 0 = the full vocabulary), and its embedding
  steps the GRU.  Greedy only.  With ``pure_draft_prefix_len`` 1 and a pool covering the vocabulary this is
  ``domino-class`` token for token (tested).
- ``dspark-class`` (SpecForge ``dspark.py`` ``DSparkDraftModel._sample_draft_tokens``): base logits of hidden
  positions ``1..K-1`` plus the Markov head's bias for the previously drafted token (the anchor first).
- ``anchor-markov`` (SGLang 0.5.23 ``dspark_components/dspark_draft.py`` ``draft_markov_block`` with
  ``sample_from_anchor``; vLLM 0.33's DSpark): the query block has gamma = ``block_size`` rows and row ``i``
  (the anchor's first) proposes draft token ``i + 1`` with the Markov bias of the token before it, gamma
  proposals verified in a window of gamma + 1, as ``OnlineDSparkModel`` trains the drafter.

The Markov heads step the same way in SGLang (``models/dspark.py`` ``VanillaMarkov`` / ``GatedMarkovHead`` /
``RNNHead``) and SpecForge (``VanillaMarkovHead`` / ``GatedMarkovHead`` / ``RNNMarkovHead``); the confidence
head takes no part in block sampling.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from specforge_dpace.serving import ARCHITECTURES, DFLASH, DOMINO, DSPARK
from specforge_dpace.serving._table import ANCHOR_MARKOV, BLOCK, DOMINO_CLASS, DOMINO_ROLLOUT, DSPARK_CLASS

Choose = Callable[[torch.Tensor], tuple[torch.Tensor, Optional[torch.Tensor]]]
CONVENTIONS = {
    DFLASH: (BLOCK,),
    DOMINO: (DOMINO_CLASS, DOMINO_ROLLOUT),
    DSPARK: (DSPARK_CLASS, ANCHOR_MARKOV),
}


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


def _domino_class(draft, hidden, block_ids, lm_head, embed, choose):
    k = block_ids.shape[1]
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


def _domino_rollout(draft, hidden, block_ids, lm_head, embed, candidate_pool: int):
    """SGLang 0.5.23's ``domino_greedy_rollout`` for one request (batch 1, TP 1)."""
    k = block_ids.shape[1]
    proposals = k - 1
    start = 0 if draft.shift_label else 1
    z = hidden[:, start : start + proposals, :]  # [1, P, H]
    base = lm_head(z)[0]  # [P, V]
    vocab = base.shape[-1]
    first = base[0].argmax(dim=-1, keepdim=True)
    tokens = [first]
    if proposals == 1:
        return first, None
    pool = min(int(candidate_pool), vocab)
    candidates = None
    if 0 < pool < vocab:
        candidates = torch.topk(base[1:].amax(dim=0), k=pool, sorted=False).indices
    gru, proj = draft.prefix_gru, draft.embed_proj
    prefix = torch.stack((block_ids[:, 0], first), dim=1)  # [anchor, first proposal]
    _, state = gru(embed(prefix))  # [1, 1, G]
    state = state[0]
    for index in range(1, proposals):
        correction_hidden = proj[1](proj[0](torch.cat((z[:, index, :], state), dim=-1)))
        if candidates is None:
            token = (base[index] + proj[2](correction_hidden)[0]).argmax(dim=-1, keepdim=True)
        else:
            correction = proj[2].weight[candidates] @ correction_hidden[0]
            token = candidates[(base[index, candidates] + correction).argmax()].view(1)
        tokens.append(token)
        if index + 1 < proposals:
            state = torch.ops.aten.gru_cell.default(embed(token), state, gru.weight_ih_l0, gru.weight_hh_l0, None, None)
    return torch.cat(tokens), None


def _markov(draft, proposal_hidden, anchor, lm_head, choose):
    """Base logits of ``proposal_hidden`` rows plus the Markov bias of the token before each (anchor first)."""
    from specforge.modeling.draft.dspark import RNNMarkovHead

    base = lm_head(proposal_hidden)  # [1, P, V]
    head = draft.markov_head
    if head is None:
        return choose(base[0])
    prev = anchor.long()
    state = None
    if isinstance(head, RNNMarkovHead):
        state = torch.zeros(1, head.markov_rank, device=proposal_hidden.device, dtype=proposal_hidden.dtype)
    picked = []
    for i in range(proposal_hidden.shape[1]):
        if state is not None:
            state, bias = head._rnn_step(state, head.get_prev_embeddings(prev), proposal_hidden[:, i])
            logits = base[:, i] + bias
        else:
            logits = head.apply_step_logits(base[:, i], token_ids=prev, hidden_states=proposal_hidden[:, i])
        token, q = choose(logits)
        picked.append((token, q))
        prev = token
    return _stack(picked)


def propose_block(
    draft,
    proposals: str,
    hidden: torch.Tensor,
    block_ids: torch.Tensor,
    lm_head,
    embed,
    choose: Choose,
    *,
    candidate_pool: int = 0,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``(tokens [P], q [P, V] or None)`` for the query block whose draft hidden states are ``hidden``
    (``[1, Q, H]``) and whose input ids are ``block_ids`` (``[1, Q]``: anchor, then mask tokens), under the
    ``proposals`` convention (``block``, ``domino-class``, ``domino-rollout``, ``dspark-class``,
    ``anchor-markov``; see the module).  ``candidate_pool``: ``domino-rollout``'s pool size (0 = full
    vocabulary)."""
    if proposals == BLOCK:
        return choose(lm_head(hidden[:, 1:, :])[0])
    if proposals == DOMINO_CLASS:
        return _domino_class(draft, hidden, block_ids, lm_head, embed, choose)
    if proposals == DOMINO_ROLLOUT:
        return _domino_rollout(draft, hidden, block_ids, lm_head, embed, candidate_pool)
    if proposals == DSPARK_CLASS:
        k = block_ids.shape[1]
        return _markov(draft, hidden[:, -k + 1 :, :], block_ids[:, 0], lm_head, choose)
    if proposals == ANCHOR_MARKOV:
        return _markov(draft, hidden, block_ids[:, 0], lm_head, choose)
    raise ValueError(
        f"proposal convention {proposals!r} is unknown; accepted: {sorted({*sum(CONVENTIONS.values(), ())})}"
    )
