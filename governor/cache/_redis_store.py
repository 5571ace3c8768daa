"""A cache store in Redis, shared by every worker.

Entries, their vectors and the eviction order live in Redis; each worker keeps
a local mirror of the vectors of the indexes it searched and brings it up to
date from a per-index stream of additions, so a search costs one round trip
plus a local matrix product. Removals need no log: a mirrored row whose entry
is gone is dropped when a search meets it.

Stores under one prefix share one eviction order, so a store with a smaller
``max_entries`` or another ``eviction`` would evict the others' entries:
:func:`settings_prefix` gives each pair of these settings its own prefix.

Keys, under the prefix ``P``: ``P:e:<key>`` hash of entry JSON, vector and
index; ``P:use`` sorted set ordering eviction; ``P:exp`` sorted set of expiry
times; ``P:ixof`` hash naming each indexed key's index; ``P:ix:<index>`` set
of an index's keys; ``P:log:<index>`` stream of an index's additions. The
scripts name keys they build from the prefix, so the store needs a single
Redis server, not a cluster. Memory stays bounded: at most ``max_entries``
entries, every key in the bookkeeping is one of them (``P:ixof`` lets a drop
find the index of an entry whose hash Redis already expired), each stream
is capped at ``max_entries``, and an index's set and stream go with its last
entry. A worker's mirror is rebuilt from the index's set once it holds more
than twice the rows it held when last rebuilt (plus ``_MIRROR_SLACK``), and a
worker's mirrors together hold at most ``2 * max_entries + _MIRROR_SLACK``
rows: beyond that the least recently searched are dropped, to be reloaded
from their sets when next searched.
"""

from __future__ import annotations

import inspect
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from governor._errors import ConfigError
from governor._forks import start_over_in_children
from governor.cache._index import Vector, VectorIndex
from governor.cache._types import CacheEntry

if TYPE_CHECKING:
    import redis

__all__ = ["RedisCacheStore", "settings_prefix"]

logger = logging.getLogger(__name__)

_MIRRORED_INDEXES = 4096
# The eviction settings whose keys stay right under the prefix: Cache's
# defaults, where every cache kept its keys before they were kept apart.
_PLAIN_MAX_ENTRIES = 10_000
_PLAIN_EVICTION: Literal["lru"] = "lru"
# Stored vectors are unit rows; float32 rounding keeps their norm far closer
# to 1 than this, so a row off by more was not written by a cache.
_NORM_TOLERANCE = 1e-3
# A mirror is rebuilt once its rows exceed twice those of its last rebuild
# plus this many, so rebuilds cost O(1) reads per addition.
_MIRROR_SLACK = 32
# The key families of one store, after ``P:``; clear() deletes these only.
_FAMILIES = ("e:", "ix:", "log:")
_SINGLES = ("use", "exp", "ixof")

# Drop one entry and its traces; the index's set and stream go with its last key.
# The index comes from P:ixof, as Redis may have expired the entry's hash; the
# hash's own field serves entries written before P:ixof existed.
_DROP = """
local function drop(p, k)
  local idx = redis.call('HGET', p .. ':ixof', k)
  if not idx then idx = redis.call('HGET', p .. ':e:' .. k, 'i') end
  redis.call('HDEL', p .. ':ixof', k)
  redis.call('DEL', p .. ':e:' .. k)
  redis.call('ZREM', p .. ':use', k)
  redis.call('ZREM', p .. ':exp', k)
  if idx then
    redis.call('SREM', p .. ':ix:' .. idx, k)
    if redis.call('SCARD', p .. ':ix:' .. idx) == 0 then
      redis.call('DEL', p .. ':ix:' .. idx, p .. ':log:' .. idx)
    end
  end
end
"""

