"""A worker's Redis cache mirrors stay bounded however many tenants it serves.

Each tenant's questions go to its own index, and a worker mirrors the vectors
of every index it searched. Rows of entries Redis evicted leave a mirror only
when a search meets them, so tenants that went quiet would keep them; the
store drops whole mirrors, least recently searched first, to hold the rows
of all its mirrors to ``2 * max_entries + _MIRROR_SLACK``.

These tests need a real Redis at ``REDIS_URL`` (see ``_redis_fixtures``).
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import redis

from governor.cache import CacheHit, CacheMiss, RedisCacheStore, ResponseCache
from governor.cache._redis_store import _MIRROR_SLACK
from governor.policies import Cache

pytest_plugins = ["_redis_fixtures"]
pytestmark = pytest.mark.redis

MODEL = "gpt-4o-mini"
MAX_ENTRIES = 50
TENANTS = 200
QUESTIONS = 5
BOUND = 2 * MAX_ENTRIES + _MIRROR_SLACK


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    """A bytes client on the test Redis."""
    connection = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


def question(tenant: int, n: int) -> str:
    return f"How do I configure feature {n} of product {tenant}?"


def paraphrase(tenant: int, n: int) -> list[dict[str, Any]]:
    """The question in other case and punctuation: a semantic, not exact, hit."""
    text = question(tenant, n).lower().rstrip("?")
    return [{"role": "user", "content": text}]


def team(tenant: int) -> dict[str, str]:
    return {"team": f"tenant{tenant}"}


def mirrored_rows(store: RedisCacheStore) -> int:
    """Rows held by every mirror of ``store``, live or freed for reuse."""
    return sum(
        len(mirror.index.keys)
        for mirror in store._mirrors.values()
        if mirror.index is not None
    )


def serve_tenants(cache: ResponseCache, store: RedisCacheStore) -> list[int]:
    """Ask and store every tenant's questions; the rows mirrored after each.

    After each tenant, tenant 0 asks its first question again, word for word:
    an exact hit, which keeps that entry in Redis (LRU) without a search, so
    tenant 0's mirror goes quiet while its entry stays live.
    """
    rows = []
    again = [{"role": "user", "content": question(0, 0)}]
    for tenant in range(TENANTS):
        for n in range(QUESTIONS):
            messages = [{"role": "user", "content": question(tenant, n)}]
            miss = cache.lookup(model=MODEL, messages=messages, partition=team(tenant))
            assert isinstance(miss, CacheMiss), (tenant, n)
            cache.store(
                miss,
                message={"role": "assistant", "content": f"answer {tenant} {n}"},
                model=MODEL,
                cost_usd=Decimal("0.001"),
            )
        exact = cache.lookup(model=MODEL, messages=again, partition=team(0))
        assert isinstance(exact, CacheHit), tenant
        assert exact.layer == "exact", tenant
        rows.append(mirrored_rows(store))
    return rows


def test_mirrors_of_quiet_tenants_stay_bounded_and_reload(
    client: redis.Redis, redis_prefix: str
) -> None:
    """Rows stay within the bound; a dropped mirror reloads and serves its hit."""
    policy = Cache(
        store="redis",
        max_entries=MAX_ENTRIES,
        embedder="hashing",
        key_prefix=redis_prefix,
    )
    cache = ResponseCache(policy, redis_client=client)
    store = cache.store_backend
    assert isinstance(store, RedisCacheStore)
    rows = serve_tenants(cache, store)
    assert store.size() == MAX_ENTRIES
    assert max(rows) <= BOUND, f"{max(rows)} rows mirrored, bound {BOUND}"
    assert store._rows == mirrored_rows(store)

    last = TENANTS - 1
    recent = cache.lookup(
        model=MODEL, messages=paraphrase(last, 2), partition=team(last)
    )
    quiet = cache._index(
        cache.keys(model=MODEL, messages=paraphrase(0, 0), partition=team(0))
    )
    dropped = quiet not in store._mirrors
    reloaded = cache.lookup(model=MODEL, messages=paraphrase(0, 0), partition=team(0))
    other = cache.lookup(model=MODEL, messages=paraphrase(0, 0), partition=team(1))
    assert (dropped, quiet in store._mirrors) == (True, True)
    assert isinstance(recent, CacheHit)
    assert isinstance(reloaded, CacheHit)
    assert (recent.layer, recent.text) == ("semantic", f"answer {last} 2")
    assert (reloaded.layer, reloaded.text) == ("semantic", "answer 0 0")
    assert isinstance(other, CacheMiss)
    assert mirrored_rows(store) <= BOUND
