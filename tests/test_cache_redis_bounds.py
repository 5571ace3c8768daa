"""The Redis cache store stays bounded, whatever expires, and clears its own keys.

These tests need a real Redis at ``REDIS_URL`` (see ``_redis_fixtures``).
Redis expiring an entry's hash is played by deleting that hash, so no test
waits for a clock.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import redis
from _cache_entries import entry

from governor.cache import RedisCacheStore
from governor.cache._embed import normalize_rows
from governor.cache._redis_store import _MIRROR_SLACK

pytest_plugins = ["_redis_fixtures"]
pytestmark = pytest.mark.redis


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    """A bytes client on the test Redis."""
    connection = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


def unit(*values: float) -> np.ndarray:
    return normalize_rows(np.array([values]))[0]


def bookkeeping(client: redis.Redis, base: str) -> tuple[set[bytes], ...]:
    """The members of the index set, the use and expiry zsets and P:ixof."""
    return (
        client.smembers(f"{base}:ix:ix"),
        set(client.zrange(f"{base}:use", 0, -1)),
        set(client.zrange(f"{base}:exp", 0, -1)),
        set(client.hkeys(f"{base}:ixof")),
    )


def expire_hashes(client: redis.Redis, base: str, keys: str) -> None:
    """Delete entry hashes as Redis does when their PEXPIRE runs out."""
    client.delete(*(f"{base}:e:{key}" for key in keys))


def test_a_sweep_removes_expired_keys_from_the_index_set(
    client: redis.Redis, redis_prefix: str
) -> None:
    """Entries whose hash Redis expired before the sweep leave the index set."""
    base = redis_prefix.removesuffix(":")
    store = RedisCacheStore(client, prefix=redis_prefix, max_entries=100)
    for n, key in enumerate("abcdef"):
        store.put(entry(key, expires_at=10.0), unit(1, n), float(n))
    expire_hashes(client, base, "abcdef")
    store.put(entry("g", expires_at=30.0), unit(0, 1), 20.0)
    assert bookkeeping(client, base) == ({b"g"}, {b"g"}, {b"g"}, {b"g"})


def test_eviction_removes_expired_keys_from_the_index_set(
    client: redis.Redis, redis_prefix: str
) -> None:
    """An evicted entry whose hash Redis already expired leaves the index set."""
    base = redis_prefix.removesuffix(":")
    store = RedisCacheStore(client, prefix=redis_prefix, max_entries=3)
    for n, key in enumerate("abc"):
        store.put(entry(key, expires_at=100.0), unit(1, n), float(n))
    expire_hashes(client, base, "abc")
    store.put(entry("d", expires_at=100.0), unit(0, 1), 4.0)
    store.put(entry("e", expires_at=100.0), unit(1, 1), 5.0)
    kept = {b"c", b"d", b"e"}
    assert bookkeeping(client, base) == (kept, kept, kept, kept)


def test_a_worker_mirror_stays_bounded_by_max_entries(
    client: redis.Redis, redis_prefix: str
) -> None:
    """Rows of evicted entries never met by a search do not pile up in a mirror."""
    rng = np.random.default_rng(7)
    store = RedisCacheStore(client, prefix=redis_prefix, max_entries=10)
    query = unit(1, 0, 0, 0, 0, 0, 0, 0)
    rows = []
    for n in range(300):
        vector = unit(0, *rng.uniform(0.1, 1.0, 7))  # never near the query
        store.put(entry(f"k{n}"), vector, float(n))
        assert store.search("ix", query, min_score=0.9, limit=5, now=n) == ([], 0.0)
        mirror = store._mirrors["ix"]
        assert mirror.index is not None
        rows.append(mirror.index.live())
    assert (store.size(), max(rows) <= 2 * 10 + _MIRROR_SLACK) == (10, True)
    newest, _ = store.search("ix", vector, min_score=0.99, limit=1, now=300)
    assert [(found.key, round(score, 4)) for found, score in newest] == [("k299", 1.0)]


def test_clear_keeps_the_keys_of_a_longer_prefix(
    client: redis.Redis, redis_prefix: str
) -> None:
    """Clearing P:cache deletes every key family of it and none of P:cache:v2."""
    old = RedisCacheStore(client, prefix=redis_prefix + "cache", max_entries=2)
    new = RedisCacheStore(client, prefix=redis_prefix + "cache:v2", max_entries=2)
    for store in (old, new):
        for n, key in enumerate("abc"):
            store.put(entry(key, expires_at=1000.0), unit(1, n), float(n))
    v2_keys = set(client.scan_iter(match=redis_prefix + "cache:v2:*"))
    old.clear()
    left = set(client.scan_iter(match=redis_prefix + "cache*"))
    families = {key.decode().split(":")[3] for key in v2_keys}
    assert (left, old.size(), new.size()) == (v2_keys, 0, 2)
    assert families == {"e", "ix", "log", "use", "exp", "ixof"}
