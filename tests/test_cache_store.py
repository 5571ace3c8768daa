"""The in-memory cache store: exact search, expiry and eviction."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from _cache_entries import entry

from governor.cache import MemoryCacheStore
from governor.cache._embed import normalize_rows
from governor.cache._index import PROJECT_AT, VectorIndex


def unit(*values: float) -> np.ndarray:
    return normalize_rows(np.array([values]))[0]


def test_search_returns_matches_best_first() -> None:
    """Entries at or above the score come back in order of similarity."""
    store = MemoryCacheStore()
    store.put(entry("a"), unit(1, 0, 0), 0)
    store.put(entry("b"), unit(1, 1, 0), 0)
    store.put(entry("c"), unit(0, 0, 1), 0)
    matches, best = store.search("ix", unit(1, 0.1, 0), min_score=0.5, limit=5, now=0)
    assert [e.key for e, _ in matches] == ["a", "b"]
    assert best == matches[0][1]


def test_search_sees_only_its_index() -> None:
    """An entry in another index is never a candidate."""
    store = MemoryCacheStore()
    store.put(entry("a", index="other"), unit(1, 0), 0)
    assert store.search("ix", unit(1, 0), min_score=0.1, limit=5, now=0) == ([], None)


def test_an_expired_entry_is_neither_got_nor_found() -> None:
    """Expiry hides an entry from both layers."""
    store = MemoryCacheStore()
    store.put(entry("a", expires_at=10.0), unit(1, 0), 0)
    matches, _ = store.search("ix", unit(1, 0), min_score=0.1, limit=5, now=10.0)
    assert (store.get("a", 10.0), matches) == (None, [])


def test_lru_evicts_the_least_recently_used() -> None:
    """With LRU, the entry served least recently goes first."""
    store = MemoryCacheStore(max_entries=2, eviction="lru")
    store.put(entry("a"), unit(1, 0), 0)
    store.put(entry("b"), unit(0, 1), 1)
    store.touch("a", 2)
    store.put(entry("c"), unit(1, 1), 3)
    assert sorted(store.keys()) == ["a", "c"]


def test_lfu_evicts_the_least_frequently_used() -> None:
    """With LFU, the entry served fewest times goes first."""
    store = MemoryCacheStore(max_entries=2, eviction="lfu")
    store.put(entry("a"), unit(1, 0), 0)
    store.put(entry("b"), unit(0, 1), 1)
    store.touch("a", 2)
    store.touch("a", 3)
    store.touch("b", 4)
    store.put(entry("c"), unit(1, 1), 5)
    assert sorted(store.keys()) == ["a", "c"]


def test_an_evicted_entry_leaves_its_index() -> None:
    """Eviction removes the vector too, so search cannot return it."""
    store = MemoryCacheStore(max_entries=1)
    store.put(entry("a"), unit(1, 0), 0)
    store.put(entry("b"), unit(0, 1), 1)
    matches, _ = store.search("ix", unit(1, 0), min_score=0.5, limit=5, now=2)
    assert matches == []


def test_a_freed_row_is_reused() -> None:
    """Rows of dropped entries are recycled, keeping the matrix bounded."""
    store = MemoryCacheStore(max_entries=1)
    for step in range(50):
        store.put(entry(f"k{step}"), unit(1, step), step)
    matches, _ = store.search("ix", unit(1, 49), min_score=0.99, limit=5, now=50)
    assert ([e.key for e, _ in matches], store.size()) == (["k49"], 1)


def test_storing_a_key_again_replaces_it() -> None:
    """A second put under the same key keeps one entry, the newer."""
    store = MemoryCacheStore()
    store.put(entry("a"), unit(1, 0), 0)
    newer = entry("a")
    store.put(newer, unit(0, 1), 1)
    matches, _ = store.search("ix", unit(0, 1), min_score=0.9, limit=5, now=2)
    assert (store.size(), [e.key for e, _ in matches]) == (1, ["a"])


def test_the_pruned_search_of_a_large_index_is_exact() -> None:
    """Above PROJECT_AT rows the bound-pruned search equals a full product."""
    rng = np.random.default_rng(7)
    common = rng.standard_normal(64).astype(np.float32)
    rows = normalize_rows(common + 0.35 * rng.standard_normal((PROJECT_AT + 500, 64)))
    index = VectorIndex(64)
    for number, row in enumerate(rows):
        index.add(f"k{number}", row)
    queries = normalize_rows(rows[:40] + 0.05 * rng.standard_normal((40, 64)))
    for query in queries:
        scores = rows @ query
        expected = [f"k{r}" for r in np.argsort(-scores)[:3] if scores[r] >= 0.9]
        found, _ = index.search(query, 0.9, 3)
        assert [key for key, _ in found] == expected
    assert index.basis is not None


def test_a_removed_row_never_matches_in_a_large_index() -> None:
    """A dropped key is gone from the pruned search too."""
    rng = np.random.default_rng(8)
    rows = normalize_rows(rng.standard_normal((PROJECT_AT + 10, 32)))
    index = VectorIndex(32)
    for number, row in enumerate(rows):
        index.add(f"k{number}", row)
    index.remove("k3")
    found, _ = index.search(rows[3], 0.99, 3)
    assert found == []


def test_a_score_above_one_is_never_a_match() -> None:
    """Unit rows score at most 1: a higher score or NaN means a corrupt row."""
    index = VectorIndex(3)
    index.add("scaled", unit(1, 1, 0) * 2)
    index.add("nan", np.array([np.nan, 0, 0], dtype=np.float32))
    index.add("good", unit(1, 0, 0))
    found, best = index.search(unit(1, 1, 0), min_score=0.5, limit=5)
    assert (found, best) == ([("good", np.float32(unit(1, 1, 0)[0]))], found[0][1])


def test_a_redis_client_beside_a_memory_policy_is_named_as_unused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The docs' one-liner with the default policy keeps entries in memory."""
    import redis

    from governor import Cache
    from governor.cache import ResponseCache

    client = redis.Redis()  # never connected: nothing is sent
    with caplog.at_level(logging.WARNING, logger="governor.cache._cache"):
        cache = ResponseCache(Cache(embedder="hashing"), redis_client=client)
    assert isinstance(cache._store, MemoryCacheStore)
    assert "store='redis'" in caplog.text


def test_an_index_takes_room_for_the_entries_it_holds() -> None:
    """Most indexes (one per conversation context) hold one entry: one row
    of room, not a block of sixteen; room doubles as entries come."""
    index = VectorIndex(384)
    index.add("k0", np.ones(384, dtype=np.float32) / np.sqrt(384))
    assert index.matrix.shape == (1, 384)
    for i in range(1, 3):
        index.add(f"k{i}", np.ones(384, dtype=np.float32) / np.sqrt(384))
    assert index.matrix.shape == (4, 384)