# ARGV: prefix, key, json, vector, index, ttl_ms, expires_at, use score,
# max entries, now, stream max length.
_PUT = (
    _DROP
    + """
local p, k = ARGV[1], ARGV[2]
local ttl = tonumber(ARGV[6])
for _, old in ipairs(redis.call('ZRANGEBYSCORE', p .. ':exp', '-inf', ARGV[10],
                                'LIMIT', 0, 64)) do
  drop(p, old)
end
drop(p, k)
local e = p .. ':e:' .. k
redis.call('HSET', e, 'j', ARGV[3])
if ARGV[5] ~= '' then
  local ix, log = p .. ':ix:' .. ARGV[5], p .. ':log:' .. ARGV[5]
  redis.call('HSET', e, 'v', ARGV[4], 'i', ARGV[5])
  redis.call('HSET', p .. ':ixof', k, ARGV[5])
  -- the index lives as long as its longest-lived entry: a new one takes
  -- this entry's TTL, an entry with none makes it last, and a later
  -- expiry only ever pushes its end further out
  local left = redis.call('PTTL', ix)
  redis.call('SADD', ix, k)
  redis.call('XADD', log, 'MAXLEN', '~', ARGV[11], '*', 'k', k)
  if ttl == 0 then
    redis.call('PERSIST', ix)
    redis.call('PERSIST', log)
  elseif left == -2 or (left >= 0 and left < ttl) then
    redis.call('PEXPIRE', ix, ttl)
    redis.call('PEXPIRE', log, ttl)
  end
end
if ttl > 0 then
  redis.call('PEXPIRE', e, ttl)
  redis.call('ZADD', p .. ':exp', ARGV[7], k)
end
-- evict before adding the new key: under LFU it has no uses yet
local excess = redis.call('ZCARD', p .. ':use') + 1 - tonumber(ARGV[9])
if excess > 0 then
  local popped = redis.call('ZPOPMIN', p .. ':use', excess)
  for i = 1, #popped, 2 do drop(p, popped[i]) end
end
redis.call('ZADD', p .. ':use', ARGV[8], k)
return excess
"""
)

# ARGV: prefix, key, now, lfu (1/0). LFU scores are uses plus a fraction that
# grows with the last use, so the least recently used goes among equals.
_TOUCH = """
local p, k = ARGV[1], ARGV[2]
local score = redis.call('ZSCORE', p .. ':use', k)
if not score then return 0 end
local stamp = tonumber(ARGV[3]) / 1e11
if ARGV[4] == '1' then
  redis.call('ZADD', p .. ':use', math.floor(tonumber(score)) + 1 + stamp, k)
else
  redis.call('ZADD', p .. ':use', ARGV[3], k)
end
return 1
"""

# Drop an unreadable entry, unless it was replaced since it was read.
# ARGV: prefix, key, the JSON read.
_DROP_BAD = (
    _DROP
    + """
local p, k = ARGV[1], ARGV[2]
if redis.call('HGET', p .. ':e:' .. k, 'j') ~= ARGV[3] then return 0 end
drop(p, k)
return 1
"""
)

# Delete the store's own keys: KEYS are its single keys, ARGV the patterns of
# its key families, so a longer prefix (P:v2) keeps its keys.
_CLEAR = """
local n = redis.call('DEL', unpack(KEYS))
for _, pattern in ipairs(ARGV) do
  local cursor = '0'
  repeat
    local page = redis.call('SCAN', cursor, 'MATCH', pattern, 'COUNT', 500)
    cursor = page[1]
    for _, key in ipairs(page[2]) do redis.call('DEL', key); n = n + 1 end
  until cursor == '0'
end
return n
"""


@dataclass(slots=True)
class _Mirror:
    """A worker's copy of one index's vectors, and the last addition seen."""

    last_id: str
    index: VectorIndex | None = None
    synced_rows: int = 0
    # whether the store's row count includes this mirror's rows
    counted: bool = False

    def rows(self) -> int:
        """Rows the matrix holds, live or freed for reuse."""
        return 0 if self.index is None else len(self.index.keys)

    def overgrown(self) -> bool:
        """Whether rows of removed entries may now outnumber the live ones."""
        rows = 0 if self.index is None else self.index.live()
        return rows > 2 * self.synced_rows + _MIRROR_SLACK

    def add(self, key: str, vector: Vector) -> None:
        if self.index is None:
            self.index = VectorIndex(vector.shape[0])
        self.index.add(key, vector)

    def remove(self, key: str) -> None:
        if self.index is not None:
            self.index.remove(key)

    def search(
        self, vector: Vector, min_score: float, limit: int
    ) -> tuple[list[tuple[str, float]], float | None]:
        if self.index is None:
            return [], None
        return self.index.search(vector, min_score, limit)


