"""DFlash-family speculative decoding of one prompt (batch 1) with an HF target and a SpecForge
draft (``DFlashDraftModel``, ``DominoDraftModel`` or ``DSparkDraftModel``).

One verify step: the draft fills a query block ``[last emitted token, mask, ..., mask]`` of Q positions
from ``S`` (``S`` = tokens the target has processed), conditioned on the target's features at
``target_layer_ids`` for positions ``< S`` (the same "context strictly before the anchor" rule SpecForge
trains with); the target's ``lm_head`` (and, for Domino / DSpark, the draft's logits head) turns the draft's
hidden states into P proposals under the run's serving convention (``_proposals``; Q = K and P = K - 1 for
K-slot blocks, Q = gamma and P = gamma for DSpark served from the anchor row); the target then scores
``[anchor, proposals]`` (the verify window, P + 1 tokens) in one forward pass over its KV cache; the accepted
prefix plus one target token are emitted and the cache is cropped back to the kept tokens.  The draft keeps
its own KV cache of context keys/values (context features never change once computed) and drops its
block entries after each step.

The convention is a serving rule set's ``Decoding`` for the method (``serving.rules_for(name)``; default
SGLang 0.5.23's, ``serving.SPECFORGE`` for SpecForge's classes).  Verification: greedy at temperature 0
(output identical to the target's greedy decoding).  At temperature > 0, ``draft_sampling="sample"`` draws
each proposal from the draft's distribution q and verifies with standard speculative sampling;
``"greedy"`` proposes the argmax and verifies target-only (SGLang's DFLASH and Domino; DSpark with
``SGLANG_DSPARK_USE_GREEDY_DRAFT=1``).  Both are lossless in distribution.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from specforge_dpace import serving

from ._cache import cache_kwargs, crop_cache
from ._proposals import model_method, propose_block
from ._sampling import (
    check_draft_sampling,
    check_top_k_top_p,
    sampling_probs,
    verify_greedy,
    verify_sampling,
    verify_target_only,
)


def context_features(hidden_states: Sequence[torch.Tensor], layer_ids: Sequence[int]) -> torch.Tensor:
    """Concatenate the target's hidden states after layers ``layer_ids``.

    HF's ``hidden_states`` tuple starts with the embeddings, so layer ``i``'s output is entry
    ``i + 1`` (SpecForge's ``extract_context_feature`` uses the same offset)."""
    return torch.cat([hidden_states[i + 1] for i in layer_ids], dim=-1)


@dataclass
class DecodeTrace:
    """What one prompt's decoding produced and how (inputs of ``_metrics``)."""

    output_ids: list[int] = field(default_factory=list)
    accepted: list[int] = field(default_factory=list)  # drafted tokens accepted per verify step (0..K-1)
    emitted: list[int] = field(default_factory=list)  # tokens kept per verify step (after truncation)
    prefill_s: float = 0.0
    draft_s: float = 0.0
    verify_s: float = 0.0
    stopped: bool = False


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decoding_for(convention: str, method: str) -> "serving.Decoding":
    """The ``Decoding`` a serving convention (a ``serving`` rule-set name) applies to ``method``; a
    ``ValueError`` with the reason when that server does not serve the method."""
    rules = serving.rules_for(convention)
    problem = rules.serving_problem(method)
    if problem:
        raise ValueError(
            f"convention {convention!r} cannot decode this drafter: {problem}; decode it as SpecForge's class "
            f"samples blocks with convention {serving.SPECFORGE!r}"
        )
    return rules.method(method).decoding


def resolve_draft_sampling(decoding: "serving.Decoding", draft_sampling, convention: str, method: str) -> str:
    """``draft_sampling`` (None: the convention's default for the method) checked against what it performs."""
    if draft_sampling is None:
        return decoding.draft_samplings[0]
    check_draft_sampling(draft_sampling)
    if draft_sampling not in decoding.draft_samplings:
        raise ValueError(
            f"draft_sampling={draft_sampling!r} is not what {convention} does for {serving.METHOD_NAMES[method]} "
            f"drafters (it performs {list(decoding.draft_samplings)}: {decoding.source}); accepted: "
            f"{list(decoding.draft_samplings)}, or convention {serving.SPECFORGE!r}"
        )
    return draft_sampling


class DFlashDecoder:
    """Speculative decoding with a fixed (target, draft) pair; ``decode`` runs one prompt.

    ``draft`` is a SpecForge ``DFlashDraftModel``, ``DominoDraftModel`` or ``DSparkDraftModel``;
    ``block_size`` its config's block size (K slots; gamma drafted tokens for DSpark).  Its blocks are
    proposed as ``convention`` (a ``serving`` rule-set name) decodes the method.  ``draft_sampling``
    ("sample" or "greedy"; None = the convention's default) chooses how proposals are made and verified at
    temperature > 0; ``candidate_pool`` overrides a Domino rollout's candidate pool (0 = full vocabulary)."""

    def __init__(
        self,
        target,
        draft,
        *,
        block_size: int,
        temperature: float = 0.0,
        top_k: int = -1,
        top_p: float = 1.0,
        draft_sampling: Optional[str] = None,
        convention: str = serving.DEFAULT_SERVER,
        candidate_pool: Optional[int] = None,
    ):
        if block_size < 2:
            raise ValueError(f"block size {block_size} is invalid; accepted: an int >= 2")
        if temperature < 0:
            raise ValueError(f"temperature {temperature} is invalid; accepted: >= 0 (0 = greedy)")
        check_top_k_top_p(top_k, top_p)
        self.method = model_method(draft)
        self.convention = convention
        self.decoding = decoding_for(convention, self.method)
        self.draft_sampling = resolve_draft_sampling(self.decoding, draft_sampling, convention, self.method)
        if candidate_pool is not None and self.decoding.candidate_pool is None:
            raise ValueError(
                f"candidate_pool={candidate_pool!r} applies to Domino's rollout only (sglang-0.5.23's "
                "--speculative-domino-candidate-pool-size); this drafter is decoded without one: drop it"
            )
        pool = self.decoding.candidate_pool if candidate_pool is None else candidate_pool
        if pool is not None and (not isinstance(pool, int) or isinstance(pool, bool) or pool < 0):
            raise ValueError(f"candidate_pool={pool!r} is invalid; accepted: an int >= 0 (0 = the full vocabulary)")
        self.candidate_pool = pool or 0
        self.top_k = int(top_k)
        self.top_p = float(top_p)
        self.target = target
        self.draft = draft
        self.block_size = int(block_size)  # the query block (Q)
        self.window = self.decoding.verify_window(self.block_size)  # anchor + proposals
        self.temperature = float(temperature)
        self.layer_ids = list(draft.target_layer_ids)
        self.mask_token_id = int(draft.mask_token_id)
        self.embed = target.get_input_embeddings()
        self.lm_head = target.get_output_embeddings()
        self.device = next(target.parameters()).device

    def _probs(self, logits: torch.Tensor) -> torch.Tensor:
        """The sampling distribution at this decoder's temperature, top-k and top-p (target and draft alike)."""
        return sampling_probs(logits, self.temperature, self.top_k, self.top_p)

    def _first_token(self, logits: torch.Tensor, generator) -> int:
        if self.temperature == 0:
            return int(logits.argmax().item())
        probs = self._probs(logits)
        return int(torch.multinomial(probs.double(), 1, generator=generator).item())

    def _choose(self, logits: torch.Tensor, generator) -> tuple:
        """Proposals from draft logits ``[n, V]``: the argmax (temperature 0, or greedy draft sampling),
        else one sample per row from q, the temperature / top-k / top-p distribution, returned with it."""
        if self.temperature == 0 or self.draft_sampling == "greedy":
            return logits.argmax(dim=-1), None
        q = self._probs(logits)
        return torch.multinomial(q.double(), 1, generator=generator).squeeze(-1), q

    def _propose(self, draft_cache, new_features, tokens: list, generator):
        """Draft tokens for slots 1..K-1 and (when sampling them) their distributions q.

        ``tokens`` = prompt + emitted tokens; its last one (at position ``start``) is the
        block's anchor and ``new_features`` the target features not yet in ``draft_cache``."""
        k = self.block_size
        start = len(tokens) - 1
        last_token = tokens[-1]
        block = torch.full((1, k), self.mask_token_id, dtype=torch.long, device=self.device)
        block[0, 0] = last_token
        cached = draft_cache.get_seq_length()
        position_ids = torch.arange(cached, start + k, device=self.device).unsqueeze(0)
        noise = self.embed(block)
        served_mask = getattr(self.draft, "served_mask_embedding", None)
        if served_mask is not None:  # SGLang 0.5.23 merges mask_embedding.pt into the target's mask row
            noise = torch.where(block.unsqueeze(-1) == self.mask_token_id, served_mask.to(noise), noise)
        hidden = self.draft(
            target_hidden=new_features,
            noise_embedding=noise,
            position_ids=position_ids,
            past_key_values=draft_cache,
            use_cache=True,
            is_causal=False,
        )
        crop_cache(draft_cache, start)  # keep context keys/values only; the block changes every step
        return propose_block(
            self.draft,
            self.decoding.proposals,
            hidden,
            block,
            self.lm_head,
            self.embed,
            lambda x: self._choose(x, generator),
            candidate_pool=self.candidate_pool,
        )

    @torch.inference_mode()
    def decode(
        self,
        prompt_ids: Sequence[int],
        max_new_tokens: int,
        stop_token_ids: Sequence[int] = (),
        generator: Optional[torch.Generator] = None,
    ) -> DecodeTrace:
        from transformers import DynamicCache

        if len(prompt_ids) == 0:
            raise ValueError("empty prompt: the target needs at least one token to condition on")
        stops = set(int(t) for t in stop_token_ids)
        trace = DecodeTrace()
        if max_new_tokens <= 0:
            return trace
        ids = torch.as_tensor(list(prompt_ids), dtype=torch.long, device=self.device).unsqueeze(0)
        target_cache = DynamicCache()
        draft_cache = DynamicCache()

        t0 = time.perf_counter()
        out = self.target(
            input_ids=ids, **cache_kwargs(self.target, target_cache), use_cache=True, output_hidden_states=True
        )
        pending = context_features(out.hidden_states, self.layer_ids)  # features not yet in the draft cache
        token = self._first_token(out.logits[0, -1], generator)
        _sync(self.device)
        trace.prefill_s = time.perf_counter() - t0
        trace.output_ids.append(token)
        if token in stops:
            trace.stopped = True
            return trace
        start = ids.shape[1]  # tokens the target has processed; the last emitted token sits at `start`
        context = [int(t) for t in prompt_ids] + [token]

        while len(trace.output_ids) < max_new_tokens:
            t0 = time.perf_counter()
            draft_tokens, q = self._propose(draft_cache, pending, context, generator)
            _sync(self.device)
            t1 = time.perf_counter()
            block = torch.cat([torch.tensor([token], device=self.device), draft_tokens]).unsqueeze(0)
            positions = torch.arange(start, start + self.window, device=self.device).unsqueeze(0)
            out = self.target(
                input_ids=block,
                position_ids=positions,
                **cache_kwargs(self.target, target_cache),
                use_cache=True,
                output_hidden_states=True,
            )
            logits = out.logits[0]  # [K, V]
            if self.temperature == 0:
                accepted, nxt = verify_greedy(draft_tokens, logits)
            elif self.draft_sampling == "greedy":
                p = self._probs(logits)
                accepted, nxt = verify_target_only(draft_tokens, p, generator)
            else:
                p = self._probs(logits)  # the same filtered p plain sampling draws from: lossless
                accepted, nxt = verify_sampling(draft_tokens, q, p, generator)
            crop_cache(target_cache, start + accepted + 1)
            pending = context_features(out.hidden_states, self.layer_ids)[:, : accepted + 1, :]
            _sync(self.device)
            t2 = time.perf_counter()
            trace.draft_s += t1 - t0
            trace.verify_s += t2 - t1

            new = [int(t) for t in draft_tokens[:accepted].tolist()] + [nxt]
            new = new[: max_new_tokens - len(trace.output_ids)]
            for i, t in enumerate(new):
                if t in stops:
                    new = new[: i + 1]
                    trace.stopped = True
                    break
            trace.output_ids.extend(new)
            context.extend(new)
            trace.accepted.append(accepted)
            trace.emitted.append(len(new))
            if trace.stopped:
                break
            start += accepted + 1
            token = nxt
        return trace


@torch.inference_mode()
def autoregressive_reference(
    target,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    stop_token_ids: Sequence[int] = (),
    temperature: float = 0.0,
    generator: Optional[torch.Generator] = None,
    top_k: int = -1,
    top_p: float = 1.0,
) -> list[int]:
    """Plain one-token-at-a-time decoding with a KV cache: the losslessness reference and the
    no-speculation baseline for speed-up (greedy at temperature 0, else sampling from the
    temperature / top-k / top-p distribution)."""
    from transformers import DynamicCache

    check_top_k_top_p(top_k, top_p)

    device = next(target.parameters()).device
    stops = set(int(t) for t in stop_token_ids)
    cache = DynamicCache()
    ids = torch.as_tensor(list(prompt_ids), dtype=torch.long, device=device).unsqueeze(0)
    out_ids: list[int] = []
    while len(out_ids) < max_new_tokens:
        logits = target(input_ids=ids, **cache_kwargs(target, cache), use_cache=True).logits[0, -1]
        if temperature == 0:
            token = int(logits.argmax().item())
        else:
            probs = sampling_probs(logits, temperature, top_k, top_p).double()
            token = int(torch.multinomial(probs, 1, generator=generator).item())
        out_ids.append(token)
        if token in stops:
            break
        ids = torch.tensor([[token]], device=device)
    return out_ids


def greedy_reference(target, prompt_ids: Sequence[int], max_new_tokens: int, stop_token_ids: Sequence[int] = ()):
    """Plain one-token-at-a-time greedy decoding with a KV cache."""
    return autoregressive_reference(target, prompt_ids, max_new_tokens, stop_token_ids)
