"""KV-cache keyword across transformers versions (``evaluate/_cache.py``)."""

from __future__ import annotations

import warnings

import pytest
import torch

from specforge_dpace.evaluate import tiny_target
from specforge_dpace.evaluate._cache import cache_kwargs, crop_cache


class _OldStyle(torch.nn.Module):
    def forward(self, input_ids=None, past_key_values=None, use_cache=None):
        return past_key_values


class _NoCache(torch.nn.Module):
    def forward(self, input_ids):
        return input_ids


def test_installed_transformers_gets_the_name_its_forward_takes():
    from transformers import DynamicCache

    target = tiny_target(vocab_size=48, seed=0)
    cache = DynamicCache()
    kwargs = cache_kwargs(target, cache)
    assert list(kwargs) in (["cache"], ["past_key_values"]) and kwargs[next(iter(kwargs))] is cache
    ids = torch.tensor([[1, 2, 3, 4]])
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # no deprecated keyword on any transformers version
        target(input_ids=ids, **kwargs, use_cache=True)
    assert cache.get_seq_length() == 4  # the cache really was used
    crop_cache(cache, 2)
    assert cache.get_seq_length() == 2


def test_old_style_forward_and_a_forward_without_cache():
    assert cache_kwargs(_OldStyle(), "c") == {"past_key_values": "c"}
    with pytest.raises(TypeError, match="_NoCache.forward takes neither 'cache' nor 'past_key_values'"):
        cache_kwargs(_NoCache(), "c")
