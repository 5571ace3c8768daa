"""The cache store interface and the in-process store.

A store keeps entries by exact key and, per semantic index, a matrix of unit
vectors searched exactly (see ``_index``). An index is one scope
(tenant, model, system prompt, tools, earlier conversation) and one embedder,
so a search never even sees entries from another scope.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from governor._forks import start_over_in_children
from governor.cache._index import Vector, VectorIndex
from governor.cache._types import CacheEntry

__all__ = ["CacheStore", "MemoryCacheStore", "Vector"]


@runtime_checkable
class CacheStore(Protocol):
    """Where entries live. Implementations must be thread-safe."""

    def get(self, key: str, now: float) -> CacheEntry | None:
        """Return the live entry stored under ``key``, or None."""
        ...

    def search(
        self, index: str, vector: Vector, *, min_score: float, limit: int, now: float
    ) -> tuple[list[tuple[CacheEntry, float]], float | None]:
        """Return up to ``limit`` live entries of ``index``, best first.

        Only entries whose cosine similarity with ``vector`` is at least
        ``min_score`` are returned, each with its similarity, together with
        the highest similarity in the index (None when it is empty).
        """
        ...

    def put(self, entry: CacheEntry, vector: Vector | None, now: float) -> None:
        """Store ``entry`` (and its vector in its index), evicting as needed."""
        ...

    def touch(self, key: str, now: float) -> None:
        """Record that ``key`` was served, for LRU and LFU eviction."""
        ...

    def size(self) -> int:
        """Return how many entries are held (expired ones may still count)."""
        ...

    def clear(self) -> None:
        """Drop every entry this store holds."""
        ...


@dataclass(slots=True)
class _Slot:
    entry: CacheEntry
    indexed: bool
    uses: int = 0
    last_used: float = 0.0


class MemoryCacheStore:
    """An in-process :class:`CacheStore` bounded by ``max_entries``.

    Searches are exact: one float32 matrix-vector product over the index's
    rows. Expired entries are dropped when met and before any eviction.

    A child forked from the process keeps the entries as they were at the
    fork, unless a thread was changing them then: that child starts empty.
    """

    def __init__(
        self, *, max_entries: int = 10_000, eviction: Literal["lru", "lfu"] = "lru"
    ) -> None:
        """Keep at most ``max_entries``, dropping by ``eviction`` beyond that."""
        self.max_entries = max_entries
        self.eviction = eviction
        self._slots: OrderedDict[str, _Slot] = OrderedDict()
        self._indexes: dict[str, VectorIndex] = {}
        self._lock = threading.RLock()
        self._puts_since_sweep = 0
        start_over_in_children(self)

    def _forget_parent(self) -> None:
        """In a forked child: a lock of its own, and whole entries only.

        A lock a parent thread held at the fork would stay held for good. That
        thread may have been midway through a change, leaving an entry and
        its index out of step: then the child starts with an empty cache.
        """
        was_free = self._lock.acquire(blocking=False)
        self._lock = threading.RLock()
        if not was_free:
            self._slots.clear()
            self._indexes.clear()
            self._puts_since_sweep = 0

    def get(self, key: str, now: float) -> CacheEntry | None:
        """Return the live entry stored under ``key``, or None."""
        with self._lock:
            slot = self._slots.get(key)
            if slot is None:
                return None
            if slot.entry.expired(now):
                self._drop(key)
                return None
            return slot.entry

    def search(
        self, index: str, vector: Vector, *, min_score: float, limit: int, now: float
    ) -> tuple[list[tuple[CacheEntry, float]], float | None]:
        """Return up to ``limit`` live entries at or above ``min_score``."""
        with self._lock:
            found = self._indexes.get(index)
            if found is None:
                return [], None
            near, best = found.search(vector, min_score, limit)
            matches: list[tuple[CacheEntry, float]] = []
            for key, score in near:
                entry = self.get(key, now)
                if entry is not None:
                    matches.append((entry, score))
            return matches, best

    def put(self, entry: CacheEntry, vector: Vector | None, now: float) -> None:
        """Store ``entry``, replacing one with the same key, then evict."""
        with self._lock:
            if entry.key in self._slots:
                self._drop(entry.key)
            if len(self._slots) >= self.max_entries:
                # Evict before inserting: under LFU a new entry has no uses yet
                # and would otherwise always be the one to go.
                self._evict(now, room=1)
            indexed = vector is not None and entry.index is not None
            if vector is not None and entry.index is not None:
                self._index_for(entry.index, vector.shape[0]).add(entry.key, vector)
            self._slots[entry.key] = _Slot(entry, indexed, 0, now)

    def touch(self, key: str, now: float) -> None:
        """Count a use of ``key`` and make it the most recently used."""
        with self._lock:
            slot = self._slots.get(key)
            if slot is not None:
                slot.uses += 1
                slot.last_used = now
                self._slots.move_to_end(key)

    def size(self) -> int:
        """Return how many entries are held."""
        return len(self._slots)

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            self._slots.clear()
            self._indexes.clear()

    def keys(self) -> Sequence[str]:
        """Return the held keys, least recently used first (for tests, tools)."""
        with self._lock:
            return list(self._slots)

    def _index_for(self, name: str, dim: int) -> VectorIndex:
        found = self._indexes.get(name)
        if found is None:
            found = VectorIndex(dim)
            self._indexes[name] = found
        return found

    def _drop(self, key: str) -> None:
        slot = self._slots.pop(key)
        index_name = slot.entry.index
        if not slot.indexed or index_name is None:
            return
        index = self._indexes[index_name]
        index.remove(key)
        if not index.live():
            del self._indexes[index_name]

    def _evict(self, now: float, room: int) -> None:
        self._puts_since_sweep += 1
        if self._puts_since_sweep >= max(64, self.max_entries // 8):
            # Sweeping costs a pass over every entry, so it is spread out.
            self._puts_since_sweep = 0
            for key in [k for k, s in self._slots.items() if s.entry.expired(now)]:
                self._drop(key)
        excess = len(self._slots) + room - self.max_entries
        if excess <= 0:
            return
        if self.eviction == "lru":
            victims = list(itertools.islice(self._slots, excess))
        else:
            # Fewest uses first, the least recently used among equals. Evicting
            # a small batch at once keeps the scan off most puts.
            batch = excess + self.max_entries // 64
            victims = heapq.nsmallest(
                batch, self._slots, key=lambda k: self._usage(self._slots[k])
            )
        for key in victims:
            self._drop(key)

    @staticmethod
    def _usage(slot: _Slot) -> tuple[int, float]:
        return slot.uses, slot.last_used
