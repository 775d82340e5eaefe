"""DFlash-family speculative decoding of one prompt (batch 1) with an HF target and a SpecForge
draft (``DFlashDraftModel``, ``DominoDraftModel`` or ``DSparkDraftModel``).

One verify step: the draft fills a block ``[last emitted token, mask, ..., mask]`` at positions
``S .. S+K-1`` (``S`` = tokens the target has processed), conditioned on the target's features
at ``target_layer_ids`` for positions ``< S`` (the same "context strictly before the anchor"
rule SpecForge trains with); the target's ``lm_head`` (and, for Domino / DSpark, the draft's logits
head, see ``_proposals``) turns the draft's hidden states into draft tokens for slots ``1..K-1``;
the target then scores the whole block in one forward pass over its KV cache; the accepted prefix
plus one target token are emitted and the cache is cropped back to the kept tokens.  The draft keeps
its own KV cache of context keys/values (context features never change once computed) and drops its
block entries after each step.

Verification: greedy at temperature 0 (output identical to the target's greedy decoding).  At
temperature > 0, ``draft_sampling="sample"`` draws each proposal from the draft's distribution q and
verifies with standard speculative sampling; ``draft_sampling="greedy"`` proposes the argmax and
verifies target-only, as SGLang 0.5.14's DFlash does.  Both are lossless in distribution.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

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


class DFlashDecoder:
    """Speculative decoding with a fixed (target, draft) pair; ``decode`` runs one prompt.

    ``draft`` is a SpecForge ``DFlashDraftModel``, ``DominoDraftModel`` or ``DSparkDraftModel``; its
    block is proposed as that class samples it (``method``).  ``draft_sampling`` ("sample" or
    "greedy") chooses how proposals are made and verified at temperature > 0 (see the module)."""

    def __init__(
        self,
        target,
        draft,
        *,
        block_size: int,
        temperature: float = 0.0,
        top_k: int = -1,
        top_p: float = 1.0,
        draft_sampling: str = "sample",
    ):
        if block_size < 2:
            raise ValueError(f"block size {block_size} is invalid; accepted: an int >= 2")
        if temperature < 0:
            raise ValueError(f"temperature {temperature} is invalid; accepted: >= 0 (0 = greedy)")
        check_top_k_top_p(top_k, top_p)
        self.draft_sampling = check_draft_sampling(draft_sampling)
        self.method = model_method(draft)
        self.top_k = int(top_k)
        self.top_p = float(top_p)
        self.target = target
        self.draft = draft
        self.block_size = int(block_size)
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
        hidden = self.draft(
            target_hidden=new_features,
            noise_embedding=self.embed(block),
            position_ids=position_ids,
            past_key_values=draft_cache,
            use_cache=True,
            is_causal=False,
        )
        crop_cache(draft_cache, start)  # keep context keys/values only; the block changes every step
        return propose_block(
            self.draft, self.method, hidden, block, self.lm_head, self.embed, lambda x: self._choose(x, generator)
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
            positions = torch.arange(start, start + self.block_size, device=self.device).unsqueeze(0)
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
