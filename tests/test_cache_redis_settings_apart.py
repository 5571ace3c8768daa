"""Redis caches with other bounds or eviction keep their entries apart.

A task override with ``Cache(store="redis", max_entries=1)`` got a store on
the governor's own keys, and its first put evicted the shared eviction order
down to one entry: every other tenant's answers went. These tests need a real
Redis at ``REDIS_URL`` (see ``_redis_fixtures``).
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import redis

from governor import Governor, Policy
from governor.adapters.litellm import GovernedLiteLLM
from governor.cache import CacheMiss, ResponseCache
from governor.cache._redis_store import settings_prefix
from governor.policies import Cache
from governor.stores import RedisLedger

pytest_plugins = ["_redis_fixtures"]
pytestmark = pytest.mark.redis

MODEL = "gpt-4o-mini"
ANSWER = {"role": "assistant", "content": "Stored answer."}


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    """A bytes client on the test Redis."""
    connection = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


def ask(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def governed_hits(gov: Governor, texts: list[str], team: str, policy: Any) -> int:
    """Ask each text in its own task; return how many were served by the cache."""
    llm = GovernedLiteLLM(gov)
    hits = 0
    for text in texts:
        with gov.task(team=team, policy=policy) as task:
            llm.completion(model="offline/gpt-4o-mini", messages=ask(text))
        hits += task.cache_hits
    return hits


def test_an_override_with_a_smaller_bound_leaves_the_governors_entries(
    redis_url: str, redis_prefix: str
) -> None:
    """One tenant's max_entries=1 override neither evicts nor misses the rest.

    Its own bound still holds for its own entries.
    """
    from governor.testing import install_offline_provider

    install_offline_provider(speed=0)
    own = Cache(store="redis", embedder="hashing", max_entries=1000)
    small = Policy(cache=Cache(store="redis", embedder="hashing", max_entries=1))
    main = [f"Main tenant question number {n} about widgets" for n in range(5)]
    ledger = RedisLedger(redis_url, prefix=redis_prefix)
    try:
        gov = Governor(Policy(cache=own), ledger=ledger)
        stored = governed_hits(gov, main, "main", None)
        small_texts = ["Small tenant question", "Another small tenant question"]
        small_stored = governed_hits(gov, small_texts, "small", small)
        sizes = (
            gov.cache_for(gov.policy).store_backend.size(),
            gov.cache_for(small).store_backend.size(),
        )
        repeats = governed_hits(gov, main, "main", None)
        # the newer small entry is kept, the older one evicted by the bound
        small_repeats = [
            governed_hits(gov, [t], "small", small) for t in small_texts[::-1]
        ]
        gov.close()
    finally:
        ledger.close()
    assert (stored, small_stored, sizes) == (0, 0, (5, 1))
    assert (repeats, small_repeats) == (5, [1, 0])


def fill(cache: ResponseCache, texts: list[str]) -> None:
    """Store ANSWER for each text."""
    for text in texts:
        miss = cache.lookup(model=MODEL, messages=ask(text))
        assert isinstance(miss, CacheMiss)
        assert cache.store(miss, message=ANSWER, model=MODEL, cost_usd=Decimal(0))


def hits(cache: ResponseCache, texts: list[str]) -> list[bool]:
    return [cache.lookup(model=MODEL, messages=ask(text)).hit for text in texts]


def redis_cache(client: redis.Redis, prefix: str, **settings: Any) -> ResponseCache:
    """An exact-only cache on the test Redis, with its keys under ``prefix``."""
    cache = Cache(store="redis", semantic=False, key_prefix=prefix, **settings)
    return ResponseCache(cache, redis_client=client)


QUESTIONS = [f"Question number {n} about kettles" for n in range(3)]
OTHERS = [f"Question number {n} about toasters" for n in range(3)]


def test_workers_whose_bounds_drift_apart_keep_each_others_entries(
    client: redis.Redis, redis_prefix: str
) -> None:
    """Two workers on one key_prefix, one with a smaller max_entries."""
    wide = redis_cache(client, f"{redis_prefix}cache", max_entries=3)
    narrow = redis_cache(client, f"{redis_prefix}cache", max_entries=1)
    fill(wide, QUESTIONS)
    fill(narrow, OTHERS)
    assert hits(wide, QUESTIONS) == [True, True, True]
    assert hits(narrow, OTHERS) == [False, False, True]
    assert (wide.store_backend.size(), narrow.store_backend.size()) == (3, 1)


def test_lru_and_lfu_caches_of_one_bound_keep_apart(
    client: redis.Redis, redis_prefix: str
) -> None:
    """LFU scores uses where LRU scores times; on one order one evicts the other."""
    lru = redis_cache(client, f"{redis_prefix}cache", max_entries=3)
    lfu = redis_cache(client, f"{redis_prefix}cache", max_entries=3, eviction="lfu")
    fill(lru, QUESTIONS)
    fill(lfu, OTHERS)
    assert hits(lru, QUESTIONS) == [True, True, True]
    assert hits(lfu, OTHERS) == [True, True, True]
    assert (lru.store_backend.size(), lfu.store_backend.size()) == (3, 3)


def test_default_settings_keep_their_keys_right_under_the_prefix(
    client: redis.Redis, redis_prefix: str
) -> None:
    """Entries stored before caches kept apart stay where the defaults read."""
    base = f"{redis_prefix}cache"
    fill(redis_cache(client, base), QUESTIONS[:1])
    fill(redis_cache(client, base, max_entries=500, eviction="lfu"), OTHERS[:1])
    counts = [
        len(list(client.scan_iter(match=f"{base}:{part}e:*")))
        for part in ("", "lfu-500:")
    ]
    assert counts == [1, 1]
    assert settings_prefix(base, max_entries=10_000, eviction="lru") == base
    assert settings_prefix(f"{base}:", max_entries=2, eviction="lru") == (
        f"{base}:lru-2"
    )


@pytest.mark.parametrize("cleared", ["governor", "override"])
def test_clearing_a_governors_cache_clears_its_overrides_entries_too(
    redis_url: str, redis_prefix: str, cleared: str
) -> None:
    """One key_prefix is one cache to clear, whatever settings stored what."""
    from governor.testing import install_offline_provider

    install_offline_provider(speed=0)
    small = Policy(cache=Cache(store="redis", embedder="hashing", max_entries=50))
    texts = ["What is the capital of Atlantis today?"]
    ledger = RedisLedger(redis_url, prefix=redis_prefix)
    try:
        own = Policy(cache=Cache(store="redis", embedder="hashing"))
        gov = Governor(own, ledger=ledger)
        governed_hits(gov, texts, "t", small)
        governed_hits(gov, texts, "t", None)
        assert governed_hits(gov, texts, "t", small) == 1
        gov.cache_for(gov.policy if cleared == "governor" else small).clear()
        hits = (
            governed_hits(gov, texts, "t", small),
            governed_hits(gov, texts, "t", None),
        )
        gov.close()
    finally:
        ledger.close()
    assert hits == (0, 0)


def test_clear_takes_the_settings_prefixes_exactly(
    client: redis.Redis, redis_prefix: str
) -> None:
    """A store whose prefix only starts like a settings prefix is another's."""
    from governor.cache._redis_store import RedisCacheStore

    root = f"{redis_prefix}app"
    ours = [f"{root}:e:k", f"{root}:use", f"{root}:lfu-500:e:k", f"{root}:lfu-500:use"]
    others = [
        f"{root}2:e:k",
        f"{root}:v2:use",
        f"{root}:lru-500:v2:e:k",
        f"{root}:lru-500:v2:use",
    ]
    for key in ours + others:
        client.set(key, b"1")
    store = RedisCacheStore.for_settings(
        client, prefix=root, max_entries=10_000, eviction="lru"
    )
    store.clear()
    left = [key for key in ours + others if client.exists(key)]
    client.delete(*others)
    assert left == others
