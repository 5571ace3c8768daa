"""Spend records in Redis, for fleets that share one history."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from governor.spend._record import SpendRecord
from governor.spend._store import (
    Filters,
    check_bounds,
    check_filters,
    matches,
)
from governor.spend._time import to_us

if TYPE_CHECKING:
    import redis

__all__ = ["RedisSpendStore"]

_PAGE = 500


class RedisSpendStore:
    """Spend records in two Redis keys under a prefix.

    ``<prefix>{spend}:h`` maps each call id to its record's JSON (the JSONL
    trace form); ``<prefix>{spend}:z`` orders the call ids by time in
    microseconds. Both keys share the ``{spend}`` hash tag so that a write is
    one MULTI transaction on Redis Cluster too. A ``call_id`` recorded twice
    keeps the first. A query pages through the time index, so records written
    while it runs may or may not appear.

    Thread-safe as redis-py's client is.

    Args:
        client: a ``redis.Redis`` client (``decode_responses`` either way).
        prefix: prepended to both keys, e.g. ``"governor:"``.
    """

    def __init__(self, client: redis.Redis, *, prefix: str = "governor:") -> None:
        self._client = client
        self.hash_key = f"{prefix}{{spend}}:h"
        self.index_key = f"{prefix}{{spend}}:z"

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "governor:") -> RedisSpendStore:
        """Connect to the Redis server at ``url`` (``redis://host:port/db``)."""
        import redis as redis_lib

        return cls(redis_lib.Redis.from_url(url), prefix=prefix)

    def record(self, rec: SpendRecord) -> None:
        """Store one record."""
        self.record_many((rec,))

    def record_many(self, recs: Iterable[SpendRecord]) -> None:
        """Store several records in one MULTI/EXEC transaction."""
        pipe = self._client.pipeline(transaction=True)
        queued = False
        for rec in recs:
            body = json.dumps(rec.to_json_dict(), separators=(",", ":"))
            pipe.hsetnx(self.hash_key, rec.call_id, body)
            pipe.zadd(self.index_key, {rec.call_id: to_us(rec.ts)}, nx=True)
            queued = True
        if queued:
            pipe.execute()

    def query(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        filters: Filters | None = None,
    ) -> Iterator[SpendRecord]:
        """Yield matching records in time order; see :class:`SpendStore`."""
        check_bounds(since, until)
        wanted = check_filters(filters)
        low: Any = "-inf" if since is None else to_us(since)
        high: Any = "+inf" if until is None else f"({to_us(until)}"
        return self._pages(low, high, wanted)

    def _pages(
        self, low: Any, high: Any, wanted: dict[str, str | None]
    ) -> Iterator[SpendRecord]:
        offset = 0
        while True:
            ids: list[bytes] = cast(
                "list[bytes]",
                self._client.zrangebyscore(
                    self.index_key, low, high, start=offset, num=_PAGE
                ),
            )
            if not ids:
                return
            offset += len(ids)
            for body in self._client.hmget(self.hash_key, ids):
                if body is None:
                    continue
                rec = SpendRecord.from_json_dict(json.loads(body))
                if matches(rec, wanted):
                    yield rec

    def clear(self) -> None:
        """Delete both keys (every record under this prefix)."""
        self._client.delete(self.hash_key, self.index_key)

    def close(self) -> None:
        """Close the client's connections."""
        self._client.close()

    def __enter__(self) -> RedisSpendStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
