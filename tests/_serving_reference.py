"""A plain DSpark decoding loop in the serving convention, the reference the teacher-forced walk is tested against.

Written from SGLang 0.5.23's DSpark drafter (``srt/speculative/dspark_components/dspark_draft.py``:
``draft_markov_block`` feeds the anchor token, then each drafted token, to the Markov head over the ``gamma``
query rows of the block ``[anchor, mask, ...]``; with ``sample_from_anchor`` (the default) the anchor row drafts
the first token) and from the project evaluator's verification rules (``verify_greedy``, ``verify_sampling``,
``verify_target_only``).  No caches: every step runs the target over the whole context, so nothing here
shares code with the pass under test or with the evaluator's cached decoder.  Tau is counted as the
evaluator counts it (tokens per verify step, the prefill token excluded).
"""

from __future__ import annotations

from typing import Sequence

import torch

from specforge_dpace.evaluate._sampling import sampling_probs, verify_greedy, verify_sampling, verify_target_only
from specforge_dpace.evaluate._speculative import context_features


def _draft_block(draft, hidden, head, anchor: int, choose):
    """gamma = K tokens from the K draft rows: row i drafts token i + 1, the Markov head fed the previous token."""
    from specforge.modeling.draft.dspark import RNNMarkovHead

    markov = draft.markov_head
    base, previous = head(hidden), torch.tensor([anchor])
    state = None
    tokens, qs = [], []
    for i in range(hidden.shape[0]):
        row = hidden[i : i + 1]
        if markov is None:
            logits = base[i : i + 1]
        elif isinstance(markov, RNNMarkovHead):
            if state is None:
                state = torch.zeros(1, markov.markov_rank, dtype=hidden.dtype)
            state, bias = markov._rnn_step(state, markov.get_prev_embeddings(previous), row)
            logits = base[i : i + 1] + bias
        else:
            logits = markov.apply_step_logits(base[i : i + 1], token_ids=previous, hidden_states=row)
        previous, q = choose(logits)
        tokens.append(int(previous))
        qs.append(q)
    return tokens, qs


def serving_dspark_tau(
    target,
    draft,
    prompts: Sequence[Sequence[int]],
    new_tokens: int,
    layer_ids: Sequence[int],
    *,
    temperature: float = 0.0,
    draft_sampling: str = "sample",
    seed: int = 0,
) -> float:
    """Token-weighted tau of DSpark decoding in the serving convention over ``prompts``."""
    k, embed, head = draft.block_size, target.get_input_embeddings(), target.get_output_embeddings()
    emitted = steps = 0
    with torch.no_grad():
        for index, prompt in enumerate(prompts):
            generator = torch.Generator().manual_seed(seed + index)

            def choose(logits, generator=generator):
                if temperature == 0 or draft_sampling == "greedy":
                    return logits.argmax(dim=-1), None
                q = sampling_probs(logits[0], temperature)
                return torch.multinomial(q.double(), 1, generator=generator), q

            tokens = list(prompt)
            first = target(input_ids=torch.tensor([tokens])).logits[0, -1]
            if temperature == 0:
                tokens.append(int(first.argmax()))
            else:
                tokens.append(
                    int(torch.multinomial(sampling_probs(first, temperature).double(), 1, generator=generator))
                )
            produced = 1
            while produced < new_tokens:
                start = len(tokens) - 1  # the anchor: the last emitted token
                out = target(input_ids=torch.tensor([tokens]), output_hidden_states=True)
                block = torch.full((1, k), draft.mask_token_id)
                block[0, 0] = tokens[-1]
                hidden = draft(
                    target_hidden=context_features(out.hidden_states, layer_ids)[:, :start],
                    noise_embedding=embed(block),
                    position_ids=torch.arange(start + k).unsqueeze(0),
                    is_causal=False,
                )[0, -k:]
                drafts, qs = _draft_block(draft, hidden, head, tokens[-1], choose)
                logits = target(input_ids=torch.tensor([tokens + drafts])).logits[0, start:]
                drafted = torch.tensor(drafts)
                if temperature == 0:
                    accepted, nxt = verify_greedy(drafted, logits)
                elif draft_sampling == "greedy":
                    accepted, nxt = verify_target_only(drafted, sampling_probs(logits, temperature), generator)
                else:
                    accepted, nxt = verify_sampling(
                        drafted, torch.stack(qs), sampling_probs(logits, temperature), generator
                    )
                new = (drafts[:accepted] + [nxt])[: new_tokens - produced]
                tokens += new
                produced += len(new)
                emitted += len(new)
                steps += 1
    return emitted / steps