class RedisCacheStore:
    """A :class:`CacheStore` in Redis, shared by every process that uses it.

    Thread-safe. Needs Redis 6.2 or later. A client made
    with ``decode_responses=True`` is refused: vectors are raw bytes.

    Each process searches its own copy of the indexes' vectors; a forked
    child reloads it from Redis.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = "governor:cache",
        max_entries: int = _PLAIN_MAX_ENTRIES,
        eviction: Literal["lru", "lfu"] = _PLAIN_EVICTION,
    ) -> None:
        """Store entries through ``client`` under ``prefix``, as given.

        Stores that share a prefix share one eviction order: give a store
        with other ``max_entries`` or ``eviction`` its own prefix, e.g.
        :func:`settings_prefix`, or its bound evicts the others' entries.

        Raises:
            ConfigError: the client is not a synchronous redis-py client (a
                URL, an asyncio client), or it decodes responses to strings.
        """
        _check_client(client)
        kwargs = client.get_connection_kwargs()
        if kwargs.get("decode_responses"):
            raise ConfigError(
                "RedisCacheStore needs a client with decode_responses=False"
            )
        self._redis = client
        self._p = prefix.removesuffix(":")
        # The key_prefix of the Cache settings this store was made for (see
        # for_settings), whose other settings' stores clear() empties too.
        self._root: str | None = None
        self.max_entries = max_entries
        self.eviction = eviction
        self._put = client.register_script(_PUT)
        self._touch = client.register_script(_TOUCH)
        self._clear = client.register_script(_CLEAR)
        self._drop_bad = client.register_script(_DROP_BAD)
        self._mirrors: OrderedDict[str, _Mirror] = OrderedDict()
        # rows of every mirror in _mirrors; at most _max_rows after a sync
        self._rows = 0
        self._max_rows = 2 * max_entries + _MIRROR_SLACK
        self._lock = threading.Lock()
        start_over_in_children(self)

    def _forget_parent(self) -> None:
        """In a forked child: a lock of its own, and no mirrors yet.

        A lock a parent thread held at the fork would stay held for good, and
        a parent thread may have left a mirror half updated (its stream
        position moved on, its rows not loaded yet): the child drops every
        mirror, and each reloads from Redis when next searched.
        """
        self._lock = threading.Lock()
        self._mirrors.clear()
        self._rows = 0

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisCacheStore:
        """Connect to the Redis at ``url`` (``redis://host:port/db``)."""
        import redis

        from governor.stores._redis import check_url_options

        check_url_options(url)
        return cls(redis.Redis.from_url(url), **kwargs)

    def get(self, key: str, now: float) -> CacheEntry | None:
        """Return the live entry stored under ``key``, or None."""
        raw = self._redis.hget(f"{self._p}:e:{key}", "j")
        entry = self._read(key, raw)
        return None if entry is None or entry.expired(now) else entry

    def search(
        self, index: str, vector: Vector, *, min_score: float, limit: int, now: float
    ) -> tuple[list[tuple[CacheEntry, float]], float | None]:
        """Return up to ``limit`` live entries at or above ``min_score``."""
        mirror = self._synced(index, vector.shape[0])
        with self._lock:
            near, best = mirror.search(vector, min_score, limit)
        if not near:
            return [], best
        raws = self._fetch([key for key, _ in near])
        matches: list[tuple[CacheEntry, float]] = []
        for (key, score), raw in zip(near, raws, strict=True):
            entry = self._read(key, raw)
            # An entry stored again under another index since this mirror
            # read it (another embedder's vector) is not this index's.
            if entry is None or entry.expired(now) or entry.index != index:
                with self._lock:
                    mirror.remove(key)
                continue
            matches.append((entry, score))
        return matches, best

    def put(self, entry: CacheEntry, vector: Vector | None, now: float) -> None:
        """Store ``entry`` and evict beyond ``max_entries``, in one script."""
        ttl_ms = 0
        if entry.expires_at is not None:
            ttl_ms = max(1, int((entry.expires_at - now) * 1000))
        indexed = vector is not None and entry.index is not None
        blob = vector.astype("<f4").tobytes() if indexed and vector is not None else b""
        score = now if self.eviction == "lru" else now / 1e11
        self._put(
            args=[
                self._p,
                entry.key,
                entry.to_json(),
                blob,
                entry.index if indexed and entry.index is not None else "",
                ttl_ms,
                entry.expires_at if entry.expires_at is not None else 0,
                repr(score),
                self.max_entries,
                repr(now),
                self.max_entries,
            ]
        )

    def touch(self, key: str, now: float) -> None:
        """Count a use of ``key`` for LRU or LFU eviction."""
        self._touch(
            args=[self._p, key, repr(now), "1" if self.eviction == "lfu" else "0"]
        )

    def size(self) -> int:
        """Return how many entries the shared store holds."""
        return int(self._redis.zcard(f"{self._p}:use"))

    @classmethod
    def for_settings(
        cls,
        client: redis.Redis,
        *,
        prefix: str,
        max_entries: int,
        eviction: Literal["lru", "lfu"],
    ) -> RedisCacheStore:
        """The store of ``Cache(key_prefix=prefix, max_entries=...,
        eviction=...)``: under :func:`settings_prefix`, and one whose
        :meth:`clear` empties the stores of the prefix's other settings too,
        so that clearing a governor's cache also clears what its task
        overrides stored."""
        store = cls(
            client,
            prefix=settings_prefix(prefix, max_entries=max_entries, eviction=eviction),
            max_entries=max_entries,
            eviction=eviction,
        )
        store._root = prefix.removesuffix(":")
        return store

    def clear(self) -> None:
        """Delete this store's keys (and only those).

        The keys of a store whose prefix extends this one (``P:v2``) stay,
        except those of the same key prefix's other settings for a store
        made by :meth:`for_settings`.
        """
        with self._lock:
            for mirror in self._mirrors.values():
                mirror.counted = False
            self._mirrors.clear()
            self._rows = 0
        keys, patterns = self._clear_targets()
        self._clear(keys=keys, args=patterns)

    def _clear_targets(self) -> tuple[list[str], list[str]]:
        """The keys :meth:`clear` deletes, and the SCAN patterns it deletes."""
        prefixes = [self._p] if self._root is None else self._settings_prefixes()
        keys = [f"{prefix}:{name}" for prefix in prefixes for name in _SINGLES]
        patterns = [f"{_glob(p)}:{family}*" for p in prefixes for family in _FAMILIES]
        return keys, patterns

    def _settings_prefixes(self) -> list[str]:
        """The key prefix this store was made for and each of its settings'
        prefixes that holds keys now (``P:lfu-500``: exactly an eviction, a
        dash and a bound, so a longer prefix such as ``P:lru-500:v2`` is
        another store's, left alone)."""
        assert self._root is not None
        root = self._root
        found = {root, self._p}
        for name in _SINGLES:
            match = f"{_glob(root)}:l[rf]u-*:{name}"
            for raw in self._redis.scan_iter(match=match, count=500):
                key = raw.decode() if isinstance(raw, bytes) else str(raw)
                middle = key[len(root) + 1 : -(len(name) + 1)]
                if _SETTINGS_PART.fullmatch(middle):
                    found.add(f"{root}:{middle}")
        return sorted(found)

    def _read(self, key: str, raw: bytes | str | None) -> CacheEntry | None:
        """The entry stored under ``key``; None if none, or if it is unreadable.

        An entry this release cannot read (corrupted, or written by another
        release) is a plain miss, never an error: it is deleted, unless it
        was replaced meanwhile, so the fresh answer takes its place.
        """
        if raw is None:
            return None
        try:
            entry = CacheEntry.from_json(raw)
            if entry.key != key:
                raise ValueError(f"it names another key, {entry.key!r:.80}")
        except ValueError as exc:
            self._drop_unreadable(key, raw, str(exc))
            return None
        return entry

    def _drop_unreadable(self, key: str, raw: bytes | str, problem: str) -> None:
        logger.warning(
            "cache store %s: entry %s cannot be served (%s); it is deleted and "
            "the request goes to the model. If another release of the governor "
            "shares this Redis, give each release its own Cache(key_prefix=...)",
            self._p,
            key,
            problem,
        )
        try:
            self._drop_bad(args=[self._p, key, raw])
        except Exception:  # fails open: the fresh answer overwrites it anyway
            logger.debug("could not delete cache entry %s", key, exc_info=True)

    def _fetch(self, keys: Iterable[str]) -> list[bytes | None]:
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            pipe.hget(f"{self._p}:e:{key}", "j")
        return list(pipe.execute())

    def _synced(self, index: str, dim: int) -> _Mirror:
        with self._lock:
            mirror = self._mirrors.get(index)
            if mirror is not None:
                self._mirrors.move_to_end(index)
        if mirror is None:
            mirror = self._full_sync(index, dim)
        else:
            self._catch_up(index, mirror, dim)
            if mirror.overgrown():
                # rows of evicted and expired entries leave only when a search
                # meets them: rebuild from the index's set to keep memory bounded
                mirror = self._full_sync(index, dim)
        with self._lock:
            self._shed(keep=index)
        return mirror

    def _shed(self, keep: str) -> None:
        """Drop least recently searched mirrors, never ``keep``, until they fit.

        Quiet indexes keep the rows of entries Redis evicted since no search
        meets them; dropping whole mirrors keeps a worker's rows to about
        twice ``max_entries``. A dropped mirror reloads from its set when
        next searched. The caller holds the lock.
        """
        while len(self._mirrors) > 1 and (
            self._rows > self._max_rows or len(self._mirrors) > _MIRRORED_INDEXES
        ):
            index, mirror = next(iter(self._mirrors.items()))
            if index == keep:
                self._mirrors.move_to_end(index)
                continue
            del self._mirrors[index]
            self._uncount(mirror)

    def _uncount(self, mirror: _Mirror) -> None:
        """Take a mirror leaving ``_mirrors`` out of the row count; lock held."""
        if mirror.counted:
            mirror.counted = False
            self._rows -= mirror.rows()

    def _full_sync(self, index: str, dim: int) -> _Mirror:
        log = f"{self._p}:log:{index}"
        # Read the stream position first: an addition racing with the set read
        # then shows up in both, and adding a key twice replaces its row.
        last: Any = self._redis.xrevrange(log, count=1)
        mirror = _Mirror(last_id=_text(last[0][0]) if last else "0-0")
        members: Any = self._redis.smembers(f"{self._p}:ix:{index}")
        members = [_text(m) for m in members]
        self._load(mirror, members, dim, index)
        with self._lock:
            mirror.synced_rows = 0 if mirror.index is None else mirror.index.live()
            old = self._mirrors.pop(index, None)
            if old is not None:
                self._uncount(old)
            self._mirrors[index] = mirror
            mirror.counted = True
            self._rows += mirror.rows()
        return mirror

    def _catch_up(self, index: str, mirror: _Mirror, dim: int) -> None:
        log = f"{self._p}:log:{index}"
        added: Any = self._redis.xrange(log, min=f"({mirror.last_id}")
        if not added:
            return
        mirror.last_id = _text(added[-1][0])
        keys = [_text(fields[b"k"]) for _, fields in added]
        self._load(mirror, keys, dim, index)

    def _load(self, mirror: _Mirror, keys: list[str], dim: int, index: str) -> None:
        """Mirror the vectors of ``keys``; skip (and warn of) corrupt ones.

        A key the stream names that was stored again under another index
        (another embedder) since is skipped: its vector is not of this one.

        A vector that is not ``dim`` finite float32 of unit length was not
        written by a cache: searched, a scaled one would outscore every
        honest row and serve its answer to any question.
        """
        if not keys:
            return
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            pipe.hmget(f"{self._p}:e:{key}", "v", "i")
        fields = pipe.execute()
        corrupt: list[str] = []
        with self._lock:
            rows = mirror.rows()
            for key, (blob, owner) in zip(keys, fields, strict=True):
                if not blob or (owner is not None and _text(owner) != index):
                    mirror.remove(key)
                    continue
                vector = _unit_row(blob, dim)
                if vector is None:
                    corrupt.append(key)
                    mirror.remove(key)
                else:
                    mirror.add(key, vector)
            if mirror.counted:
                self._rows += mirror.rows() - rows
        if corrupt:
            logger.warning(
                "cache store %s: %d stored vectors are not %d finite float32 "
                "of unit length (entry %s, ...); they are never matched. Delete "
                "those entries or clear the cache",
                self._p,
                len(corrupt),
                dim,
                corrupt[0],
            )


_SETTINGS_PART = re.compile(r"l[rf]u-[1-9][0-9]*")


def _glob(prefix: str) -> str:
    """``prefix`` with the characters SCAN's MATCH reads as a pattern escaped."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", prefix)


def settings_prefix(
    prefix: str, *, max_entries: int, eviction: Literal["lru", "lfu"]
) -> str:
    """The key prefix of a store with these eviction settings under ``prefix``.

    ``max_entries`` and ``eviction`` are the settings the store's scripts
    take per store (the bound of the shared ``P:use`` order, the length of
    the index streams, and how ``P:use`` scores a use), so stores that differ
    in them keep apart: ``P:<eviction>-<max_entries>``, e.g.
    ``governor:cache:lfu-500``. The defaults (10,000 entries, LRU) keep
    ``P`` itself, where their keys were before.
    """
    if max_entries == _PLAIN_MAX_ENTRIES and eviction == _PLAIN_EVICTION:
        return prefix
    return f"{prefix.removesuffix(':')}:{eviction}-{max_entries}"


_SYNC_CLIENT = (
    "RedisCacheStore (Cache(store='redis'), redis_client=) needs a synchronous "
    "redis.Redis client with decode_responses=False"
)


def _check_client(client: object) -> None:
    """Refuse what is not a synchronous redis-py client, before any lookup.

    An asyncio client's commands return coroutines, so every lookup would
    miss; a URL has no connection at all.
    """
    if isinstance(client, str | bytes):
        raise ConfigError(
            f"{_SYNC_CLIENT}, got a string (a URL?): pass "
            "redis.Redis.from_url(url) as redis_client=, or "
            "RedisCacheStore.from_url(url) as store="
        )
    name = f"{type(client).__module__}.{type(client).__qualname__}"
    if inspect.iscoroutinefunction(getattr(client, "execute_command", None)):
        raise ConfigError(
            f"{_SYNC_CLIENT}, got the asyncio client {name}: pass "
            "redis.Redis.from_url(url) (the cache calls Redis from worker "
            "threads, also for asyncio callers)"
        )
    if not callable(getattr(client, "get_connection_kwargs", None)):
        raise ConfigError(f"{_SYNC_CLIENT}, got {name}: pass redis.Redis.from_url(url)")


def _unit_row(blob: bytes, dim: int) -> Vector | None:
    """The stored vector, or None when it is not ``dim`` finite unit floats."""
    if len(blob) != dim * 4:
        return None
    vector: Vector = np.frombuffer(blob, dtype="<f4").astype(np.float32)
    if not np.isfinite(vector).all():
        return None
    if abs(float(np.linalg.norm(vector)) - 1.0) > _NORM_TOLERANCE:
        return None
    return vector


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
