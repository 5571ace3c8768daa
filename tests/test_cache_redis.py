"""The Redis cache store: shared by processes, bounded, expiring, own keys only.

These tests need a real Redis at ``REDIS_URL`` (see ``_redis_fixtures``).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import numpy as np
import pytest
import redis
from _cache_entries import entry

from governor._errors import ConfigError
from governor.cache import (
    CacheHit,
    CacheMiss,
    RedisCacheStore,
    ResponseCache,
)
from governor.cache._embed import normalize_rows
from governor.policies import Cache

pytest_plugins = ["_redis_fixtures"]
pytestmark = pytest.mark.redis

MODEL = "gpt-4o-mini"


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    """A bytes client on the test Redis."""
    connection = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


def unit(*values: float) -> np.ndarray:
    return normalize_rows(np.array([values]))[0]


def ask(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def test_an_entry_round_trips(client: redis.Redis, redis_prefix: str) -> None:
    """What one put stores, a get returns unchanged."""
    store = RedisCacheStore(client, prefix=redis_prefix)
    stored = entry("a")
    store.put(stored, unit(1, 0), 0)
    assert store.get("a", 1) == stored


def test_search_finds_the_nearest_entry(client: redis.Redis, redis_prefix: str) -> None:
    """The vector search runs over the index's vectors from Redis."""
    store = RedisCacheStore(client, prefix=redis_prefix)
    store.put(entry("a"), unit(1, 0, 0), 0)
    store.put(entry("b"), unit(0, 1, 0), 0)
    matches, _ = store.search("ix", unit(0.1, 1, 0), min_score=0.9, limit=3, now=1)
    assert [e.key for e, _ in matches] == ["b"]


def test_a_second_worker_sees_later_additions(
    client: redis.Redis, redis_prefix: str
) -> None:
    """A worker that mirrored an index catches up with another's additions."""
    first = RedisCacheStore(client, prefix=redis_prefix)
    second = RedisCacheStore(client, prefix=redis_prefix)
    assert second.search("ix", unit(1, 0), min_score=0.9, limit=3, now=0) == ([], None)
    first.put(entry("a"), unit(1, 0), 0)
    matches, _ = second.search("ix", unit(1, 0), min_score=0.9, limit=3, now=1)
    assert [e.key for e, _ in matches] == ["a"]


def test_a_removed_entry_leaves_other_mirrors(
    client: redis.Redis, redis_prefix: str
) -> None:
    """A mirrored vector whose entry was evicted elsewhere is not served."""
    first = RedisCacheStore(client, prefix=redis_prefix, max_entries=1)
    second = RedisCacheStore(client, prefix=redis_prefix, max_entries=1)
    first.put(entry("a"), unit(1, 0), 0)
    second.search("ix", unit(1, 0), min_score=0.9, limit=3, now=1)
    first.put(entry("b", index="other"), unit(0, 1), 2)
    matches, _ = second.search("ix", unit(1, 0), min_score=0.9, limit=3, now=3)
    assert matches == []


def corrupt_vector(kind: str) -> bytes:
    """What a corrupted ``v`` field of an entry holding unit(1, 1, 0) may be."""
    good = unit(1, 1, 0).astype("<f4")
    blobs = {
        "scaled": (good * 2).tobytes(),
        "not_a_number": np.array([np.nan, 0, 0], dtype="<f4").tobytes(),
        "zero": np.zeros(3, dtype="<f4").tobytes(),
        "cut": good.tobytes()[:-1],
        "another_dimension": unit(1, 1, 0, 0).astype("<f4").tobytes(),
    }
    return blobs[kind]


