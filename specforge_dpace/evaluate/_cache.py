"""KV-cache plumbing that has to work across transformers 4.57 .. 5.x.

transformers 5.x renames the model ``forward`` keyword ``past_key_values`` to ``cache`` (the
old name warns and is removed in 5.40; a removed name would then vanish into ``**kwargs`` and
decoding would silently run without a cache).  ``cache_kwargs`` asks the model's own
signature which name it takes, once per class.
"""

from __future__ import annotations

import inspect
from functools import lru_cache


@lru_cache(maxsize=None)
def _cache_keyword(model_class: type) -> str:
    parameters = inspect.signature(model_class.forward).parameters
    if "cache" in parameters:
        return "cache"
    if "past_key_values" in parameters:
        return "past_key_values"
    raise TypeError(
        f"{model_class.__name__}.forward takes neither 'cache' nor 'past_key_values'; accepted: an HF causal LM "
        "whose forward takes a KV cache (transformers >= 4.57)"
    )


def cache_kwargs(model, cache) -> dict:
    """``{"cache": cache}`` or ``{"past_key_values": cache}``, whichever ``model.forward`` takes."""
    return {_cache_keyword(type(model)): cache}


def crop_cache(cache, length: int) -> None:
    """Keep the first ``length`` positions of a transformers cache.

    ``crop(-n)`` drops the last ``n`` positions both in transformers 4.x (where a positive
    argument is the length to keep) and in 5.x (where a positive argument is refused)."""
    extra = cache.get_seq_length() - int(length)
    if extra > 0:
        cache.crop(-extra)