@pytest.mark.parametrize(
    "kind", ["scaled", "not_a_number", "zero", "cut", "another_dimension"]
)
def test_a_corrupt_vector_is_skipped_not_served(
    kind: str,
    client: redis.Redis,
    redis_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bad row is never matched; the rest of its index still is, one warning.

    A vector scaled by two outscored every row and served its answer to every
    question; bytes of another length broke every lookup of the index.
    """
    RedisCacheStore(client, prefix=redis_prefix).put(entry("a"), unit(1, 1, 0), 0)
    RedisCacheStore(client, prefix=redis_prefix).put(entry("b"), unit(0, 0, 1), 0)
    client.hset(f"{redis_prefix.removesuffix(':')}:e:a", "v", corrupt_vector(kind))
    worker = RedisCacheStore(client, prefix=redis_prefix)
    matches, best = worker.search("ix", unit(1, 1, 1), min_score=0.5, limit=3, now=1)
    assert ([e.key for e, _ in matches], best) == (["b"], pytest.approx(3**-0.5))
    warnings = [r for r in caplog.records if "are not 3 finite float32" in r.message]
    assert len(warnings) == 1


def test_a_corrupt_vector_added_later_is_skipped(
    client: redis.Redis, redis_prefix: str
) -> None:
    """A worker catching up with another's additions skips a corrupt one."""
    worker = RedisCacheStore(client, prefix=redis_prefix)
    worker.put(entry("b"), unit(0, 0, 1), 0)
    assert worker.search("ix", unit(0, 0, 1), min_score=0.9, limit=3, now=1)[0]
    RedisCacheStore(client, prefix=redis_prefix).put(entry("a"), unit(1, 1, 0), 2)
    client.hset(f"{redis_prefix.removesuffix(':')}:e:a", "v", corrupt_vector("scaled"))
    matches, _ = worker.search("ix", unit(1, 1, 1), min_score=0.5, limit=3, now=3)
    assert [e.key for e, _ in matches] == ["b"]


def test_ttl_is_set_on_the_entry(client: redis.Redis, redis_prefix: str) -> None:
    """Redis expires the entry itself, so memory returns without a sweep."""
    store = RedisCacheStore(client, prefix=redis_prefix)
    store.put(entry("a", expires_at=100.0), unit(1, 0), 40.0)
    ttl_ms = client.pttl(f"{redis_prefix.rstrip(':')}:e:a")
    assert 0 < ttl_ms <= 60_000


def test_an_expired_entry_is_not_served(client: redis.Redis, redis_prefix: str) -> None:
    """An entry past its expiry is a miss even before Redis drops it."""
    store = RedisCacheStore(client, prefix=redis_prefix)
    store.put(entry("a", expires_at=100.0), unit(1, 0), 40.0)
    matches, _ = store.search("ix", unit(1, 0), min_score=0.9, limit=3, now=100.0)
    assert (store.get("a", 100.0), matches) == (None, [])


def test_lru_eviction_keeps_the_recently_used(
    client: redis.Redis, redis_prefix: str
) -> None:
    """Beyond max_entries the least recently used entry goes."""
    store = RedisCacheStore(client, prefix=redis_prefix, max_entries=2, eviction="lru")
    store.put(entry("a"), unit(1, 0), 1)
    store.put(entry("b"), unit(0, 1), 2)
    store.touch("a", 3)
    store.put(entry("c"), unit(1, 1), 4)
    kept = [k for k in "abc" if store.get(k, 5) is not None]
    assert (kept, store.size()) == (["a", "c"], 2)


def test_lfu_eviction_keeps_the_frequently_used(
    client: redis.Redis, redis_prefix: str
) -> None:
    """Beyond max_entries the least frequently used entry goes."""
    store = RedisCacheStore(client, prefix=redis_prefix, max_entries=2, eviction="lfu")
    store.put(entry("a"), unit(1, 0), 1)
    store.put(entry("b"), unit(0, 1), 2)
    for now in (3, 4):
        store.touch("a", now)
    store.touch("b", 5)
    store.put(entry("c"), unit(1, 1), 6)
    kept = [k for k in "abc" if store.get(k, 7) is not None]
    assert kept == ["a", "c"]


def test_an_index_goes_with_its_last_entry(
    client: redis.Redis, redis_prefix: str
) -> None:
    """Evicting an index's last entry deletes its set and stream (bounded memory)."""
    store = RedisCacheStore(client, prefix=redis_prefix, max_entries=1)
    store.put(entry("a", index="first"), unit(1, 0), 1)
    store.put(entry("b", index="second"), unit(0, 1), 2)
    base = redis_prefix.rstrip(":")
    assert client.exists(f"{base}:ix:first", f"{base}:log:first") == 0


def test_clear_deletes_only_its_own_keys(
    client: redis.Redis, redis_prefix: str
) -> None:
    """clear() leaves keys of other prefixes alone."""
    store = RedisCacheStore(client, prefix=redis_prefix + "cache")
    store.put(entry("a"), unit(1, 0), 0)
    client.set(redis_prefix + "other", b"keep")
    store.clear()
    assert (store.size(), client.get(redis_prefix + "other")) == (0, b"keep")


def test_a_decoding_client_is_refused(redis_url: str) -> None:
    """Vectors are bytes, so a decode_responses client is a config error."""
    decoding = redis.Redis.from_url(redis_url, decode_responses=True)
    with pytest.raises(ConfigError, match="decode_responses"):
        RedisCacheStore(decoding)
    decoding.close()


_WORKER = """
from decimal import Decimal
import redis
from governor.cache import ResponseCache
from governor.policies import Cache

policy = Cache(store="redis", key_prefix={prefix!r}, embedder="hashing")
cache = ResponseCache(policy, redis_client=redis.Redis.from_url({url!r}))
miss = cache.lookup(
    model="gpt-4o-mini",
    messages=[{{"role": "user", "content": "What is the capital of France?"}}],
    partition={{"team": "geo"}},
)
assert miss.hit is False, miss
cache.store(miss, message={{"role": "assistant", "content": "Paris."}},
            model="gpt-4o-mini", cost_usd=Decimal("0.003"), input_tokens=9,
            output_tokens=2)
"""


def test_two_processes_share_one_cache(
    client: redis.Redis, redis_url: str, redis_prefix: str
) -> None:
    """An answer stored by another process is served here, with its cost saved."""
    policy = Cache(store="redis", key_prefix=redis_prefix, embedder="hashing")
    cache = ResponseCache(policy, redis_client=client)
    question = ask("what is the capital of france")
    before = cache.lookup(model=MODEL, messages=question, partition={"team": "geo"})
    script = textwrap.dedent(_WORKER.format(prefix=redis_prefix, url=redis_url))
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    after = cache.lookup(model=MODEL, messages=question, partition={"team": "geo"})
    assert isinstance(before, CacheMiss)
    assert isinstance(after, CacheHit)
    assert (after.layer, after.text, after.saved_usd) == (
        "semantic",
        "Paris.",
        Decimal("0.003"),
    )


def test_the_redis_policy_needs_a_client() -> None:
    """store='redis' without a client or store is a config error."""
    with pytest.raises(ConfigError, match="redis_client"):
        ResponseCache(Cache(store="redis"))


def test_a_governor_with_a_redis_ledger_shares_its_cache_in_redis(
    redis_url: str, redis_prefix: str
) -> None:
    """Cache(store='redis') works through Governor and GovernedLiteLLM.

    The ledger's client decodes replies to strings; the cache gets a bytes
    client to the same server.
    """
    from governor import Budget, Governor, Policy
    from governor.adapters.litellm import GovernedLiteLLM
    from governor.stores import RedisLedger
    from governor.testing import install_offline_provider

    install_offline_provider(speed=0)
    policy = Policy(
        budgets=[Budget(max_usd="1")],
        cache=Cache(
            store="redis", key_prefix=f"{redis_prefix}cache", embedder="hashing"
        ),
    )
    ledger = RedisLedger(redis_url, prefix=f"{redis_prefix}ledger:")
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    hits = []
    try:
        for _ in range(2):
            governor = Governor(policy, ledger=ledger)
            with governor.task() as task:
                GovernedLiteLLM(governor).completion(
                    model="offline/gpt-4o-mini", messages=messages, max_tokens=200
                )
            hits.append(task.report().cache_hits)
    finally:
        ledger.close()
    stored = redis.Redis.from_url(redis_url).keys(f"{redis_prefix}cache:e:*")
    assert (hits, len(stored)) == ([0, 1], 1)


def test_governors_with_distinct_ledger_prefixes_never_share_a_cache_entry(
    redis_url: str, redis_prefix: str
) -> None:
    """A Redis cache without key_prefix lives under its ledger's prefix.

    Two deployments that share one Redis with distinct ledger prefixes (as
    docs/budgets-redis.md advises) must not serve each other's answers; a
    second governor on the same ledger prefix still shares the entry.
    """
    from governor import Governor, Policy
    from governor.adapters.litellm import GovernedLiteLLM
    from governor.stores import RedisLedger
    from governor.testing import install_offline_provider

    install_offline_provider(speed=0)
    policy = Policy(cache=Cache(store="redis", embedder="hashing"))
    messages = [{"role": "user", "content": "What is our refund policy?"}]
    prefixes = [f"{redis_prefix}a:", f"{redis_prefix}b:", f"{redis_prefix}a:"]
    hits = []
    for prefix in prefixes:
        ledger = RedisLedger(redis_url, prefix=prefix)
        governor = Governor(policy, ledger=ledger)
        with governor.task() as task:
            GovernedLiteLLM(governor).completion(
                model="offline/gpt-4o-mini", messages=messages, max_tokens=200
            )
        hits.append(task.report().cache_hits)
        ledger.close()
    client = redis.Redis.from_url(redis_url)
    stored = [len(client.keys(f"{redis_prefix}{d}:cache:e:*")) for d in "ab"]
    client.close()
    assert (hits, stored) == ([0, 0, 1], [1, 1])


def test_a_default_ledger_prefix_keeps_the_default_cache_prefix(
    redis_url: str,
) -> None:
    """RedisLedger's default prefix keeps the cache at governor:cache.

    Entries stored before the cache followed the ledger stay readable. Making
    the cache writes nothing to Redis.
    """
    from governor import Governor, Policy
    from governor.stores import RedisLedger

    policy = Policy(cache=Cache(store="redis", embedder="hashing"))
    ledger = RedisLedger(redis_url)
    cache = Governor(policy, ledger=ledger).cache_for(policy)
    ledger.close()
    assert cache.store_backend._p == "governor:cache"


def test_the_index_lives_as_long_as_its_longest_lived_entry(
    client: redis.Redis, redis_prefix: str
) -> None:
    """An entry with a shorter TTL does not cut the index's life short (its
    older entries would stop being found by meaning), and one with no TTL
    makes it last."""
    store = RedisCacheStore(client, prefix=redis_prefix)
    index_keys = [f"{redis_prefix.rstrip(':')}:{part}:ix" for part in ("ix", "log")]

    store.put(entry("a", expires_at=1000.0), unit(1, 0), 40.0)  # 960 s
    first = [client.pttl(key) for key in index_keys]
    store.put(entry("b", expires_at=42.0), unit(0, 1), 40.0)  # 2 s
    after_short = [client.pttl(key) for key in index_keys]
    store.put(entry("c"), unit(1, 1), 40.0)  # no TTL
    after_none = [client.pttl(key) for key in index_keys]

    assert all(900_000 < ms <= 960_000 for ms in first)
    assert all(900_000 < ms <= 960_000 for ms in after_short)
    assert after_none == [-1, -1]


def test_an_entry_stored_again_under_another_index_leaves_the_old_one(
    client: redis.Redis, redis_prefix: str
) -> None:
    """A key stored again under another index (another embedder) is not
    matched in the old index, neither by a worker that mirrored it before
    nor by one catching up the old index's stream."""
    writer = RedisCacheStore(client, prefix=redis_prefix)
    early = RedisCacheStore(client, prefix=redis_prefix)
    writer.put(entry("k", index="A"), unit(1, 0), 1)
    writer.put(entry("other", index="A"), unit(0, 1), 1)
    assert [
        e.key
        for e, _ in early.search("A", unit(1, 0), min_score=0.9, limit=3, now=2)[0]
    ] == ["k"]

    writer.put(entry("k", index="B"), unit(1, 0), 3)
    late = RedisCacheStore(client, prefix=redis_prefix)
    for worker in (early, late, writer):
        matches, _ = worker.search("A", unit(1, 0), min_score=0.9, limit=3, now=4)
        assert matches == []
    matches, _ = late.search("B", unit(1, 0), min_score=0.9, limit=3, now=4)
    assert [e.key for e, _ in matches] == ["k"]
